/* fastmutex.h — process-shared robust locks that live in a dkshm segment.
 *
 * fastMutex: one compare-and-swap to take when uncontended, futex sleep under
 * contention, and robust: the lock word names its owner (a process-table slot
 * and its generation), so a waiter notices within DKSHM_LOCK_POLL_MS that the
 * owner was killed, takes the lock over, rolls back the owner's interrupted
 * operation from the lock's undo log, and only then returns DKSHM_RECOVERED.
 *
 * fastCond: a condition variable on a futex sequence word; a waiter keeps no
 * state in the segment, so a killed waiter leaves nothing behind.
 *
 * fastRWLock: many readers or one writer. Readers register in their own
 * process-table slot (no shared counter, so readers scale), a killed reader's
 * hold vanishes with its slot, and a killed writer is recovered like a
 * fastMutex owner.
 *
 * All three are plain structs placed in segment memory (a membound block or a
 * container) and initialised once with ...Init; every call takes the segment
 * handle so the lock can name this process. A read-only handle gets
 * DKSHM_READONLY.
 *
 * THREAD SAFETY: all calls are thread- and process-safe. The owner identity
 * is per process: a fastMutex is not recursive, and unlocking it from another
 * thread of the owning process is not detected.
 */
#ifndef DKSHM_FASTMUTEX_H
#define DKSHM_FASTMUTEX_H

#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How often a sleeping waiter checks that the owner is still alive. */
#define DKSHM_LOCK_POLL_MS 20
/* Distinct fastRWLocks one process may hold for reading at once. */
#define DKSHM_READ_SLOTS 8

typedef struct fastMutex { /* in the segment */
    uint32_t word;         /* 0 free, else owner id | waiters bit (atomic) */
    uint32_t recoveries;   /* times taken over from a dead owner (atomic) */
    dkoff undo;            /* this lock's undo log, 0 if it has none */
} fastMutex;

typedef struct fastCond { /* in the segment */
    uint32_t seq;          /* bumped by signal/broadcast (atomic, futex) */
    uint32_t waiters;      /* approximate count of sleepers (atomic) */
} fastCond;

typedef struct fastRWLock { /* in the segment */
    fastMutex writer;      /* held by the writer, and by a reader-to-be
                              only for an instant */
    uint32_t writing;      /* 1 while a writer holds or awaits (atomic) */
    uint32_t wakeSeq;      /* futex word readers and writers sleep on */
} fastRWLock;

/* Initialise M (not held, no recoveries). UNDO is the offset of an undo log
 * for crash recovery of what is changed under the lock, or 0. */
DKSHM_API int fastMutexInit(dkshm *s, fastMutex *m, dkoff undo);

/* Take M, sleeping while another process holds it. Returns OK, RECOVERED
 * (the owner died; its undo log was rolled back before returning), READONLY,
 * INVALID (null argument, M not inside the segment or misaligned), CORRUPT
 * (the lock's undo log is damaged; the lock is then held and the caller
 * must decide), FULL (M has an undo log and this process already holds
 * DK_HELD_MAX = 32 such locks: M is not taken). */
DKSHM_API int fastMutexLock(dkshm *s, fastMutex *m);
/* Like fastMutexLock but BUSY at once when a live owner holds M. */
DKSHM_API int fastMutexTryLock(dkshm *s, fastMutex *m);
/* Like fastMutexLock but TIMEDOUT after TIMEOUTNS nanoseconds. */
DKSHM_API int fastMutexTimedLock(dkshm *s, fastMutex *m, uint64_t timeoutNs);
/* Commit the undo log and release M. INVALID if this process does not hold
 * it. */
DKSHM_API int fastMutexUnlock(dkshm *s, fastMutex *m);

/* For inspection: whether M is held, and if so by which pid and whether that
 * process is dead. Writes nothing. */
typedef struct fastMutexState { /* per process */
    bool held;
    bool ownerDead;
    bool waiters;
    uint32_t ownerPid; /* 0 when unknown */
    uint32_t ownerSlot;
    uint32_t recoveries;
    uint32_t undoRecords; /* records in the undo log: > 0 only mid-write */
} fastMutexState;
DKSHM_API int fastMutexInspect(dkshm *s, const fastMutex *m,
                               fastMutexState *out);

DKSHM_API int fastCondInit(dkshm *s, fastCond *c);
/* Atomically release M and sleep until signalled, then take M again.
 * TIMEOUTNS 0 means no timeout. Returns OK, TIMEDOUT (M is held again),
 * RECOVERED (M was taken over from a dead owner on the way back), or an
 * error of fastMutexLock. Wakeups may be spurious: wait in a loop. */
DKSHM_API int fastCondWait(dkshm *s, fastCond *c, fastMutex *m,
                           uint64_t timeoutNs);
DKSHM_API int fastCondSignal(dkshm *s, fastCond *c);
DKSHM_API int fastCondBroadcast(dkshm *s, fastCond *c);

DKSHM_API int fastRWLockInit(dkshm *s, fastRWLock *l, dkoff undo);
/* Shared hold. A process may hold at most DKSHM_READ_SLOTS distinct
 * rwlocks for reading at once (FULL past that). TIMEOUTNS 0: no timeout.
 * TIMEDOUT; CORRUPT when a dead writer left an undo log that could not be
 * applied (the writer's claim is cleared, the reader holds nothing). */
DKSHM_API int fastRWLockRead(dkshm *s, fastRWLock *l, uint64_t timeoutNs);
DKSHM_API int fastRWLockReadUnlock(dkshm *s, fastRWLock *l);
/* Exclusive hold: waits for live readers to leave (dead readers are
 * ignored). Returns what fastMutexLock returns (RECOVERED, CORRUPT with
 * the lock held, ...), or TIMEDOUT. */
DKSHM_API int fastRWLockWrite(dkshm *s, fastRWLock *l, uint64_t timeoutNs);
DKSHM_API int fastRWLockWriteUnlock(dkshm *s, fastRWLock *l);

#ifdef __cplusplus
}
#endif
#endif
