#!/bin/sh
# checkFuzz.sh — the short run of tests/fuzzSegment for `make check`:
# FUZZ_CHECK_SECONDS (default 10) of damaged segments over every target,
# with dkshm-tool. The seed is printed; a failure prints how to replay it.
# `make fuzz` is the long run.
#
# Targets that find a library bug not fixed yet are skipped here, each
# with a SKIP line naming the bug (FUZZ_SKIP adds more, space separated).
set -u

top_builddir=${top_builddir:-.}
FUZZ=$top_builddir/tests/fuzzSegment
TOOL=${DKSHM_TOOL:-$top_builddir/tools/dkshm-tool}
if [ ! -x "$FUZZ" ]; then
    echo "SKIP: $FUZZ not built"
    exit 77
fi
if [ ! -d /dev/shm ]; then
    echo "SKIP: no /dev/shm"
    exit 77
fi

skips=""
# skip TARGET WHY: leave TARGET out of the short run.
skip() {
    echo "SKIP: fuzz target $1: $2"
    skips="$skips --skip $1"
}
for t in ${FUZZ_SKIP:-}; do
    skip "$t" "FUZZ_SKIP"
done

# A fixed seed by default, so that `make check` does the same damage on
# every run (a slower build does a prefix of it); FUZZ_SEED=random draws
# one, as `make fuzz` does.
seed=${FUZZ_SEED:-0x5eed}
seedopt="--seed $seed"
[ "$seed" = random ] && seedopt=""
seconds=${FUZZ_CHECK_SECONDS:-10}
# shellcheck disable=SC2086
DKSHM_TOOL=$TOOL "$FUZZ" --seconds "$seconds" $seedopt $skips
