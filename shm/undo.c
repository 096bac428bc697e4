/* undo.c — the per-lock undo log and the test-build crash points.
 *
 * See undo.h for the protocol. The order of three stores is what makes it
 * work: the record, then the count that publishes it, then the change. The
 * process may die between any two instructions, and every store it executed
 * is visible to the survivors (the kernel keeps the shared pages), so only
 * the compiler must be kept from reordering them: atomic_signal_fence.
 *
 * Rollback trusts nothing in the log: a record pointing outside the segment
 * or with a bad width makes it refuse (CORRUPT) rather than write at random.
 */
#include "config.h"

#include "segmentInternal.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DK_W_SHIFT 56
#define DK_OFF_MASK ((1ull << DK_W_SHIFT) - 1)

void dkUndoInit(dkUndo *u, uint32_t cap) {
    __atomic_store_n(&u->count, 0, __ATOMIC_RELAXED);
    u->cap = cap;
    u->op = 0;
    u->overflow = 0;
}

/* Append {P, old value} and publish it. Returns false (and counts it) when
 * the log is full: the change then goes unlogged, which tests catch through
 * the overflow counter; callers reserve room with dkUndoRoom first. */
static bool undoAppend(dkshm *s, dkUndo *u, const void *p, unsigned width,
                       uint64_t old) {
    uint32_t n = __atomic_load_n(&u->count, __ATOMIC_RELAXED);
    if (n >= u->cap) {
        __atomic_fetch_add(&u->overflow, 1, __ATOMIC_RELAXED);
        return false;
    }
    dkUndoRec *r = &u->rec[n];
    __atomic_store_n(&r->at, ((uint64_t)width << DK_W_SHIFT) | dkOff(s, p),
                     __ATOMIC_RELAXED);
    __atomic_store_n(&r->old, old, __ATOMIC_RELAXED);
    atomic_signal_fence(memory_order_seq_cst);
    __atomic_store_n(&u->count, n + 1, __ATOMIC_RELEASE);
    atomic_signal_fence(memory_order_seq_cst);
    DKSHM_CRASHPOINT();
    return true;
}

void dkUndoSet64(dkshm *s, dkUndo *u, uint64_t *p, uint64_t v) {
    undoAppend(s, u, p, 8, __atomic_load_n(p, __ATOMIC_RELAXED));
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    DKSHM_CRASHPOINT();
}

void dkUndoSet64Was(dkshm *s, dkUndo *u, uint64_t *p, uint64_t was,
                    uint64_t v) {
    undoAppend(s, u, p, 8, was);
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    DKSHM_CRASHPOINT();
}

void dkUndoSet32(dkshm *s, dkUndo *u, uint32_t *p, uint32_t v) {
    undoAppend(s, u, p, 4, __atomic_load_n(p, __ATOMIC_RELAXED));
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    DKSHM_CRASHPOINT();
}

void dkUndoSet8(dkshm *s, dkUndo *u, uint8_t *p, uint8_t v) {
    undoAppend(s, u, p, 1, __atomic_load_n(p, __ATOMIC_RELAXED));
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
    DKSHM_CRASHPOINT();
}

void dkUndoSetBytes(dkshm *s, dkUndo *u, void *p, const void *src,
                    size_t len) {
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++) {
        uint64_t v;
        memcpy(&v, (const uint8_t *)src + i * 8, 8);
        dkUndoSet64(s, u, &w[i], v);
    }
}

void dkUndoCommit(dkUndo *u) {
    DKSHM_CRASHPOINT();
    atomic_signal_fence(memory_order_seq_cst);
    __atomic_store_n(&u->count, 0, __ATOMIC_RELEASE);
    dkInflightSettle(u, true);
    DKSHM_CRASHPOINT();
}

int dkUndoRollback(dkshm *s, dkUndo *u) {
    uint32_t n = __atomic_load_n(&u->count, __ATOMIC_ACQUIRE);
    if (n > u->cap)
        return DKSHM_CORRUPT;
    for (uint32_t i = 0; i < n; i++) { /* validate all before writing any */
        uint64_t at = __atomic_load_n(&u->rec[i].at, __ATOMIC_RELAXED);
        unsigned width = (unsigned)(at >> DK_W_SHIFT);
        dkoff off = at & DK_OFF_MASK;
        if ((width != 1 && width != 4 && width != 8) ||
            !dkRangeOk(s, off, width) || (off & (width - 1)) != 0)
            return DKSHM_CORRUPT;
    }
    for (uint32_t i = n; i-- > 0;) {
        uint64_t at = __atomic_load_n(&u->rec[i].at, __ATOMIC_RELAXED);
        uint64_t old = __atomic_load_n(&u->rec[i].old, __ATOMIC_RELAXED);
        void *p = dkPtr(s, at & DK_OFF_MASK);
        switch (at >> DK_W_SHIFT) {
        case 1:
            __atomic_store_n((uint8_t *)p, (uint8_t)old, __ATOMIC_RELAXED);
            break;
        case 4:
            __atomic_store_n((uint32_t *)p, (uint32_t)old, __ATOMIC_RELAXED);
            break;
        default:
            __atomic_store_n((uint64_t *)p, old, __ATOMIC_RELAXED);
            break;
        }
        DKSHM_CRASHPOINT();
    }
    atomic_signal_fence(memory_order_seq_cst);
    __atomic_store_n(&u->count, 0, __ATOMIC_RELEASE);
    dkInflightSettle(u, false);
    return DKSHM_OK;
}

#ifdef DKSHM_CRASHPOINTS
/* Per process: a forked child inherits the parent's setting, which is what
 * a test that arms the point just before fork() wants. */
static long crashAt = -1; /* -1: not read from the environment yet */
static long crashCount;

void dkshmTestCrashAt(long k) {
    __atomic_store_n(&crashAt, k > 0 ? k : 0, __ATOMIC_RELAXED);
    __atomic_store_n(&crashCount, 0, __ATOMIC_RELAXED);
}

long dkshmTestCrashCount(void) {
    return __atomic_load_n(&crashCount, __ATOMIC_RELAXED);
}

void dkCrashPoint(void) {
    long at = __atomic_load_n(&crashAt, __ATOMIC_RELAXED);
    if (at < 0) {
        const char *e = getenv("DKSHM_CRASH_AT");
        at = e ? strtol(e, NULL, 10) : 0;
        if (at < 0)
            at = 0;
        __atomic_store_n(&crashAt, at, __ATOMIC_RELAXED);
    }
    long n = __atomic_add_fetch(&crashCount, 1, __ATOMIC_RELAXED);
    if (at > 0 && n == at)
        raise(SIGKILL);
}
#endif
