#!/bin/sh
# The shared library exports the public API and nothing else: every defined
# dynamic symbol starts with a module's prefix (dkshm, membound, fast, the
# containers'), and every DKSHM_API function in the public headers is
# exported.
set -eu
lib="${top_builddir:-.}/.libs/libdkshm.so"
srcdir="${srcdir:-.}"
if [ ! -f "$lib" ]; then
    echo "SKIP: $lib not built (static-only build?)"
    exit 77
fi
syms=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ { print $3 }' | sort)
bad=$(printf '%s\n' "$syms" | grep -Ev '^(dkshm|membound|fast|multi(dict|map|list|array)|databox|OSRegulate)[A-Z]' || true)
if [ -n "$bad" ]; then
    echo "FAIL: private symbols exported:"
    printf '  %s\n' $bad
    exit 1
fi
api=$(sed -n 's/^DKSHM_API [^(]*[ *]\([A-Za-z0-9_]*\)(.*/\1/p' \
    "$srcdir"/shm/*.h "$srcdir"/alloc/*.h "$srcdir"/containers/*.h | sort -u)
missing=""
for f in $api; do
    printf '%s\n' "$syms" | grep -qx "$f" || missing="$missing $f"
done
if [ -n "$missing" ]; then
    echo "FAIL: public functions not exported:$missing"
    exit 1
fi
n=$(printf '%s\n' "$api" | wc -l)
echo "exports: $n public functions exported, no private symbol"
