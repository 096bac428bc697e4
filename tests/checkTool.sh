#!/bin/sh
# checkTool.sh — dkshm-tool from the shell, as an operator runs it: every
# subcommand and exit status, --json output, read-only commands leaving the
# segment byte for byte as it was, damaged and foreign files, another
# user's segment, reaping after SIGKILLed processes, orphans, and segments
# that change or shrink while the tool reads them.
#
# Every call runs under `timeout 10`: an exit status of 124 (hang) or of
# 128 and more (killed by a signal) is a failure whatever was expected.
# Segment names carry this shell's pid and are removed on exit.
set -u

top_builddir=${top_builddir:-.}
TOOL=${DKSHM_TOOL:-$top_builddir/tools/dkshm-tool}
HELPER=$top_builddir/tests/toolHelper
ATTACH=$top_builddir/tests/attachHelper
P=dkt$$
SHM=/dev/shm

for f in "$TOOL" "$HELPER" "$ATTACH"; do
    if [ ! -x "$f" ]; then
        echo "SKIP: $f not built"
        exit 77
    fi
done
if [ ! -d "$SHM" ]; then
    echo "SKIP: no $SHM"
    exit 77
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/checkTool.XXXXXX") || exit 99
bgpids=""
cleanup() {
    for p in $bgpids; do kill -9 "$p" 2>/dev/null; done
    exec 9>&- 2>/dev/null
    rm -f "$SHM/$P"-* 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 99' INT TERM HUP

PROG=$TOOL
PROG_NAME=dkshm-tool
RUN_LIMIT=10
. "$(dirname "$0")/shellUtil.sh"

sum() { sha256sum "$SHM/$1" | cut -d' ' -f1; }
same_sum() {
    if [ "$(sum "$1")" = "$2" ]; then ok; else
        bad "$3 changed the bytes of $1"
    fi
}

# The layout (offsets of header fields and tables) of segment $1 into
# shell variables: dirLock, objects, dirUndo, allocRoot, procTable,
# directory, heap, heapSize, slotSize, entrySize, entryType, entryRoot.
layout() {
    eval "$("$HELPER" offsets "/$1" | sed -n 's/^\([A-Za-z]*\)=\([0-9]*\)$/\1=\2/p')"
}

# Wait until file $1 has a line matching $2 (a helper says it is ready).
wait_for() {
    i=0
    while ! grep -q "$2" "$1" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 200 ]; then
            bad "timed out waiting for '$2' in $1"
            return 1
        fi
        sleep 0.05
    done
    return 0
}

section "usage and help"
expect 0 --help
out_has "usage:"
expect 0 --version
expect 2
expect 2 frobnicate
cmds="list info top check reap dump create rm"
"$TOOL" get --help >/dev/null 2>&1 && cmds="$cmds get set del incr"
for c in $cmds; do
    expect 0 "$c" --help
    out_has "usage: dkshm-tool $c"
    expect 0 help "$c"
done
expect 2 info
expect 2 info a b
expect 2 info "$P-x" --bogus
expect 2 info "$P-x" -z
expect 2 info 'bad/name'
expect 2 check
expect 2 top
expect 2 dump
expect 2 rm
expect 2 list extra

section "create"
expect 0 create "$P-a" --size 1M
[ -f "$SHM/$P-a" ] && ok || bad "create made no file"
[ "$(stat -c %a "$SHM/$P-a")" = 600 ] && ok || bad "default mode is not 0600"
expect 3 create "$P-a" --size 1M
err_has "already exists"
err_one_line
for sz in 12Q -1 0 "" 1.5G 1K 99999999999999999999999 18446744073709551615T 128T 64MBx " 1M"; do
    expect 2 create "$P-bad" --size "$sz"
done
[ -e "$SHM/$P-bad" ] && bad "a rejected size created a segment" || ok
expect 2 create "$P-bad"
expect 2 create "$P-bad" --size 1M --mode 9
expect 2 create "$P-bad" --size 1M --mode 1777
expect 2 create "$P-bad" --size 1M --max-procs 0
expect 2 create "$P-bad" --size 1M --max-procs 2000
expect 2 create "$P-bad" --size 1M --max-objects 70000
for sz in 512K 2M 1048576 1m 3MiB; do
    expect 0 create "$P-sz" --size "$sz"
    expect 0 rm "$P-sz"
done
expect 0 create "/$P-m" --size 1M --mode 644 --max-procs 4 --max-objects 16 --ephemeral
[ "$(stat -c %a "$SHM/$P-m")" = 644 ] && ok || bad "--mode 644 not applied"
expect 0 info "$P-m" --json
json_ok
json_true 'd["header"]["maxProcs"] == 4 and d["header"]["maxObjects"] == 16'
json_true '"ephemeral" in d["header"]["flags"] and d["file"]["mode"] == "0644"'
json_true 'd["allocator"] is not None and d["allocator"]["used"] == 0'

section "a segment with objects: info, list, check, dump"
"$HELPER" put "/$P-a" blob 300 41420001ff0a225c7e >/dev/null || bad "helper put"
"$HELPER" put "/$P-a" big 256 "$(printf '%0400d' 0 | sed 's/00/5a/g')" >/dev/null || bad "helper put big"
layout "$P-a"
"$HELPER" bind "/$P-a" future 77 $((heap + 4096)) || bad "helper bind"
before=$(sum "$P-a")
expect 0 info "$P-a"
out_has "blob"
out_has "user(300)"
out_has "unknown(77)"
out_has "allocator"
expect 0 info "$P-a" --json
json_ok
json_true 'len(d["objects"]) == 3 and d["liveProcesses"] == 0 and d["deadProcesses"] == 0'
json_true '[o for o in d["objects"] if o["name"] == "blob"][0]["type"] == 300'
json_true '[o for o in d["objects"] if o["name"] == "blob"][0]["typeName"] == "user"'
json_true 'd["allocator"]["allocations"] == 2 and d["allocator"]["used"] > 0'
json_true 'd["header"]["layoutVersion"] == 1 and d["header"]["capacity"] == 1048576'
json_true 'all(not l["held"] for l in d["locks"])'
expect 0 list
out_has "/$P-a"
expect 0 list --json
json_ok
json_true '[s for s in d["segments"] if s["name"] == "/'"$P"'-a"][0]["usedBytes"] > 0'
json_true '[s for s in d["segments"] if s["name"] == "/'"$P"'-a"][0]["capacity"] == 1048576'
json_true '"skippedCount" in d'
expect 0 check "$P-a"
out_has "OK"
expect 0 check "$P-a" --json
json_ok
json_true 'd["ok"] and d["problems"] == [] and d["checked"]["objects"] == 3'
json_true 'any("77" in w["what"] for w in d["warnings"])'
expect 0 dump "$P-a"
out_has "blob"
out_has "41 42 00 01 ff 0a 22 5c"
out_has "|AB"
expect 0 dump "$P-a" blob --json
json_ok
json_true 'd["objects"][0]["hex"].startswith("41420001ff0a225c7e")'
json_true 'd["objects"][0]["text"].startswith(r"AB\x00\x01\xff\x0a\"\\~")'
expect 0 dump "$P-a" big --limit 8 --json
json_ok
json_true 'd["objects"][0]["shown"] == 8 and d["objects"][0]["truncated"]'
expect 0 dump "$P-a" future --json
json_true 'd["objects"][0]["typeName"] == "unknown" and "hex" not in d["objects"][0]'
expect 4 dump "$P-a" nosuchobject
err_has "not found"
expect 4 dump "$P-a" nosuchobject --json
json_ok
expect 2 dump "$P-a" "bad name"
expect 2 dump "$P-a" --limit x
expect 2 dump "$P-a" --limit -1
expect 0 reap "$P-a" --dry-run
out_has "nothing to do"
expect 0 reap "$P-a" --dry-run --json
json_ok
same_sum "$P-a" "$before" "list/info/check/dump/reap --dry-run"

section "missing and damaged segments"
expect 3 info "$P-none"
err_has "not found"
err_one_line
expect 3 check "$P-none" --json
json_ok
json_true 'd["error"] == "NOTFOUND" and d["exitStatus"] == 3'
cp "$SHM/$P-a" "$tmp/good"
# damage NAME: a fresh copy of the good segment as $P-NAME
damage() { cp "$tmp/good" "$SHM/$P-$1"; }
expect_open_fails() {
    for c in info check dump; do
        expect 3 "$c" "$P-$1"
        err_one_line
        [ -n "$2" ] && err_has "$2"
    done
    expect 3 info "$P-$1" --json
    json_ok
}
i=0
while [ $i -lt 6 ]; do
    damage flip
    # Every byte of the fixed header is covered by its checksum.
    off=$(($(od -An -N2 -tu2 /dev/urandom) % 104))
    mask=$(($(od -An -N1 -tu1 /dev/urandom) % 255 + 1))
    "$HELPER" xor "$SHM/$P-flip" "$off" "$mask"
    expect_open_fails flip ""
    i=$((i + 1))
done
damage short
truncate -s 100 "$SHM/$P-short"
expect_open_fails short "too small"
damage half
truncate -s 512K "$SHM/$P-half"
expect_open_fails half "the file has"
damage longer
truncate -s 2M "$SHM/$P-longer"
expect_open_fails longer "the file has"
damage claims
"$HELPER" reheader "$SHM/$P-claims" capacity 4194304
expect_open_fails claims "header says 4194304"
damage version
"$HELPER" reheader "$SHM/$P-version" layoutVersion 2
expect_open_fails version "layout version"
: >"$SHM/$P-empty"
expect_open_fails empty "empty"
head -c 65536 /dev/urandom >"$SHM/$P-foreign"
expect_open_fails foreign "not a dkshm segment"
mkfifo "$SHM/$P-fifo"
expect_open_fails fifo "not a regular file"
expect 0 list --json
json_ok
json_true 'd["skippedCount"] >= 9'
json_true 'len([s for s in d["skipped"] if "'"$P"'-" in s["name"]]) == 9'
json_true 'not [s for s in d["segments"] if "'"$P"'-" in s["name"] and s["name"] != "/'"$P"'-a" and s["name"] != "/'"$P"'-m"]'
expect 0 list
out_has "skipped"
expect_in '0 1' reap --dry-run --json
json_ok
json_true 'len([s for s in d["skipped"] if "'"$P"'-" in s["name"]]) == 9'
expect 3 rm "$P-foreign"
err_has "--force"
[ -f "$SHM/$P-foreign" ] && ok || bad "rm removed a foreign file without --force"
expect 0 rm "$P-foreign" --force
expect 3 rm "$P-none"
rm -f "$SHM/$P-fifo" "$SHM/$P-empty" "$SHM/$P-flip" "$SHM/$P-short" \
    "$SHM/$P-half" "$SHM/$P-longer" "$SHM/$P-claims" "$SHM/$P-version"

section "damaged tables: check finds it, info survives"
# tables NAME OFFSET WIDTH VALUE: a fresh copy of the good segment as
# $P-NAME with VALUE poked at OFFSET
tables() {
    n=$1
    shift
    damage "$n"
    "$HELPER" poke "$SHM/$P-$n" "$@"
}
tables count $objects 4 7
expect 1 check "$P-count"
out_has "object count is 7"
expect 0 info "$P-count"
tables root $((directory + entryRoot)) 8 16
expect 1 check "$P-root" --json
json_ok
json_true 'any("outside the heap" in p["what"] for p in d["problems"])'
expect 0 info "$P-root" --json
json_ok
damage dup
# Entry 1 gets entry 0's name: two objects with one name.
"$HELPER" poke "$SHM/$P-dup" $((directory + entrySize)) 8 \
    $(od -An -N8 -tu8 -j $directory "$SHM/$P-dup")
expect 1 check "$P-dup"
out_has "also bound by entry"
damage noterm
for w in 0 8 16 24 32 40 48 56; do
    "$HELPER" poke "$SHM/$P-noterm" $((directory + w)) 8 0x4141414141414141
done
expect 1 check "$P-noterm"
out_has "not NUL-terminated"
expect 0 info "$P-noterm" --json
json_ok
tables state $((procTable + 3 * slotSize)) 8 $(((7 << 32) | 4242))
expect 1 check "$P-state"
out_has "invalid state"
tables undo $dirUndo 4 3
expect 1 check "$P-undo"
out_has "undo log holds 3"
tables alloc $allocRoot 8 $((heap + 8))
expect 1 check "$P-alloc" --json
json_ok
json_true 'any(p["where"] == "allocator" for p in d["problems"])'
expect 0 info "$P-alloc" --json
json_ok
json_true 'd["allocator"] is None'
expect 0 list --json
json_ok
rm -f "$SHM/$P-count" "$SHM/$P-root" "$SHM/$P-dup" "$SHM/$P-noterm" \
    "$SHM/$P-state" "$SHM/$P-undo" "$SHM/$P-alloc"
# Random damage anywhere in the tables and the allocator's metadata: any
# verdict, but never a crash or a hang.
i=0
while [ $i -lt 25 ]; do
    damage fuzz
    n=0
    while [ $n -lt 3 ]; do
        r=$(od -An -N4 -tu4 /dev/urandom)
        off=$((104 + r % (heap + 131072 - 104)))
        "$HELPER" xor "$SHM/$P-fuzz" "$off" $((r % 255 + 1))
        n=$((n + 1))
    done
    expect_in '0 3' info "$P-fuzz"
    expect_in '0 1 3' check "$P-fuzz"
    expect_in '0 3' dump "$P-fuzz"
    i=$((i + 1))
done
rm -f "$SHM/$P-fuzz"

section "another user's segment"
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 &&
    setpriv --reuid=65534 --regid=65534 --clear-groups true 2>/dev/null; then
    # A copy of the tool that user nobody may run whatever the build
    # directory's permissions.
    pubdir=$(mktemp -d "${TMPDIR:-/tmp}/checkToolBin.XXXXXX")
    chmod 755 "$pubdir"
    cp "$TOOL" "$pubdir/dkshm-tool"
    chmod 755 "$pubdir/dkshm-tool"
    asnobody() {
        timeout 10 setpriv --reuid=65534 --regid=65534 --clear-groups \
            "$pubdir/dkshm-tool" "$@" >"$tmp/out" 2>"$tmp/err"
        st=$?
    }
    expect 0 create "$P-priv" --size 1M
    expect 0 create "$P-pub" --size 1M --mode 644
    for c in info check dump; do
        asnobody "$c" "$P-priv"
        [ "$st" -eq 3 ] && ok || bad "nobody $c of a 0600 segment: exit $st, expected 3"
        err_has "permission denied"
        err_one_line
    done
    asnobody info "$P-priv" --json
    json_ok
    json_true 'd["error"] == "PERM"'
    asnobody list --json
    [ "$st" -eq 0 ] && ok || bad "nobody list: exit $st"
    json_ok
    json_true '[s for s in d["skipped"] if s["name"].endswith("/'"$P"'-priv") and s["error"] == "PERM"]'
    asnobody info "$P-pub"
    [ "$st" -eq 0 ] && ok || bad "nobody info of a 0644 segment: exit $st, expected 0"
    asnobody check "$P-pub"
    [ "$st" -eq 0 ] && ok || bad "nobody check of a 0644 segment: exit $st, expected 0"
    asnobody rm "$P-pub"
    [ "$st" -eq 3 ] && ok || bad "nobody rm of root's segment: exit $st, expected 3"
    err_has "permission denied"
    asnobody create "$P-pub" --size 1M
    [ "$st" -eq 3 ] && ok || bad "nobody create over root's segment: exit $st, expected 3"
    rm -rf "$pubdir"
    expect 0 rm "$P-priv"
    expect 0 rm "$P-pub"
else
    echo "note: not root or no setpriv: permission tests skipped"
fi

section "reaping SIGKILLed processes"
expect 0 create "$P-r" --size 2M
layout "$P-r"
mkfifo "$tmp/fifo"
"$ATTACH" "/$P-r" hold-lock-and-wait "$dirLock" <"$tmp/fifo" >"$tmp/h1" &
h1=$!
bgpids="$bgpids $h1"
exec 9>"$tmp/fifo"
"$HELPER" hold-inflight "/$P-r" >"$tmp/h2" &
h2=$!
bgpids="$bgpids $h2"
wait_for "$tmp/h1" locked && wait_for "$tmp/h2" ready
expect 0 info "$P-r" --json
json_ok
json_true 'd["liveProcesses"] == 2 and d["deadProcesses"] == 0'
json_true '[l for l in d["locks"] if l["name"] == "directory"][0]["held"]'
expect 0 reap "$P-r" --dry-run
out_has "nothing to do"
kill -9 $h1 $h2
wait $h1 $h2 2>/dev/null
exec 9>&-
bgpids=""
before=$(sum "$P-r")
expect 0 info "$P-r" --json
json_ok
json_true 'd["liveProcesses"] == 0 and d["deadProcesses"] == 2'
json_true '[l for l in d["locks"] if l["name"] == "directory"][0]["ownerDead"]'
json_true 'd["deadOwnerLocks"] == 1'
expect 0 info "$P-r"
out_has "HELD BY DEAD pid $h1"
expect 0 check "$P-r" --json
json_ok
json_true 'd["ok"] and any("not reaped" in w["what"] for w in d["warnings"])'
expect 1 reap "$P-r" --dry-run
out_has "would reap pid $h1"
out_has "would reap pid $h2"
expect 1 reap "$P-r" --dry-run --json
json_ok
json_true 'sorted(p["pid"] for p in d["segments"][0]["deadProcesses"]) == sorted(['"$h1, $h2"'])'
expect_in '0 1' reap --dry-run --json
json_ok
json_true 'len([p for s in d["segments"] if s["name"] == "/'"$P"'-r" for p in s["deadProcesses"]]) == 2'
same_sum "$P-r" "$before" "info/check/reap --dry-run after the kill"
expect 0 reap "$P-r"
out_has "reaped pid $h1"
out_has "reaped pid $h2"
expect 0 info "$P-r" --json
json_ok
json_true 'd["deadProcesses"] == 0 and d["processes"] == []'
json_true 'not [l for l in d["locks"] if l["held"]]'
json_true 'd["allocator"]["allocations"] == 0'
expect 0 check "$P-r" --json
json_true 'd["ok"] and d["warnings"] == []'
expect 0 reap "$P-r" --dry-run
expect 0 reap "$P-r" --json
json_ok
json_true 'd["segments"][0]["reaped"] == 0'

section "processes killed inside a directory or allocator change"
# The test build of the library (linked into toolHelper) kills itself at
# the k-th crash point: a put dies with its block in flight, its locks held
# and their undo logs half written. info and check show the segment as its
# recovery will leave it; reap recovers it; nothing leaks.
expect 0 create "$P-k" --size 2M
"$HELPER" put "/$P-k" first 300 4142 >/dev/null
for k in 2 5 8 11 14 17 20 23 26 29 32 35; do
    DKSHM_CRASH_AT=$k "$HELPER" put "/$P-k" "obj$k" 300 41424344 \
        >/dev/null 2>&1
    expect 0 info "$P-k" --json
    json_true '"first" in [o["name"] for o in d["objects"]]'
    expect 0 check "$P-k"
    expect 0 dump "$P-k" first
    expect_in '0 1' reap "$P-k" --dry-run
    expect 0 reap "$P-k"
    expect 0 check "$P-k"
    expect 0 info "$P-k" --json
    json_true 'd["deadProcesses"] == 0 and not [l for l in d["locks"] if l["held"]] and d["allocator"]["allocations"] == len(d["objects"])'
done
expect 0 rm "$P-k"

section "orphans"
expect 0 create "$P-eph" --size 1M --ephemeral
expect 0 create "$P-old" --size 1M
expect 1 reap "$P-eph" --orphans --dry-run
out_has "would unlink"
[ -f "$SHM/$P-eph" ] && ok || bad "reap --dry-run removed a segment"
expect 0 reap "$P-eph" --orphans --json
json_ok
json_true 'd["segments"][0]["unlinked"]'
[ -e "$SHM/$P-eph" ] && bad "ephemeral orphan not removed" || ok
expect 0 reap "$P-old" --orphans
[ -f "$SHM/$P-old" ] && ok || bad "a segment neither ephemeral nor old was removed"
expect 0 reap "$P-old" --orphans --older-than 1d
[ -f "$SHM/$P-old" ] && ok || bad "a young segment was removed by --older-than 1d"
expect 2 reap "$P-old" --older-than 0s
expect 2 reap "$P-old" --orphans --older-than 5x
expect 2 reap "$P-old" --orphans --older-than ""
expect 1 reap "$P-old" --orphans --older-than 0s --dry-run
expect 0 reap "$P-old" --orphans --older-than 0s
[ -e "$SHM/$P-old" ] && bad "old orphan not removed" || ok
expect 0 create "$P-busy" --size 1M --ephemeral
"$HELPER" hold-inflight "/$P-busy" >"$tmp/h3" &
h3=$!
bgpids="$h3"
wait_for "$tmp/h3" ready
expect 0 reap "$P-busy" --orphans
[ -f "$SHM/$P-busy" ] && ok || bad "an ephemeral segment in use was removed"
kill -9 $h3
wait $h3 2>/dev/null
bgpids=""
expect 0 reap "$P-busy" --orphans
[ -e "$SHM/$P-busy" ] && bad "ephemeral segment not removed once unused" || ok
expect 3 reap "$P-none"
expect 2 reap "bad/name"

section "segments that change while the tool reads them"
expect 0 create "$P-c" --size 8M
"$HELPER" churn "/$P-c" 2500 &
h4=$!
bgpids="$h4"
i=0
while [ $i -lt 10 ]; do
    expect 0 info "$P-c"
    expect 0 check "$P-c"
    expect 0 dump "$P-c"
    expect 0 list --json
    json_ok
    i=$((i + 1))
done
wait $h4 || bad "churn helper failed"
bgpids=""
expect 0 check "$P-c"
# Shrunk under the reader: SIGBUS must turn into exit status 3.
cp "$SHM/$P-a" "$tmp/a"
(
    end=$(($(date +%s) + 2))
    while [ "$(date +%s)" -lt $end ]; do
        truncate -s 8192 "$SHM/$P-a"
        cp "$tmp/a" "$SHM/$P-a"
    done
) &
h5=$!
bgpids="$h5"
i=0
while [ $i -lt 20 ]; do
    expect_in '0 3' info "$P-a"
    expect_in '0 1 3' check "$P-a"
    expect_in '0 3' dump "$P-a"
    expect 0 list
    i=$((i + 1))
done
wait $h5
bgpids=""

if "$TOOL" get --help >/dev/null 2>&1; then
    section "multidict: get, set, del, incr"
    expect 0 create "$P-d" --size 4M
    expect 0 set "$P-d" users alice "hello world"
    expect 0 get "$P-d" users alice
    out_has "^hello world$"
    expect 0 set "$P-d" users bin "$(printf 'a\001b\\')"
    expect 0 get "$P-d" users bin
    out_has 'a\\x01b\\\\'
    expect 0 get "$P-d" users bin --raw
    [ "$(od -An -tx1 "$tmp/out" | tr -d ' \n')" = 6101625c ] && ok ||
        bad "get --raw is not the stored bytes"
    expect 0 get "$P-d" users bin --json
    json_ok
    json_true 'd["hex"] == "6101625c" and d["length"] == 4'
    expect 0 incr "$P-d" stats hits
    out_has "^1$"
    expect 0 incr "$P-d" stats hits 41
    out_has "^42$"
    expect 0 incr "$P-d" stats hits -50
    out_has "^-8$"
    expect 0 get "$P-d" stats hits --int
    out_has "^-8$"
    expect 0 get "$P-d" stats hits --json
    json_true 'd["int64"] == -8'
    expect 0 set "$P-d" stats n 7 --int
    expect 0 incr "$P-d" stats n
    out_has "^8$"
    expect 3 incr "$P-d" users alice
    err_has "not an 8-byte integer"
    expect 0 incr "$P-d" stats big 9223372036854775807
    expect 3 incr "$P-d" stats big
    expect 0 incr "$P-d" stats small -9223372036854775808
    expect 3 incr "$P-d" stats small -1
    expect 0 get "$P-d" stats big --int
    out_has "^9223372036854775807$"
    expect 2 get "$P-d" users alice --int
    expect 2 incr "$P-d" stats hits 1x
    expect 2 set "$P-d" stats x y --ttl 0
    expect 2 set "$P-d" stats x y --ttl soon
    expect 2 set "$P-d" stats x notanint --int
    expect 2 set "$P-d" stats "" y
    expect 2 get "$P-d" stats ""
    expect 2 get "$P-d" "bad dict" k
    expect 2 get "$P-d" users
    expect 4 get "$P-d" users bob
    err_has "not found"
    expect 4 get "$P-d" users bob --json
    json_ok
    expect 4 get "$P-d" nodict k
    expect 4 del "$P-d" nodict k
    expect 0 del "$P-d" users alice
    expect 4 del "$P-d" users alice
    expect 4 get "$P-d" users alice
    expect 0 set "$P-d" users short v --ttl 1
    expect 0 get "$P-d" users short
    sleep 1.2
    expect 4 get "$P-d" users short
    "$HELPER" put "/$P-d" plain 300 41 >/dev/null
    expect 4 get "$P-d" plain k
    err_has "not a multidict"
    expect 4 set "$P-d" plain k v
    expect 3 get "$P-none" users k
    expect 3 set "$P-none" users k v
    before=$(sum "$P-d")
    expect 0 get "$P-d" stats hits
    expect 0 info "$P-d" --json
    json_ok
    json_true '[o for o in d["objects"] if o["name"] == "stats"][0]["multidict"]["entries"] == 4'
    expect 0 check "$P-d" --json
    json_true 'd["ok"] and d["unchecked"] == [] and d["checked"]["containers"] == 2'
    expect 0 dump "$P-d" users
    same_sum "$P-d" "$before" "get/info/check/dump of a multidict"
    expect 0 rm "$P-d"
else
    echo "note: no multidict in this build: get/set/del/incr not tested"
fi

section "containers: info, dump, check"
expect 0 create "$P-ct" --size 4M
"$HELPER" populate "/$P-ct" >"$tmp/roots" || bad "helper populate"
before=$(sum "$P-ct")
expect 0 info "$P-ct" --json
json_ok
# obj NAME: the object NAME of the last info --json, in python
obj() { echo '[o for o in d["objects"] if o["name"] == "'"$1"'"][0]'; }
json_true "$(obj dict)['count'] == 3 and $(obj dict)['bytes'] > 0 and $(obj dict)['multidict']['shards'] == 16 and 'maxLoad' in $(obj dict)['multidict']"
json_true "$(obj map)['count'] == 3 and $(obj map)['multimap']['keyMode'] == 'bytes' and $(obj imap)['multimap']['keyMode'] == 'int64'"
json_true "$(obj list)['count'] == 3 and $(obj list)['bytes'] == 17 and $(obj list)['multilist']['popWaiters'] == 0 and 'pushWaiters' in $(obj list)['multilist']"
json_true "$(obj arr)['count'] == 3 and $(obj arr)['multiarray']['elemSize'] == 4"
json_true "$(obj limit)['count'] == 0 and $(obj limit)['OSRegulate']['maxHolders'] == 3"
json_true 'all(o["typeName"] != "user" for o in d["objects"]) and d["deadOwnerLocks"] == 0'
expect 0 info "$P-ct"
out_has "COUNT"
out_has "3 items (17 B)"
out_has "waiters: 0 pop, 0 push"
out_has "16 shards, max load"
expect 0 check "$P-ct" --json
json_ok
json_true 'd["ok"] and d["problems"] == [] and d["checked"]["containers"] == 6 and d["checked"]["ownership"] and d["leakedBlocks"] == 0'
expect 0 check "$P-ct"
out_has "6 containers, ownership"
expect 0 dump "$P-ct"
out_has '"alpha" = "one"'
out_has '"bin\\x01" = "\\x00\\x01\\x02\\xff"'
out_has '(int64 42)'
out_has '^    -5 = "neg"'
out_has '\[2\] "third\\x09"'
out_has '\[2\] "C\\x01\\x02D"'
out_has 'permits: 0 of 3 out'
expect 0 dump "$P-ct" map --json
json_ok
json_true '[(i["key"], i["value"]) for i in d["objects"][0]["items"]] == [("a", "1"), ("b", "2"), ("c", "3\n")]'
expect 0 dump "$P-ct" imap --json
json_true '[i["key"] for i in d["objects"][0]["items"]] == [-5, 7]'
expect 0 dump "$P-ct" list --json
json_true '[i["value"] for i in d["objects"][0]["items"]] == ["first", "second", "third\t"] and not d["objects"][0]["more"]'
expect 0 dump "$P-ct" list --limit 2 --json
json_true 'len(d["objects"][0]["items"]) == 2 and d["objects"][0]["more"] and d["objects"][0]["count"] == 3'
expect 0 dump "$P-ct" list --limit 1
out_has '2 more'
expect 0 dump "$P-ct" arr --json
json_true '[i["value"] for i in d["objects"][0]["items"]] == ["AAAA", "BBBB", "C\x01\x02D"] and d["objects"][0]["elemSize"] == 4'
expect 0 dump "$P-ct" dict --json
json_true 'sorted(i["key"] for i in d["objects"][0]["items"]) == ["alpha", "bin\x01", "n"]'
json_true '[i for i in d["objects"][0]["items"] if i["key"] == "n"][0]["int64"] == 42'
json_true '[i for i in d["objects"][0]["items"] if i["key"] == "bin\x01"][0]["value"] == "\x00\x01\x02\xff"'
expect 0 dump "$P-ct" limit --json
json_true 'd["objects"][0]["state"]["maxHolders"] == 3 and d["objects"][0]["state"]["burst"] == 10'
same_sum "$P-ct" "$before" "info/check/dump of every container"
cp "$SHM/$P-ct" "$tmp/ct"

# A container lock held by a process that died: info names it.
cp "$tmp/ct" "$SHM/$P-ctl"
root=$(sed -n 's/^root.list=//p' "$tmp/roots")
"$ATTACH" "/$P-ctl" hold-lock-and-wait $((root + 64)) <"$tmp/fifo" >"$tmp/h6" &
h6=$!
bgpids="$h6"
exec 9>"$tmp/fifo"
wait_for "$tmp/h6" locked
kill -9 $h6
wait $h6 2>/dev/null
exec 9>&-
bgpids=""
expect 0 info "$P-ctl" --json
json_ok
json_true 'd["deadOwnerLocks"] == 1 and [l for l in d["locks"] if l["name"].startswith("multilist \"list\"") and l["held"] and l["ownerDead"] and l["ownerPid"] == '"$h6"']'
expect 0 info "$P-ctl"
out_has "multilist \"list\" +0x40 *HELD BY DEAD pid $h6"
expect 0 check "$P-ctl"
expect 0 dump "$P-ctl" list
out_has '\[1\] "second"'
expect 1 reap "$P-ctl" --dry-run --json
json_ok
json_true '[p for p in d["segments"][0]["deadProcesses"] if p["heldLocks"] == ["multilist " + chr(34) + "list" + chr(34) + " +0x40"]]'
expect 0 reap "$P-ctl"
out_has "reaped pid $h6 .*recovered its locks: multilist \"list\" +0x40"
expect 0 check "$P-ctl" --json
json_true 'd["ok"] and d["warnings"] == [] and d["checked"]["ownership"]'
rm -f "$SHM/$P-ctl"

# Permits of an OSRegulate held by a process that died: info shows them,
# reap --dry-run says it would release them (and changes nothing), reap
# releases them.
cp "$tmp/ct" "$SHM/$P-cto"
"$HELPER" hold-permits "/$P-cto" limit 2 >"$tmp/h7" &
h7=$!
bgpids="$h7"
wait_for "$tmp/h7" ready
expect 0 reap "$P-cto" --dry-run
out_has "nothing to do"
expect 0 info "$P-cto" --json
json_true "$(obj limit)['count'] == 2 and $(obj limit)['OSRegulate']['deadHeld'] == 0"
kill -9 $h7
wait $h7 2>/dev/null
bgpids=""
expect 0 info "$P-cto" --json
json_ok
json_true "$(obj limit)['count'] == 2 and $(obj limit)['OSRegulate']['deadHeld'] == 2"
expect 0 info "$P-cto"
out_has "2 of 3 permits out (2 held by the dead)"
expect 0 dump "$P-cto" limit
out_has 'permits: 2 of 3 out (2 held by dead processes)'
before=$(sum "$P-cto")
expect 1 reap "$P-cto" --dry-run
out_has "would reap pid $h7"
out_has 'would release 2 permits of OSRegulate "limit" held by dead processes'
expect 1 reap "$P-cto" --dry-run --json
json_ok
json_true 'd["segments"][0]["deadHeldPermits"] == 2 and d["segments"][0]["regulators"] == [{"name": "limit", "deadHeld": 2}]'
same_sum "$P-cto" "$before" "info/dump/reap --dry-run of dead holders' permits"
expect 0 reap "$P-cto"
out_has "reaped pid $h7"
out_has 'released 2 permits of OSRegulate "limit" held by dead processes'
expect 0 info "$P-cto" --json
json_true "$(obj limit)['count'] == 0 and $(obj limit)['OSRegulate']['deadHeld'] == 0 and $(obj limit)['OSRegulate']['reclaimed'] == 2"
expect 0 dump "$P-cto" limit
out_has 'permits: 0 of 3 out'
expect 0 check "$P-cto"
expect 0 reap "$P-cto" --dry-run
out_has "nothing to do"
# The holder's slot already reaped (by another process's attach): its
# permits alone are still something to reap.
"$HELPER" hold-permits "/$P-cto" limit 1 >"$tmp/h8" &
h8=$!
bgpids="$h8"
wait_for "$tmp/h8" ready
kill -9 $h8
wait $h8 2>/dev/null
bgpids=""
expect 0 set "$P-cto" dict k v
expect 0 info "$P-cto" --json
json_true "d['deadProcesses'] == 0 and $(obj limit)['OSRegulate']['deadHeld'] == 1"
expect 1 reap "$P-cto" --dry-run
out_has 'would release 1 permit of OSRegulate "limit"'
expect 0 reap "$P-cto" --json
json_ok
json_true 'd["segments"][0]["permitsReleased"] == 1 and d["segments"][0]["regulators"][0]["released"] == 1 and d["segments"][0]["deadProcesses"] == []'
expect 0 info "$P-cto" --json
json_true "$(obj limit)['count'] == 0 and $(obj limit)['OSRegulate']['reclaimed'] == 3"
expect 0 reap "$P-cto" --dry-run
rm -f "$SHM/$P-cto"

section "check: leaks and damaged containers"
leak=$("$HELPER" leak "/$P-ct" 300 | sed -n 's/^leak=//p')
[ -n "$leak" ] || bad "helper leak"
expect 1 check "$P-ct"
out_has "block $(printf '0x%x' "$leak"):.*leaked"
out_has "live allocation of 320 bytes"
expect 1 check "$P-ct" --json
json_ok
json_true 'd["leakedBlocks"] == 1 and d["leakedBytes"] == 320 and any("leaked" in p["what"] and p["where"] == "block '"$(printf '0x%x' "$leak")"'" for p in d["problems"])'
# An application object makes an unowned block a warning: the tool cannot
# see what such an object points to.
cp "$SHM/$P-ct" "$SHM/$P-ctu"
"$HELPER" put "/$P-ctu" app 300 41 >/dev/null
expect 0 check "$P-ctu" --json
json_true 'd["ok"] and any("leaked" in w["what"] for w in d["warnings"])'
rm -f "$SHM/$P-ctu"
# A node of the list that claims more bytes than it has.
cp "$tmp/ct" "$SHM/$P-ctd"
node=$("$HELPER" blocks "/$P-ctd" list | awk '$3 == 2 { print $1; exit }')
"$HELPER" poke "$SHM/$P-ctd" $((node + 16)) 8 100000
expect 1 check "$P-ctd" --json
json_ok
json_true 'any(p["where"] == "multilist \"list\"" for p in d["problems"])'
expect 0 info "$P-ctd" --json
json_ok
expect_in '0 3' dump "$P-ctd" list
# A damaged root block: the list cannot even be opened.
cp "$tmp/ct" "$SHM/$P-ctd"
root=$(sed -n 's/^root.list=//p' "$tmp/roots")
"$HELPER" xor "$SHM/$P-ctd" "$root" 255
expect 1 check "$P-ctd"
out_has 'multilist "list":.*cannot be opened'
expect 0 info "$P-ctd"
out_has "unreadable"
expect 0 dump "$P-ctd"
out_has "unreadable"
rm -f "$SHM/$P-ctd"
# A multidict table slot naming an entry outside the segment: dump says
# the dict is damaged, at once (it retried the torn read for seconds, past
# the alarm under ASan), and exits 0 as for other unreadable containers;
# check exits 1.
cp "$tmp/ct" "$SHM/$P-ctd"
table=$("$HELPER" blocks "/$P-ctd" dict | awk '$3 == 2 { print $1; exit }')
[ -n "$table" ] || bad "helper blocks dict: no table"
"$HELPER" poke "$SHM/$P-ctd" "$table" 8 0x3ffffffffff
expect 1 check "$P-ctd"
out_has 'multidict "dict":.*bad offset'
ms0=$(date +%s%N)
expect 0 dump "$P-ctd"
ms=$((($(date +%s%N) - ms0) / 1000000))
[ "$ms" -lt 1500 ] && ok || bad "dump of a damaged multidict took $ms ms"
out_has "unreadable: segment damaged"
expect 0 dump "$P-ctd" dict --json
json_ok
json_true 'd["objects"][0]["error"] == "CORRUPT"'
rm -f "$SHM/$P-ctd"

section "top"
cp "$tmp/ct" "$SHM/$P-ct"
expect 2 top "$P-ct" --interval 0
expect 2 top "$P-ct" --interval x
expect 2 top "$P-ct" --interval -1
expect 2 top "$P-ct" --iterations 0
expect 3 top "$P-none" --iterations 1
expect 3 top "$P-none" --iterations 1 --json
json_ok
"$HELPER" work "/$P-ct" 2500 >"$tmp/w1" &
w1=$!
"$HELPER" work "/$P-ct" 2500 >"$tmp/w2" &
w2=$!
bgpids="$w1 $w2"
wait_for "$tmp/w1" ready && wait_for "$tmp/w2" ready
expect 0 top "$P-ct" --iterations 2 --interval 0.2
out_has "READS/s"
out_has "^capacity 4.0 MiB, used"
out_has "2 processes (2 live, 0 dead)"
if grep -q "$(printf '\033')" "$tmp/out"; then
    bad "top wrote escape codes to a file"
else ok; fi
[ "$(grep -c '^SLOT' "$tmp/out")" -eq 2 ] && ok || bad "top --iterations 2: not 2 refreshes"
expect 0 top "$P-ct" --iterations 2 --interval 0.2 --json
[ "$(wc -l <"$tmp/out")" -eq 2 ] && ok || bad "top --json: not one line per refresh"
if [ $have_py = 1 ]; then
    if "$PY" -c '
import json, sys
docs = [json.loads(l) for l in sys.stdin]
assert [d["iteration"] for d in docs] == [1, 2], "iterations"
for d in docs:
    assert d["liveProcesses"] == 2 and d["capacity"] == 4194304
    assert d["intervalSeconds"] > 0.1
    ws = [p for p in d["processes"] if p["pid"] in ('"$w1, $w2"')]
    assert len(ws) == 2, "workers"
    for p in ws:
        assert p["alive"] and p["readsPerSec"] > 0 and p["writesPerSec"] > 0
        assert p["allocsPerSec"] > 0 and p["counters"]["allocs"] > 0
' <"$tmp/out" 2>"$tmp/pyerr"; then ok; else
        bad "top --json: $(tail -1 "$tmp/pyerr")"
        cut -c1-300 "$tmp/out"
    fi
fi
# Checked while the workers run: no false leak, at worst inconclusive.
expect 0 check "$P-ct"
kill -9 $w1
wait $w1 2>/dev/null
expect 0 top "$P-ct" --iterations 1 --interval 0.1 --json
json_true 'd["deadProcesses"] == 1 and [p for p in d["processes"] if p["pid"] == '"$w1"' and not p["alive"] and p["readsPerSec"] == 0]'
wait $w2 || bad "work helper failed"
bgpids=""
expect 0 reap "$P-ct"
expect 0 rm "$P-ct"

section "rm"
expect 0 rm "$P-a"
[ -e "$SHM/$P-a" ] && bad "rm left the file" || ok
expect 3 rm "$P-a"
err_has "not found"
expect 0 rm "$P-m"
expect 0 rm "/$P-c"
expect 0 rm "$P-r"

finish
