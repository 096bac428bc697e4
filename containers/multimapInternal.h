/* multimapInternal.h — what the rest of dkshm (the tool's ownership check,
 * the tests) needs from multimap beyond its public API. Private: not
 * installed.
 */
#ifndef DKSHM_MULTIMAP_INTERNAL_H
#define DKSHM_MULTIMAP_INTERNAL_H

#include "multimap.h"

/* What a block of a multimap is. */
enum {
    MULTIMAP_BLOCK_HEADER = 1, /* the map's root block (header + undo log) */
    MULTIMAP_BLOCK_NODE,       /* a 4 KiB B+tree node */
    MULTIMAP_BLOCK_ENTRY,      /* a leaf entry: key and value */
    MULTIMAP_BLOCK_KEY,        /* a separator key too long for its node */
};

/* Called for each block the multimap owns, with the bytes it needs (the
 * allocation may be larger). A non-zero return stops the walk and is
 * returned. */
typedef int (*multimapBlockFn)(void *ctx, dkoff off, uint64_t bytes, int kind);

/* Visit every block reachable from M's header: the header, every node,
 * entry and separator block, and those of a copy that multimapDuplicate
 * was making when its process died. Takes the lock on a read-write handle
 * (which first recovers a dead writer and frees such a copy); best effort
 * on a read-only one. FN must not call multimap functions on M. Returns
 * OK, FN's non-zero value, INVALID, CORRUPT, or an error of the lock. */
int multimapForEachBlock(multimap *m, multimapBlockFn fn, void *ctx);

/* The offset of M's header block. */
dkoff multimapRootOff(const multimap *m);

#endif
