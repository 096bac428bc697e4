/* undo.h — the per-lock undo log and the crash points. Private.
 *
 * Under a lock, before the first change to a shared word, its holder records
 * {where, old value} and publishes the record (count + 1, with a compiler
 * fence so the change cannot be moved above it), then changes the word. The
 * commit is the single store count = 0 done by fastMutexUnlock. The next
 * locker that finds the owner dead restores the records newest first; doing
 * that again after a crash in the middle gives the same result, so recovery
 * needs no log of its own.
 *
 * Widths of 1, 4 and 8 bytes are supported. The stores are release atomics:
 * optimistic readers see whole words, and a reader that sees a change also
 * sees the seqlock word the writer made odd before it (free on x86).
 */
#ifndef DKSHM_UNDO_H
#define DKSHM_UNDO_H

#include "dkshmCommon.h"

typedef struct dkshm dkshm;

typedef struct dkUndoRec { /* in the segment */
    uint64_t at;  /* width (1, 4 or 8) << 56 | offset of the word */
    uint64_t old; /* its value before the first change */
} dkUndoRec;

typedef struct dkUndo { /* in the segment */
    uint32_t count; /* records in use; 0 = nothing in flight (atomic) */
    uint32_t cap;   /* records that fit in rec[] */
    uint32_t op;    /* what the holder was doing, for inspection */
    uint32_t overflow; /* times an operation needed more than cap */
    dkUndoRec rec[];
} dkUndo;

#define DK_UNDO_BYTES(cap) (16u + 16u * (cap))

void dkUndoInit(dkUndo *u, uint32_t cap);

/* Record the current value of the word at P, then store V into it. */
void dkUndoSet64(dkshm *s, dkUndo *u, uint64_t *p, uint64_t v);
/* The same, recording WAS as the old value (a word reserved with a
 * placeholder before it was logged: rolling back clears the reservation). */
void dkUndoSet64Was(dkshm *s, dkUndo *u, uint64_t *p, uint64_t was,
                    uint64_t v);
void dkUndoSet32(dkshm *s, dkUndo *u, uint32_t *p, uint32_t v);
void dkUndoSet8(dkshm *s, dkUndo *u, uint8_t *p, uint8_t v);
/* Record LEN bytes at P (a multiple of 8, 8-aligned), then copy SRC in. */
void dkUndoSetBytes(dkshm *s, dkUndo *u, void *p, const void *src,
                    size_t len);
/* Records still free in U: an operation checks it has room before it
 * changes anything, and fails cleanly otherwise. */
static inline uint32_t dkUndoRoom(const dkUndo *u) {
    return u->cap - __atomic_load_n(&u->count, __ATOMIC_RELAXED);
}
/* The commit: the interrupted operation is now complete. */
void dkUndoCommit(dkUndo *u);
/* Restore every record, newest first, then empty the log. CORRUPT (and the
 * log is left as it is) if a record points outside the segment or has a bad
 * width, or the count exceeds the capacity. */
int dkUndoRollback(dkshm *s, dkUndo *u);

/* Crash points: in test builds (DKSHM_CRASHPOINTS) the k-th point reached
 * raises SIGKILL, with k from dkshmTestCrashAt() or $DKSHM_CRASH_AT. The
 * release library compiles them away. */
#ifdef DKSHM_CRASHPOINTS
void dkCrashPoint(void);
#define DKSHM_CRASHPOINT() dkCrashPoint()
/* Test-only calls (in the test build of the library). K <= 0 disarms. */
void dkshmTestCrashAt(long k);
/* Crash points passed since the last dkshmTestCrashAt. */
long dkshmTestCrashCount(void);
#else
#define DKSHM_CRASHPOINT() ((void)0)
#endif

#endif
