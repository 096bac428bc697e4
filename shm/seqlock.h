/* seqlock.h — version words for readers that take no lock. Private.
 *
 * A writer holding the structure's fastMutex makes the word odd before its
 * first change and even again after it has committed its undo log. A reader
 * reads the word (retrying while odd), reads the data with acquire loads,
 * and accepts only if the word has not moved. The word is deliberately NOT
 * in the undo log: rolling it back to the even value a reader started from
 * would let that reader accept data torn by a dead writer. Instead the next
 * locker, finding it odd, moves it on to a new even value (dkSeqRepair), so
 * every reader that overlapped the dead writer retries.
 *
 * Readers must bound their retries and, when the word stays odd, take the
 * lock once (which recovers a dead writer and repairs the word).
 */
#ifndef DKSHM_SEQLOCK_H
#define DKSHM_SEQLOCK_H

#include "undo.h"

/* The value to validate against, or an odd value: then retry later. */
static inline uint32_t dkSeqReadBegin(const uint32_t *seq) {
    return __atomic_load_n(seq, __ATOMIC_ACQUIRE);
}

/* Whether what was read since dkSeqReadBegin returned START is torn. The
 * reads in between must be acquire loads, so this load cannot move up. */
static inline bool dkSeqReadRetry(const uint32_t *seq, uint32_t start) {
    return (start & 1) || __atomic_load_n(seq, __ATOMIC_ACQUIRE) != start;
}

/* Under the lock, before the first change. The undo-logged stores that
 * follow are release stores: whoever sees one of them sees this too. */
static inline void dkSeqWriteBegin(uint32_t *seq) {
    __atomic_add_fetch(seq, 1, __ATOMIC_RELEASE);
    DKSHM_CRASHPOINT();
}

/* Under the lock, after the last change: commit, then even again. */
static inline void dkSeqWriteEnd(dkUndo *log, uint32_t *seq) {
    dkUndoCommit(log);
    DKSHM_CRASHPOINT();
    __atomic_add_fetch(seq, 1, __ATOMIC_RELEASE);
}

/* Right after taking the lock: odd means a holder died inside a change
 * (now rolled back, or committed just before it died). */
static inline void dkSeqRepair(uint32_t *seq) {
    uint32_t v = __atomic_load_n(seq, __ATOMIC_RELAXED);
    if (v & 1)
        __atomic_store_n(seq, v + 1, __ATOMIC_RELEASE);
}

#endif
