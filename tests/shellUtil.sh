# shellUtil.sh — what the shell tests (checkTool.sh, checkBench.sh) share:
# pass/fail counting, running the program under test with a time limit
# (a hang or a crash is always a failure), and checks on what the last run
# printed. Sourced, after the script has set:
#   PROG       the program under test
#   PROG_NAME  how messages name it
#   RUN_LIMIT  seconds before a run counts as hung
#   tmp        a private temporary directory
# After `run`/`expect`: $st is the exit status, $tmp/out and $tmp/err what
# it printed, $runpid its pid.

pass=0
fail=0
t0=$(date +%s)
section() { echo "# $1 (at $(($(date +%s) - t0)) s)"; }
ok() { pass=$((pass + 1)); }
bad() {
    fail=$((fail + 1))
    echo "FAIL: $*"
}

# run ARGS...: run PROG with ARGS.
run() {
    timeout "$RUN_LIMIT" sh -c 'echo $$ >"$0"; exec "$@"' "$tmp/pid" \
        "$PROG" "$@" >"$tmp/out" 2>"$tmp/err"
    st=$?
    runpid=$(cat "$tmp/pid" 2>/dev/null)
    if [ "$st" -eq 124 ]; then
        bad "$PROG_NAME $*: hung (killed after $RUN_LIMIT s)"
    elif [ "$st" -ge 125 ]; then
        bad "$PROG_NAME $*: crashed (status $st)"
        sed 's/^/    /' "$tmp/err" | head -20
    fi
}

# expect STATUS ARGS...: run and compare the exit status.
expect() {
    want=$1
    shift
    run "$@"
    if [ "$st" -eq "$want" ]; then
        ok
    elif [ "$st" -lt 124 ]; then
        bad "$PROG_NAME $*: exit $st, expected $want"
        sed 's/^/    stderr: /' "$tmp/err" | head -8
        sed 's/^/    stdout: /' "$tmp/out" | head -20
    fi
}

# expect_in 'S1 S2' ARGS...: the status must be one of the list.
expect_in() {
    want=$1
    shift
    run "$@"
    for w in $want; do
        if [ "$st" -eq "$w" ]; then
            ok
            return
        fi
    done
    [ "$st" -lt 124 ] && bad "$PROG_NAME $*: exit $st, expected one of $want"
}

# Output checks on the last run.
out_has() {
    if grep -q -- "$1" "$tmp/out"; then ok; else
        bad "stdout of the last call lacks '$1'"
        sed 's/^/    stdout: /' "$tmp/out" | head -20
    fi
}
err_has() {
    if grep -qi -- "$1" "$tmp/err"; then ok; else
        bad "stderr of the last call lacks '$1'"
        sed 's/^/    stderr: /' "$tmp/err" | head -5
    fi
}
err_one_line() {
    n=$(wc -l <"$tmp/err")
    if [ "$n" -eq 1 ]; then ok; else bad "stderr has $n lines, expected one"; fi
}

# python3 validates the JSON; its real executable, not a version
# manager's shim, starts three times faster.
PY=""
if command -v python3 >/dev/null 2>&1; then
    PY=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null)
    [ -x "$PY" ] || PY=python3
fi
if [ -n "$PY" ]; then have_py=1; else have_py=0; fi
[ $have_py = 1 ] || echo "note: no python3, JSON is not validated"

# json_ok: the last stdout is exactly one JSON document.
json_ok() {
    [ $have_py = 1 ] || return 0
    if "$PY" -c 'import json,sys; json.load(sys.stdin)' <"$tmp/out" \
        2>"$tmp/pyerr"; then ok; else
        bad "stdout is not one JSON document: $(tail -1 "$tmp/pyerr")"
        head -20 "$tmp/out" | sed 's/^/    /'
    fi
}

# json_true EXPR: python EXPR over the last JSON document (as d) is true.
json_true() {
    [ $have_py = 1 ] || return 0
    if "$PY" -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($1) else 1)" \
        <"$tmp/out" 2>"$tmp/pyerr"; then ok; else
        bad "JSON check failed: $1 $(tail -1 "$tmp/pyerr")"
        head -40 "$tmp/out" | sed 's/^/    /'
    fi
}

# The summary line the CI adds up, and the script's status.
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
