/* multidictInternal.h — what the rest of dkshm (the tool's ownership check,
 * the tests) needs from multidict beyond its public API. Private: not
 * installed.
 */
#ifndef DKSHM_MULTIDICT_INTERNAL_H
#define DKSHM_MULTIDICT_INTERNAL_H

#include "multidict.h"

/* What a block of a multidict is. */
enum { MULTIDICT_BLOCK_ROOT = 1, MULTIDICT_BLOCK_TABLE, MULTIDICT_BLOCK_ENTRY };

/* Called for each block the multidict owns, with the bytes it needs (the
 * allocation may be larger). A non-zero return stops the walk and is
 * returned. */
typedef int (*multidictBlockFn)(void *ctx, dkoff off, uint64_t bytes, int kind);

/* Visit every block reachable from D's root: the root, each shard's table,
 * each entry. Takes each shard's lock in turn on a read-write handle (so
 * dead writers are recovered first); best effort on a read-only one. FN
 * must not call multidict functions on D. Returns OK, FN's non-zero value,
 * INVALID, or an error of the shard lock. */
int multidictForEachBlock(multidict *d, multidictBlockFn fn, void *ctx);

/* The offset of D's root block. */
dkoff multidictRootOff(const multidict *d);

#endif
