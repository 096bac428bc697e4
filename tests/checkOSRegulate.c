/* checkOSRegulate.c — the shared limiter: opening by name, the holder limit
 * across processes, permits of dead holders (reclaimed by an acquirer or
 * on demand), the token bucket, bad input, and every crash point of
 * acquire, release and reclaim.
 */
#include "config.h"

#include "OSRegulate.h"
#include "membound.h"
#include "testUtil.h"

#include <time.h>

#define MS 1000000ull

static dkshm *S;

static void setup(void) {
    testMakeSegment("osr", 4u << 20, NULL, &S, NULL);
}

static void teardown(void) {
    testDropSegment(&S, NULL);
}

static OSRegulate *openHolders(const char *name, uint32_t n) {
    OSRegulateOptions o = {.maxHolders = n};
    OSRegulate *r = NULL;
    ck_assert_int_eq(OSRegulateOpen(S, name, &o, OSREGULATE_CREATE, &r),
                     DKSHM_OK);
    return r;
}

static OSRegulateStats stats(OSRegulate *r) {
    OSRegulateStats st;
    ck_assert_int_eq(OSRegulateGetStats(r, &st), DKSHM_OK);
    return st;
}

START_TEST(test_open) {
    OSRegulateOptions o = {.maxHolders = 3};
    OSRegulate *r = NULL, *r2 = NULL;
    ck_assert_int_eq(OSRegulateOpen(S, "lim", NULL, 0, &r), DKSHM_NOTFOUND);
    ck_assert_int_eq(OSRegulateOpen(S, "lim", NULL, OSREGULATE_CREATE, &r),
                     DKSHM_INVALID); /* creating needs options */
    OSRegulateOptions none = {0};
    ck_assert_int_eq(OSRegulateOpen(S, "lim", &none, OSREGULATE_CREATE, &r),
                     DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateOpen(S, "lim", &o,
                                    OSREGULATE_CREATE | OSREGULATE_EXCL, &r),
                     DKSHM_OK);
    ck_assert_int_eq(OSRegulateOpen(S, "lim", &o,
                                    OSREGULATE_CREATE | OSREGULATE_EXCL, &r2),
                     DKSHM_EXISTS);
    ck_assert_int_eq(OSRegulateOpen(S, "lim", NULL, 0, &r2), DKSHM_OK);
    ck_assert_uint_eq(stats(r2).maxHolders, 3);
    /* Bad input changes nothing in the segment. */
    OSRegulate *bad;
    ck_assert_int_eq(OSRegulateOpen(NULL, "x", &o, OSREGULATE_CREATE, &bad),
                     DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateOpen(S, "", &o, OSREGULATE_CREATE, &bad),
                     DKSHM_INVALID);
    ck_assert_ptr_null(bad);
    ck_assert_int_eq(OSRegulateOpen(S, "x", &o, 0x80, &bad), DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateOpen(S, "x", &o, OSREGULATE_EXCL, &bad),
                     DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateOpen(S, "x", &o, OSREGULATE_CREATE, NULL),
                     DKSHM_INVALID);
    size_t objects = 0;
    ck_assert_int_eq(dkshmObjectList(S, NULL, 0, &objects), DKSHM_OK);
    ck_assert_uint_eq(objects, 1);
    /* Another kind of object under the name. */
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(memboundForSegment(S), 64, &off),
                     DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(S, "user", DKSHM_TYPE_USER, off),
                     DKSHM_OK);
    ck_assert_int_eq(OSRegulateOpen(S, "user", &o, OSREGULATE_CREATE, &bad),
                     DKSHM_TYPE);
    /* Read-only attachment: opens, reads, cannot create or take. */
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    OSRegulate *rr;
    ck_assert_int_eq(OSRegulateOpen(ro, "new", &o, OSREGULATE_CREATE, &rr),
                     DKSHM_READONLY);
    ck_assert_int_eq(OSRegulateOpen(ro, "lim", NULL, 0, &rr), DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryAcquire(rr), DKSHM_READONLY);
    ck_assert_uint_eq(stats(rr).maxHolders, 3);
    ck_assert_int_eq(OSRegulateCheck(rr, NULL, 0), DKSHM_OK);
    OSRegulateClose(rr);
    dkshmDetach(ro);
    OSRegulateClose(r);
    TEST_ASSERT_CHECK(OSRegulateCheck, r2);
    OSRegulateClose(r2);
    ck_assert_int_eq(OSRegulateClose(NULL), DKSHM_OK);
}
END_TEST

START_TEST(test_holders) {
    OSRegulate *r = openHolders("h", 2);
    ck_assert_int_eq(OSRegulateRelease(r), DKSHM_INVALID); /* holds none */
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_OK);
    ck_assert_int_eq(OSRegulateAcquire(r, 0), DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_BUSY);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    ck_assert_int_eq(OSRegulateAcquire(r, 50 * MS), DKSHM_TIMEDOUT);
    clock_gettime(CLOCK_MONOTONIC, &b);
    ck_assert_int_ge((b.tv_sec - a.tv_sec) * 1000000000ll +
                         (b.tv_nsec - a.tv_nsec),
                     (long long)(50 * MS));
    OSRegulateStats st = stats(r);
    ck_assert_uint_eq(st.held, 2);
    ck_assert_uint_eq(st.mine, 2);
    ck_assert_uint_eq(st.acquired, 2);
    ck_assert_int_eq(OSRegulateRelease(r), DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_OK);
    ck_assert_int_eq(OSRegulateRelease(r), DKSHM_OK);
    ck_assert_int_eq(OSRegulateRelease(r), DKSHM_OK);
    ck_assert_int_eq(OSRegulateRelease(r), DKSHM_INVALID);
    ck_assert_uint_eq(stats(r).held, 0);
    /* A rate-only regulator has no permits. */
    OSRegulateOptions o = {.ratePerSec = 5};
    OSRegulate *q;
    ck_assert_int_eq(OSRegulateOpen(S, "rate", &o, OSREGULATE_CREATE, &q),
                     DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryAcquire(q), DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateTryAcquire(NULL), DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateRelease(NULL), DKSHM_INVALID);
    TEST_ASSERT_CHECK(OSRegulateCheck, r);
    OSRegulateClose(q);
    OSRegulateClose(r);
}
END_TEST

/* Workers in several processes never have more than the limit inside. */
typedef struct shared { /* in the segment */
    uint32_t inside;
    uint32_t maxInside;
    uint32_t errors;
} shared;

static shared *sh;

static int holderWorker(void *arg) {
    (void)arg;
    OSRegulate *r;
    if (OSRegulateOpen(S, "h", NULL, 0, &r) != DKSHM_OK)
        return 1;
    for (int i = 0; i < 300; i++) {
        if (OSRegulateAcquire(r, 0) != DKSHM_OK) {
            __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
            continue;
        }
        uint32_t in = __atomic_add_fetch(&sh->inside, 1, __ATOMIC_SEQ_CST);
        uint32_t m = __atomic_load_n(&sh->maxInside, __ATOMIC_RELAXED);
        while (in > m && !__atomic_compare_exchange_n(
                             &sh->maxInside, &m, in, false, __ATOMIC_RELAXED,
                             __ATOMIC_RELAXED))
            ;
        if (i % 16 == 0)
            usleep(100);
        __atomic_sub_fetch(&sh->inside, 1, __ATOMIC_SEQ_CST);
        if (OSRegulateRelease(r) != DKSHM_OK)
            __atomic_fetch_add(&sh->errors, 1, __ATOMIC_RELAXED);
    }
    OSRegulateClose(r);
    return 0;
}

START_TEST(test_holders_processes) {
    OSRegulate *r = openHolders("h", 2);
    dkoff off;
    ck_assert_int_eq(
        memboundAllocOff(memboundForSegment(S), sizeof *sh, &off), DKSHM_OK);
    sh = dkshmPtr(S, off);
    memset(sh, 0, sizeof *sh);
    pid_t pids[4];
    for (int i = 0; i < 4; i++)
        pids[i] = testSpawn(holderWorker, NULL);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(testWait(pids[i]), 0);
    ck_assert_uint_eq(sh->errors, 0);
    ck_assert_uint_le(sh->maxInside, 2);
    ck_assert_uint_ge(sh->maxInside, 1);
    OSRegulateStats st = stats(r);
    ck_assert_uint_eq(st.held, 0);
    ck_assert_uint_eq(st.acquired, 4 * 300);
    TEST_ASSERT_CHECK(OSRegulateCheck, r);
    OSRegulateClose(r);
}
END_TEST

static int takeTwoAndDie(void *arg) {
    OSRegulate *r = arg;
    if (OSRegulateAcquire(r, 0) != DKSHM_OK ||
        OSRegulateAcquire(r, 0) != DKSHM_OK)
        return 1;
    raise(SIGKILL);
    return 2;
}

START_TEST(test_dead_holder) {
    OSRegulate *r = openHolders("h", 2);
    ck_assert_int_eq(testInChild(takeTwoAndDie, r), TEST_KILLED);
    ck_assert_uint_eq(stats(r).held, 2);
    /* The dead child's permits come back to the next acquirer. */
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_OK);
    OSRegulateStats st = stats(r);
    ck_assert_uint_eq(st.reclaimed, 2);
    ck_assert_uint_eq(st.held, 1);
    ck_assert_uint_eq(st.mine, 1);
    TEST_ASSERT_CHECK(OSRegulateCheck, r);
    ck_assert_int_eq(OSRegulateRelease(r), DKSHM_OK);
    /* A blocked acquirer notices a holder that dies while it waits. */
    ck_assert_int_eq(testInChild(takeTwoAndDie, r), TEST_KILLED);
    ck_assert_int_eq(OSRegulateAcquire(r, 5000 * MS), DKSHM_OK);
    ck_assert_uint_eq(stats(r).reclaimed, 4);
    OSRegulateClose(r);
}
END_TEST

/* OSRegulateReclaim gives the dead child's permits back without waiting
 * for an acquirer to find the limit reached; deadHeld shows them first. */
START_TEST(test_reclaim) {
    OSRegulate *r = openHolders("h", 3);
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_OK);
    uint32_t n = 99;
    ck_assert_int_eq(OSRegulateReclaim(r, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 0); /* a live holder keeps its permit */
    ck_assert_int_eq(testInChild(takeTwoAndDie, r), TEST_KILLED);
    OSRegulateStats st = stats(r);
    ck_assert_uint_eq(st.held, 3);
    ck_assert_uint_eq(st.deadHeld, 2);
    ck_assert_uint_eq(st.mine, 1);
    /* A read-only attachment sees them too, and cannot reclaim. */
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    OSRegulate *rr;
    ck_assert_int_eq(OSRegulateOpen(ro, "h", NULL, 0, &rr), DKSHM_OK);
    ck_assert_uint_eq(stats(rr).deadHeld, stats(r).deadHeld);
    n = 99;
    ck_assert_int_eq(OSRegulateReclaim(rr, &n), DKSHM_READONLY);
    ck_assert_uint_eq(n, 0);
    OSRegulateClose(rr);
    dkshmDetach(ro);
    n = 0;
    uint32_t before = stats(r).deadHeld;
    ck_assert_int_eq(OSRegulateReclaim(r, &n), DKSHM_OK);
    ck_assert_uint_eq(n, before);
    st = stats(r);
    ck_assert_uint_eq(st.deadHeld, 0);
    ck_assert_uint_eq(st.held, 1);
    ck_assert_uint_eq(st.mine, 1);
    ck_assert_uint_eq(st.reclaimed, before);
    TEST_ASSERT_CHECK(OSRegulateCheck, r);
    /* The permits are there to take: all three, with ours. */
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryAcquire(r), DKSHM_BUSY);
    ck_assert_uint_eq(stats(r).reclaimed, before); /* nothing more to take */
    ck_assert_int_eq(OSRegulateReclaim(r, NULL), DKSHM_OK);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(OSRegulateRelease(r), DKSHM_OK);
    ck_assert_uint_eq(stats(r).held, 0);
    /* Bad input. */
    ck_assert_int_eq(OSRegulateReclaim(NULL, &n), DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateReclaim(NULL, NULL), DKSHM_INVALID);
    /* A rate-only regulator has no permits to reclaim. */
    OSRegulateOptions o = {.ratePerSec = 5};
    OSRegulate *q;
    ck_assert_int_eq(OSRegulateOpen(S, "rate", &o, OSREGULATE_CREATE, &q),
                     DKSHM_OK);
    n = 99;
    ck_assert_int_eq(OSRegulateReclaim(q, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_uint_eq(stats(q).deadHeld, 0);
    OSRegulateClose(q);
    OSRegulateClose(r);
}
END_TEST

static int waitForPermit(void *arg) {
    OSRegulate *r = arg;
    return OSRegulateAcquire(r, 10000 * MS) == DKSHM_OK &&
                   OSRegulateRelease(r) == DKSHM_OK
               ? 0
               : 1;
}

/* A reclaim racing an acquirer that reclaims for itself: the dead
 * holder's permits come back once, whoever takes them. */
START_TEST(test_reclaim_races_acquirer) {
    OSRegulate *r = openHolders("h", 2);
    ck_assert_int_eq(testInChild(takeTwoAndDie, r), TEST_KILLED);
    pid_t pid = testSpawn(waitForPermit, r);
    uint32_t n = 0;
    ck_assert_int_eq(OSRegulateReclaim(r, &n), DKSHM_OK);
    ck_assert_uint_le(n, 2);
    ck_assert_int_eq(testWait(pid), 0);
    OSRegulateStats st = stats(r);
    ck_assert_uint_eq(st.reclaimed, 2);
    ck_assert_uint_eq(st.held, 0);
    TEST_ASSERT_CHECK(OSRegulateCheck, r);
    OSRegulateClose(r);
}
END_TEST

START_TEST(test_waiter_woken) {
    OSRegulate *r = openHolders("h", 1);
    ck_assert_int_eq(OSRegulateAcquire(r, 0), DKSHM_OK);
    pid_t pid = testSpawn(waitForPermit, r);
    usleep(50000);
    ck_assert_int_eq(OSRegulateRelease(r), DKSHM_OK);
    ck_assert_int_eq(testWait(pid), 0);
    ck_assert_uint_eq(stats(r).held, 0);
    OSRegulateClose(r);
}
END_TEST

START_TEST(test_rate) {
    OSRegulateOptions o = {.ratePerSec = 20, .burst = 5};
    OSRegulate *r;
    ck_assert_int_eq(OSRegulateOpen(S, "rate", &o, OSREGULATE_CREATE, &r),
                     DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryRate(r, 0), DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateTryRate(r, 6), DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateTryRate(r, 3), DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryRate(r, 2), DKSHM_OK);
    /* Empty now: whatever trickled in since is far less than 5. */
    ck_assert_int_eq(OSRegulateTryRate(r, 5), DKSHM_BUSY);
    ck_assert_uint_eq(stats(r).rateDenied, 1);
    usleep(300000); /* 20/s for 0.3 s: 6 tokens, capped at the burst */
    ck_assert_int_eq(OSRegulateTryRate(r, 5), DKSHM_OK);
    ck_assert_uint_le(stats(r).tokens, 5);
    TEST_ASSERT_CHECK(OSRegulateCheck, r);
    OSRegulate *h = openHolders("h", 1);
    ck_assert_int_eq(OSRegulateTryRate(h, 1), DKSHM_INVALID);
    ck_assert_int_eq(OSRegulateTryRate(NULL, 1), DKSHM_INVALID);
    OSRegulateClose(h);
    OSRegulateClose(r);
}
END_TEST

/* Crash walks: a child dies at every crash point of acquire (or release);
 * after each, the regulator checks clean, the permit is wholly taken or
 * not, and the dead child's permit is reclaimed by the next acquirer. */
static OSRegulate *walkR;

static int walkAcquire(void *arg) {
    (void)arg;
    return OSRegulateAcquire(walkR, 0) == DKSHM_OK ? 0 : 1;
}

static void afterAcquire(void *arg, long k) {
    (void)arg;
    (void)k;
    TEST_ASSERT_CHECK(OSRegulateCheck,
                      walkR); /* takes the lock: recovers a dead holder */
    uint32_t held = stats(walkR).held;
    ck_assert_msg(held <= 1, "held %u after a crash in acquire", held);
    /* Fill the regulator: the dead child's permit, if any, comes back. */
    ck_assert_int_eq(OSRegulateTryAcquire(walkR), DKSHM_OK);
    ck_assert_int_eq(OSRegulateRelease(walkR), DKSHM_OK);
    ck_assert_uint_eq(stats(walkR).held, 0);
    dkshmReap(S, NULL);
}

START_TEST(test_crash_acquire) {
    walkR = openHolders("h", 1);
    long points = testCrashWalk(walkAcquire, afterAcquire, NULL, 200);
    ck_assert_int_ge(points, 4);
    OSRegulateClose(walkR);
}
END_TEST

/* Release is walked together with the acquire before it, as one
 * operation: every crash point of both. */
static int walkCycle(void *arg) {
    (void)arg;
    if (OSRegulateAcquire(walkR, 0) != DKSHM_OK)
        return 1;
    return OSRegulateRelease(walkR) == DKSHM_OK ? 0 : 1;
}

START_TEST(test_crash_cycle) {
    walkR = openHolders("h", 1);
    long points = testCrashWalk(walkCycle, afterAcquire, NULL, 400);
    ck_assert_int_ge(points, 8);
    OSRegulateClose(walkR);
}
END_TEST

/* Reclaim, walked with two dead holders (of 1 and 2 permits) to give
 * back: after a crash at any point each dead holder's permits are back
 * entirely or not at all, and held plus reclaimed is what it was. */
static int takeOneAndDie(void *arg) {
    OSRegulate *r = arg;
    if (OSRegulateAcquire(r, 0) != DKSHM_OK)
        return 1;
    raise(SIGKILL);
    return 2;
}

static void makeDeadHolders(void) {
    ck_assert_int_eq(testInChild(takeOneAndDie, walkR), TEST_KILLED);
    ck_assert_int_eq(testInChild(takeTwoAndDie, walkR), TEST_KILLED);
    OSRegulateStats st = stats(walkR);
    ck_assert_uint_eq(st.held, 3);
    ck_assert_uint_eq(st.deadHeld, 3);
}

static uint64_t walkBase; /* reclaimed before the walked call */

static int walkReclaim(void *arg) {
    (void)arg;
    uint32_t n = 0;
    if (OSRegulateReclaim(walkR, &n) != DKSHM_OK || n != 3)
        return 1;
    return 0;
}

static void afterReclaim(void *arg, long k) {
    (void)arg;
    TEST_ASSERT_CHECK(OSRegulateCheck, walkR); /* recovers the lock */
    OSRegulateStats st = stats(walkR);
    ck_assert_msg(st.held + (st.reclaimed - walkBase) == 3,
                  "point %ld: held %u, reclaimed %llu of 3", k, st.held,
                  (unsigned long long)(st.reclaimed - walkBase));
    ck_assert_msg(st.held <= 3 && st.deadHeld == st.held,
                  "point %ld: held %u, dead %u", k, st.held, st.deadHeld);
    /* Reclaim the rest here, reap the walker, set up the next point. */
    uint32_t n = 0;
    ck_assert_int_eq(OSRegulateReclaim(walkR, &n), DKSHM_OK);
    ck_assert_uint_eq(n, st.held);
    ck_assert_uint_eq(stats(walkR).held, 0);
    dkshmReap(S, NULL);
    makeDeadHolders();
    walkBase = stats(walkR).reclaimed;
}

START_TEST(test_crash_reclaim) {
    walkR = openHolders("h", 3);
    makeDeadHolders();
    walkBase = stats(walkR).reclaimed;
    long points = testCrashWalk(walkReclaim, afterReclaim, NULL, 200);
    ck_assert_int_ge(points, 4);
    OSRegulateStats st = stats(walkR);
    ck_assert_uint_eq(st.held, 0);
    ck_assert_uint_eq(st.reclaimed - walkBase, 3);
    TEST_ASSERT_CHECK(OSRegulateCheck, walkR);
    OSRegulateClose(walkR);
}
END_TEST

static Suite *osrSuite(void) {
    Suite *s = suite_create("OSRegulate");
    TCase *tc = testAddCase(s, "basic", setup, teardown, 30);
    tcase_add_test(tc, test_open);
    tcase_add_test(tc, test_holders);
    tcase_add_test(tc, test_rate);
    tc = testAddCase(s, "processes", setup, teardown, 60);
    tcase_add_test(tc, test_holders_processes);
    tcase_add_test(tc, test_dead_holder);
    tcase_add_test(tc, test_waiter_woken);
    tcase_add_test(tc, test_reclaim);
    tcase_add_test(tc, test_reclaim_races_acquirer);
    tc = testAddCase(s, "crash", setup, teardown, 120);
    tcase_add_test(tc, test_crash_acquire);
    tcase_add_test(tc, test_crash_cycle);
    tcase_add_test(tc, test_crash_reclaim);
    return s;
}

int main(void) {
    testSetPrefix("osr");
    return testRunSuite(osrSuite());
}
