/* checkFastmutex.c — Check suite for fastMutex, fastCond, fastRWLock and the
 * per-lock undo log (shm/fastmutex.c, shm/undo.c).
 *
 * Every test runs in its own process (fork mode) with its own 8 MiB segment.
 * The segment's name is unlinked right after creation: the test and the
 * children it forks share the mapping, and a failing test leaves nothing in
 * /dev/shm. Only the read-only test keeps a name for as long as it needs one
 * to attach.
 *
 * Locks and the data they guard are placed at the end of the heap region,
 * far from the allocator's metadata at its start; nothing in this suite
 * allocates, so the allocator never gets there.
 *
 * Children report through their exit status (0 = all good) and through
 * words in the segment; they never call ck_assert. Waits on other processes
 * are bounded, and every TCase has a timeout, so a broken lock fails a test
 * instead of hanging the suite. There are no upper bounds on time: a timed
 * call is only checked to have waited at least its timeout.
 */
#include "config.h"

#include "testUtil.h"

#include <pthread.h>
#include <time.h>

#define SEG_BYTES (8u << 20)
#define AREA_BYTES (128u << 10)
#define LONG_WAIT_MS 10000 /* bound on waiting for another process */
#define MS (1000000ull)

/* ---- fixture: one segment per test ------------------------------------- */

static dkshm *S;      /* this test's segment */
static dkoff areaOff; /* the end of its heap, for our locks and data */
static size_t areaUsed;

/* Make S a new segment created with OPT (may be NULL). */
static void segOpen(const dkshmOptions *opt) {
    const char *name = testSegName("fm");
    dkshmUnlink(name); /* a leftover of a killed earlier run */
    int rc = dkshmCreate(name, SEG_BYTES, opt, &S);
    ck_assert_msg(rc == DKSHM_OK, "dkshmCreate: %s", dkshmErrName(rc));
    dkshmUnlink(name);
    areaOff = (S->hdr->heap + S->hdr->heapSize - AREA_BYTES) & ~(dkoff)63;
    ck_assert(areaOff > S->hdr->heap);
    ck_assert_int_eq(dkCommit(S, areaOff, AREA_BYTES), DKSHM_OK);
    memset(dkPtr(S, areaOff), 0, AREA_BYTES);
    areaUsed = 0;
}

static void segUp(void) {
    segOpen(NULL);
}

static void segDown(void) {
    dkshmDetach(S);
    S = NULL;
}

/* N zeroed bytes at the end of the heap, on their own cache lines. */
static void *tMem(size_t n) {
    size_t at = areaUsed;
    areaUsed += (n + 63) & ~(size_t)63;
    ck_assert_msg(areaUsed <= AREA_BYTES, "test area exhausted");
    return dkPtr(S, areaOff + at);
}

static dkUndo *tUndo(uint32_t cap) {
    dkUndo *u = tMem(DK_UNDO_BYTES(cap));
    dkUndoInit(u, cap);
    return u;
}

#define ck_rc(expr, want)                                                      \
    do {                                                                       \
        int rc_ = (expr);                                                      \
        ck_assert_msg(rc_ == (want), "%s returned %s, expected %s", #expr,     \
                      dkshmErrName(rc_), dkshmErrName(want));                  \
    } while (0)

/* ---- small helpers ------------------------------------------------------- */

static uint64_t nowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t ld32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static void st32(uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static uint32_t inc32(uint32_t *p) {
    return __atomic_add_fetch(p, 1, __ATOMIC_ACQ_REL);
}

/* Wait until *W >= V, for at most `ms` milliseconds. */
static bool waitAtLeast(const uint32_t *w, uint32_t v, uint64_t ms) {
    uint64_t end = nowNs() + ms * MS;
    while (ld32(w) < v) {
        if (nowNs() > end)
            return false;
        usleep(200);
    }
    return true;
}

static void reapChild(pid_t pid, int want) {
    int st = testWait(pid);
    ck_assert_msg(st == want, "child %d: status %d, expected %d", (int)pid, st,
                  want);
}

static fastMutexState inspect(const fastMutex *m) {
    fastMutexState st;
    ck_rc(fastMutexInspect(S, m, &st), DKSHM_OK);
    return st;
}

/* A child that takes M and dies holding it (no undo records). */
static fastMutex *dieM;
static int lockAndDie(void *arg) {
    (void)arg;
    int rc = fastMutexLock(S, dieM);
    if (rc != DKSHM_OK && rc != DKSHM_RECOVERED)
        return 1;
    raise(SIGKILL);
    return 2;
}

static pid_t deadHolder(fastMutex *m) {
    dieM = m;
    pid_t pid = testSpawn(lockAndDie, NULL);
    reapChild(pid, TEST_KILLED);
    return pid;
}

/* A child that holds M until *RELEASE becomes non-zero, having set *HELD. */
typedef struct holdCtl { /* in the segment */
    fastMutex m;
    uint32_t held;
    uint32_t release;
    uint32_t started;
    uint32_t got;
    int32_t rc[4];
    uint64_t counter;
} holdCtl;

static holdCtl *H;

static int holdUntilReleased(void *arg) {
    (void)arg;
    if (fastMutexLock(S, &H->m) != DKSHM_OK)
        return 1;
    st32(&H->held, 1);
    if (!waitAtLeast(&H->release, 1, LONG_WAIT_MS))
        return 2;
    return fastMutexUnlock(S, &H->m) == DKSHM_OK ? 0 : 3;
}

/* Holds until killed. */
static int holdForever(void *arg) {
    (void)arg;
    if (fastMutexLock(S, &H->m) != DKSHM_OK)
        return 1;
    st32(&H->held, 1);
    for (int i = 0; i < LONG_WAIT_MS; i++)
        usleep(1000);
    return 2;
}

/* ===== 1. fastMutex basics ================================================ */

START_TEST(test_mutex_lock_unlock_trylock) {
    fastMutex *m = tMem(sizeof *m);
    ck_rc(fastMutexInit(S, m, 0), DKSHM_OK);
    fastMutexState st = inspect(m);
    ck_assert(!st.held && !st.waiters && st.recoveries == 0);

    ck_rc(fastMutexLock(S, m), DKSHM_OK);
    st = inspect(m);
    ck_assert(st.held);
    ck_assert(!st.ownerDead);
    ck_assert(!st.waiters);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)getpid());
    ck_assert_uint_eq(st.ownerSlot, S->slot);
    /* Not recursive: our own hold makes trylock busy. */
    ck_rc(fastMutexTryLock(S, m), DKSHM_BUSY);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
    ck_assert(!inspect(m).held);
    ck_rc(fastMutexUnlock(S, m), DKSHM_INVALID); /* not held any more */

    ck_rc(fastMutexTryLock(S, m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
    ck_rc(fastMutexTimedLock(S, m, 1000 * MS), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
    ck_assert_uint_eq(inspect(m).recoveries, 0);
}
END_TEST

START_TEST(test_mutex_busy_timeout_live_owner) {
    H = tMem(sizeof *H);
    ck_rc(fastMutexInit(S, &H->m, 0), DKSHM_OK);
    pid_t pid = testSpawn(holdUntilReleased, NULL);
    ck_assert(waitAtLeast(&H->held, 1, LONG_WAIT_MS));

    ck_rc(fastMutexTryLock(S, &H->m), DKSHM_BUSY);
    uint64_t t0 = nowNs();
    ck_rc(fastMutexTimedLock(S, &H->m, 100 * MS), DKSHM_TIMEDOUT);
    ck_assert_uint_ge(nowNs() - t0, 100 * MS);
    /* Longer than the owner-check period: the owner is checked and found
     * alive, so it is still a timeout, not a takeover. */
    ck_rc(fastMutexTimedLock(S, &H->m, 3 * DKSHM_LOCK_POLL_MS * MS),
          DKSHM_TIMEDOUT);

    fastMutexState st = inspect(&H->m);
    ck_assert(st.held);
    ck_assert(!st.ownerDead);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)pid);
    ck_assert_uint_ne(st.ownerSlot, S->slot);
    /* Unlocking someone else's lock is refused and changes nothing. */
    ck_rc(fastMutexUnlock(S, &H->m), DKSHM_INVALID);
    st = inspect(&H->m);
    ck_assert(st.held);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)pid);

    st32(&H->release, 1);
    reapChild(pid, 0);
    ck_rc(fastMutexLock(S, &H->m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, &H->m), DKSHM_OK);
    ck_assert_uint_eq(inspect(&H->m).recoveries, 0);
}
END_TEST

static int blockedWaiter(void *arg) {
    int i = (int)(intptr_t)arg;
    inc32(&H->started);
    int rc = fastMutexLock(S, &H->m);
    H->rc[i] = rc;
    if (rc != DKSHM_OK && rc != DKSHM_RECOVERED)
        return 1;
    H->got++; /* under the lock */
    usleep(2000);
    return fastMutexUnlock(S, &H->m) == DKSHM_OK ? 0 : 2;
}

/* Poll M until a waiter has set its waiters bit. */
static bool waitForWaiters(const fastMutex *m) {
    for (int i = 0; i < LONG_WAIT_MS; i++) {
        if (inspect(m).waiters)
            return true;
        usleep(1000);
    }
    return false;
}

START_TEST(test_mutex_inspect_waiters) {
    H = tMem(sizeof *H);
    ck_rc(fastMutexInit(S, &H->m, 0), DKSHM_OK);
    pid_t holder = testSpawn(holdUntilReleased, NULL);
    ck_assert(waitAtLeast(&H->held, 1, LONG_WAIT_MS));
    pid_t waiter = testSpawn(blockedWaiter, (void *)(intptr_t)0);
    ck_assert_msg(waitForWaiters(&H->m), "the waiters bit never showed");
    fastMutexState st = inspect(&H->m);
    ck_assert(st.held && st.waiters && !st.ownerDead);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)holder);
    ck_assert_uint_eq(st.undoRecords, 0);

    st32(&H->release, 1);
    reapChild(holder, 0);
    reapChild(waiter, 0);
    ck_assert_int_eq(H->rc[0], DKSHM_OK);
    ck_assert_uint_eq(H->got, 1);
    st = inspect(&H->m);
    ck_assert(!st.held);
    ck_assert_uint_eq(st.recoveries, 0);
}
END_TEST

START_TEST(test_mutex_null_and_bad_args) {
    fastMutex *m = tMem(sizeof *m);
    fastCond *c = tMem(sizeof *c);
    fastRWLock *l = tMem(sizeof *l);
    fastMutexState st;
    ck_rc(fastMutexInit(NULL, m, 0), DKSHM_INVALID);
    ck_rc(fastMutexInit(S, NULL, 0), DKSHM_INVALID);
    ck_rc(fastMutexLock(NULL, m), DKSHM_INVALID);
    ck_rc(fastMutexLock(S, NULL), DKSHM_INVALID);
    ck_rc(fastMutexTryLock(NULL, m), DKSHM_INVALID);
    ck_rc(fastMutexTryLock(S, NULL), DKSHM_INVALID);
    ck_rc(fastMutexTimedLock(NULL, m, MS), DKSHM_INVALID);
    ck_rc(fastMutexTimedLock(S, NULL, MS), DKSHM_INVALID);
    ck_rc(fastMutexUnlock(NULL, m), DKSHM_INVALID);
    ck_rc(fastMutexUnlock(S, NULL), DKSHM_INVALID);
    ck_rc(fastMutexInspect(NULL, m, &st), DKSHM_INVALID);
    ck_rc(fastMutexInspect(S, NULL, &st), DKSHM_INVALID);
    ck_rc(fastMutexInspect(S, m, NULL), DKSHM_INVALID);
    ck_rc(fastCondInit(NULL, c), DKSHM_INVALID);
    ck_rc(fastCondInit(S, NULL), DKSHM_INVALID);
    ck_rc(fastCondWait(NULL, c, m, MS), DKSHM_INVALID);
    ck_rc(fastCondWait(S, NULL, m, MS), DKSHM_INVALID);
    ck_rc(fastCondWait(S, c, NULL, MS), DKSHM_INVALID);
    ck_rc(fastCondSignal(NULL, c), DKSHM_INVALID);
    ck_rc(fastCondSignal(S, NULL), DKSHM_INVALID);
    ck_rc(fastCondBroadcast(NULL, c), DKSHM_INVALID);
    ck_rc(fastCondBroadcast(S, NULL), DKSHM_INVALID);
    ck_rc(fastRWLockInit(NULL, l, 0), DKSHM_INVALID);
    ck_rc(fastRWLockInit(S, NULL, 0), DKSHM_INVALID);
    ck_rc(fastRWLockRead(NULL, l, 0), DKSHM_INVALID);
    ck_rc(fastRWLockRead(S, NULL, 0), DKSHM_INVALID);
    ck_rc(fastRWLockReadUnlock(NULL, l), DKSHM_INVALID);
    ck_rc(fastRWLockReadUnlock(S, NULL), DKSHM_INVALID);
    ck_rc(fastRWLockWrite(NULL, l, 0), DKSHM_INVALID);
    ck_rc(fastRWLockWrite(S, NULL, 0), DKSHM_INVALID);
    ck_rc(fastRWLockWriteUnlock(NULL, l), DKSHM_INVALID);
    ck_rc(fastRWLockWriteUnlock(S, NULL), DKSHM_INVALID);

    /* A lock outside the segment, an undo log outside it. */
    fastMutex onStack;
    ck_rc(fastMutexInit(S, &onStack, 0), DKSHM_INVALID);
    ck_rc(fastMutexInit(S, m, S->size + 4096), DKSHM_INVALID);
    ck_rc(fastMutexInit(S, m, S->size - 8), DKSHM_INVALID);
    /* Still usable after the refusals. */
    ck_rc(fastMutexInit(S, m, 0), DKSHM_OK);
    ck_rc(fastCondWait(S, c, m, MS), DKSHM_INVALID); /* m not held */
    ck_assert(!inspect(m).held);
}
END_TEST

/* A lock word must be 4-aligned for the futex (FUTEX_WAIT fails with
 * EINVAL otherwise, so waiters would spin instead of sleeping) and an undo
 * log 8-aligned (the lock code itself treats any other log as CORRUPT):
 * Init refuses both instead of accepting a lock that cannot work. */
START_TEST(test_mutex_init_rejects_misaligned) {
    uint8_t *mem = tMem(256);
    dkUndo *u = tUndo(4);
    ck_rc(fastMutexInit(S, (fastMutex *)(void *)(mem + 1), 0), DKSHM_INVALID);
    ck_rc(fastMutexInit(S, (fastMutex *)(void *)mem, dkOff(S, u) + 4),
          DKSHM_INVALID);
    ck_rc(fastMutexInit(S, (fastMutex *)(void *)mem, dkOff(S, u)), DKSHM_OK);
}
END_TEST

START_TEST(test_mutex_readonly_handle) {
    const char *name = testSegName("fmro");
    dkshm *rw = NULL, *ro = NULL;
    dkshmUnlink(name);
    ck_rc(dkshmCreate(name, SEG_BYTES, NULL, &rw), DKSHM_OK);
    int arc = dkshmAttach(name, DKSHM_RDONLY, &ro);
    dkshmUnlink(name);
    ck_assert_msg(arc == DKSHM_OK, "read-only attach: %s", dkshmErrName(arc));
    ck_assert(dkshmReadOnly(ro));

    dkoff off = (rw->hdr->heap + rw->hdr->heapSize - 4096) & ~(dkoff)63;
    ck_assert_int_eq(dkCommit(rw, off, 4096), DKSHM_OK);
    fastMutex *m = dkPtr(rw, off);
    fastCond *c = dkPtr(rw, off + 64);
    fastRWLock *l = dkPtr(rw, off + 128);
    ck_rc(fastMutexInit(rw, m, 0), DKSHM_OK);
    ck_rc(fastCondInit(rw, c), DKSHM_OK);
    ck_rc(fastRWLockInit(rw, l, 0), DKSHM_OK);
    fastMutex *rom = dkPtr(ro, off);
    fastCond *roc = dkPtr(ro, off + 64);
    fastRWLock *rol = dkPtr(ro, off + 128);

    ck_rc(fastMutexInit(ro, rom, 0), DKSHM_READONLY);
    ck_rc(fastMutexLock(ro, rom), DKSHM_READONLY);
    ck_rc(fastMutexTryLock(ro, rom), DKSHM_READONLY);
    ck_rc(fastMutexTimedLock(ro, rom, MS), DKSHM_READONLY);
    ck_rc(fastMutexUnlock(ro, rom), DKSHM_READONLY);
    ck_rc(fastCondInit(ro, roc), DKSHM_READONLY);
    ck_rc(fastRWLockInit(ro, rol, 0), DKSHM_READONLY);
    ck_rc(fastRWLockRead(ro, rol, MS), DKSHM_READONLY);
    ck_rc(fastRWLockReadUnlock(ro, rol), DKSHM_READONLY);
    ck_rc(fastRWLockWrite(ro, rol, MS), DKSHM_READONLY);
    ck_rc(fastRWLockWriteUnlock(ro, rol), DKSHM_READONLY);

    /* Inspection works read-only and sees the writer's hold. */
    fastMutexState st;
    ck_rc(fastMutexInspect(ro, rom, &st), DKSHM_OK);
    ck_assert(!st.held);
    ck_rc(fastMutexLock(rw, m), DKSHM_OK);
    ck_rc(fastMutexInspect(ro, rom, &st), DKSHM_OK);
    ck_assert(st.held && !st.ownerDead);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)getpid());
    ck_rc(fastMutexUnlock(ro, rom), DKSHM_READONLY);
    ck_rc(fastMutexUnlock(rw, m), DKSHM_OK);

    dkshmDetach(ro);
    dkshmDetach(rw);
}
END_TEST

/* fastCond calls through a read-only handle must answer READONLY, not
 * write into the PROT_READ mapping. Run in a child so that a crash is
 * reported as such. */
static dkshm *roS;
static dkoff roOff;
static int condReadOnlyCalls(void *arg) {
    int which = (int)(intptr_t)arg;
    fastMutex *m = dkPtr(roS, roOff);
    fastCond *c = dkPtr(roS, roOff + 64);
    int rc = which == 0   ? fastCondSignal(roS, c)
             : which == 1 ? fastCondBroadcast(roS, c)
                          : fastCondWait(roS, c, m, MS);
    return rc == DKSHM_READONLY ? 0 : 1;
}

START_TEST(test_cond_readonly_handle) {
    const char *name = testSegName("fmcro");
    dkshm *rw = NULL;
    dkshmUnlink(name);
    ck_rc(dkshmCreate(name, SEG_BYTES, NULL, &rw), DKSHM_OK);
    int arc = dkshmAttach(name, DKSHM_RDONLY, &roS);
    dkshmUnlink(name);
    ck_assert_int_eq(arc, DKSHM_OK);
    roOff = (rw->hdr->heap + rw->hdr->heapSize - 4096) & ~(dkoff)63;
    ck_assert_int_eq(dkCommit(rw, roOff, 4096), DKSHM_OK);
    ck_rc(fastMutexInit(rw, dkPtr(rw, roOff), 0), DKSHM_OK);
    ck_rc(fastCondInit(rw, dkPtr(rw, roOff + 64)), DKSHM_OK);
    static const char *what[] = {"fastCondSignal", "fastCondBroadcast",
                                 "fastCondWait"};
    for (int i = 0; i < 3; i++) {
        int st = testInChild(condReadOnlyCalls, (void *)(intptr_t)i);
        ck_assert_msg(st == 0,
                      "%s on a read-only handle: %s (status %d), expected "
                      "DKSHM_READONLY",
                      what[i],
                      st > 128 ? "the process was killed by a signal"
                               : "wrong return code, or a crash caught by a "
                                 "sanitizer",
                      st);
    }
    dkshmDetach(roS);
    dkshmDetach(rw);
}
END_TEST

/* ===== 2. mutual exclusion ================================================ */

#define EXCL_ITERS 200000

typedef struct exclCtl { /* in the segment */
    fastMutex m;
    uint8_t pad0[64 - sizeof(fastMutex)];
    uint64_t counter; /* guarded by m, deliberately not atomic */
    uint64_t inside;  /* must be 0 on entry: another check of exclusion */
    uint32_t bad;
} exclCtl;

static exclCtl *X;

static void *exclLoop(void *arg) {
    (void)arg;
    for (int i = 0; i < EXCL_ITERS; i++) {
        int rc = fastMutexLock(S, &X->m);
        if (rc != DKSHM_OK) {
            inc32(&X->bad);
            continue;
        }
        if (X->inside++ != 0)
            inc32(&X->bad);
        X->counter++;
        X->inside--;
        if (fastMutexUnlock(S, &X->m) != DKSHM_OK)
            inc32(&X->bad);
    }
    return NULL;
}

static int exclThreads(int n) {
    pthread_t t[8];
    for (int i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, exclLoop, NULL) != 0)
            return 1;
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    return 0;
}

static int exclProcess(void *arg) {
    int threads = (int)(intptr_t)arg;
    if (threads <= 1) {
        exclLoop(NULL);
        return 0;
    }
    return exclThreads(threads);
}

static void exclSetup(void) {
    X = tMem(sizeof *X);
    ck_rc(fastMutexInit(S, &X->m, 0), DKSHM_OK);
}

static void exclCheck(uint64_t expect) {
    ck_assert_uint_eq(X->bad, 0);
    ck_assert_uint_eq(X->counter, expect);
    fastMutexState st = inspect(&X->m);
    ck_assert(!st.held);
    ck_assert_uint_eq(st.recoveries, 0);
}

START_TEST(test_excl_processes) {
    exclSetup();
    pid_t p[4];
    for (int i = 0; i < 4; i++)
        p[i] = testSpawn(exclProcess, (void *)(intptr_t)1);
    for (int i = 0; i < 4; i++)
        reapChild(p[i], 0);
    exclCheck(4ull * EXCL_ITERS);
}
END_TEST

START_TEST(test_excl_threads) {
    exclSetup();
    ck_assert_int_eq(exclThreads(4), 0);
    exclCheck(4ull * EXCL_ITERS);
}
END_TEST

START_TEST(test_excl_processes_and_threads) {
    exclSetup();
    pid_t p[2];
    for (int i = 0; i < 2; i++)
        p[i] = testSpawn(exclProcess, (void *)(intptr_t)2);
    for (int i = 0; i < 2; i++)
        reapChild(p[i], 0);
    exclCheck(4ull * EXCL_ITERS);
}
END_TEST

/* Many threads of one process waiting for the same lock at once: every
 * one of them must get it in turn (the lock is thread-safe; nothing in its
 * contract limits how many threads may wait). The lock has an undo log, so
 * each holder is also recorded in the process's table slot. */
#define WAIT_THREADS 40

static uint32_t waitStarted;
static int32_t waitRc[WAIT_THREADS];

static void *waitOnce(void *arg) {
    int i = (int)(intptr_t)arg;
    inc32(&waitStarted);
    int rc = fastMutexLock(S, &X->m);
    waitRc[i] = rc;
    if (rc == DKSHM_OK) {
        X->counter++;
        fastMutexUnlock(S, &X->m);
    }
    return NULL;
}

START_TEST(test_excl_many_waiting_threads) {
    X = tMem(sizeof *X);
    ck_rc(fastMutexInit(S, &X->m, dkOff(S, tUndo(4))), DKSHM_OK);
    ck_rc(fastMutexLock(S, &X->m), DKSHM_OK);
    pthread_t t[WAIT_THREADS];
    for (int i = 0; i < WAIT_THREADS; i++)
        ck_assert_int_eq(
            pthread_create(&t[i], NULL, waitOnce, (void *)(intptr_t)i), 0);
    ck_assert(waitAtLeast(&waitStarted, WAIT_THREADS, LONG_WAIT_MS));
    usleep(50000); /* let them reach the lock */
    ck_rc(fastMutexUnlock(S, &X->m), DKSHM_OK);
    for (int i = 0; i < WAIT_THREADS; i++)
        pthread_join(t[i], NULL);
    int bad = 0, first = DKSHM_OK;
    for (int i = 0; i < WAIT_THREADS; i++)
        if (waitRc[i] != DKSHM_OK && bad++ == 0)
            first = waitRc[i];
    ck_assert_msg(bad == 0,
                  "%d of %d threads waiting for one lock failed (first "
                  "error %s)",
                  bad, WAIT_THREADS, dkshmErrName(first));
    ck_assert_uint_eq(X->counter, WAIT_THREADS);
}
END_TEST

/* ===== 3. robustness ====================================================== */

START_TEST(test_robust_owner_killed_itself) {
    fastMutex *m = tMem(sizeof *m);
    ck_rc(fastMutexInit(S, m, 0), DKSHM_OK);
    pid_t pid = deadHolder(m);

    fastMutexState st = inspect(m);
    ck_assert(st.held && st.ownerDead);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)pid);
    /* A dead owner's lock is not released by an unlock from someone else. */
    ck_rc(fastMutexUnlock(S, m), DKSHM_INVALID);

    ck_rc(fastMutexLock(S, m), DKSHM_RECOVERED);
    st = inspect(m);
    ck_assert(st.held && !st.ownerDead);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)getpid());
    ck_assert_uint_eq(st.recoveries, 1);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
    ck_rc(fastMutexLock(S, m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
    ck_assert_uint_eq(inspect(m).recoveries, 1);
}
END_TEST

/* Killed by the parent while it sleeps holding the lock; the parent does
 * not wait for it first, so the owner is a zombie when the lock is taken. */
START_TEST(test_robust_owner_killed_zombie) {
    H = tMem(sizeof *H);
    ck_rc(fastMutexInit(S, &H->m, 0), DKSHM_OK);
    pid_t pid = testSpawn(holdForever, NULL);
    ck_assert(waitAtLeast(&H->held, 1, LONG_WAIT_MS));
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_rc(fastMutexLock(S, &H->m), DKSHM_RECOVERED);
    ck_assert_uint_eq(inspect(&H->m).recoveries, 1);
    ck_rc(fastMutexUnlock(S, &H->m), DKSHM_OK);
    reapChild(pid, TEST_KILLED);
    ck_rc(fastMutexLock(S, &H->m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, &H->m), DKSHM_OK);
}
END_TEST

START_TEST(test_robust_sleeping_waiters) {
    H = tMem(sizeof *H);
    ck_rc(fastMutexInit(S, &H->m, 0), DKSHM_OK);
    pid_t holder = testSpawn(holdForever, NULL);
    ck_assert(waitAtLeast(&H->held, 1, LONG_WAIT_MS));
    pid_t w[2];
    for (int i = 0; i < 2; i++)
        w[i] = testSpawn(blockedWaiter, (void *)(intptr_t)i);
    ck_assert(waitAtLeast(&H->started, 2, LONG_WAIT_MS));
    ck_assert(waitForWaiters(&H->m));
    usleep(30000); /* let both reach their futex sleep */
    ck_assert_uint_eq(H->got, 0);

    ck_assert_int_eq(kill(holder, SIGKILL), 0);
    reapChild(holder, TEST_KILLED);
    for (int i = 0; i < 2; i++)
        reapChild(w[i], 0);
    ck_assert_uint_eq(H->got, 2);
    int recovered =
        (H->rc[0] == DKSHM_RECOVERED) + (H->rc[1] == DKSHM_RECOVERED);
    int ok = (H->rc[0] == DKSHM_OK) + (H->rc[1] == DKSHM_OK);
    ck_assert_msg(recovered == 1 && ok == 1, "waiters got %s and %s",
                  dkshmErrName(H->rc[0]), dkshmErrName(H->rc[1]));
    ck_assert_uint_eq(inspect(&H->m).recoveries, 1);
    ck_rc(fastMutexLock(S, &H->m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, &H->m), DKSHM_OK);
}
END_TEST

START_TEST(test_robust_trylock) {
    fastMutex *m = tMem(sizeof *m);
    ck_rc(fastMutexInit(S, m, 0), DKSHM_OK);
    deadHolder(m);
    ck_rc(fastMutexTryLock(S, m), DKSHM_RECOVERED);
    ck_assert_uint_eq(inspect(m).recoveries, 1);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
    ck_rc(fastMutexTryLock(S, m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
}
END_TEST

START_TEST(test_robust_timedlock) {
    fastMutex *m = tMem(sizeof *m);
    ck_rc(fastMutexInit(S, m, 0), DKSHM_OK);
    deadHolder(m);
    ck_rc(fastMutexTimedLock(S, m, 5000 * MS), DKSHM_RECOVERED);
    ck_assert_uint_eq(inspect(m).recoveries, 1);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
    ck_rc(fastMutexTimedLock(S, m, 5000 * MS), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
}
END_TEST

/* A caller that polls with timeouts shorter than DKSHM_LOCK_POLL_MS must
 * still get a lock whose owner is dead: no one may wait on a dead process
 * for longer than it takes to notice (DESIGN.md, crash consistency 1). */
START_TEST(test_robust_short_timedlocks_recover) {
    fastMutex *m = tMem(sizeof *m);
    ck_rc(fastMutexInit(S, m, 0), DKSHM_OK);
    deadHolder(m);
    int rc = DKSHM_TIMEDOUT;
    int tries = 0;
    while (rc == DKSHM_TIMEDOUT && tries < 200) {
        rc = fastMutexTimedLock(S, m, 2 * MS);
        tries++;
    }
    ck_assert_msg(rc == DKSHM_RECOVERED,
                  "%d timed locks of 2 ms on a lock whose owner is dead: "
                  "last returned %s, expected RECOVERED",
                  tries, dkshmErrName(rc));
    ck_rc(fastMutexUnlock(S, m), DKSHM_OK);
}
END_TEST

/* A fork-only pool whose workers keep dying while holding a lock (with an
 * undo log, so each hold is recorded in the worker's table slot), each time
 * recovered by the next locker, must not run out of process-table slots:
 * a new worker registers by reusing a dead one's slot once its locks are
 * recovered. */
static fastMutex *poolM;
static dkUndo *poolLog;
static uint64_t *poolWord;

static int poolWorkerDies(void *arg) {
    (void)arg;
    int rc = fastMutexLock(S, poolM);
    if (rc != DKSHM_OK && rc != DKSHM_RECOVERED)
        return 10 + (rc < 0 ? -rc : rc);
    dkUndoSet64(S, poolLog, poolWord, 1); /* rolled back by the next locker */
    raise(SIGKILL);
    return 2;
}

START_TEST(test_robust_dead_holders_free_their_slots) {
    dkshmDetach(S);
    dkshmOptions opt = {.maxProcs = 8};
    segOpen(&opt);
    poolM = tMem(sizeof *poolM);
    poolLog = tUndo(4);
    poolWord = tMem(sizeof *poolWord);
    ck_rc(fastMutexInit(S, poolM, dkOff(S, poolLog)), DKSHM_OK);
    for (int i = 0; i < 3 * 8; i++) {
        int st = testInChild(poolWorkerDies, NULL);
        ck_assert_msg(st == TEST_KILLED,
                      "worker %d (table of 8 slots) could not lock: %s "
                      "(exit status %d)",
                      i, st > 10 && st < 128 ? dkshmErrName(10 - st) : "?", st);
        ck_rc(fastMutexLock(S, poolM), DKSHM_RECOVERED);
        ck_assert_uint_eq(*poolWord, 0);
        ck_rc(fastMutexUnlock(S, poolM), DKSHM_OK);
    }
}
END_TEST

/* A process that leaves the segment while holding a lock (a caller error,
 * but the lock must not be wedged by it): its slot is freed at once and the
 * next process to register takes it. The (slot, generation) in the lock
 * word must still name a dead owner although the slot is live again. */
static fastMutex *reuseM;
static uint32_t *reuseSlot;

static int lockThenDetach(void *arg) {
    (void)arg;
    if (fastMutexLock(S, reuseM) != DKSHM_OK)
        return 1;
    st32(&reuseSlot[0], S->slot);
    dkshmDetach(S); /* still holding reuseM */
    return 0;
}

static int lockExpectRecovered(void *arg) {
    (void)arg;
    int rc = fastMutexLock(S, reuseM);
    st32(&reuseSlot[1], S->slot);
    if (rc != DKSHM_RECOVERED)
        return 10 + (rc < 0 ? -rc : rc);
    return fastMutexUnlock(S, reuseM) == DKSHM_OK ? 0 : 2;
}

START_TEST(test_robust_owner_slot_reused) {
    reuseM = tMem(sizeof *reuseM);
    reuseSlot = tMem(2 * sizeof *reuseSlot);
    ck_rc(fastMutexInit(S, reuseM, 0), DKSHM_OK);
    reapChild(testSpawn(lockThenDetach, NULL), 0);
    fastMutexState st = inspect(reuseM);
    ck_assert(st.held && st.ownerDead);
    ck_assert_uint_eq(st.ownerPid, 0); /* the slot no longer names it */

    /* The next process to register takes the first free slot: the one the
     * departed owner had. */
    reuseSlot[1] = UINT32_MAX;
    int status = testInChild(lockExpectRecovered, NULL);
    ck_assert_uint_eq(reuseSlot[1], reuseSlot[0]);
    ck_assert_msg(status == 0, "new process in slot %u: status %d",
                  reuseSlot[0], status);
    ck_assert_uint_eq(inspect(reuseM).recoveries, 1);
    ck_rc(fastMutexLock(S, reuseM), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, reuseM), DKSHM_OK);
}
END_TEST

/* ===== 4. the undo log ==================================================== */

#define WORDS 8
#define UNDO_CAP 64

typedef struct undoCtl { /* in the segment */
    fastMutex m;
    uint8_t pad0[64 - sizeof(fastMutex)];
    uint64_t a[WORDS]; /* invariant: all equal */
    uint32_t stage;    /* child's progress, not logged: 1 in op, 2 unlock */
    uint32_t pad1;
    uint64_t before; /* a[0] before the current child ran */
    uint64_t kept;   /* deaths after which the change stayed */
    uint64_t undone; /* deaths after which it was rolled back */
    uint64_t deaths;
} undoCtl;

static undoCtl *U;
static dkUndo *UL;

static void undoSetup(void) {
    U = tMem(sizeof *U);
    UL = tUndo(UNDO_CAP);
    ck_rc(fastMutexInit(S, &U->m, dkOff(S, UL)), DKSHM_OK);
}

/* The operation: increment all the words, logged, under the lock. */
static int undoOp(void *arg) {
    (void)arg;
    int rc = fastMutexLock(S, &U->m);
    if (rc != DKSHM_OK)
        return 10 + (rc < 0 ? -rc : rc);
    st32(&U->stage, 1);
    uint64_t v = U->a[0] + 1;
    for (int i = 0; i < WORDS; i++)
        dkUndoSet64(S, UL, &U->a[i], v);
    st32(&U->stage, 2);
    return fastMutexUnlock(S, &U->m) == DKSHM_OK ? 0 : 3;
}

/* Lock (recovering), check all-or-nothing, unlock. Returns a[0]. */
static uint64_t undoVerify(uint64_t before, bool mayBeDone) {
    fastMutexState st = inspect(&U->m);
    int want = st.held ? DKSHM_RECOVERED : DKSHM_OK;
    ck_assert_msg(!st.held || st.ownerDead, "a live process holds the lock");
    ck_rc(fastMutexLock(S, &U->m), want);
    st = inspect(&U->m);
    ck_assert_uint_eq(st.undoRecords, 0);
    ck_assert_uint_eq(__atomic_load_n(&UL->count, __ATOMIC_RELAXED), 0);
    ck_assert_uint_eq(UL->overflow, 0);
    uint64_t v = U->a[0];
    for (int i = 1; i < WORDS; i++)
        ck_assert_msg(U->a[i] == v, "a[%d] = %llu but a[0] = %llu", i,
                      (unsigned long long)U->a[i], (unsigned long long)v);
    if (mayBeDone)
        ck_assert_msg(v == before || v == before + 1,
                      "value %llu, expected %llu or %llu",
                      (unsigned long long)v, (unsigned long long)before,
                      (unsigned long long)before + 1);
    else
        ck_assert_msg(v == before, "value %llu, expected %llu (rolled back)",
                      (unsigned long long)v, (unsigned long long)before);
    ck_rc(fastMutexUnlock(S, &U->m), DKSHM_OK);
    return v;
}

static void undoAfter(void *arg, long k) {
    (void)arg;
    (void)k;
    U->deaths++;
    /* Died before it called unlock: the change must be undone. In unlock
     * (before or after the commit) either outcome is whole. */
    bool inUnlock = ld32(&U->stage) == 2;
    uint64_t v = undoVerify(U->before, inUnlock);
    if (v == U->before)
        U->undone++;
    else
        U->kept++;
    U->before = v;
    st32(&U->stage, 0);
}

START_TEST(test_undo_crash_walk) {
    undoSetup();
    /* Start from a non-zero value so that a rollback to zero is caught. */
    for (int i = 0; i < WORDS; i++)
        U->a[i] = 41;
    U->before = 41;
    long points = testCrashWalk(undoOp, undoAfter, NULL, 200);
    /* RECOVERY.md §4: a point after each log append and each change, and
     * around the commit. */
    ck_assert_int_ge(points, 2 * WORDS + 1);
    ck_assert_int_eq(U->deaths, points);
    ck_assert_uint_ge(U->undone, 2 * WORDS);
    ck_assert_uint_ge(U->kept, 1); /* died after the commit: change stays */
    ck_assert_uint_eq(inspect(&U->m).recoveries, (uint32_t)points);
    /* The last child ran to the end. */
    uint64_t v = undoVerify(U->before + 1, false);
    ck_assert_uint_eq(v, 41 + U->kept + 1);
}
END_TEST

/* Mixed widths (8-, 4- and 1-byte words and a byte range) roll back too. */
typedef struct mixCtl { /* in the segment */
    fastMutex m;
    uint8_t pad0[64 - sizeof(fastMutex)];
    uint64_t w64;
    uint32_t w32;
    uint8_t w8;
    uint8_t pad1[3];
    uint64_t bytes[2];
} mixCtl;

static mixCtl *MX;
static dkUndo *MXL;

static int mixOp(void *arg) {
    (void)arg;
    if (fastMutexLock(S, &MX->m) != DKSHM_OK)
        return 1;
    uint64_t n = MX->w64 + 1;
    uint64_t src[2] = {n, n};
    dkUndoSet64(S, MXL, &MX->w64, n);
    dkUndoSet32(S, MXL, &MX->w32, (uint32_t)n);
    dkUndoSet8(S, MXL, &MX->w8, (uint8_t)n);
    dkUndoSetBytes(S, MXL, MX->bytes, src, sizeof src);
    return fastMutexUnlock(S, &MX->m) == DKSHM_OK ? 0 : 2;
}

static void mixCheck(void) {
    uint64_t n = MX->w64;
    ck_assert_uint_eq(MX->w32, (uint32_t)n);
    ck_assert_uint_eq(MX->w8, (uint8_t)n);
    ck_assert_uint_eq(MX->bytes[0], n);
    ck_assert_uint_eq(MX->bytes[1], n);
}

static void mixAfter(void *arg, long k) {
    (void)arg;
    (void)k;
    int rc = fastMutexLock(S, &MX->m);
    ck_assert_msg(rc == DKSHM_RECOVERED || rc == DKSHM_OK, "lock: %s",
                  dkshmErrName(rc));
    mixCheck();
    ck_rc(fastMutexUnlock(S, &MX->m), DKSHM_OK);
}

START_TEST(test_undo_mixed_widths) {
    MX = tMem(sizeof *MX);
    MXL = tUndo(UNDO_CAP);
    ck_rc(fastMutexInit(S, &MX->m, dkOff(S, MXL)), DKSHM_OK);
    MX->w64 = 0x1ff; /* the narrow words hold its low bits */
    MX->w32 = 0x1ff;
    MX->w8 = 0xff;
    MX->bytes[0] = MX->bytes[1] = 0x1ff;
    long points = testCrashWalk(mixOp, mixAfter, NULL, 200);
    ck_assert_int_ge(points, 2 * 5);
    ck_rc(fastMutexLock(S, &MX->m), DKSHM_OK);
    mixCheck();
    ck_rc(fastMutexUnlock(S, &MX->m), DKSHM_OK);
}
END_TEST

/* A recoverer killed inside the rollback is recovered by the next locker.
 * Child 1 dies mid-operation at point K1; child 2 takes the lock and is
 * armed to die at its K2-th crash point (the rollback has one after each
 * restore, then its own unlock has the commit's). */
static int undoRecoverer(void *arg) {
    long k2 = (long)(intptr_t)arg;
    dkshmTestCrashAt(k2);
    int rc = fastMutexLock(S, &U->m);
    if (rc != DKSHM_RECOVERED)
        return 10 + (rc < 0 ? -rc : rc);
    return fastMutexUnlock(S, &U->m) == DKSHM_OK ? 0 : 3;
}

static int undoOpAt(void *arg) {
    dkshmTestCrashAt((long)(intptr_t)arg);
    return undoOp(NULL);
}

START_TEST(test_undo_recoverer_killed) {
    undoSetup();
    for (int i = 0; i < WORDS; i++)
        U->a[i] = 7;
    static const long k1s[] = {2, 7, 2 * WORDS - 1};
    int midRollbackDeaths = 0;
    for (size_t i = 0; i < sizeof k1s / sizeof k1s[0]; i++) {
        for (long k2 = 1; k2 <= 100; k2++) {
            st32(&U->stage, 0);
            int st = testInChild(undoOpAt, (void *)(intptr_t)k1s[i]);
            ck_assert_int_eq(st, TEST_KILLED);
            ck_assert_uint_eq(ld32(&U->stage), 1); /* died inside the op */
            fastMutexState fs = inspect(&U->m);
            ck_assert(fs.held && fs.ownerDead);
            ck_assert_uint_gt(fs.undoRecords, 0);

            fflush(NULL);
            pid_t pid = fork();
            ck_assert_int_ge(pid, 0);
            if (pid == 0)
                _exit(undoRecoverer((void *)(intptr_t)k2));
            st = testWait(pid);
            if (st == TEST_KILLED) {
                fs = inspect(&U->m);
                ck_assert(fs.held && fs.ownerDead);
                /* It died holding the lock it had taken over. */
                ck_assert_uint_eq(fs.ownerPid, (uint32_t)pid);
                if (fs.undoRecords > 0)
                    midRollbackDeaths++;
                undoVerify(7, false);
                continue;
            }
            ck_assert_msg(st == 0, "recoverer exited with %d", st);
            undoVerify(7, false);
            break;
        }
    }
    ck_assert_int_ge(midRollbackDeaths, 3);
}
END_TEST

/* dkshmReap recovers the locks a dead process held (rolling back its
 * interrupted operation) before it frees the process's slot. */
START_TEST(test_undo_reaper_rolls_back) {
    U = tMem(sizeof *U);
    UL = tUndo(UNDO_CAP);
    ck_rc(fastMutexInit(S, &U->m, dkOff(S, UL)), DKSHM_OK);
    for (int i = 0; i < WORDS; i++)
        U->a[i] = 3;
    int st = testInChild(undoOpAt, (void *)(intptr_t)WORDS); /* mid-op */
    ck_assert_int_eq(st, TEST_KILLED);
    fastMutexState fs = inspect(&U->m);
    ck_assert(fs.held && fs.ownerDead && fs.undoRecords > 0);

    size_t reaped = 0;
    ck_rc(dkshmReap(S, &reaped), DKSHM_OK);
    ck_assert_uint_ge(reaped, 1);
    fs = inspect(&U->m);
    ck_assert_msg(!fs.held, "the reaper left the dead process's lock held");
    ck_assert_uint_eq(fs.recoveries, 1);
    ck_assert_uint_eq(__atomic_load_n(&UL->count, __ATOMIC_RELAXED), 0);
    for (int i = 0; i < WORDS; i++)
        ck_assert_uint_eq(U->a[i], 3);
    ck_rc(fastMutexLock(S, &U->m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, &U->m), DKSHM_OK);
}
END_TEST

/* Recovering is a chain: A dies mid-operation holding the lock, B takes
 * it over (rolling A's operation back) and dies holding it. One reap
 * frees both, whatever their order in the table: A's slot must wait for
 * the lock B holds, which the reaper recovers itself. */
START_TEST(test_undo_reaper_chain) {
    U = tMem(sizeof *U);
    UL = tUndo(UNDO_CAP);
    ck_rc(fastMutexInit(S, &U->m, dkOff(S, UL)), DKSHM_OK);
    for (int i = 0; i < WORDS; i++)
        U->a[i] = 5;
    ck_assert_int_eq(testInChild(undoOpAt, (void *)(intptr_t)WORDS),
                     TEST_KILLED);
    dieM = &U->m;
    ck_assert_int_eq(testInChild(lockAndDie, NULL), TEST_KILLED);
    fastMutexState fs = inspect(&U->m);
    ck_assert(fs.held && fs.ownerDead);
    ck_assert_uint_eq(fs.recoveries, 1); /* the second one recovered */
    size_t reaped = 0, n = 0;
    ck_rc(dkshmReap(S, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 2);
    dkshmProcInfo info[8];
    ck_rc(dkshmProcList(S, info, 8, &n), DKSHM_OK);
    for (size_t i = 0; i < n && i < 8; i++)
        ck_assert_msg(info[i].alive, "dead pid %u left in slot %u",
                      info[i].pid, info[i].slot);
    fs = inspect(&U->m);
    ck_assert(!fs.held);
    for (int i = 0; i < WORDS; i++)
        ck_assert_uint_eq(U->a[i], 5);
}
END_TEST

/* The reaper meets a dead owner whose log is damaged: it says CORRUPT,
 * writes nothing through the log, releases the lock and keeps the log so
 * that an inspection still sees it. */
START_TEST(test_undo_reaper_damaged_log) {
    U = tMem(sizeof *U);
    UL = tUndo(UNDO_CAP);
    ck_rc(fastMutexInit(S, &U->m, dkOff(S, UL)), DKSHM_OK);
    for (int i = 0; i < WORDS; i++)
        U->a[i] = 3;
    ck_assert_int_eq(testInChild(undoOpAt, (void *)(intptr_t)WORDS),
                     TEST_KILLED);
    uint32_t n = __atomic_load_n(&UL->count, __ATOMIC_RELAXED);
    ck_assert_uint_gt(n, 0);
    uint64_t before[WORDS];
    for (int i = 0; i < WORDS; i++)
        before[i] = U->a[i];
    UL->rec[0].at = (8ull << 56) | (dkshmCapacity(S) + 64); /* outside */
    ck_rc(dkshmReap(S, NULL), DKSHM_CORRUPT);
    fastMutexState fs = inspect(&U->m);
    ck_assert_msg(!fs.held, "the reaper kept a lock it could not repair");
    ck_assert_uint_eq(__atomic_load_n(&UL->count, __ATOMIC_RELAXED), n);
    for (int i = 0; i < WORDS; i++)
        ck_assert_uint_eq(U->a[i], before[i]);
}
END_TEST

/* A damaged log makes the lock answer CORRUPT (held by the caller) and
 * write nothing, not even the records that look valid. */
enum {
    DMG_OUTSIDE,
    DMG_STRADDLE,
    DMG_NULLOFF,
    DMG_WIDTH,
    DMG_COUNT,
    DMG_CAP,
    DMG_KINDS
};

START_TEST(test_undo_damaged_log) {
    undoSetup();
    static const char *kind[] = {"outside",     "straddling the end",
                                 "offset 0",    "bad width",
                                 "count > cap", "cap past the end"};
    for (int d = 0; d < DMG_KINDS; d++) {
        for (int i = 0; i < WORDS; i++)
            U->a[i] = 5;
        deadHolder(&U->m);
        /* What a dead writer could have left, plus the damage. */
        UL->rec[0].at = (8ull << 56) | dkOff(S, &U->a[0]);
        UL->rec[0].old = 999;
        UL->rec[1].at = (8ull << 56) | dkOff(S, &U->a[1]);
        UL->rec[1].old = 999;
        uint32_t count = 3;
        switch (d) {
        case DMG_OUTSIDE:
            UL->rec[2].at = (8ull << 56) | (S->size + 64);
            break;
        case DMG_STRADDLE:
            UL->rec[2].at = (8ull << 56) | (S->size - 4);
            break;
        case DMG_NULLOFF:
            UL->rec[2].at = (8ull << 56) | 0;
            break;
        case DMG_WIDTH:
            UL->rec[2].at = (3ull << 56) | dkOff(S, &U->a[2]);
            break;
        case DMG_COUNT:
            UL->rec[2].at = (8ull << 56) | dkOff(S, &U->a[2]);
            count = UNDO_CAP + 1;
            break;
        case DMG_CAP:
            UL->rec[2].at = (8ull << 56) | dkOff(S, &U->a[2]);
            UL->cap = 0x7fffffff;
            break;
        }
        UL->rec[2].old = 999;
        __atomic_store_n(&UL->count, count, __ATOMIC_RELEASE);

        int rc = fastMutexLock(S, &U->m);
        ck_assert_msg(rc == DKSHM_CORRUPT, "log %s: lock returned %s", kind[d],
                      dkshmErrName(rc));
        for (int i = 0; i < WORDS; i++)
            ck_assert_msg(U->a[i] == 5, "log %s: a[%d] was written", kind[d],
                          i);
        fastMutexState st = inspect(&U->m);
        ck_assert_msg(st.held && st.ownerPid == (uint32_t)getpid(),
                      "log %s: CORRUPT must leave the lock held by the caller",
                      kind[d]);
        /* The caller decides: here it repairs the log and goes on. */
        UL->cap = UNDO_CAP;
        __atomic_store_n(&UL->count, 0, __ATOMIC_RELEASE);
        ck_rc(fastMutexUnlock(S, &U->m), DKSHM_OK);
        ck_rc(fastMutexLock(S, &U->m), DKSHM_OK);
        ck_rc(fastMutexUnlock(S, &U->m), DKSHM_OK);
    }
}
END_TEST

/* ===== 5. fastCond ======================================================== */

#define RING 16
#define ITEMS 20000

typedef struct condCtl { /* in the segment */
    fastMutex m;
    fastCond notEmpty, notFull, go;
    uint32_t head, tail, count; /* guarded by m */
    uint32_t flag, waiting, woke;
    int32_t rc[4];
    uint64_t ring[RING];
    uint64_t sum;
} condCtl;

static condCtl *C;

static void condSetup(void) {
    C = tMem(sizeof *C);
    ck_rc(fastMutexInit(S, &C->m, 0), DKSHM_OK);
    ck_rc(fastCondInit(S, &C->notEmpty), DKSHM_OK);
    ck_rc(fastCondInit(S, &C->notFull), DKSHM_OK);
    ck_rc(fastCondInit(S, &C->go), DKSHM_OK);
}

static int consumer(void *arg) {
    (void)arg;
    uint64_t sum = 0;
    for (uint64_t want = 1; want <= ITEMS; want++) {
        if (fastMutexLock(S, &C->m) != DKSHM_OK)
            return 1;
        while (C->count == 0)
            if (fastCondWait(S, &C->notEmpty, &C->m, 0) != DKSHM_OK)
                return 2;
        uint64_t v = C->ring[C->head];
        C->head = (C->head + 1) % RING;
        C->count--;
        fastCondSignal(S, &C->notFull);
        fastMutexUnlock(S, &C->m);
        if (v != want)
            return 3; /* lost, duplicated or reordered */
        sum += v;
    }
    C->sum = sum;
    return 0;
}

START_TEST(test_cond_producer_consumer) {
    condSetup();
    pid_t pid = testSpawn(consumer, NULL);
    for (uint64_t v = 1; v <= ITEMS; v++) {
        ck_rc(fastMutexLock(S, &C->m), DKSHM_OK);
        while (C->count == RING)
            ck_rc(fastCondWait(S, &C->notFull, &C->m, 0), DKSHM_OK);
        C->ring[C->tail] = v;
        C->tail = (C->tail + 1) % RING;
        C->count++;
        ck_rc(fastCondSignal(S, &C->notEmpty), DKSHM_OK);
        ck_rc(fastMutexUnlock(S, &C->m), DKSHM_OK);
    }
    reapChild(pid, 0);
    ck_assert_uint_eq(C->sum, (uint64_t)ITEMS * (ITEMS + 1) / 2);
}
END_TEST

/* Waits under C->m until C->flag >= (arg), counting itself in `waiting`. */
static int flagWaiter(void *arg) {
    uint32_t want = (uint32_t)(intptr_t)arg;
    if (fastMutexLock(S, &C->m) != DKSHM_OK)
        return 1;
    C->waiting++;
    while (C->flag < want)
        if (fastCondWait(S, &C->go, &C->m, 0) != DKSHM_OK)
            return 2;
    C->woke++;
    return fastMutexUnlock(S, &C->m) == DKSHM_OK ? 0 : 3;
}

/* Wait until N waiters announced themselves under the mutex: then they
 * read the sequence before any later signal. */
static void waitWaiting(uint32_t n) {
    for (int i = 0; i < LONG_WAIT_MS; i++) {
        ck_rc(fastMutexLock(S, &C->m), DKSHM_OK);
        uint32_t w = C->waiting;
        ck_rc(fastMutexUnlock(S, &C->m), DKSHM_OK);
        if (w >= n)
            return;
        usleep(1000);
    }
    ck_abort_msg("waiters never arrived");
}

static void raiseFlag(uint32_t v, bool broadcast) {
    ck_rc(fastMutexLock(S, &C->m), DKSHM_OK);
    C->flag = v;
    if (broadcast)
        ck_rc(fastCondBroadcast(S, &C->go), DKSHM_OK);
    else
        ck_rc(fastCondSignal(S, &C->go), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, &C->m), DKSHM_OK);
}

START_TEST(test_cond_signal_flag) {
    condSetup();
    pid_t pid = testSpawn(flagWaiter, (void *)(intptr_t)1);
    waitWaiting(1);
    usleep(20000); /* most likely asleep in the futex by now */
    raiseFlag(1, false);
    reapChild(pid, 0);
    ck_assert_uint_eq(C->woke, 1);
}
END_TEST

START_TEST(test_cond_timed_wait) {
    condSetup();
    ck_rc(fastMutexLock(S, &C->m), DKSHM_OK);
    uint64_t t0 = nowNs();
    ck_rc(fastCondWait(S, &C->go, &C->m, 50 * MS), DKSHM_TIMEDOUT);
    ck_assert_uint_ge(nowNs() - t0, 50 * MS);
    fastMutexState st = inspect(&C->m);
    ck_assert_msg(st.held && st.ownerPid == (uint32_t)getpid(),
                  "the mutex must be held again after a timed-out wait");
    ck_rc(fastMutexUnlock(S, &C->m), DKSHM_OK);
}
END_TEST

START_TEST(test_cond_broadcast) {
    condSetup();
    pid_t p[3];
    for (int i = 0; i < 3; i++)
        p[i] = testSpawn(flagWaiter, (void *)(intptr_t)1);
    waitWaiting(3);
    usleep(20000);
    raiseFlag(1, true);
    for (int i = 0; i < 3; i++)
        reapChild(p[i], 0);
    ck_assert_uint_eq(C->woke, 3);
}
END_TEST

START_TEST(test_cond_waiter_killed) {
    condSetup();
    pid_t victim = testSpawn(flagWaiter, (void *)(intptr_t)100);
    waitWaiting(1);
    usleep(20000);
    ck_assert_int_eq(kill(victim, SIGKILL), 0);
    reapChild(victim, TEST_KILLED);
    /* It died asleep, not holding the mutex. */
    ck_rc(fastMutexLock(S, &C->m), DKSHM_OK);
    ck_rc(fastMutexUnlock(S, &C->m), DKSHM_OK);
    /* Its wait still counts until it is reaped: then signalers need not
     * wake anybody. */
    ck_assert_uint_eq(__atomic_load_n(&C->go.waiters, __ATOMIC_RELAXED), 1);
    ck_rc(dkshmReap(S, NULL), DKSHM_OK);
    ck_assert_uint_eq(__atomic_load_n(&C->go.waiters, __ATOMIC_RELAXED), 0);

    /* Signal still reaches a live waiter... */
    pid_t a = testSpawn(flagWaiter, (void *)(intptr_t)1);
    waitWaiting(2);
    usleep(20000);
    raiseFlag(1, false);
    reapChild(a, 0);
    /* ...and broadcast reaches two. */
    pid_t b[2];
    for (int i = 0; i < 2; i++)
        b[i] = testSpawn(flagWaiter, (void *)(intptr_t)2);
    waitWaiting(4);
    usleep(20000);
    raiseFlag(2, true);
    for (int i = 0; i < 2; i++)
        reapChild(b[i], 0);
    ck_assert_uint_eq(C->woke, 3);
}
END_TEST

/* The mutex's owner dies between signalling and unlocking: the waiter's
 * return from fastCondWait takes the mutex over and says so. */
static int recoveringWaiter(void *arg) {
    (void)arg;
    if (fastMutexLock(S, &C->m) != DKSHM_OK)
        return 1;
    C->waiting++;
    int rc = DKSHM_OK;
    while (C->flag == 0) {
        rc = fastCondWait(S, &C->go, &C->m, 0);
        if (rc != DKSHM_OK && rc != DKSHM_RECOVERED)
            return 2;
    }
    C->rc[0] = rc;
    fastMutexUnlock(S, &C->m);
    return rc == DKSHM_RECOVERED ? 0 : 4;
}

static int signalAndDie(void *arg) {
    (void)arg;
    if (fastMutexLock(S, &C->m) != DKSHM_OK)
        return 1;
    C->flag = 1;
    fastCondSignal(S, &C->go);
    raise(SIGKILL);
    return 2;
}

START_TEST(test_cond_wait_recovers_mutex) {
    condSetup();
    pid_t w = testSpawn(recoveringWaiter, NULL);
    waitWaiting(1);
    pid_t k = testSpawn(signalAndDie, NULL);
    reapChild(k, TEST_KILLED);
    int st = testWait(w);
    ck_assert_msg(st == 0, "waiter: status %d, last wait returned %s", st,
                  dkshmErrName(C->rc[0]));
    ck_assert_uint_eq(inspect(&C->m).recoveries, 1);
}
END_TEST

/* ===== 6. fastRWLock ====================================================== */

typedef struct rwCtl { /* in the segment */
    fastRWLock l;
    uint8_t pad0[64 - sizeof(fastRWLock) % 64];
    uint32_t readers, writers, violations, release, ready;
    uint32_t reads, writes;
    int32_t rc[4];
    uint64_t a[WORDS];
} rwCtl;

static rwCtl *R;
static dkUndo *RL;

static void rwSetup(bool withUndo) {
    R = tMem(sizeof *R);
    RL = withUndo ? tUndo(UNDO_CAP) : NULL;
    ck_rc(fastRWLockInit(S, &R->l, RL ? dkOff(S, RL) : 0), DKSHM_OK);
}

static int readAndHold(void *arg) {
    (void)arg;
    int rc = fastRWLockRead(S, &R->l, 5000 * MS);
    if (rc != DKSHM_OK)
        return 1;
    inc32(&R->readers);
    inc32(&R->ready);
    if (!waitAtLeast(&R->release, 1, LONG_WAIT_MS))
        return 2;
    __atomic_sub_fetch(&R->readers, 1, __ATOMIC_ACQ_REL);
    return fastRWLockReadUnlock(S, &R->l) == DKSHM_OK ? 0 : 3;
}

START_TEST(test_rw_readers_share) {
    rwSetup(false);
    pid_t p[2];
    for (int i = 0; i < 2; i++)
        p[i] = testSpawn(readAndHold, NULL);
    /* Both inside at once: their read holds overlap. */
    ck_assert_msg(waitAtLeast(&R->readers, 2, LONG_WAIT_MS),
                  "two readers never held the lock together");
    /* A third reader (us) gets in too; a writer does not. */
    ck_rc(fastRWLockRead(S, &R->l, 1000 * MS), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
    uint64_t t0 = nowNs();
    ck_rc(fastRWLockWrite(S, &R->l, 100 * MS), DKSHM_TIMEDOUT);
    ck_assert_uint_ge(nowNs() - t0, 100 * MS);
    /* A timed-out writer leaves no claim behind: readers still get in. */
    ck_rc(fastRWLockRead(S, &R->l, 1000 * MS), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
    st32(&R->release, 1);
    for (int i = 0; i < 2; i++)
        reapChild(p[i], 0);
    ck_rc(fastRWLockWrite(S, &R->l, 1000 * MS), DKSHM_OK);
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
}
END_TEST

#define RW_ITERS 3000

static void busyWork(int n) {
    for (volatile int i = 0; i < n; i++) {
    }
}

static int rwReader(void *arg) {
    (void)arg;
    for (int i = 0; i < RW_ITERS; i++) {
        if (fastRWLockRead(S, &R->l, 0) != DKSHM_OK)
            return 1;
        inc32(&R->readers);
        if (ld32(&R->writers) != 0)
            inc32(&R->violations);
        busyWork(50);
        __atomic_sub_fetch(&R->readers, 1, __ATOMIC_ACQ_REL);
        inc32(&R->reads);
        if (fastRWLockReadUnlock(S, &R->l) != DKSHM_OK)
            return 2;
    }
    return 0;
}

static int rwWriter(void *arg) {
    (void)arg;
    for (int i = 0; i < RW_ITERS; i++) {
        if (fastRWLockWrite(S, &R->l, 0) != DKSHM_OK)
            return 1;
        if (inc32(&R->writers) != 1 || ld32(&R->readers) != 0)
            inc32(&R->violations);
        busyWork(50);
        R->writes++; /* plain: only writers touch it */
        __atomic_sub_fetch(&R->writers, 1, __ATOMIC_ACQ_REL);
        if (fastRWLockWriteUnlock(S, &R->l) != DKSHM_OK)
            return 2;
    }
    return 0;
}

START_TEST(test_rw_writer_excludes) {
    rwSetup(false);
    pid_t p[4];
    p[0] = testSpawn(rwReader, NULL);
    p[1] = testSpawn(rwWriter, NULL);
    p[2] = testSpawn(rwReader, NULL);
    p[3] = testSpawn(rwWriter, NULL);
    for (int i = 0; i < 4; i++)
        reapChild(p[i], 0);
    ck_assert_uint_eq(R->violations, 0);
    ck_assert_uint_eq(R->writes, 2 * RW_ITERS);
    ck_assert_uint_eq(R->reads, 2 * RW_ITERS);
}
END_TEST

/* A reader killed while holding: a writer ignores it (here it is still a
 * zombie, not yet waited for). */
START_TEST(test_rw_dead_reader) {
    rwSetup(false);
    pid_t pid = testSpawn(readAndHold, NULL);
    ck_assert(waitAtLeast(&R->ready, 1, LONG_WAIT_MS));
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_rc(fastRWLockWrite(S, &R->l, 5000 * MS), DKSHM_OK);
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
    reapChild(pid, TEST_KILLED);
    ck_rc(fastRWLockWrite(S, &R->l, 5000 * MS), DKSHM_OK);
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
    ck_assert_uint_eq(inspect(&R->l.writer).recoveries, 0);
}
END_TEST

/* A writer that dies half-way through a logged change. */
static int writeHalfAndDie(void *arg) {
    (void)arg;
    if (fastRWLockWrite(S, &R->l, 0) != DKSHM_OK)
        return 1;
    for (int i = 0; i < WORDS / 2; i++)
        dkUndoSet64(S, RL, &R->a[i], 1);
    raise(SIGKILL);
    return 2;
}

static void rwCheckRolledBack(void) {
    for (int i = 0; i < WORDS; i++)
        ck_assert_msg(R->a[i] == 0, "a[%d] = %llu after the rollback", i,
                      (unsigned long long)R->a[i]);
}

START_TEST(test_rw_dead_writer_then_reader) {
    rwSetup(true);
    reapChild(testSpawn(writeHalfAndDie, NULL), TEST_KILLED);
    /* A reader gets in; it recovers the dead writer's claim on the way. */
    ck_rc(fastRWLockRead(S, &R->l, 5000 * MS), DKSHM_OK);
    rwCheckRolledBack();
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
    ck_assert_uint_eq(inspect(&R->l.writer).recoveries, 1);
    ck_rc(fastRWLockWrite(S, &R->l, 5000 * MS), DKSHM_OK);
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
}
END_TEST

START_TEST(test_rw_dead_writer_then_writer) {
    rwSetup(true);
    reapChild(testSpawn(writeHalfAndDie, NULL), TEST_KILLED);
    ck_rc(fastRWLockWrite(S, &R->l, 5000 * MS), DKSHM_RECOVERED);
    rwCheckRolledBack();
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
    ck_assert_uint_eq(inspect(&R->l.writer).recoveries, 1);
    ck_rc(fastRWLockRead(S, &R->l, 5000 * MS), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
}
END_TEST

/* A reader that meets a dead writer whose log is damaged must not keep the
 * writer mutex it took to recover: it would block every writer for as
 * long as it lives. */
static int writeAndDie(void *arg) {
    (void)arg;
    if (fastRWLockWrite(S, &R->l, 0) != DKSHM_OK)
        return 1;
    raise(SIGKILL);
    return 2;
}

START_TEST(test_rw_dead_writer_damaged_log_reader) {
    rwSetup(true);
    reapChild(testSpawn(writeAndDie, NULL), TEST_KILLED);
    RL->rec[0].at = (8ull << 56) | (S->size + 64);
    __atomic_store_n(&RL->count, 1, __ATOMIC_RELEASE);
    int rc = fastRWLockRead(S, &R->l, 300 * MS);
    ck_assert_msg(rc < 0, "read over a damaged log returned %s",
                  dkshmErrName(rc));
    fastMutexState st = inspect(&R->l.writer);
    ck_assert_msg(!(st.held && st.ownerPid == (uint32_t)getpid()),
                  "fastRWLockRead returned %s but left this process holding "
                  "the writer mutex",
                  dkshmErrName(rc));
}
END_TEST

/* The same damage met by a writer: fastRWLockWrite says CORRUPT, and the
 * write lock is then either held exclusively (readers kept out, like
 * fastMutexLock's CORRUPT: the caller decides and unlocks) or not held at
 * all. Held by the caller while readers walk in is neither. */
static int readExpectTimeout(void *arg) {
    (void)arg;
    int rc = fastRWLockRead(S, &R->l, 100 * MS);
    R->rc[0] = rc;
    if (rc == DKSHM_OK)
        fastRWLockReadUnlock(S, &R->l);
    return rc == DKSHM_TIMEDOUT ? 0 : 1;
}

START_TEST(test_rw_dead_writer_damaged_log_writer) {
    rwSetup(true);
    reapChild(testSpawn(writeAndDie, NULL), TEST_KILLED);
    RL->rec[0].at = (8ull << 56) | (S->size + 64);
    __atomic_store_n(&RL->count, 1, __ATOMIC_RELEASE);
    ck_rc(fastRWLockWrite(S, &R->l, 300 * MS), DKSHM_CORRUPT);
    fastMutexState st = inspect(&R->l.writer);
    if (st.held && st.ownerPid == (uint32_t)getpid()) {
        int status = testInChild(readExpectTimeout, NULL);
        ck_assert_msg(status == 0,
                      "fastRWLockWrite returned CORRUPT holding the writer "
                      "mutex, yet a reader got %s",
                      dkshmErrName(R->rc[0]));
        ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
    }
    ck_rc(fastRWLockRead(S, &R->l, 1000 * MS), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
}
END_TEST

static int writeAndHold(void *arg) {
    (void)arg;
    if (fastRWLockWrite(S, &R->l, 0) != DKSHM_OK)
        return 1;
    st32(&R->ready, 1);
    if (!waitAtLeast(&R->release, 1, LONG_WAIT_MS))
        return 2;
    return fastRWLockWriteUnlock(S, &R->l) == DKSHM_OK ? 0 : 3;
}

START_TEST(test_rw_timeouts) {
    rwSetup(false);
    pid_t pid = testSpawn(writeAndHold, NULL);
    ck_assert(waitAtLeast(&R->ready, 1, LONG_WAIT_MS));
    uint64_t t0 = nowNs();
    ck_rc(fastRWLockRead(S, &R->l, 50 * MS), DKSHM_TIMEDOUT);
    ck_assert_uint_ge(nowNs() - t0, 50 * MS);
    t0 = nowNs();
    ck_rc(fastRWLockWrite(S, &R->l, 50 * MS), DKSHM_TIMEDOUT);
    ck_assert_uint_ge(nowNs() - t0, 50 * MS);
    /* Not the holder: refused. */
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_INVALID);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_INVALID);
    st32(&R->release, 1);
    reapChild(pid, 0);
    ck_rc(fastRWLockRead(S, &R->l, 1000 * MS), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
}
END_TEST

START_TEST(test_rw_read_slots_full) {
    fastRWLock *l[DKSHM_READ_SLOTS + 1];
    for (int i = 0; i <= DKSHM_READ_SLOTS; i++) {
        l[i] = tMem(sizeof(fastRWLock));
        ck_rc(fastRWLockInit(S, l[i], 0), DKSHM_OK);
    }
    for (int i = 0; i < DKSHM_READ_SLOTS; i++)
        ck_rc(fastRWLockRead(S, l[i], 0), DKSHM_OK);
    ck_rc(fastRWLockRead(S, l[DKSHM_READ_SLOTS], 0), DKSHM_FULL);
    /* Holding one again does not need another entry. */
    ck_rc(fastRWLockRead(S, l[0], 0), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, l[0]), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, l[3]), DKSHM_OK);
    ck_rc(fastRWLockRead(S, l[DKSHM_READ_SLOTS], 0), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, l[DKSHM_READ_SLOTS]), DKSHM_OK);
    for (int i = 0; i < DKSHM_READ_SLOTS; i++)
        if (i != 3)
            ck_rc(fastRWLockReadUnlock(S, l[i]), DKSHM_OK);
    for (int i = 0; i <= DKSHM_READ_SLOTS; i++) {
        ck_rc(fastRWLockWrite(S, l[i], 1000 * MS), DKSHM_OK);
        ck_rc(fastRWLockWriteUnlock(S, l[i]), DKSHM_OK);
    }
}
END_TEST

START_TEST(test_rw_unlock_unheld) {
    rwSetup(false);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_INVALID);
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_INVALID);
    ck_rc(fastRWLockRead(S, &R->l, 0), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_INVALID); /* once too many */
    ck_rc(fastRWLockWrite(S, &R->l, 0), DKSHM_OK);
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_INVALID);
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_INVALID);
}
END_TEST

/* Threads of one process take read holds on two locks at once; each hold
 * must be released exactly, leaving nothing that blocks a writer. */
#define RD_THREADS 6
#define RD_ITERS 300000
#define RD_LOCKS 4

static fastRWLock *rdLocks[RD_LOCKS];
static uint32_t rdErrors;

static void *rdThread(void *arg) {
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < RD_ITERS; i++) {
        fastRWLock *l = rdLocks[(t + i) % RD_LOCKS];
        if (fastRWLockRead(S, l, 0) != DKSHM_OK) {
            inc32(&rdErrors);
            continue;
        }
        if (fastRWLockReadUnlock(S, l) != DKSHM_OK)
            inc32(&rdErrors);
    }
    return NULL;
}

START_TEST(test_rw_read_holds_threads) {
    for (int i = 0; i < RD_LOCKS; i++) {
        rdLocks[i] = tMem(sizeof(fastRWLock));
        ck_rc(fastRWLockInit(S, rdLocks[i], 0), DKSHM_OK);
    }
    pthread_t th[RD_THREADS];
    for (int i = 0; i < RD_THREADS; i++)
        ck_assert_int_eq(
            pthread_create(&th[i], NULL, rdThread, (void *)(intptr_t)i), 0);
    for (int i = 0; i < RD_THREADS; i++)
        pthread_join(th[i], NULL);
    ck_assert_msg(rdErrors == 0,
                  "%u read lock/unlock calls failed (INVALID or FULL)",
                  rdErrors);
    for (int i = 0; i < RD_LOCKS; i++) {
        int rc = fastRWLockWrite(S, rdLocks[i], 500 * MS);
        ck_assert_msg(rc == DKSHM_OK,
                      "writer after all readers left: %s (a read hold "
                      "leaked)",
                      dkshmErrName(rc));
        ck_rc(fastRWLockWriteUnlock(S, rdLocks[i]), DKSHM_OK);
    }
}
END_TEST

/* The state the race above leaves: two threads that each found no entry
 * for L claimed two different free entries for it; one has since released
 * its hold. The other's release must find its live entry, not stop at the
 * first entry with L's key. Built by hand (the entry format is
 * segmentInternal.h's) so that it does not depend on the scheduler. */
START_TEST(test_rw_read_release_skips_stale_entry) {
    rwSetup(false);
    ck_rc(fastRWLockRead(S, &R->l, 0), DKSHM_OK); /* registers us */
    ck_rc(fastRWLockReadUnlock(S, &R->l), DKSHM_OK);
    dkProcSlot *me = dkSelfSlot(S);
    uint64_t key = dkOff(S, &R->l) >> 3;
    for (int j = 0; j < DKSHM_READ_SLOTS; j++)
        me->rdHold[j] = 0;
    me->rdHold[0] = key << 20;       /* released: count 0 */
    me->rdHold[1] = (key << 20) | 1; /* a thread's live hold */
    int rc = fastRWLockReadUnlock(S, &R->l);
    ck_assert_msg(rc == DKSHM_OK,
                  "releasing a hold kept in the second entry for the lock "
                  "returned %s",
                  dkshmErrName(rc));
    rc = fastRWLockWrite(S, &R->l, 200 * MS);
    ck_assert_msg(rc == DKSHM_OK, "writer: %s (the read hold leaked)",
                  dkshmErrName(rc));
    ck_rc(fastRWLockWriteUnlock(S, &R->l), DKSHM_OK);
}
END_TEST

/* ===== 7. registration after fork ========================================= */

typedef struct forkCtl { /* in the segment */
    fastMutex m;
    uint32_t held, release, childPid;
    uint32_t childId;
    int32_t rc[4];
} forkCtl;

static forkCtl *F;

static int forkedLocker(void *arg) {
    (void)arg;
    /* No attach, no registration call: the inherited handle is enough. */
    if (fastMutexLock(S, &F->m) != DKSHM_OK)
        return 1;
    fastMutexState st;
    if (fastMutexInspect(S, &F->m, &st) != DKSHM_OK || !st.held ||
        st.ownerPid != (uint32_t)getpid())
        return 2;
    F->childId = ld32(&F->m.word) & DK_ID_MASK;
    F->childPid = (uint32_t)getpid();
    st32(&F->held, 1);
    if (!waitAtLeast(&F->release, 1, LONG_WAIT_MS))
        return 3;
    return fastMutexUnlock(S, &F->m) == DKSHM_OK ? 0 : 4;
}

START_TEST(test_fork_registers_child) {
    F = tMem(sizeof *F);
    ck_rc(fastMutexInit(S, &F->m, 0), DKSHM_OK);
    ck_rc(fastMutexLock(S, &F->m), DKSHM_OK);
    uint32_t parentId = ld32(&F->m.word) & DK_ID_MASK;
    ck_rc(fastMutexUnlock(S, &F->m), DKSHM_OK);

    pid_t pid = testSpawn(forkedLocker, NULL);
    ck_assert(waitAtLeast(&F->held, 1, LONG_WAIT_MS));
    fastMutexState st = inspect(&F->m);
    ck_assert_uint_eq(st.ownerPid, (uint32_t)pid);
    ck_assert_uint_eq(F->childPid, (uint32_t)pid);
    ck_assert_uint_ne(F->childId, parentId);
    ck_assert_uint_ne(st.ownerSlot, S->slot);
    ck_rc(fastMutexTryLock(S, &F->m), DKSHM_BUSY);
    st32(&F->release, 1);
    reapChild(pid, 0);
    ck_rc(fastMutexLock(S, &F->m), DKSHM_OK);
    ck_assert_uint_eq(ld32(&F->m.word) & DK_ID_MASK, parentId);
    ck_rc(fastMutexUnlock(S, &F->m), DKSHM_OK);
}
END_TEST

/* A child forked while the parent holds a lock does not inherit the hold. */
static int inheritedHandle(void *arg) {
    (void)arg;
    F->rc[0] = fastMutexUnlock(S, &F->m);
    F->rc[1] = fastMutexTryLock(S, &F->m);
    return F->rc[0] == DKSHM_INVALID && F->rc[1] == DKSHM_BUSY ? 0 : 1;
}

START_TEST(test_fork_child_does_not_inherit_hold) {
    F = tMem(sizeof *F);
    ck_rc(fastMutexInit(S, &F->m, 0), DKSHM_OK);
    ck_rc(fastMutexLock(S, &F->m), DKSHM_OK);
    int st = testInChild(inheritedHandle, NULL);
    ck_assert_msg(st == 0, "child: unlock %s, trylock %s",
                  dkshmErrName(F->rc[0]), dkshmErrName(F->rc[1]));
    fastMutexState fs = inspect(&F->m);
    ck_assert(fs.held);
    ck_assert_uint_eq(fs.ownerPid, (uint32_t)getpid());
    ck_rc(fastMutexUnlock(S, &F->m), DKSHM_OK);
}
END_TEST

/* ===== the suite ========================================================== */

static TCase *tcase(Suite *s, const char *name, int timeout) {
    return testAddCase(s, name, segUp, segDown, timeout);
}

static Suite *fastmutexSuite(void) {
    Suite *s = suite_create("fastmutex");
    TCase *tc = tcase(s, "mutex basics", 20);
    tcase_add_test(tc, test_mutex_lock_unlock_trylock);
    tcase_add_test(tc, test_mutex_busy_timeout_live_owner);
    tcase_add_test(tc, test_mutex_inspect_waiters);
    tcase_add_test(tc, test_mutex_null_and_bad_args);
    tcase_add_test(tc, test_mutex_init_rejects_misaligned);
    tcase_add_test(tc, test_mutex_readonly_handle);
    tcase_add_test(tc, test_cond_readonly_handle);

    tc = tcase(s, "mutual exclusion", 120);
    tcase_add_test(tc, test_excl_processes);
    tcase_add_test(tc, test_excl_threads);
    tcase_add_test(tc, test_excl_processes_and_threads);
    tcase_add_test(tc, test_excl_many_waiting_threads);

    tc = tcase(s, "robustness", 30);
    tcase_add_test(tc, test_robust_owner_killed_itself);
    tcase_add_test(tc, test_robust_owner_killed_zombie);
    tcase_add_test(tc, test_robust_sleeping_waiters);
    tcase_add_test(tc, test_robust_trylock);
    tcase_add_test(tc, test_robust_timedlock);
    tcase_add_test(tc, test_robust_short_timedlocks_recover);
    tcase_add_test(tc, test_robust_owner_slot_reused);
    tcase_add_test(tc, test_robust_dead_holders_free_their_slots);

    tc = tcase(s, "undo log", 60);
    tcase_add_test(tc, test_undo_crash_walk);
    tcase_add_test(tc, test_undo_mixed_widths);
    tcase_add_test(tc, test_undo_recoverer_killed);
    tcase_add_test(tc, test_undo_reaper_rolls_back);
    tcase_add_test(tc, test_undo_reaper_chain);
    tcase_add_test(tc, test_undo_reaper_damaged_log);
    tcase_add_test(tc, test_undo_damaged_log);

    tc = tcase(s, "fastCond", 30);
    tcase_add_test(tc, test_cond_producer_consumer);
    tcase_add_test(tc, test_cond_signal_flag);
    tcase_add_test(tc, test_cond_timed_wait);
    tcase_add_test(tc, test_cond_broadcast);
    tcase_add_test(tc, test_cond_waiter_killed);
    tcase_add_test(tc, test_cond_wait_recovers_mutex);

    tc = tcase(s, "fastRWLock", 60);
    tcase_add_test(tc, test_rw_readers_share);
    tcase_add_test(tc, test_rw_writer_excludes);
    tcase_add_test(tc, test_rw_dead_reader);
    tcase_add_test(tc, test_rw_dead_writer_then_reader);
    tcase_add_test(tc, test_rw_dead_writer_then_writer);
    tcase_add_test(tc, test_rw_dead_writer_damaged_log_reader);
    tcase_add_test(tc, test_rw_dead_writer_damaged_log_writer);
    tcase_add_test(tc, test_rw_timeouts);
    tcase_add_test(tc, test_rw_read_slots_full);
    tcase_add_test(tc, test_rw_unlock_unheld);
    tcase_add_test(tc, test_rw_read_holds_threads);
    tcase_add_test(tc, test_rw_read_release_skips_stale_entry);

    tc = tcase(s, "fork registration", 20);
    tcase_add_test(tc, test_fork_registers_child);
    tcase_add_test(tc, test_fork_child_does_not_inherit_hold);
    return s;
}

int main(void) {
    return testRunSuite(fastmutexSuite());
}
