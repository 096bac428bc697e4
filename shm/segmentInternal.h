/* segmentInternal.h — the segment's layout and the helpers the rest of the
 * library builds on. Private: not installed.
 *
 * Layout of a segment (all offsets from its base, page aligned):
 *
 *   0            dkHeader: fixed, checksummed fields; then the mutable part
 *                (init state, directory lock and its undo log, allocator root)
 *   procTable    maxProcs x dkProcSlot (one slot per attached process)
 *   directory    maxObjects x dkDirEntry
 *   heap         handed to the allocator (alloc/membound) at creation
 */
#ifndef DKSHM_SEGMENT_INTERNAL_H
#define DKSHM_SEGMENT_INTERNAL_H

#include "fastmutex.h"
#include "segment.h"
#include "undo.h"

#include <sys/types.h>

/* Bump when anything stored in the segment changes meaning or place. */
#define DK_LAYOUT_VERSION 1u
#define DK_MAGIC 0x47455348534b4400ull /* "\0DKSHSEG" little-endian */

/* The format word: what must agree between the processes that share a
 * segment besides the layout version. */
#define DK_LOCK_KIND_FUTEX1 1u
#define DK_FORMAT                                                              \
    ((uint32_t)(((__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) ? 1u : 2u) |     \
                ((uint32_t)sizeof(void *) << 8) |                              \
                (DK_LOCK_KIND_FUTEX1 << 16) |                                  \
                ((uint32_t)sizeof(fastMutex) << 24)))

enum { DK_INIT_BUSY = 0, DK_INIT_READY = 0x52454459 /* "READY" */ };

#define DK_DIR_UNDO_RECS 48
#define DK_INFLIGHT_MAX 16
/* An in-flight entry claimed by a thread that is about to fill it, and one
 * emptied under a log that has not committed yet (dkInflightRemove):
 * never the offset of a block (blocks are aligned). */
#define DK_INFLIGHT_CLAIMED 1u
#define DK_INFLIGHT_HELD 2u
static inline bool dkInflightIsBlock(uint64_t e) {
    return e > DK_INFLIGHT_HELD;
}
/* Locks with an undo log one process may hold at once, over its threads. */
#define DK_HELD_MAX 32
#define DK_CONDWAIT_MAX 4

typedef struct dkHeader { /* in the segment, page 0 */
    /* Fixed at creation and covered by `checksum`. */
    uint64_t magic;
    uint32_t layoutVersion;
    uint32_t format;
    uint64_t capacity;
    uint32_t creatorUid;
    uint32_t creatorPid;
    uint64_t creatorStart;
    uint64_t createTimeNs;
    uint32_t flags;
    uint32_t maxProcs;
    uint32_t maxObjects;
    uint32_t pageSize;
    dkoff procTable;
    dkoff directory;
    dkoff heap;
    uint64_t heapSize;
    uint64_t checksum; /* XXH3-64 of every field above */
    uint8_t pad0[128 - 14 * 8];

    /* Mutable. */
    uint32_t initState; /* DK_INIT_... (atomic) */
    uint32_t initPid;   /* who is initialising */
    uint32_t objects;   /* directory entries in use */
    uint32_t dirSeq;    /* odd while the directory changes (seqlock) */
    fastMutex dirLock;  /* guards the directory; its undo log is dirUndo */
    dkoff allocRoot;    /* the allocator's control block, 0 until set up */
    fastMutex initLock; /* serialises the allocator's one-time set-up */
    uint8_t pad2[64 - 7 * 8];
    uint8_t dirUndo[DK_UNDO_BYTES(DK_DIR_UNDO_RECS)]; /* a dkUndo */
} dkHeader;

/* One attached process. The identity line is written only by the process
 * itself (at attach) or by a reaper that proved it dead. */
typedef struct dkProcSlot { /* in the segment, 8 cache lines */
    uint64_t word;        /* (state << 32) | pid (atomic) */
    uint32_t gen;         /* bumped each time the slot goes LIVE (atomic) */
    uint32_t uid;
    uint64_t startTime;   /* /proc/PID/stat start time: pid reuse guard */
    uint64_t attachTimeNs;
    /* fastConds this process's threads sleep on (offset; atomic, 0 =
     * none), so that a reaper can take a killed waiter out of the count
     * signalers look at. Set after the count went up and cleared before it
     * goes down: a death in between leaves the count high (a wasted wake
     * call per signal), never low (a lost wakeup). */
    uint64_t condWait[DK_CONDWAIT_MAX];
    dkoff inflight[DK_INFLIGHT_MAX]; /* blocks between owners (atomic) */
    /* fastRWLocks this process holds for reading: (offset / 8) << 20 |
     * hold count, one atomic word each so that threads of the process can
     * update it without a lock. The offset stays when the count drops to
     * 0; the entry is reused by the next lock that needs one. */
    uint64_t rdHold[DKSHM_READ_SLOTS];
    /* Offsets of the fastMutexes with an undo log that this process holds
     * (atomic; 0 = unused). Recorded right after the CAS that takes a lock
     * (nothing is changed under it before that) and cleared after the
     * release, so a reaper can recover every lock a dead process may hold
     * BEFORE it frees the process's in-flight blocks: the rollback of a
     * dead operation may put blocks back in flight. */
    uint64_t held[DK_HELD_MAX];
    /* Per-process statistics for `dkshm-tool top` (DK_CTR_..., atomic):
     * written only by the process's own threads, on a line of their own,
     * so counting adds no shared contention. Zeroed when the slot goes
     * LIVE. */
    uint64_t counters[DKSHM_COUNTERS];
} dkProcSlot;

typedef struct dkDirEntry { /* in the segment */
    char name[DKSHM_OBJNAME_MAX + 1];
    uint32_t type; /* 0: entry free */
    uint32_t flags;
    dkoff root;
    uint64_t createTimeNs;
    uint8_t pad[40];
} dkDirEntry;

/* The per-process handle. */
struct dkshm { /* per process */
    uint8_t *base;
    uint64_t size;
    dkHeader *hdr;
    int fd;           /* backing file (shm object or memfd); -1 if none */
    bool readOnly;
    bool anonymous;
    char name[DKSHM_NAME_MAX + 1];
    /* The layout, copied from the header once it was validated: a header
     * damaged after attach cannot send the library outside the mapping. */
    uint32_t maxProcs;
    uint32_t maxObjects;
    dkoff procTable;
    dkoff directory;
    dkoff heap;
    uint64_t heapSize;
    uint32_t slot;      /* our process-table slot, valid when registered */
    uint32_t lockId;    /* our owner id in lock words; 0: not registered */
    uint64_t forkGen;   /* dkForkGeneration when lockId was taken */
    uint64_t *counters; /* our slot's counters; NULL: not registered */
    pid_t pid;          /* the process that registered */
};

/* Lock owner ids, stored in lock words. Bit 31 is the lock's waiters bit. */
#define DK_LOCK_WAITERS 0x80000000u
#define DK_ID_MASK 0x7fffffffu
#define DK_ID_RAWPID 0x40000000u /* id = RAWPID | pid: no slot (attach) */
#define DK_ID_SLOT_BITS 10
#define DK_ID_GEN_MASK 0xfffffu /* 20 bits of the slot generation */
#define DK_ID_MAKE(slot, gen)                                                  \
    ((uint32_t)(((gen)&DK_ID_GEN_MASK) << DK_ID_SLOT_BITS) | (uint32_t)(slot))

/* Hooks by which the allocator (a higher layer) takes part in reaping and
 * detaching without this layer depending on it. The allocator sets itself
 * up lazily (hdr->allocRoot, under hdr->initLock) the first time a process
 * asks for it, so a program linked statically without it still makes
 * segments that others can allocate from. */
typedef struct dkLayerHooks {
    /* Free the in-flight blocks of dead slot SLOT and clear them. Must
     * check, under its lock, that the slot is still DEAD. */
    int (*reclaim)(dkshm *s, uint32_t slot);
    /* S is being detached: drop per-process state kept for it. */
    void (*detach)(dkshm *s);
} dkLayerHooks;
void dkSetLayerHooks(const dkLayerHooks *h);

/* Unchecked conversions for hot paths on verified structures. */
static inline void *dkPtr(const dkshm *s, dkoff off) {
    return s->base + off;
}
static inline dkoff dkOff(const dkshm *s, const void *p) {
    return (dkoff)((const uint8_t *)p - s->base);
}
/* Whether [off, off+len) lies inside the segment (and off != 0). */
static inline bool dkRangeOk(const dkshm *s, dkoff off, uint64_t len) {
    return off != 0 && off <= s->size && len <= s->size - off;
}

static inline dkProcSlot *dkSlotAt(const dkshm *s, uint32_t i) {
    return (dkProcSlot *)(s->base + s->procTable) + i;
}

/* Bumped in every child after fork(): handles compare it with their own
 * forkGen to know they were inherited and must register anew. */
extern uint64_t dkForkGeneration;

/* Small thread-local words read on every lock or commit. A shared
 * library's thread-locals are reached through __tls_get_addr (a call, about
 * 35 instructions) unless they are in the static TLS block: a few bytes
 * there fit the surplus glibc keeps for libraries loaded by dlopen, so
 * they can use the initial-exec model. Larger arrays stay dynamic. */
#define DK_TLS_FAST __thread __attribute__((tls_model("initial-exec")))

/* Nonzero while this thread, registering with every table slot taken,
 * reaps dead processes whose locks must be recovered first: it takes those
 * locks as DK_ID_RAWPID | pid, an owner with no slot (a dead one is
 * recognised by its pid alone; it holds nothing in flight, so it records
 * no held locks either). */
extern DK_TLS_FAST uint32_t dkTempId;

/* This process's lock owner id for S, registering it in the process table
 * if needed (first use, or first use after fork). READONLY, FULL (table
 * full of live processes). */
int dkSelfId(dkshm *s, uint32_t *id);
static inline int dkSelf(dkshm *s, uint32_t *id) {
    /* dkSelfId publishes slot, then lockId, then forkGen (release): when
     * both match here, s->slot is the one registered for this process. */
    if (__atomic_load_n(&s->forkGen, __ATOMIC_ACQUIRE) ==
        __atomic_load_n(&dkForkGeneration, __ATOMIC_RELAXED)) {
        uint32_t v = __atomic_load_n(&s->lockId, __ATOMIC_ACQUIRE);
        if (v != 0) {
            *id = v;
            return DKSHM_OK;
        }
    }
    return dkSelfId(s, id);
}
/* Add N to this process's counter CTR (DKSHM_CTR_...) if it is
 * registered in S; a process that never registered (it only read) counts
 * nothing rather than taking a slot for statistics. A load and a store,
 * not a locked add: on x86 a locked instruction waits for every load
 * before it, which would stop a get's cache misses from overlapping with
 * the next get's. Threads of one process racing on a counter may lose a
 * count: these are statistics. */
static inline void dkCount(dkshm *s, int ctr, uint64_t n) {
    /* dkSelfId publishes counters before forkGen (release), as slot.
     * multidictInline.h's multidictCountRead_ does the same through a
     * multidictView_ (pointers to these fields), in callers' code: change
     * both together. */
    if (__atomic_load_n(&s->forkGen, __ATOMIC_ACQUIRE) ==
        __atomic_load_n(&dkForkGeneration, __ATOMIC_RELAXED)) {
        uint64_t *c = __atomic_load_n(&s->counters, __ATOMIC_RELAXED);
        if (c)
            __atomic_store_n(&c[ctr],
                             __atomic_load_n(&c[ctr], __ATOMIC_RELAXED) + n,
                             __ATOMIC_RELAXED);
    }
}
/* Our slot; only valid after dkSelf succeeded. */
static inline dkProcSlot *dkSelfSlot(dkshm *s) {
    return dkSlotAt(s, s->slot);
}

/* Forget the locks dead slot SLOT held: entries whose lock no longer names
 * the slot are dropped; a lock that still does is taken and released, which
 * rolls back the dead operation, when CANLOCK (else the entry stays).
 * OK when every entry is gone, BUSY when some had to stay, CORRUPT when a
 * lock's undo log could not be applied (the lock is released, the log kept
 * for `dkshm-tool check` to report). */
int dkRecoverHeld(dkshm *s, uint32_t slot, bool canLock);

/* Take the waits recorded in dead slot P (condWait) out of their
 * fastConds' waiter counts. */
void dkCondWaitRelease(dkshm *s, dkProcSlot *p);

/* Whether the owner of lock id ID is alive (or might be: unknown = alive). */
bool dkOwnerAlive(dkshm *s, uint32_t id);
/* The pid behind lock id ID, 0 if the slot no longer names it. */
uint32_t dkOwnerPid(dkshm *s, uint32_t id);
/* Whether PID with start time START (0: unknown) is alive. */
bool dkProcAlive(uint32_t pid, uint64_t start);
/* Start time of PID from /proc, 0 if it does not exist. */
uint64_t dkProcStartTime(uint32_t pid);

/* Move OFF into (Add) or out of (Remove) this process's in-flight list,
 * logging the change in LOG (the undo log of the lock the caller holds).
 * Add: FULL when the list is full. Remove: NOTFOUND if OFF is not there. */
int dkInflightAdd(dkshm *s, dkUndo *log, dkoff off);
int dkInflightRemove(dkshm *s, dkUndo *log, dkoff off);
/* LOG was committed (COMMITTED) or rolled back: the entries its operation
 * emptied may be filled again (called by dkUndoCommit and
 * dkUndoRollback). */
void dkInflightSettleSome(const dkUndo *log, bool committed);
extern DK_TLS_FAST uint32_t dkPendingN; /* this thread's HELD marks */
static inline void dkInflightSettle(const dkUndo *log, bool committed) {
    if (dkPendingN) /* most commits have none: no call */
        dkInflightSettleSome(log, committed);
}

/* Monotonic and real clocks in nanoseconds. */
uint64_t dkNowNs(void);
uint64_t dkRealNs(void);

/* Futex helpers on a 32-bit word in shared memory. */
int dkFutexWait(uint32_t *word, uint32_t expect, uint64_t timeoutNs);
void dkFutexWake(uint32_t *word, int n);

/* Whether the heap offset range is page-backed in this handle: for the
 * allocator's commit and punch-hole calls. */
int dkCommit(dkshm *s, dkoff off, uint64_t len);   /* FULL if no memory */
void dkDecommit(dkshm *s, dkoff off, uint64_t len); /* best effort */

#endif
