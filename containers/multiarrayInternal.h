/* multiarrayInternal.h — what the rest of dkshm (the tool's ownership
 * check, the tests) needs from multiarray beyond its public API. Private:
 * not installed.
 */
#ifndef DKSHM_MULTIARRAY_INTERNAL_H
#define DKSHM_MULTIARRAY_INTERNAL_H

#include "multiarray.h"

/* What a block of a multiarray is. */
enum { MULTIARRAY_BLOCK_ROOT = 1, MULTIARRAY_BLOCK_DATA };

/* Called for each block the array owns, with the bytes it needs (the
 * allocation may be larger). A non-zero return stops the walk and is
 * returned. */
typedef int (*multiarrayBlockFn)(void *ctx, dkoff off, uint64_t bytes,
                                 int kind);

/* Visit the root and the element block. Takes the lock on a read-write
 * handle (recovering a dead writer first); best effort on a read-only one.
 * FN must not call multiarray functions on A. Returns OK, FN's non-zero
 * value, INVALID, or an error of the lock. */
int multiarrayForEachBlock(multiarray *a, multiarrayBlockFn fn, void *ctx);

/* The offset of A's root block. */
dkoff multiarrayRootOff(const multiarray *a);

#endif
