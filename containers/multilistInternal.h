/* multilistInternal.h — what the rest of dkshm (the tool's ownership check,
 * the tests) needs from multilist beyond its public API. Private: not
 * installed.
 */
#ifndef DKSHM_MULTILIST_INTERNAL_H
#define DKSHM_MULTILIST_INTERNAL_H

#include "multilist.h"

/* What a block of a multilist is. */
enum { MULTILIST_BLOCK_ROOT = 1, MULTILIST_BLOCK_NODE, MULTILIST_BLOCK_FREE };

/* Called for each block the list owns, with the bytes it needs (the
 * allocation may be larger). A non-zero return stops the walk and is
 * returned. */
typedef int (*multilistBlockFn)(void *ctx, dkoff off, uint64_t bytes, int kind);

/* Visit every block reachable from L's root: the root, each node of the
 * list, each node of its free-node cache. Takes the lock on a read-write
 * handle (recovering a dead owner first); best effort on a read-only one.
 * FN must not call multilist functions on L. Returns OK, FN's non-zero
 * value, INVALID, CORRUPT (a link out of bounds: the walk stops), or an
 * error of the lock. */
int multilistForEachBlock(multilist *l, multilistBlockFn fn, void *ctx);

/* The offset of L's root block. */
dkoff multilistRootOff(const multilist *l);

#endif
