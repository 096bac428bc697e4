/* multilistInternal.h — what the rest of dkshm (the tool's ownership check
 * and dump, the tests) needs from multilist beyond its public API. Private:
 * not installed, not exported from libdkshm.so.
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

/* Called for each item by multilistForEachItem: INDEX counts from the
 * head (0), ITEM points at the item's LEN bytes in the segment. Return 0
 * to go on; anything else stops the walk. */
typedef int (*multilistItemFn)(void *ctx, uint64_t index, const void *item,
                               size_t len);

/* Visit the first LIMIT items of L, head to tail (LIMIT 0: none, only the
 * header is looked at; UINT64_MAX: all). Takes no lock and writes nothing,
 * so it works on a read-only handle (dkshm-tool dump), and a reader killed
 * in it leaves nothing behind. Every offset it follows is bounds-checked
 * and the walk is bounded (a cycle is damage), so a damaged or changing
 * list costs an error, never a fault or a hang.
 *
 * The view is believed only if the list did not change while it was
 * walked: no push, pop or recovery of a dead owner came in, and no change
 * was uncommitted (a dead owner's half-done change is waited out a moment,
 * then reported as BUSY: only a read-write locker can roll it back). ITEM
 * points into the live segment: it is valid only during the call and may
 * change under FN; if the walk returns BUSY, discard what FN was given and
 * call again.
 * Returns OK; FN's non-zero value (the view up to there was stable);
 * BUSY (the list changed during the walk, or a change stayed uncommitted);
 * CORRUPT (a damaged header, node, link or length, or a cycle, in a
 * stable view); INVALID (null L or FN). Never blocks beyond short sleeps
 * while a change is uncommitted. */
int multilistForEachItem(multilist *l, multilistItemFn fn, void *ctx,
                         uint64_t limit);

/* The offset of L's root block. */
dkoff multilistRootOff(const multilist *l);

#endif
