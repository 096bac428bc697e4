/* fastmutex.c — robust process-shared locks: fastMutex, fastCond, fastRWLock.
 *
 * fastMutex is a futex lock in the style of Drepper's "Futexes Are Tricky"
 * mutex 3, with one change that makes it robust: the lock word holds the
 * owner's id instead of 1. An id is a process-table slot and that slot's
 * generation (segmentInternal.h), so "is the owner alive?" is answered from
 * the table (state LIVE, same generation, same pid start time) and is not
 * fooled by a reused pid. Uncontended, taking the lock is one CAS and
 * releasing it one exchange.
 *
 * A contender spins briefly, then sets the waiters bit and sleeps on the
 * futex for at most DKSHM_LOCK_POLL_MS. Whenever it has waited that long
 * without progress it checks the owner; if the owner is dead it replaces the
 * dead id by its own with one CAS (only one contender can win), rolls back
 * the lock's undo log and returns DKSHM_RECOVERED. If it dies during the
 * rollback, its own id is now in the word, it is dead too, and the next
 * contender repeats the (idempotent) rollback.
 *
 * PROCESS SAFETY: words are accessed with atomics; acquire on lock, release
 * on unlock give the usual happens-before for the data under the lock.
 *
 * CRASH RECOVERY: as above for fastMutex. fastCond keeps only a sequence
 * word and an approximate waiter count, so a dead waiter costs at most one
 * useless wake. fastRWLock readers register in their own process slot, so a
 * dead reader is recognised by its dead slot; a dead writer is a dead
 * fastMutex owner, taken over by the next writer or by a waiting reader.
 */
#include "config.h"

#include "segmentInternal.h"

#include <limits.h>
#include <sched.h>
#include <stdatomic.h>

#define SPIN_TRIES 100
#define HELD_WAIT_TRIES 1000
#define POLL_NS ((uint64_t)DKSHM_LOCK_POLL_MS * 1000000ull)

static inline void cpuRelax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

bool dkOwnerAlive(dkshm *s, uint32_t id) {
    id &= DK_ID_MASK;
    if (id == 0)
        return false;
    if (id & DK_ID_RAWPID)
        return dkProcAlive(id & ~DK_ID_RAWPID, 0);
    uint32_t slot = id & ((1u << DK_ID_SLOT_BITS) - 1);
    uint32_t gen = id >> DK_ID_SLOT_BITS;
    if (slot >= s->maxProcs)
        return false; /* not an id we could have written */
    dkProcSlot *p = dkSlotAt(s, slot);
    uint64_t w = __atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
    if ((w >> 32) != DKSHM_PROC_LIVE)
        return false;
    if ((__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) & DK_ID_GEN_MASK) != gen)
        return false;
    return dkProcAlive((uint32_t)w,
                       __atomic_load_n(&p->startTime, __ATOMIC_RELAXED));
}

/* Cheap part of dkOwnerAlive: the owner's slot no longer holds it (the
 * slot was reaped, marked dead, or reused). */
static bool ownerSlotGone(dkshm *s, uint32_t id) {
    id &= DK_ID_MASK;
    if (id & DK_ID_RAWPID)
        return false;
    uint32_t slot = id & ((1u << DK_ID_SLOT_BITS) - 1);
    if (slot >= s->maxProcs)
        return true;
    dkProcSlot *p = dkSlotAt(s, slot);
    return (__atomic_load_n(&p->word, __ATOMIC_ACQUIRE) >> 32) !=
               DKSHM_PROC_LIVE ||
           (__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) & DK_ID_GEN_MASK) !=
               id >> DK_ID_SLOT_BITS;
}

uint32_t dkOwnerPid(dkshm *s, uint32_t id) {
    id &= DK_ID_MASK;
    if (id & DK_ID_RAWPID)
        return id & ~DK_ID_RAWPID;
    uint32_t slot = id & ((1u << DK_ID_SLOT_BITS) - 1);
    if (id == 0 || slot >= s->maxProcs)
        return 0;
    dkProcSlot *p = dkSlotAt(s, slot);
    if ((__atomic_load_n(&p->gen, __ATOMIC_ACQUIRE) & DK_ID_GEN_MASK) !=
        id >> DK_ID_SLOT_BITS)
        return 0;
    return (uint32_t)__atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
}

/* The undo log of M, or NULL if it has none. CORRUPT if the offset does not
 * point at a whole log inside the segment. */
static int mutexUndo(dkshm *s, const fastMutex *m, dkUndo **out) {
    dkoff off = __atomic_load_n(&m->undo, __ATOMIC_RELAXED);
    *out = NULL;
    if (off == 0)
        return DKSHM_OK;
    if (!dkRangeOk(s, off, DK_UNDO_BYTES(0)) || (off & 7))
        return DKSHM_CORRUPT;
    dkUndo *u = dkPtr(s, off);
    if (!dkRangeOk(s, off, DK_UNDO_BYTES((uint64_t)u->cap)))
        return DKSHM_CORRUPT;
    *out = u;
    return DKSHM_OK;
}

/* We own M now in place of a dead owner: repair what it left half-done. */
static int recoverLocked(dkshm *s, fastMutex *m) {
    __atomic_fetch_add(&m->recoveries, 1, __ATOMIC_RELAXED);
    dkUndo *u;
    int rc = mutexUndo(s, m, &u);
    if (rc == DKSHM_OK && u)
        rc = dkUndoRollback(s, u);
    return rc == DKSHM_OK ? DKSHM_RECOVERED : rc;
}

/* Replace the dead owner seen in word W by ID. False if the word changed. */
static bool takeOver(fastMutex *m, uint32_t w, uint32_t id) {
    return __atomic_compare_exchange_n(&m->word, &w,
                                       id | (w & DK_LOCK_WAITERS), false,
                                       __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

/* DEADLINE is absolute (dkNowNs), 0 for none; TRY gives up at once when a
 * live owner holds the lock. */
static int lockSlow(dkshm *s, fastMutex *m, uint32_t id, uint64_t deadline,
                    bool try) {
    for (int i = 0; i < SPIN_TRIES && !try; i++) {
        uint32_t w = __atomic_load_n(&m->word, __ATOMIC_RELAXED);
        if (w == 0 &&
            __atomic_compare_exchange_n(&m->word, &w, id, false,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return DKSHM_OK;
        cpuRelax();
    }
    uint64_t lastCheck = dkNowNs();
    for (;;) {
        uint32_t w = __atomic_load_n(&m->word, __ATOMIC_RELAXED);
        if (w == 0) {
            /* Others may sleep on the word: keep the waiters bit set so
             * our unlock wakes them. */
            if (__atomic_compare_exchange_n(&m->word, &w, id | DK_LOCK_WAITERS,
                                            false, __ATOMIC_ACQUIRE,
                                            __ATOMIC_RELAXED))
                return DKSHM_OK;
            continue;
        }
        uint64_t now = dkNowNs();
        /* The full check reads /proc: every poll interval. Whether the
         * owner's slot was reaped is a load: every time. */
        if (try || now - lastCheck >= POLL_NS || ownerSlotGone(s, w)) {
            lastCheck = now;
            if (!dkOwnerAlive(s, w)) {
                if (takeOver(m, w, id))
                    return recoverLocked(s, m);
                continue;
            }
            if (try)
                return DKSHM_BUSY;
        }
        if (deadline && now >= deadline) {
            /* A short timeout may never reach a poll: look once before
             * giving up, so a dead owner is never a timeout. */
            if (!dkOwnerAlive(s, w)) {
                if (takeOver(m, w, id))
                    return recoverLocked(s, m);
                continue;
            }
            return DKSHM_TIMEDOUT;
        }
        if (!(w & DK_LOCK_WAITERS)) {
            if (!__atomic_compare_exchange_n(&m->word, &w, w | DK_LOCK_WAITERS,
                                             false, __ATOMIC_RELAXED,
                                             __ATOMIC_RELAXED))
                continue;
            w |= DK_LOCK_WAITERS;
        }
        uint64_t sleep = POLL_NS - (now - lastCheck);
        if (deadline && deadline - now < sleep)
            sleep = deadline - now;
        dkFutexWait(&m->word, w, sleep ? sleep : 1);
    }
}

static void unlockWord(fastMutex *m) {
    uint32_t old = __atomic_exchange_n(&m->word, 0, __ATOMIC_RELEASE);
    if (old & DK_LOCK_WAITERS)
        dkFutexWake(&m->word, 1);
}

/* Record the lock at OFF as held by this process (dkProcSlot.held). FULL
 * when every entry is in use. */
static int heldAdd(dkshm *s, dkoff off) {
    if (dkTempId)
        return DKSHM_OK; /* no slot to record it in (see dkTempId) */
    dkProcSlot *me = dkSelfSlot(s);
    for (int i = 0; i < DK_HELD_MAX; i++) {
        uint64_t zero = 0;
        if (__atomic_load_n(&me->held[i], __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&me->held[i], &zero, off, false,
                                        __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            /* The record must precede every change made under the lock. */
            atomic_signal_fence(memory_order_seq_cst);
            return DKSHM_OK;
        }
    }
    return DKSHM_FULL;
}

/* A plain store, not a compare-and-swap: only the holder of the lock at
 * OFF writes an entry that holds OFF (other threads claim only entries
 * that are 0), and one thread at a time holds an exclusive lock, so no
 * other thread can change the entry we clear. */
static void heldDrop(dkshm *s, dkoff off) {
    if (dkTempId)
        return;
    dkProcSlot *me = dkSelfSlot(s);
    atomic_signal_fence(memory_order_seq_cst);
    for (int i = 0; i < DK_HELD_MAX; i++) {
        if (__atomic_load_n(&me->held[i], __ATOMIC_RELAXED) == off) {
            __atomic_store_n(&me->held[i], 0, __ATOMIC_RELAXED);
            return;
        }
    }
}

int dkRecoverHeld(dkshm *s, uint32_t slot, bool canLock) {
    dkProcSlot *p = dkSlotAt(s, slot);
    bool clean = true, corrupt = false;
    for (int i = 0; i < DK_HELD_MAX; i++) {
        dkoff off = __atomic_load_n(&p->held[i], __ATOMIC_RELAXED);
        if (off == 0)
            continue;
        /* Another reaper may have finished and a new process taken the
         * slot: its entries are not ours to clear. */
        if ((__atomic_load_n(&p->word, __ATOMIC_ACQUIRE) >> 32) !=
            DKSHM_PROC_DEAD)
            return DKSHM_BUSY;
        /* Stale entries may point anywhere: only a word that names this
         * slot as owner is a lock the dead process holds, and only that
         * one do we take. A lock another process holds may be one it took
         * over from the dead process and is rolling back right now, which
         * can put blocks back in the dead process's in-flight list: wait
         * (a little) for it to be free before forgetting the entry, and
         * keep the entry (and the slot) if it stays held. */
        if (dkRangeOk(s, off, sizeof(fastMutex)) && (off & 7) == 0) {
            fastMutex *m = dkPtr(s, off);
            uint32_t w = __atomic_load_n(&m->word, __ATOMIC_ACQUIRE);
            for (int tries = 0; w != 0 && tries < HELD_WAIT_TRIES &&
                                (w & DK_ID_RAWPID ||
                                 (w & ((1u << DK_ID_SLOT_BITS) - 1)) != slot);
                 tries++) {
                sched_yield();
                w = __atomic_load_n(&m->word, __ATOMIC_ACQUIRE);
            }
            bool other = w != 0 &&
                         (w & DK_ID_RAWPID ||
                          (w & ((1u << DK_ID_SLOT_BITS) - 1)) != slot);
            /* Held by another dead process (one that took the lock over
             * from ours, rolled our operation back, and died holding it):
             * nobody will free it but a locker, so be that locker. */
            if (other && !(canLock && !dkOwnerAlive(s, w))) {
                clean = false; /* still held by another: look again later */
                continue;
            }
            if (w != 0) {
                if (!canLock) {
                    clean = false;
                    continue;
                }
                int rc = fastMutexLock(s, m);
                if (rc == DKSHM_CORRUPT) {
                    /* The log cannot be applied: release the lock but
                     * keep the log, so that `check` reports it. */
                    unlockWord(m);
                    heldDrop(s, off);
                    clean = false;
                    corrupt = true;
                } else if (rc >= 0) {
                    fastMutexUnlock(s, m);
                }
            }
        }
        __atomic_store_n(&p->held[i], 0, __ATOMIC_RELAXED);
    }
    return corrupt ? DKSHM_CORRUPT : clean ? DKSHM_OK : DKSHM_BUSY;
}

static int lockWith(dkshm *s, fastMutex *m, uint64_t deadline, bool try) {
    if (!s || !m)
        return DKSHM_INVALID;
    uint32_t id;
    int rc = dkSelf(s, &id);
    if (rc != DKSHM_OK)
        return rc;
    dkoff off = dkOff(s, m);
    if (!dkRangeOk(s, off, sizeof *m) || (off & 7))
        return DKSHM_INVALID; /* a fastMutex lives in the segment */
    uint32_t zero = 0;
    if (!__atomic_compare_exchange_n(&m->word, &zero, id, false,
                                     __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        uint64_t t0 = try ? 0 : dkNowNs();
        rc = lockSlow(s, m, id, deadline, try);
        if (!try) { /* for `dkshm-tool top`: contention, off the fast path */
            dkCount(s, DKSHM_CTR_LOCK_WAITS, 1);
            dkCount(s, DKSHM_CTR_LOCK_WAIT_NS, dkNowNs() - t0);
        }
        if (rc < 0 && rc != DKSHM_CORRUPT) /* CORRUPT: held all the same */
            return rc;
    }
    /* Only locks with an undo log guard changes a reaper must see rolled
     * back before it frees the dead process's in-flight blocks. */
    if (__atomic_load_n(&m->undo, __ATOMIC_RELAXED) != 0 &&
        heldAdd(s, off) != DKSHM_OK) {
        unlockWord(m);
        return DKSHM_FULL;
    }
    return rc;
}

DKSHM_API int fastMutexInit(dkshm *s, fastMutex *m, dkoff undo) {
    if (!s || !m)
        return DKSHM_INVALID;
    if (s->readOnly)
        return DKSHM_READONLY;
    if (!dkRangeOk(s, dkOff(s, m), sizeof *m) || (dkOff(s, m) & 7) ||
        (undo != 0 && (!dkRangeOk(s, undo, DK_UNDO_BYTES(0)) || (undo & 7))))
        return DKSHM_INVALID;
    __atomic_store_n(&m->recoveries, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&m->undo, undo, __ATOMIC_RELAXED);
    __atomic_store_n(&m->word, 0, __ATOMIC_RELEASE);
    return DKSHM_OK;
}

DKSHM_API int fastMutexLock(dkshm *s, fastMutex *m) {
    return lockWith(s, m, 0, false);
}

DKSHM_API int fastMutexTryLock(dkshm *s, fastMutex *m) {
    return lockWith(s, m, 0, true);
}

DKSHM_API int fastMutexTimedLock(dkshm *s, fastMutex *m, uint64_t timeoutNs) {
    uint64_t deadline = dkNowNs() + (timeoutNs ? timeoutNs : 1);
    return lockWith(s, m, deadline, false);
}

DKSHM_API int fastMutexUnlock(dkshm *s, fastMutex *m) {
    if (!s || !m)
        return DKSHM_INVALID;
    uint32_t id;
    int rc = dkSelf(s, &id);
    if (rc != DKSHM_OK)
        return rc;
    if ((__atomic_load_n(&m->word, __ATOMIC_RELAXED) & DK_ID_MASK) != id)
        return DKSHM_INVALID;
    dkUndo *u = NULL;
    if (mutexUndo(s, m, &u) == DKSHM_OK && u)
        dkUndoCommit(u);
    unlockWord(m);
    if (u)
        heldDrop(s, dkOff(s, m));
    return DKSHM_OK;
}

DKSHM_API int fastMutexInspect(dkshm *s, const fastMutex *m,
                               fastMutexState *out) {
    if (!s || !m || !out)
        return DKSHM_INVALID;
    uint32_t w = __atomic_load_n(&m->word, __ATOMIC_ACQUIRE);
    *out = (fastMutexState){0};
    out->recoveries = __atomic_load_n(&m->recoveries, __ATOMIC_RELAXED);
    if (w == 0)
        return DKSHM_OK;
    out->held = true;
    out->waiters = (w & DK_LOCK_WAITERS) != 0;
    out->ownerPid = dkOwnerPid(s, w);
    out->ownerSlot = (w & DK_ID_RAWPID)
                         ? UINT32_MAX
                         : (w & ((1u << DK_ID_SLOT_BITS) - 1));
    out->ownerDead = !dkOwnerAlive(s, w);
    dkUndo *u;
    if (mutexUndo(s, m, &u) == DKSHM_OK && u)
        out->undoRecords = __atomic_load_n(&u->count, __ATOMIC_RELAXED);
    return DKSHM_OK;
}

/* Common argument checks for calls that write OBJ (of LEN bytes). */
static int writable(dkshm *s, const void *obj, size_t len) {
    if (!s || !obj)
        return DKSHM_INVALID;
    if (s->readOnly)
        return DKSHM_READONLY;
    dkoff off = dkOff(s, obj);
    if (!dkRangeOk(s, off, len) || (off & 3))
        return DKSHM_INVALID;
    return DKSHM_OK;
}

/* ---- fastCond ----------------------------------------------------------- */

DKSHM_API int fastCondInit(dkshm *s, fastCond *c) {
    int rc = writable(s, c, sizeof *c);
    if (rc != DKSHM_OK)
        return rc;
    __atomic_store_n(&c->seq, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&c->waiters, 0, __ATOMIC_RELEASE);
    return DKSHM_OK;
}

/* Record in our slot that a thread of ours counts in C's waiters (see
 * dkProcSlot.condWait); NULL if every entry is taken (a death then leaves
 * the count high, which costs signalers a wake call, nothing more). */
static uint64_t *condWaitRecord(dkshm *s, fastCond *c) {
    dkProcSlot *me = dkSelfSlot(s);
    dkoff off = dkOff(s, c);
    for (int i = 0; i < DK_CONDWAIT_MAX; i++) {
        uint64_t zero = 0;
        if (__atomic_load_n(&me->condWait[i], __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&me->condWait[i], &zero, off, false,
                                        __ATOMIC_RELEASE, __ATOMIC_RELAXED))
            return &me->condWait[i];
    }
    return NULL;
}

/* The wait is over: clear the record, then leave the count. */
static void condWaitDone(dkshm *s, fastCond *c, uint64_t *rec) {
    (void)s;
    if (rec)
        __atomic_store_n(rec, 0, __ATOMIC_RELEASE);
    __atomic_fetch_sub(&c->waiters, 1, __ATOMIC_RELAXED);
}

void dkCondWaitRelease(dkshm *s, dkProcSlot *p) {
    for (int i = 0; i < DK_CONDWAIT_MAX; i++) {
        uint64_t off = __atomic_load_n(&p->condWait[i], __ATOMIC_ACQUIRE);
        /* Clear first: a reaper killed after this leaves the count high,
         * never counts the same wait out twice. */
        if (off == 0 || !__atomic_compare_exchange_n(&p->condWait[i], &off, 0,
                                                     false, __ATOMIC_ACQ_REL,
                                                     __ATOMIC_RELAXED))
            continue;
        if (!dkRangeOk(s, off, sizeof(fastCond)) || (off & 3))
            continue; /* damage: nothing to trust */
        fastCond *c = dkPtr(s, off);
        uint32_t n = __atomic_load_n(&c->waiters, __ATOMIC_RELAXED);
        while (n > 0 && !__atomic_compare_exchange_n(&c->waiters, &n, n - 1,
                                                     false, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED))
            ;
    }
}

DKSHM_API int fastCondWait(dkshm *s, fastCond *c, fastMutex *m,
                           uint64_t timeoutNs) {
    int rc = writable(s, c, sizeof *c);
    if (rc != DKSHM_OK || (rc = writable(s, m, sizeof *m)) != DKSHM_OK)
        return rc;
    uint64_t deadline = timeoutNs ? dkNowNs() + timeoutNs : 0;
    /* Read the sequence while still holding M: a signal sent after we
     * release M changes it, so the futex wait below cannot miss it. */
    uint32_t seq = __atomic_load_n(&c->seq, __ATOMIC_ACQUIRE);
    __atomic_fetch_add(&c->waiters, 1, __ATOMIC_RELAXED);
    uint64_t *rec = condWaitRecord(s, c);
    rc = fastMutexUnlock(s, m);
    if (rc != DKSHM_OK) {
        condWaitDone(s, c, rec);
        return rc;
    }
    bool timedOut = false;
    uint64_t left = 0;
    if (deadline) {
        uint64_t now = dkNowNs();
        left = deadline > now ? deadline - now : 0;
        timedOut = left == 0;
    }
    if (!timedOut &&
        dkFutexWait(&c->seq, seq, left) == DKSHM_TIMEDOUT)
        timedOut = true;
    condWaitDone(s, c, rec);
    rc = fastMutexLock(s, m);
    if (rc != DKSHM_OK)
        return rc;
    return timedOut ? DKSHM_TIMEDOUT : DKSHM_OK;
}

static int condWake(fastCond *c, int n) {
    __atomic_fetch_add(&c->seq, 1, __ATOMIC_RELEASE);
    if (__atomic_load_n(&c->waiters, __ATOMIC_RELAXED) != 0)
        dkFutexWake(&c->seq, n);
    return DKSHM_OK;
}

DKSHM_API int fastCondSignal(dkshm *s, fastCond *c) {
    int rc = writable(s, c, sizeof *c);
    return rc != DKSHM_OK ? rc : condWake(c, 1);
}

DKSHM_API int fastCondBroadcast(dkshm *s, fastCond *c) {
    int rc = writable(s, c, sizeof *c);
    return rc != DKSHM_OK ? rc : condWake(c, INT_MAX);
}

/* ---- fastRWLock --------------------------------------------------------- */

#define RD_COUNT_BITS 20
#define RD_COUNT_MASK ((1ull << RD_COUNT_BITS) - 1)
#define RD_SCANS 64

static inline uint64_t rdKey(dkshm *s, const fastRWLock *l) {
    return dkOff(s, l) >> 3;
}

/* Add DELTA (+1/-1) to our hold of L. Threads of one process may race to
 * make two entries for the same lock; that is harmless as long as a release
 * looks for an entry of L that still has holds. FULL when every entry holds
 * another lock; INVALID when releasing a lock we do not hold. */
static int rdAdjust(dkshm *s, const fastRWLock *l, int delta) {
    uint64_t key = rdKey(s, l);
    dkProcSlot *me = dkSelfSlot(s);
    /* Holds of one lock are fungible between its entries, and a scan is not
     * atomic: other threads moving holds around can hide ours from one
     * scan. Only several scans in a row that find nothing are an answer. */
    int misses = 0;
    for (;;) {
        int freeIdx = -1, mine = -1;
        for (int i = 0; i < DKSHM_READ_SLOTS; i++) {
            uint64_t w = __atomic_load_n(&me->rdHold[i], __ATOMIC_RELAXED);
            uint64_t n = w & RD_COUNT_MASK;
            if ((w >> RD_COUNT_BITS) == key && (n > 0 || delta > 0) &&
                (mine < 0 || n > 0))
                mine = i;
            if (freeIdx < 0 && n == 0)
                freeIdx = i;
        }
        int i = mine >= 0 ? mine : freeIdx;
        if (i < 0 || (delta < 0 && mine < 0)) {
            if (++misses < RD_SCANS)
                continue;
            return delta < 0 ? DKSHM_INVALID : DKSHM_FULL;
        }
        uint64_t w = __atomic_load_n(&me->rdHold[i], __ATOMIC_RELAXED);
        uint64_t n = w & RD_COUNT_MASK;
        uint64_t next;
        if ((w >> RD_COUNT_BITS) == key) {
            if (delta > 0 && n == RD_COUNT_MASK)
                return DKSHM_FULL;
            if (delta < 0 && n == 0)
                continue; /* another thread emptied it: look again */
            next = delta > 0 ? w + 1 : w - 1;
        } else if (delta > 0 && n == 0) {
            next = (key << RD_COUNT_BITS) | 1;
        } else {
            continue; /* taken meanwhile by another thread */
        }
        if (__atomic_compare_exchange_n(&me->rdHold[i], &w, next, false,
                                        __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            return DKSHM_OK;
    }
}

/* Whether a live process other than the caller's threads... any live
 * process at all holds L for reading. */
static bool liveReaders(dkshm *s, const fastRWLock *l) {
    uint64_t key = rdKey(s, l);
    for (uint32_t i = 0; i < s->maxProcs; i++) {
        dkProcSlot *p = dkSlotAt(s, i);
        for (int j = 0; j < DKSHM_READ_SLOTS; j++) {
            uint64_t w = __atomic_load_n(&p->rdHold[j], __ATOMIC_SEQ_CST);
            if ((w >> RD_COUNT_BITS) != key || (w & RD_COUNT_MASK) == 0)
                continue;
            uint64_t pw = __atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
            if ((pw >> 32) == DKSHM_PROC_LIVE &&
                dkProcAlive((uint32_t)pw, __atomic_load_n(&p->startTime,
                                                          __ATOMIC_RELAXED)))
                return true;
        }
    }
    return false;
}

static void rwWake(fastRWLock *l) {
    __atomic_fetch_add(&l->wakeSeq, 1, __ATOMIC_SEQ_CST);
    dkFutexWake(&l->wakeSeq, INT_MAX);
}

DKSHM_API int fastRWLockInit(dkshm *s, fastRWLock *l, dkoff undo) {
    int rc = writable(s, l, sizeof *l);
    if (rc != DKSHM_OK)
        return rc;
    rc = fastMutexInit(s, &l->writer, undo);
    if (rc != DKSHM_OK)
        return rc;
    __atomic_store_n(&l->writing, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&l->wakeSeq, 0, __ATOMIC_RELEASE);
    return DKSHM_OK;
}

DKSHM_API int fastRWLockRead(dkshm *s, fastRWLock *l, uint64_t timeoutNs) {
    int rc = writable(s, l, sizeof *l);
    if (rc != DKSHM_OK)
        return rc;
    uint32_t id;
    rc = dkSelf(s, &id);
    if (rc != DKSHM_OK)
        return rc;
    uint64_t deadline = timeoutNs ? dkNowNs() + timeoutNs : 0;
    for (;;) {
        uint32_t seq = __atomic_load_n(&l->wakeSeq, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&l->writing, __ATOMIC_SEQ_CST) == 0) {
            rc = rdAdjust(s, l, +1);
            if (rc != DKSHM_OK)
                return rc;
            /* Dekker with the writer: our hold is published (seq_cst)
             * before we look at `writing`, and the writer publishes
             * `writing` before it scans the holds. */
            if (__atomic_load_n(&l->writing, __ATOMIC_SEQ_CST) == 0)
                return DKSHM_OK;
            rdAdjust(s, l, -1);
            rwWake(l);
            continue;
        }
        /* A writer holds or waits. If it died, clear its claim: take the
         * writer mutex over (that recovers its data) and give it back. */
        uint32_t w = __atomic_load_n(&l->writer.word, __ATOMIC_RELAXED);
        if (w != 0 && !dkOwnerAlive(s, w)) {
            rc = fastMutexTryLock(s, &l->writer);
            if (rc == DKSHM_RECOVERED || rc == DKSHM_OK ||
                rc == DKSHM_CORRUPT) {
                __atomic_store_n(&l->writing, 0, __ATOMIC_SEQ_CST);
                fastMutexUnlock(s, &l->writer);
                rwWake(l);
                if (rc == DKSHM_CORRUPT)
                    return rc; /* the dead writer's log was unusable */
            }
            continue;
        }
        uint64_t sleep = POLL_NS;
        if (deadline) {
            uint64_t now = dkNowNs();
            if (now >= deadline)
                return DKSHM_TIMEDOUT;
            if (deadline - now < sleep)
                sleep = deadline - now;
        }
        dkFutexWait(&l->wakeSeq, seq, sleep);
    }
}

DKSHM_API int fastRWLockReadUnlock(dkshm *s, fastRWLock *l) {
    int rc = writable(s, l, sizeof *l);
    if (rc != DKSHM_OK)
        return rc;
    uint32_t id;
    rc = dkSelf(s, &id);
    if (rc != DKSHM_OK)
        return rc;
    rc = rdAdjust(s, l, -1);
    if (rc == DKSHM_OK && __atomic_load_n(&l->writing, __ATOMIC_SEQ_CST))
        rwWake(l);
    return rc;
}

DKSHM_API int fastRWLockWrite(dkshm *s, fastRWLock *l, uint64_t timeoutNs) {
    int rc = writable(s, l, sizeof *l);
    if (rc != DKSHM_OK)
        return rc;
    uint64_t deadline = timeoutNs ? dkNowNs() + timeoutNs : 0;
    int lrc = deadline ? fastMutexTimedLock(s, &l->writer, timeoutNs)
                       : fastMutexLock(s, &l->writer);
    if (lrc < 0)
        return lrc;
    __atomic_store_n(&l->writing, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        uint32_t seq = __atomic_load_n(&l->wakeSeq, __ATOMIC_SEQ_CST);
        if (!liveReaders(s, l))
            return lrc; /* OK, or RECOVERED from a dead writer */
        uint64_t sleep = POLL_NS;
        if (deadline) {
            uint64_t now = dkNowNs();
            if (now >= deadline) {
                __atomic_store_n(&l->writing, 0, __ATOMIC_SEQ_CST);
                fastMutexUnlock(s, &l->writer);
                rwWake(l);
                return DKSHM_TIMEDOUT;
            }
            if (deadline - now < sleep)
                sleep = deadline - now;
        }
        dkFutexWait(&l->wakeSeq, seq, sleep);
    }
}

DKSHM_API int fastRWLockWriteUnlock(dkshm *s, fastRWLock *l) {
    int rc = writable(s, l, sizeof *l);
    if (rc != DKSHM_OK)
        return rc;
    uint32_t id;
    rc = dkSelf(s, &id);
    if (rc != DKSHM_OK)
        return rc;
    if ((__atomic_load_n(&l->writer.word, __ATOMIC_RELAXED) & DK_ID_MASK) !=
        id)
        return DKSHM_INVALID;
    __atomic_store_n(&l->writing, 0, __ATOMIC_SEQ_CST);
    rc = fastMutexUnlock(s, &l->writer);
    rwWake(l);
    return rc;
}
