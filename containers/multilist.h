/* multilist.h — a queue and deque of byte items in a dkshm segment, shared
 * by every process that attaches to it.
 *
 * Items are byte strings of 0 bytes up to what the segment holds (or the
 * maxItemBytes chosen at creation), copied in by a push and copied out by a
 * pop. Push and pop work at both ends; a list may be bounded (maxItems);
 * pops and pushes may block with a timeout until an item or room arrives;
 * a shutdown wakes every waiter. It is the producer-consumer queue of
 * THREAD_SAFETY.md across processes: a parent feeds jobs, forked or
 * unrelated workers open the list by name and drain it.
 *
 * DELIVERY. An item is never lost and never delivered twice when a producer
 * or consumer is killed in the middle of a call: a push that was killed
 * either happened entirely or not at all, and the same holds for a pop. A
 * pop happens at the instant it commits, before the call returns; a
 * consumer killed after that instant but before the call returned (or
 * before it used the item) has consumed the item, exactly as if it had died
 * just after a successful return: delivery to a consumer that dies is
 * AT MOST ONCE. The item's memory is reclaimed when the dead process is
 * reaped (dkshmReap; attaching processes and the tool reap too). A producer
 * killed before its push committed pushed nothing.
 *
 * SHUTDOWN. multilistShutdown is permanent: it wakes every blocked pusher
 * and popper. Afterwards every push returns DKSHM_SHUTDOWN, while pops
 * still DRAIN the items left in the list and return DKSHM_SHUTDOWN only
 * once it is empty (blocking pops then return at once).
 *
 * THREAD SAFETY: a multilist handle may be shared by the threads of a
 * process, and every call is thread- and process-safe. Every change takes
 * the list's robust lock (one per list), so pushes and pops at either end
 * are serialised; a process killed while holding it is rolled back by the
 * next locker. A waiter keeps no state in the segment, so one killed while
 * blocked leaves nothing behind. multilistCount and multilistGetStats read
 * without a lock. A read-only attachment (DKSHM_RDONLY) may count, stat
 * and check; everything else returns DKSHM_READONLY. multilistClose must
 * not race other calls on the same handle.
 */
#ifndef DKSHM_MULTILIST_H
#define DKSHM_MULTILIST_H

#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct multilist multilist; /* per process */

/* The directory type of a multilist. */
#define MULTILIST_TYPE 3u

/* multilistOpen flags. */
#define MULTILIST_CREATE 0x1u /* create NAME when it does not exist */
#define MULTILIST_EXCL 0x2u   /* with CREATE: EXISTS if NAME exists */

/* Ends, for multilistPush, multilistPop and multilistPeek. */
#define MULTILIST_HEAD 0u
#define MULTILIST_TAIL 1u

/* Timeouts of multilistPush and multilistPop, in milliseconds. */
#define MULTILIST_NOWAIT 0ull
#define MULTILIST_FOREVER UINT64_MAX

/* Largest item the list format can describe (the segment usually sets a
 * lower bound: a push of an item that can never fit returns TOOBIG). */
#define MULTILIST_ITEM_MAX (1ull << 40)

typedef struct multilistOptions { /* per process, caller-owned */
    uint64_t maxItems;            /* capacity in items; 0: unbounded */
    uint64_t maxItemBytes;        /* longest item; 0: MULTILIST_ITEM_MAX */
    uint32_t flags;               /* reserved: 0 */
    uint32_t pad;                 /* reserved: 0 */
} multilistOptions;

/* Open the multilist NAME of segment S, creating it with OPT (NULL: the
 * defaults) when FLAGS has MULTILIST_CREATE and it does not exist (OPT is
 * ignored when it exists). Several processes may race to create the same
 * name: one creates, the others open it.
 * Returns OK with *OUT; NOTFOUND (absent, no CREATE); EXISTS (CREATE|EXCL
 * and present); TYPE (NAME holds another kind of object); INVALID (null
 * argument, bad name, flags or options); READONLY (creating on a read-only
 * attachment); FULL (no room in the segment or the directory); CORRUPT
 * (the object under NAME is damaged); VERSION. May block briefly on the
 * directory and allocator locks. */
DKSHM_API int multilistOpen(dkshm *s, const char *name,
                            const multilistOptions *opt, uint32_t flags,
                            multilist **out);

/* Free the handle (the list stays in the segment). NULL is accepted.
 * Returns OK. */
DKSHM_API int multilistClose(multilist *l);

/* Copy ITEM (LEN bytes; ITEM may be NULL when LEN is 0) in at END
 * (MULTILIST_HEAD or MULTILIST_TAIL). If the list holds maxItems items,
 * wait up to TIMEOUTMS milliseconds for room (MULTILIST_NOWAIT: not at
 * all; MULTILIST_FOREVER: no limit).
 * Returns OK; FULL (the list is at its capacity and TIMEOUTMS is 0, or
 * the segment has no room for the item: nothing changed either way);
 * TIMEDOUT (no room came in time); SHUTDOWN (the list was shut down, before
 * or while waiting); TOOBIG (LEN above maxItemBytes or more than the segment
 * can ever hold); INVALID; READONLY; CORRUPT. Blocks on the list lock, and
 * up to TIMEOUTMS for room. */
DKSHM_API int multilistPush(multilist *l, uint32_t end, const void *item,
                            size_t len, uint64_t timeoutMs);

/* Take the item at END, copying it into BUF (BUFLEN bytes) and its length
 * into *LEN. If the list is empty, wait up to TIMEOUTMS milliseconds for
 * one (MULTILIST_NOWAIT, MULTILIST_FOREVER as for push).
 * Returns OK; NOTFOUND (empty, TIMEOUTMS 0); TIMEDOUT (nothing came in
 * time); SHUTDOWN (shut down and empty); TOOBIG (BUFLEN is smaller than
 * the item: *LEN gets its length and nothing is popped); INVALID (null L
 * or LEN, BUF NULL with BUFLEN > 0, bad END); READONLY; CORRUPT; FULL
 * (an item of more than 224 bytes while this process's in-flight list is
 * full, i.e. 16 of its threads are mid-call: nothing popped). See
 * DELIVERY above for what a consumer killed during the call means. */
DKSHM_API int multilistPop(multilist *l, uint32_t end, void *buf, size_t bufLen,
                           size_t *len, uint64_t timeoutMs);

/* Non-blocking shorthands: multilistPush/Pop with MULTILIST_NOWAIT. */
DKSHM_API int multilistPushHead(multilist *l, const void *item, size_t len);
DKSHM_API int multilistPushTail(multilist *l, const void *item, size_t len);
DKSHM_API int multilistPopHead(multilist *l, void *buf, size_t bufLen,
                               size_t *len);
DKSHM_API int multilistPopTail(multilist *l, void *buf, size_t bufLen,
                               size_t *len);

/* Batches: many items per lock hold, for throughput between processes
 * (each lock handoff moves a few cache lines between CPUs, which costs
 * more than the push or pop itself). Every item is still pushed or popped
 * atomically on its own: a caller killed in the middle leaves a prefix of
 * the batch done.
 *
 * multilistPushMany: push ITEMS[0..COUNT) (LENS[i] bytes each; ITEMS[i]
 * may be NULL when LENS[i] is 0) at END, in order (at the head each goes
 * in front of the previous one). Waits for room like multilistPush, up to
 * TIMEOUTMS in all. *PUSHED gets how many went in, also on error. Returns
 * what multilistPush returns (checked for every item before any is
 * pushed: INVALID, TOOBIG). */
DKSHM_API int multilistPushMany(multilist *l, uint32_t end,
                                const void *const *items, const size_t *lens,
                                size_t count, size_t *pushed,
                                uint64_t timeoutMs);

/* multilistPopMany: pop up to MAXITEMS items from END into BUF, back to
 * back, as long as they fit in BUFLEN bytes; LENS[i] gets the length of
 * item i, *POPPED how many. Waits like multilistPop (TIMEOUTMS) only until
 * the list holds at least one item. Returns OK (with *POPPED >= 1), and
 * otherwise what multilistPop returns: NOTFOUND, TIMEDOUT, SHUTDOWN; TOOBIG
 * when not even the first item fits (LENS[0] gets its length); INVALID
 * (also for MAXITEMS 0 or null LENS or POPPED); READONLY; CORRUPT; FULL. */
DKSHM_API int multilistPopMany(multilist *l, uint32_t end, void *buf,
                               size_t bufLen, size_t *lens, size_t maxItems,
                               size_t *popped, uint64_t timeoutMs);

/* Copy the item at END without removing it. Returns OK, NOTFOUND (empty),
 * TOOBIG (*LEN gets the length needed), INVALID, READONLY (takes the lock),
 * CORRUPT. Never blocks except on the lock. */
DKSHM_API int multilistPeek(multilist *l, uint32_t end, void *buf,
                            size_t bufLen, size_t *len);

/* Items in the list, read without a lock. OK or INVALID. */
DKSHM_API int multilistCount(multilist *l, uint64_t *count);

/* Shut the list down (see SHUTDOWN above): wake every waiter; later pushes
 * return SHUTDOWN, pops drain what is left. Idempotent. OK, INVALID,
 * READONLY, CORRUPT. */
DKSHM_API int multilistShutdown(multilist *l);

/* Give the list's cache of free nodes back to the allocator (pops keep up
 * to 1024 small nodes per size class for the next pushes; a push that finds
 * the segment full does this by itself). OK, INVALID, READONLY, CORRUPT. */
DKSHM_API int multilistTrim(multilist *l);

typedef struct multilistStats { /* per process */
    uint64_t count;             /* items in the list */
    uint64_t bytes;             /* sum of their lengths */
    uint64_t maxItems;          /* capacity; 0: unbounded */
    uint64_t maxItemBytes;      /* longest item accepted */
    uint64_t pushes;            /* successful pushes since creation */
    uint64_t pops;              /* successful pops since creation */
    uint64_t cachedNodes;       /* free nodes kept for reuse */
    uint64_t cachedBytes;       /* their allocation sizes */
    uint32_t popWaiters;        /* processes/threads blocked in a pop, about */
    uint32_t pushWaiters;       /* ... in a push (a killed waiter may linger) */
    uint32_t recoveries;        /* times the lock was taken from a dead owner */
    bool shutdown;
} multilistStats;

/* Statistics, read without a lock (each word atomically; exact when no
 * call runs). OK or INVALID. */
DKSHM_API int multilistGetStats(multilist *l, multilistStats *out);

/* Verify every invariant: the root, the lock's undo log, the links in both
 * directions (bounded walks: no cycles), every node's bounds and lengths,
 * the count, the byte total, the capacity, the node cache, and that no node
 * is reachable twice. Takes the lock on a read-write handle (recovering a
 * dead owner first); a read-only handle checks without it and returns BUSY
 * if the list kept changing. Returns OK, CORRUPT with a one-line reason in
 * WHY (WHYLEN bytes; may be NULL), BUSY, INVALID, FULL (out of process
 * memory). */
DKSHM_API int multilistCheck(multilist *l, char *why, size_t whyLen);

#ifdef __cplusplus
}
#endif
#endif
