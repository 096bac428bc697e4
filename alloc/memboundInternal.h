/* memboundInternal.h — the allocator's private API for the other layers of
 * the library (containers, the tool). Private: not installed.
 *
 * Ownership (RECOVERY.md §1): every block is owned by the allocator, by a
 * container, or by one process's in-flight list. The calls below are the
 * allocator's two transfers, each one critical section under the allocator
 * lock, logged in its undo log:
 *
 *   memboundAllocInflight  allocator -> caller's in-flight list
 *   memboundFreeInflight   caller's in-flight list -> allocator
 *
 * A container links an in-flight block (dkInflightRemove under the
 * container's own lock) or unlinks one into the in-flight list
 * (dkInflightAdd under that lock); if the process dies in between, reaping
 * it (dkshmReap -> the reclaim hook) frees what its list still holds.
 *
 * THREAD SAFETY: as membound.h. None of these may be called while holding
 * the allocator lock; they may be called while holding a container lock
 * (the allocator never takes another lock, so there is no cycle).
 */
#ifndef DKSHM_MEMBOUND_INTERNAL_H
#define DKSHM_MEMBOUND_INTERNAL_H

#include "fastmutex.h"
#include "membound.h"

/* Allocate SIZE bytes and record the block in this process's in-flight list,
 * in one critical section. OK with *OUT, or INVALID (zero or absurd size),
 * TOOBIG (can never fit), FULL (no room, or the in-flight list is full:
 * DK_INFLIGHT_MAX entries), READONLY, CORRUPT. Nothing is changed on error.
 */
int memboundAllocInflight(membound *m, size_t size, dkoff *out);

/* Remove OFF from this process's in-flight list and free it, in one
 * critical section. OK, NOTFOUND (OFF is not in the list), INVALID (in the
 * list but not a live allocation: nothing changed, counted as a bad free),
 * READONLY, CORRUPT. */
int memboundFreeInflight(membound *m, dkoff off);

/* The allocator lock's state, for `dkshm-tool info`. Writes nothing. */
int memboundLockState(membound *m, fastMutexState *out);

/* How much freed memory this process's frees keep committed for reuse
 * before punching it out (default: an eighth of the heap, 1 to 64 MiB;
 * 0: punch at once, as tests of merging want). Per handle. */
void memboundSetRetainBytes(membound *m, uint64_t bytes);

/* For damage tests: the head word of the free list of blocks of 2^ORDER
 * pages (a page index, UINT32_MAX for none); NULL past the last order. */
uint32_t *memboundFreeHead(membound *m, unsigned order);

/* Call FN(CTX, offset, usable size) for every live allocation, in address
 * order, under the allocator lock (no lock on a read-only handle: then the
 * walk is best effort). FN must not call the allocator. A non-zero return
 * from FN stops the walk and is returned. For the ownership check: every
 * allocation must be reachable from one container or one in-flight slot. */
typedef int (*memboundVisitFn)(void *ctx, dkoff off, uint64_t size);
int memboundForEachAllocation(membound *m, memboundVisitFn fn, void *ctx);

#endif
