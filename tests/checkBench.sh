#!/bin/sh
# checkBench.sh — dkshm-bench from the shell: every workload briefly with
# --verify on both engines, --json output, every bad option (exit 2 and
# nothing created), a missing segment (exit 3), an attached and a kept
# segment that dkshm-tool then checks, and about ten seconds of --torture
# (workers SIGKILLed and restarted at random) that must verify.
#
# Every call runs under `timeout`: an exit status of 124 (hang) or of 128
# and more (killed by a signal) is a failure whatever was expected. Key
# counts stay small so the whole script takes well under a minute, also in
# sanitizer builds. Segment names carry this shell's pid and are removed on
# exit.
set -u

top_builddir=${top_builddir:-.}
BENCH=${DKSHM_BENCH:-$top_builddir/tools/dkshm-bench}
TOOL=${DKSHM_TOOL:-$top_builddir/tools/dkshm-tool}
P=dkb$$
SHM=/dev/shm

if [ ! -x "$BENCH" ]; then
    echo "SKIP: $BENCH not built"
    exit 77
fi
if [ ! -d "$SHM" ]; then
    echo "SKIP: no $SHM"
    exit 77
fi
have_tool=0
[ -x "$TOOL" ] && have_tool=1

tmp=$(mktemp -d "${TMPDIR:-/tmp}/checkBench.XXXXXX") || exit 99
cleanup() {
    rm -f "$SHM/$P"-* 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 99' INT TERM HUP

PROG=$BENCH
PROG_NAME=dkshm-bench
RUN_LIMIT=60
. "$(dirname "$0")/shellUtil.sh"

# The bench's own segment is gone (or was never made).
no_segment() {
    if [ -n "$runpid" ] && [ -e "$SHM/dkshm-bench-$runpid" ]; then
        bad "dkshm-bench left $SHM/dkshm-bench-$runpid behind"
        rm -f "$SHM/dkshm-bench-$runpid"
    else
        ok
    fi
}

K="--keys 20000 --seconds 0.3"

section "every workload on dkshm, verified"
for w in get set mix95 mix50 incr queue alloc ordered; do
    expect 0 --workload "$w" --procs 2 $K --verify
    out_has "verify *ok"
    no_segment
done
# One process: the queue's push-then-pop mode; zipfian keys; wider keys.
expect 0 --workload queue --procs 1 $K --verify
out_has "push+pop"
expect 0 --workload mix50 --procs 3 $K --verify --zipf 0.99
out_has "zipf 0.99"
expect 0 --workload ordered --procs 1 $K --verify --key-size 40 \
    --value-size 100
out_has "verify *ok"
expect 0 --workload get --procs 1 --keys 1 --seconds 0.2 --verify
expect 0 --workload set --procs 4 --keys 3 --seconds 0.2 --verify
expect 0 --workload set --procs 1 $K
out_has "ops/s"
no_segment

section "the in-process baseline, verified"
for w in get set mix95 mix50 incr; do
    expect 0 --engine inproc --workload "$w" --procs 2 $K --verify
    out_has "verify *ok"
done

section "--json"
expect 0 --workload set --procs 2 $K --verify --json
json_ok
json_true 'd["ok"] and d["verify"]["ok"] and d["workload"] == "set" and d["engine"] == "dkshm" and d["procs"] == 2 and len(d["perProcessOpsPerSec"]) == 2 and d["opsTotal"] > 0 and d["p50Ns"] <= d["p99Ns"] <= d["p999Ns"] and d["torture"] is None'
expect 0 --engine inproc --workload incr --procs 1 $K --json
json_ok
json_true 'd["engine"] == "inproc" and d["segment"] is None and d["verify"] is None and d["opsPerSec"] > 0'
expect 0 --workload queue --procs 2 $K --json
json_ok
json_true 'd["roles"] == ["push", "pop"]'

section "bad input: exit 2, nothing created"
for args in "--procs 0" "--procs 65" "--procs two" "--procs" "--keys 0" \
    "--keys -3" "--keys 1e3" "--key-size 7" "--key-size 65537" \
    "--value-size 1048577" "--value-size -1" "--workload nope" \
    "--seconds -1" "--seconds 0" "--seconds abc" "--seconds inf" \
    "--zipf 1" "--zipf -0.5" "--zipf x" "--engine nope" \
    "--engine inproc --workload queue" "--engine inproc --workload alloc" \
    "--engine inproc --workload ordered" "--engine inproc --torture" \
    "--engine inproc --segment $P-x" "--torture --workload get" \
    "--torture --workload alloc" "--verify --value-size 23" \
    "--workload queue --value-size 8" "--workload alloc --value-size 0" \
    "--size 1K" "--size lots" "--segment $P-x --size 64M" \
    "--segment bad/name" "--bogus" "stray" "--verify=yes" "-x"; do
    # shellcheck disable=SC2086
    expect 2 $args
    err_has "try"
    no_segment
done
[ -e "$SHM/$P-x" ] && bad "a bad call created $P-x" || ok

section "missing segment: exit 3"
expect 3 --segment "$P-missing" --workload get --seconds 0.2
err_has "not found"
expect 3 --segment "$P-missing" --json
json_ok
json_true 'd["exitStatus"] == 3 and d["error"] == "NOTFOUND"'
[ -e "$SHM/$P-missing" ] && bad "a missing segment was created" || ok
# Not a dkshm segment: a file of text where the header should be. It must
# be left as it was.
head -c 65536 /dev/zero | tr '\0' 'x' >"$SHM/$P-junk"
before=$(cksum <"$SHM/$P-junk")
expect 3 --segment "$P-junk" --workload set --seconds 0.2
err_has "damaged or not a dkshm segment"
[ "$(cksum <"$SHM/$P-junk")" = "$before" ] && ok ||
    bad "the bench changed a file that is not a dkshm segment"

if [ $have_tool = 1 ]; then
    section "attached and kept segments, checked by dkshm-tool"
    timeout 10 "$TOOL" create "$P-a" --size 64M >/dev/null && ok ||
        bad "dkshm-tool create $P-a"
    expect 0 --segment "$P-a" --workload set --procs 2 $K --verify
    out_has "attached"
    expect 0 --segment "$P-a" --workload queue --procs 2 $K --verify
    expect 0 --segment "$P-a" --workload set --procs 2 --keys 5000 \
        --seconds 0.3 --verify
    [ -e "$SHM/$P-a" ] && ok || bad "an attached segment was removed"
    timeout 10 "$TOOL" check "$P-a" >"$tmp/chk" 2>&1 && ok ||
        bad "dkshm-tool check $P-a after the bench: $(tail -3 "$tmp/chk")"
    expect 0 --workload ordered --procs 2 $K --verify --keep --json
    json_ok
    seg=$(sed -n 's/^ *"segment": "\(.*\)",$/\1/p' "$tmp/out")
    if [ -n "$seg" ] && [ -e "$SHM${seg}" ]; then
        ok
        timeout 10 "$TOOL" check "$seg" >"$tmp/chk" 2>&1 && ok ||
            bad "dkshm-tool check $seg (kept): $(tail -3 "$tmp/chk")"
        timeout 10 "$TOOL" rm "$seg" >/dev/null 2>&1
    else
        bad "--keep did not keep the segment ('$seg')"
    fi
fi

section "torture: SIGKILLed workers, every acknowledged write verified"
expect 0 --torture --workload set --procs 3 --keys 20000 --seconds 3
out_has "verify *ok"
grep -q "torture *[1-9][0-9]* kills" "$tmp/out" && ok ||
    bad "torture set: no kills reported: $(grep torture "$tmp/out")"
no_segment
expect 0 --torture --workload queue --procs 4 --keys 20000 --seconds 3 --json
json_ok
json_true 'd["ok"] and d["torture"]["kills"] > 0 and d["torture"]["acknowledgedWrites"] > 0 and d["torture"]["lostWithKilledConsumers"] <= d["torture"]["consumerKills"]'
expect 0 --torture --workload ordered --procs 2 --keys 20000 --seconds 2
out_has "verify *ok"
expect 0 --torture --workload incr --procs 2 --keys 20000 --seconds 2 \
    --zipf 0.9
out_has "verify *ok"
no_segment

finish
