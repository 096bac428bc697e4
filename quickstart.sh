#!/bin/sh
# quickstart.sh — set up, build and run dkshm in one command.
#
#   ./quickstart.sh demo    install missing build dependencies, build, run
#                           the demo and the worker-pool example (forked
#                           workers sharing a segment)
#   ./quickstart.sh check   the same set-up, then the whole test suite
#
# Dependencies come from Debian/Ubuntu packages (apt-get, as root or through
# sudo). The build goes to ./build (an out-of-tree autotools build).
set -eu
cd "$(dirname "$0")"
what=${1:-demo}
case "$what" in
    demo|check) ;;
    *) echo "usage: $0 demo|check" >&2; exit 2 ;;
esac

need=""
command -v autoreconf >/dev/null 2>&1 || need="$need autoconf"
command -v aclocal >/dev/null 2>&1 || need="$need automake"
command -v libtoolize >/dev/null 2>&1 || need="$need libtool"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
command -v cc >/dev/null 2>&1 || need="$need gcc"
command -v make >/dev/null 2>&1 || need="$need make"
pkg-config --exists check 2>/dev/null || need="$need check"
pkg-config --exists libxxhash 2>/dev/null || need="$need libxxhash-dev"
if [ -n "$need" ]; then
    echo "quickstart: installing$need" >&2
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $need
fi

[ -x configure ] || ./autogen.sh
mkdir -p build
cd build
[ -f Makefile ] || ../configure
jobs=$(nproc 2>/dev/null || echo 2)
make -j"$jobs"
if [ "$what" = demo ]; then
    ./examples/demo --kill
    echo
    ./examples/worker-pool
else
    make -j"$jobs" check
fi
