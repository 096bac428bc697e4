/* checkMultilist.c — Check suite for containers/multilist: every operation
 * and every bad input, blocking pops and pushes with timeouts, shutdown
 * waking every waiter, forked and exec'd producers and consumers moving
 * 100k items exactly once, threads, crash walks over push/pop (new node,
 * cached node, large node, a pop that wakes a blocked pusher), shutdown,
 * trim and create, a waiter killed while blocked, and random SIGKILLs of
 * busy producers and consumers.
 *
 * Each test runs in its own process (fork mode) on its own segment, named
 * after the runner's and the test's pid and unlinked in teardown (main()
 * also removes what failed tests left behind).
 *
 * The exec'd consumer is this same program started again as
 * "checkMultilist --consumer SEGMENT LIST INDEX" (see consumerMain).
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
#include "multilist.h"
#include "multilistInternal.h"
#include "testUtil.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#define MiB (1024u * 1024u)
#define SEEN_TYPE (DKSHM_TYPE_USER + 7u)

/* ---- fixture ------------------------------------------------------------ */

static dkshm *seg;
static membound *mb;
static multilist *l;

static multilist *openList(const char *name, uint64_t maxItems) {
    multilistOptions o = {.maxItems = maxItems};
    multilist *x = NULL;
    int rc = multilistOpen(seg, name, &o, MULTILIST_CREATE, &x);
    ck_assert_msg(rc == DKSHM_OK, "open %s: %s", name, dkshmErrName(rc));
    return x;
}

static void setup(void) {
    testMakeSegment("t", 64 * MiB, NULL, &seg, &mb);
    l = openList("q", 0);
}

static void teardown(void) {
    multilistClose(l);
    l = NULL;
    testDropSegment(&seg, &mb);
}

/* ---- helpers ------------------------------------------------------------ */

/* RECOVERY.md §1: every live allocation is a block of one of the lists LS,
 * one of the EXTRA blocks, or in some live process's in-flight list — and
 * nothing else (no leak); every list block is a live allocation large
 * enough. */
static void assertOwnershipEx(multilist **ls, int n, const dkoff *extra,
                              int nExtra) {
    testBlocks owned = {0};
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(
            multilistForEachBlock(ls[i], testBlocksCollect, &owned), DKSHM_OK);
    for (int i = 0; i < nExtra; i++)
        testBlocksPush(&owned, extra[i], 1);
    testBlocksAddInflight(&owned, seg);
    testAssertOwnership(mb, &owned, "list");
}

static void assertOwnership(multilist *x) {
    assertOwnershipEx(&x, 1, NULL, 0);
}

static void pushStr(multilist *x, uint32_t end, const char *v) {
    int rc = multilistPush(x, end, v, strlen(v), MULTILIST_NOWAIT);
    ck_assert_msg(rc == DKSHM_OK, "push %s: %s", v, dkshmErrName(rc));
}

/* Pop (or peek) a string at END into OUT; "" and the error if none. */
static int popStr(multilist *x, uint32_t end, char *out, size_t cap) {
    size_t len = 0;
    int rc = multilistPop(x, end, out, cap - 1, &len, MULTILIST_NOWAIT);
    out[rc == DKSHM_OK ? len : 0] = '\0';
    return rc;
}

static int peekStr(multilist *x, uint32_t end, char *out, size_t cap) {
    size_t len = 0;
    int rc = multilistPeek(x, end, out, cap - 1, &len);
    out[rc == DKSHM_OK ? len : 0] = '\0';
    return rc;
}

static void assertPop(multilist *x, uint32_t end, const char *want) {
    char buf[4096];
    int rc = popStr(x, end, buf, sizeof buf);
    ck_assert_msg(rc == DKSHM_OK, "pop: %s", dkshmErrName(rc));
    ck_assert_str_eq(buf, want);
}

static uint64_t count(multilist *x) {
    uint64_t n = 0;
    ck_assert_int_eq(multilistCount(x, &n), DKSHM_OK);
    return n;
}

static multilistStats stats(multilist *x) {
    multilistStats st;
    ck_assert_int_eq(multilistGetStats(x, &st), DKSHM_OK);
    return st;
}

static void fillBytes(uint8_t *v, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++)
        v[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
}

/* Wait (polling) until COND holds or MS pass; returns whether it held. */
#define waitUntil(cond, ms)                                                    \
    ({                                                                         \
        uint64_t until_ = dkNowNs() + (uint64_t)(ms)*1000000ull;               \
        bool ok_;                                                              \
        while (!(ok_ = (cond)) && dkNowNs() < until_)                          \
            testSleepMs(1);                                                    \
        ok_;                                                                   \
    })

/* ---- basic operations --------------------------------------------------- */

START_TEST(test_fifo_lifo_deque) {
    char buf[64];
    pushStr(l, MULTILIST_TAIL, "a");
    pushStr(l, MULTILIST_TAIL, "b");
    pushStr(l, MULTILIST_TAIL, "c");
    ck_assert_uint_eq(count(l), 3);
    ck_assert_int_eq(peekStr(l, MULTILIST_HEAD, buf, sizeof buf), DKSHM_OK);
    ck_assert_str_eq(buf, "a");
    ck_assert_int_eq(peekStr(l, MULTILIST_TAIL, buf, sizeof buf), DKSHM_OK);
    ck_assert_str_eq(buf, "c");
    assertPop(l, MULTILIST_HEAD, "a"); /* queue */
    pushStr(l, MULTILIST_HEAD, "z");   /* deque: z b c */
    assertPop(l, MULTILIST_TAIL, "c"); /* stack at the tail */
    assertPop(l, MULTILIST_HEAD, "z");
    assertPop(l, MULTILIST_TAIL, "b");
    ck_assert_uint_eq(count(l), 0);
    ck_assert_int_eq(popStr(l, MULTILIST_HEAD, buf, sizeof buf),
                     DKSHM_NOTFOUND);
    ck_assert_int_eq(popStr(l, MULTILIST_TAIL, buf, sizeof buf),
                     DKSHM_NOTFOUND);
    ck_assert_int_eq(peekStr(l, MULTILIST_HEAD, buf, sizeof buf),
                     DKSHM_NOTFOUND);
    /* Stack at the head, shorthands. */
    for (int i = 0; i < 100; i++) {
        snprintf(buf, sizeof buf, "s%d", i);
        ck_assert_int_eq(multilistPushHead(l, buf, strlen(buf)), DKSHM_OK);
    }
    TEST_ASSERT_CHECK(multilistCheck, l);
    for (int i = 99; i >= 0; i--) {
        char want[16];
        size_t len;
        snprintf(want, sizeof want, "s%d", i);
        ck_assert_int_eq(multilistPopHead(l, buf, sizeof buf, &len), DKSHM_OK);
        ck_assert_uint_eq(len, strlen(want));
        ck_assert_int_eq(memcmp(buf, want, len), 0);
    }
    /* Queue from the head to the tail. */
    for (int i = 0; i < 100; i++) {
        snprintf(buf, sizeof buf, "t%d", i);
        ck_assert_int_eq(multilistPushHead(l, buf, strlen(buf)), DKSHM_OK);
    }
    for (int i = 0; i < 100; i++) {
        char want[16];
        size_t len;
        snprintf(want, sizeof want, "t%d", i);
        ck_assert_int_eq(multilistPopTail(l, buf, sizeof buf, &len), DKSHM_OK);
        ck_assert_uint_eq(len, strlen(want));
        ck_assert_int_eq(memcmp(buf, want, len), 0);
    }
    TEST_ASSERT_CHECK(multilistCheck, l);
    assertOwnership(l);
}
END_TEST

START_TEST(test_item_sizes) {
    static const size_t sizes[] = {
        0,   1,   7,   8,    31,   32,   33,   95,    96,       97,
        223, 224, 225, 1000, 2048, 4096, 5000, 65536, 1u << 20, 3u << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint8_t *v = malloc(3u << 20), *got = malloc(3u << 20);
    ck_assert(v && got);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            fillBytes(v, sizes[i], (uint64_t)i);
            ck_assert_int_eq(
                multilistPush(l, round ? MULTILIST_HEAD : MULTILIST_TAIL,
                              sizes[i] ? v : NULL, sizes[i], MULTILIST_NOWAIT),
                DKSHM_OK);
        }
        multilistStats st = stats(l);
        uint64_t total = 0;
        for (int i = 0; i < N; i++)
            total += sizes[i];
        ck_assert_uint_eq(st.count, N);
        ck_assert_uint_eq(st.bytes, total);
        TEST_ASSERT_CHECK(multilistCheck, l);
        assertOwnership(l);
        for (int i = 0; i < N; i++) {
            size_t len = 12345;
            ck_assert_int_eq(multilistPop(l, MULTILIST_HEAD, got, 3u << 20,
                                          &len, MULTILIST_NOWAIT),
                             DKSHM_OK);
            int k = round ? N - 1 - i : i;
            ck_assert_uint_eq(len, sizes[k]);
            fillBytes(v, sizes[k], (uint64_t)k);
            ck_assert_int_eq(memcmp(got, v, len), 0);
        }
    }
    ck_assert_uint_eq(stats(l).bytes, 0);
    /* A zero-length item pops into no buffer at all. */
    ck_assert_int_eq(multilistPushTail(l, NULL, 0), DKSHM_OK);
    size_t len = 99;
    ck_assert_int_eq(multilistPopHead(l, NULL, 0, &len), DKSHM_OK);
    ck_assert_uint_eq(len, 0);
    TEST_ASSERT_CHECK(multilistCheck, l);
    assertOwnership(l);
    free(v);
    free(got);
}
END_TEST

START_TEST(test_buffer_too_small) {
    uint8_t v[300], got[300];
    fillBytes(v, sizeof v, 3);
    ck_assert_int_eq(multilistPushTail(l, v, 40), DKSHM_OK);
    ck_assert_int_eq(multilistPushTail(l, v, 300), DKSHM_OK);
    size_t len = 0;
    /* Asking for the length with no buffer. */
    ck_assert_int_eq(multilistPopHead(l, NULL, 0, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 40);
    ck_assert_int_eq(multilistPopHead(l, got, 39, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 40);
    ck_assert_int_eq(multilistPeek(l, MULTILIST_TAIL, got, 299, &len),
                     DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 300);
    ck_assert_int_eq(multilistPop(l, MULTILIST_TAIL, got, 10, &len, 100),
                     DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 300);
    ck_assert_uint_eq(count(l), 2); /* nothing popped */
    ck_assert_int_eq(multilistPopHead(l, got, 40, &len), DKSHM_OK);
    ck_assert_int_eq(memcmp(got, v, 40), 0);
    ck_assert_int_eq(multilistPopHead(l, got, 300, &len), DKSHM_OK);
    ck_assert_int_eq(memcmp(got, v, 300), 0);
    TEST_ASSERT_CHECK(multilistCheck, l);
}
END_TEST

START_TEST(test_capacity) {
    multilist *b = openList("bounded", 3);
    ck_assert_uint_eq(stats(b).maxItems, 3);
    pushStr(b, MULTILIST_TAIL, "1");
    pushStr(b, MULTILIST_TAIL, "2");
    pushStr(b, MULTILIST_HEAD, "0");
    ck_assert_int_eq(multilistPushTail(b, "x", 1), DKSHM_FULL);
    ck_assert_int_eq(multilistPushHead(b, "x", 1), DKSHM_FULL);
    uint64_t t0 = dkNowNs();
    ck_assert_int_eq(multilistPush(b, MULTILIST_TAIL, "x", 1, 60),
                     DKSHM_TIMEDOUT);
    uint64_t waited = dkNowNs() - t0;
    ck_assert_uint_ge(waited, 59000000ull);
    ck_assert_uint_lt(waited, 2000000000ull);
    ck_assert_uint_eq(count(b), 3);
    assertPop(b, MULTILIST_HEAD, "0");
    ck_assert_int_eq(multilistPush(b, MULTILIST_TAIL, "3", 1, 60), DKSHM_OK);
    assertPop(b, MULTILIST_HEAD, "1");
    assertPop(b, MULTILIST_HEAD, "2");
    assertPop(b, MULTILIST_HEAD, "3");
    TEST_ASSERT_CHECK(multilistCheck, b);
    multilist *all[2] = {l, b};
    assertOwnershipEx(all, 2, NULL, 0);
    multilistClose(b);
}
END_TEST

START_TEST(test_pop_timeout) {
    char buf[16];
    size_t len;
    uint64_t t0 = dkNowNs();
    ck_assert_int_eq(multilistPop(l, MULTILIST_HEAD, buf, sizeof buf, &len, 80),
                     DKSHM_TIMEDOUT);
    uint64_t waited = dkNowNs() - t0;
    ck_assert_uint_ge(waited, 79000000ull);
    ck_assert_uint_lt(waited, 2000000000ull);
    ck_assert_int_eq(multilistPop(l, MULTILIST_TAIL, buf, sizeof buf, &len,
                                  MULTILIST_NOWAIT),
                     DKSHM_NOTFOUND);
    /* An item already there is returned at once, whatever the timeout. */
    pushStr(l, MULTILIST_TAIL, "here");
    ck_assert_int_eq(multilistPop(l, MULTILIST_HEAD, buf, sizeof buf, &len,
                                  MULTILIST_FOREVER),
                     DKSHM_OK);
    ck_assert_uint_eq(len, 4);
}
END_TEST

/* A child blocked in a pop (no timeout) gets the item pushed later; a child
 * blocked in a push on a full list gets in when a pop makes room. */
static int childPopOne(void *arg) {
    (void)arg;
    char buf[32];
    size_t len;
    int rc = multilistPop(l, MULTILIST_HEAD, buf, sizeof buf, &len,
                          MULTILIST_FOREVER);
    if (rc != DKSHM_OK)
        return 10 - rc;
    return len == 5 && memcmp(buf, "later", 5) == 0 ? 0 : 3;
}

START_TEST(test_blocking_wakeups) {
    pid_t p = testSpawn(childPopOne, NULL);
    ck_assert(waitUntil(stats(l).popWaiters == 1, 5000));
    testSleepMs(20);
    pushStr(l, MULTILIST_TAIL, "later");
    ck_assert_int_eq(testWait(p), 0);
    ck_assert_uint_eq(count(l), 0);

    multilist *b = openList("bounded", 1);
    pushStr(b, MULTILIST_TAIL, "first");
    fflush(NULL);
    p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0)
        _exit(multilistPush(b, MULTILIST_TAIL, "second", 6,
                            MULTILIST_FOREVER) == DKSHM_OK
                  ? 0
                  : 1);
    ck_assert(waitUntil(stats(b).pushWaiters == 1, 5000));
    assertPop(b, MULTILIST_HEAD, "first");
    ck_assert_int_eq(testWait(p), 0);
    assertPop(b, MULTILIST_HEAD, "second");
    TEST_ASSERT_CHECK(multilistCheck, b);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    multilist *all[2] = {l, b};
    assertOwnershipEx(all, 2, NULL, 0);
    multilistClose(b);
}
END_TEST

/* Blocked children: 3 poppers on an empty list, 2 pushers on a full one.
 * Shutdown wakes them all with SHUTDOWN. */
static int childWaitShutdown(multilist *x, bool push) {
    char buf[32];
    size_t len;
    int rc = push ? multilistPush(x, MULTILIST_TAIL, "p", 1, MULTILIST_FOREVER)
                  : multilistPop(x, MULTILIST_HEAD, buf, sizeof buf, &len,
                                 MULTILIST_FOREVER);
    return rc == DKSHM_SHUTDOWN ? 0 : 10 - rc;
}

START_TEST(test_shutdown_wakes_all) {
    multilist *full = openList("full", 2);
    pushStr(full, MULTILIST_TAIL, "x");
    pushStr(full, MULTILIST_TAIL, "y");
    pid_t pids[5];
    fflush(NULL);
    for (int i = 0; i < 5; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0)
            _exit(i < 3 ? childWaitShutdown(l, false)
                        : childWaitShutdown(full, true));
    }
    ck_assert(waitUntil(stats(l).popWaiters == 3, 5000));
    ck_assert(waitUntil(stats(full).pushWaiters == 2, 5000));
    uint64_t t0 = dkNowNs();
    ck_assert_int_eq(multilistShutdown(l), DKSHM_OK);
    ck_assert_int_eq(multilistShutdown(full), DKSHM_OK);
    ck_assert_int_eq(multilistShutdown(full), DKSHM_OK); /* idempotent */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(testWait(pids[i]), 0);
    ck_assert_uint_lt(dkNowNs() - t0, 1000000000ull);
    ck_assert(stats(l).shutdown);
    /* Later pushes fail; pops drain, then say SHUTDOWN at once. */
    ck_assert_int_eq(multilistPushTail(full, "z", 1), DKSHM_SHUTDOWN);
    ck_assert_int_eq(multilistPush(l, MULTILIST_HEAD, "z", 1, 1000),
                     DKSHM_SHUTDOWN);
    assertPop(full, MULTILIST_HEAD, "x");
    char buf[8];
    size_t len;
    ck_assert_int_eq(multilistPop(full, MULTILIST_HEAD, buf, sizeof buf, &len,
                                  MULTILIST_FOREVER),
                     DKSHM_OK);
    t0 = dkNowNs();
    ck_assert_int_eq(multilistPop(full, MULTILIST_HEAD, buf, sizeof buf, &len,
                                  MULTILIST_FOREVER),
                     DKSHM_SHUTDOWN);
    ck_assert_int_eq(multilistPopTail(l, buf, sizeof buf, &len),
                     DKSHM_SHUTDOWN);
    ck_assert_uint_lt(dkNowNs() - t0, 100000000ull);
    /* Reopening by name sees the shut-down list. */
    multilist *again = openList("full", 0);
    ck_assert_int_eq(multilistPushTail(again, "z", 1), DKSHM_SHUTDOWN);
    multilistClose(again);
    TEST_ASSERT_CHECK(multilistCheck, l);
    TEST_ASSERT_CHECK(multilistCheck, full);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    multilist *all[2] = {l, full};
    assertOwnershipEx(all, 2, NULL, 0);
    multilistClose(full);
}
END_TEST

START_TEST(test_stats_and_trim) {
    memboundStats m0 = testAllocStats(mb);
    uint8_t v[2000];
    fillBytes(v, sizeof v, 1);
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(multilistPushTail(l, v, (size_t)(i * 40)), DKSHM_OK);
    multilistStats st = stats(l);
    ck_assert_uint_eq(st.count, 50);
    ck_assert_uint_eq(st.pushes, 50);
    ck_assert_uint_eq(st.pops, 0);
    ck_assert_uint_eq(st.bytes, 40ull * 49 * 50 / 2);
    ck_assert_uint_eq(st.maxItems, 0);
    ck_assert_uint_eq(st.maxItemBytes, MULTILIST_ITEM_MAX);
    ck_assert(!st.shutdown);
    ck_assert_uint_eq(st.cachedNodes, 0);
    uint8_t got[2000];
    size_t len;
    for (int i = 0; i < 50; i++)
        ck_assert_int_eq(multilistPopHead(l, got, sizeof got, &len), DKSHM_OK);
    st = stats(l);
    ck_assert_uint_eq(st.count, 0);
    ck_assert_uint_eq(st.pops, 50);
    ck_assert_uint_eq(st.bytes, 0);
    /* Items of 0..224 bytes leave their nodes in the cache: 0 (64),
     * 40 and 80 (128), 120..200 (256). */
    ck_assert_uint_eq(st.cachedNodes, 6);
    ck_assert_uint_eq(st.cachedBytes, 64 + 2 * 128 + 3 * 256);
    TEST_ASSERT_CHECK(multilistCheck, l);
    assertOwnership(l);
    /* The next small pushes reuse them: no allocation. */
    memboundStats m1 = testAllocStats(mb);
    ck_assert_int_eq(multilistPushTail(l, v, 10), DKSHM_OK);
    ck_assert_int_eq(multilistPushTail(l, v, 150), DKSHM_OK);
    ck_assert_uint_eq(testAllocStats(mb).allocations, m1.allocations);
    ck_assert_uint_eq(stats(l).cachedNodes, 4);
    ck_assert_int_eq(multilistPopHead(l, got, sizeof got, &len), DKSHM_OK);
    ck_assert_int_eq(multilistPopHead(l, got, sizeof got, &len), DKSHM_OK);
    ck_assert_int_eq(multilistTrim(l), DKSHM_OK);
    ck_assert_uint_eq(stats(l).cachedNodes, 0);
    memboundStats m2 = testAllocStats(mb);
    ck_assert_uint_eq(m2.allocations, m0.allocations);
    ck_assert_uint_eq(m2.used, m0.used);
    TEST_ASSERT_CHECK(multilistCheck, l);
    assertOwnership(l);
}
END_TEST

START_TEST(test_batches) {
    /* Push many at the tail, pop many at the head: FIFO. */
    enum { N = 100 };
    char items[N][16];
    const void *ptrs[N];
    size_t lens[N], pushed = 99, popped = 99;
    for (int i = 0; i < N; i++) {
        lens[i] = (size_t)snprintf(items[i], sizeof items[i], "m%d", i);
        ptrs[i] = items[i];
    }
    ck_assert_int_eq(multilistPushMany(l, MULTILIST_TAIL, ptrs, lens, N,
                                       &pushed, MULTILIST_NOWAIT),
                     DKSHM_OK);
    ck_assert_uint_eq(pushed, N);
    ck_assert_uint_eq(count(l), N);
    TEST_ASSERT_CHECK(multilistCheck, l);
    char buf[4096];
    size_t got[N];
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_HEAD, buf, sizeof buf, got,
                                      30, &popped, MULTILIST_NOWAIT),
                     DKSHM_OK);
    ck_assert_uint_eq(popped, 30);
    size_t at = 0;
    for (int i = 0; i < 30; i++) {
        ck_assert_uint_eq(got[i], lens[i]);
        ck_assert_int_eq(memcmp(buf + at, items[i], lens[i]), 0);
        at += got[i];
    }
    /* Stops where the buffer ends: "m30".."m32" are 3 bytes each. */
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_HEAD, buf, 8, got, 10,
                                      &popped, MULTILIST_NOWAIT),
                     DKSHM_OK);
    ck_assert_uint_eq(popped, 2);
    ck_assert_int_eq(memcmp(buf, "m30m31", 6), 0);
    /* Not even the first fits: TOOBIG with its length, nothing popped. */
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_HEAD, buf, 2, got, 10,
                                      &popped, MULTILIST_NOWAIT),
                     DKSHM_TOOBIG);
    ck_assert_uint_eq(popped, 0);
    ck_assert_uint_eq(got[0], 3);
    /* From the tail: the last ones, newest first. */
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_TAIL, buf, sizeof buf, got,
                                      2, &popped, MULTILIST_NOWAIT),
                     DKSHM_OK);
    ck_assert_uint_eq(popped, 2);
    ck_assert_int_eq(memcmp(buf, "m99m98", 6), 0);
    ck_assert_uint_eq(count(l), N - 34);
    /* Push many at the head: each goes in front of the previous one. */
    ck_assert_int_eq(multilistPushMany(l, MULTILIST_HEAD, ptrs, lens, 3,
                                       &pushed, MULTILIST_NOWAIT),
                     DKSHM_OK);
    assertPop(l, MULTILIST_HEAD, "m2");
    assertPop(l, MULTILIST_HEAD, "m1");
    assertPop(l, MULTILIST_HEAD, "m0");
    /* Drain the rest in one call. */
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_HEAD, buf, sizeof buf, got,
                                      N, &popped, MULTILIST_NOWAIT),
                     DKSHM_OK);
    ck_assert_uint_eq(popped, N - 34);
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_HEAD, buf, sizeof buf, got,
                                      N, &popped, MULTILIST_NOWAIT),
                     DKSHM_NOTFOUND);
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_HEAD, buf, sizeof buf, got,
                                      N, &popped, 20),
                     DKSHM_TIMEDOUT);
    /* Large items (copied after the commit) mixed with small ones. */
    static uint8_t big[3][6000];
    const void *bp[4] = {big[0], "s", big[1], big[2]};
    size_t bl[4] = {6000, 1, 5000, 4500};
    for (int i = 0; i < 3; i++)
        fillBytes(big[i], 6000, (uint64_t)i + 7);
    ck_assert_int_eq(multilistPushMany(l, MULTILIST_TAIL, bp, bl, 4, &pushed,
                                       MULTILIST_NOWAIT),
                     DKSHM_OK);
    static uint8_t out[20000];
    ck_assert_int_eq(multilistPopMany(l, MULTILIST_HEAD, out, sizeof out, got,
                                      10, &popped, MULTILIST_NOWAIT),
                     DKSHM_OK);
    ck_assert_uint_eq(popped, 4);
    ck_assert_int_eq(memcmp(out, big[0], 6000), 0);
    ck_assert_int_eq(memcmp(out + 6000, "s", 1), 0);
    ck_assert_int_eq(memcmp(out + 6001, big[1], 5000), 0);
    ck_assert_int_eq(memcmp(out + 11001, big[2], 4500), 0);
    /* A bounded list takes what fits, then FULL (no wait) or waits. */
    multilist *b = openList("b3", 3);
    ck_assert_int_eq(multilistPushMany(b, MULTILIST_TAIL, ptrs, lens, 5,
                                       &pushed, MULTILIST_NOWAIT),
                     DKSHM_FULL);
    ck_assert_uint_eq(pushed, 3);
    ck_assert_int_eq(
        multilistPushMany(b, MULTILIST_TAIL, ptrs, lens, 5, &pushed, 30),
        DKSHM_TIMEDOUT);
    ck_assert_uint_eq(pushed, 0);
    ck_assert_int_eq(multilistShutdown(b), DKSHM_OK);
    ck_assert_int_eq(multilistPushMany(b, MULTILIST_TAIL, ptrs, lens, 1,
                                       &pushed, MULTILIST_NOWAIT),
                     DKSHM_SHUTDOWN);
    ck_assert_int_eq(multilistPopMany(b, MULTILIST_HEAD, buf, sizeof buf, got,
                                      10, &popped, MULTILIST_FOREVER),
                     DKSHM_OK);
    ck_assert_uint_eq(popped, 3);
    ck_assert_int_eq(multilistPopMany(b, MULTILIST_HEAD, buf, sizeof buf, got,
                                      10, &popped, MULTILIST_FOREVER),
                     DKSHM_SHUTDOWN);
    /* Bad input. */
    ck_assert_int_eq(multilistPushMany(NULL, 0, ptrs, lens, 1, &pushed, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPushMany(l, 0, NULL, lens, 1, &pushed, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPushMany(l, 0, ptrs, NULL, 1, &pushed, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPushMany(l, 0, ptrs, lens, 1, NULL, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPushMany(l, 2, ptrs, lens, 1, &pushed, 0),
                     DKSHM_INVALID);
    const void *nullItem[2] = {"ok", NULL};
    size_t nl[2] = {2, 1};
    ck_assert_int_eq(multilistPushMany(l, 0, nullItem, nl, 2, &pushed, 0),
                     DKSHM_INVALID);
    ck_assert_uint_eq(count(l), 0); /* checked before any was pushed */
    ck_assert_int_eq(multilistPushMany(l, 0, ptrs, lens, 0, &pushed, 0),
                     DKSHM_OK);
    ck_assert_int_eq(multilistPopMany(NULL, 0, buf, 1, got, 1, &popped, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPopMany(l, 0, buf, 1, got, 0, &popped, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPopMany(l, 0, buf, 1, NULL, 1, &popped, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPopMany(l, 0, buf, 1, got, 1, NULL, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPopMany(l, 0, NULL, 1, got, 1, &popped, 0),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistPopMany(l, 5, buf, 1, got, 1, &popped, 0),
                     DKSHM_INVALID);
    TEST_ASSERT_CHECK(multilistCheck, l);
    TEST_ASSERT_CHECK(multilistCheck, b);
    multilist *all[2] = {l, b};
    assertOwnershipEx(all, 2, NULL, 0);
    multilistClose(b);
}
END_TEST

static int childOpenJobs(void *arg) {
    (void)arg;
    multilist *c;
    if (multilistOpen(seg, "jobs", NULL, 0, &c) != DKSHM_OK)
        return 1;
    uint64_t n = 0;
    multilistCount(c, &n);
    multilistClose(c);
    return n == 1 ? 0 : 2;
}

START_TEST(test_open_by_name) {
    multilist *a = NULL, *b = NULL;
    ck_assert_int_eq(multilistOpen(seg, "jobs", NULL, 0, &a), DKSHM_NOTFOUND);
    ck_assert_ptr_null(a);
    multilistOptions o = {.maxItems = 5, .maxItemBytes = 100};
    ck_assert_int_eq(
        multilistOpen(seg, "jobs", &o, MULTILIST_CREATE | MULTILIST_EXCL, &a),
        DKSHM_OK);
    ck_assert_int_eq(
        multilistOpen(seg, "jobs", NULL, MULTILIST_CREATE | MULTILIST_EXCL, &b),
        DKSHM_EXISTS);
    /* Options are the creator's. */
    multilistOptions o2 = {.maxItems = 1};
    ck_assert_int_eq(multilistOpen(seg, "jobs", &o2, MULTILIST_CREATE, &b),
                     DKSHM_OK);
    ck_assert_uint_eq(stats(b).maxItems, 5);
    ck_assert_uint_eq(stats(b).maxItemBytes, 100);
    pushStr(a, MULTILIST_TAIL, "via a");
    assertPop(b, MULTILIST_HEAD, "via a");
    uint8_t big[101] = {0};
    ck_assert_int_eq(multilistPushTail(b, big, 101), DKSHM_TOOBIG);
    ck_assert_int_eq(multilistPushTail(b, big, 100), DKSHM_OK);
    multilistClose(a);
    multilistClose(b);
    /* A forked child opens it by name too. */
    ck_assert_int_eq(testInChild(childOpenJobs, NULL), 0);
    ck_assert_int_eq(dkshmObjectFind(seg, "jobs", NULL, NULL), DKSHM_OK);
}
END_TEST

START_TEST(test_open_race) {
    /* Four processes race to create the same name: one list results. */
    pid_t pids[4];
    fflush(NULL);
    for (int i = 0; i < 4; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            multilist *x;
            if (multilistOpen(seg, "raced", NULL, MULTILIST_CREATE, &x) !=
                DKSHM_OK)
                _exit(1);
            char item[8];
            snprintf(item, sizeof item, "c%d", i);
            _exit(multilistPushTail(x, item, strlen(item)) == DKSHM_OK ? 0 : 2);
        }
    }
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(testWait(pids[i]), 0);
    multilist *x = openList("raced", 0);
    ck_assert_uint_eq(count(x), 4);
    TEST_ASSERT_CHECK(multilistCheck, x);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    multilist *all[2] = {l, x};
    assertOwnershipEx(all, 2, NULL, 0);
    multilistClose(x);
}
END_TEST

START_TEST(test_bad_input) {
    char buf[16];
    size_t len;
    uint64_t n;
    multilistStats st;
    multilist *x = NULL;
    /* NULL handles. */
    ck_assert_int_eq(multilistPush(NULL, 0, "a", 1, 0), DKSHM_INVALID);
    ck_assert_int_eq(multilistPushHead(NULL, "a", 1), DKSHM_INVALID);
    ck_assert_int_eq(multilistPushTail(NULL, "a", 1), DKSHM_INVALID);
    ck_assert_int_eq(multilistPop(NULL, 0, buf, 16, &len, 0), DKSHM_INVALID);
    ck_assert_int_eq(multilistPopHead(NULL, buf, 16, &len), DKSHM_INVALID);
    ck_assert_int_eq(multilistPopTail(NULL, buf, 16, &len), DKSHM_INVALID);
    ck_assert_int_eq(multilistPeek(NULL, 0, buf, 16, &len), DKSHM_INVALID);
    ck_assert_int_eq(multilistCount(NULL, &n), DKSHM_INVALID);
    ck_assert_int_eq(multilistShutdown(NULL), DKSHM_INVALID);
    ck_assert_int_eq(multilistTrim(NULL), DKSHM_INVALID);
    ck_assert_int_eq(multilistGetStats(NULL, &st), DKSHM_INVALID);
    ck_assert_int_eq(multilistCheck(NULL, buf, sizeof buf), DKSHM_INVALID);
    ck_assert_int_eq(multilistClose(NULL), DKSHM_OK);
    ck_assert_int_eq(multilistForEachBlock(NULL, testBlocksCollect, NULL),
                     DKSHM_INVALID);
    /* NULL outputs and buffers, bad ends. */
    ck_assert_int_eq(multilistCount(l, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multilistGetStats(l, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multilistPush(l, 2, "a", 1, 0), DKSHM_INVALID);
    ck_assert_int_eq(multilistPushTail(l, NULL, 1), DKSHM_INVALID);
    pushStr(l, MULTILIST_TAIL, "keep");
    ck_assert_int_eq(multilistPop(l, 7, buf, 16, &len, 0), DKSHM_INVALID);
    ck_assert_int_eq(multilistPopHead(l, NULL, 16, &len), DKSHM_INVALID);
    ck_assert_int_eq(multilistPopHead(l, buf, 16, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multilistPeek(l, 2, buf, 16, &len), DKSHM_INVALID);
    ck_assert_int_eq(multilistPeek(l, 0, NULL, 16, &len), DKSHM_INVALID);
    ck_assert_int_eq(multilistPeek(l, 0, buf, 16, NULL), DKSHM_INVALID);
    /* Zero-length buffer for a non-empty item. */
    ck_assert_int_eq(multilistPopHead(l, buf, 0, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 4);
    ck_assert_uint_eq(count(l), 1);
    /* Oversized items. */
    uint8_t *huge = malloc(80 * MiB);
    ck_assert_ptr_nonnull(huge);
    ck_assert_int_eq(multilistPushTail(l, huge, 80 * MiB), DKSHM_TOOBIG);
    free(huge);
    ck_assert_int_eq(multilistPushTail(l, buf, (size_t)MULTILIST_ITEM_MAX + 1),
                     DKSHM_TOOBIG);
    ck_assert_uint_eq(count(l), 1);
    /* Open: names, flags, options. */
    ck_assert_int_eq(multilistOpen(NULL, "q", NULL, 0, &x), DKSHM_INVALID);
    ck_assert_int_eq(multilistOpen(seg, "q", NULL, 0, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multilistOpen(seg, NULL, NULL, 0, &x), DKSHM_INVALID);
    ck_assert_int_eq(multilistOpen(seg, "", NULL, 0, &x), DKSHM_INVALID);
    ck_assert_int_eq(multilistOpen(seg, "a b", NULL, MULTILIST_CREATE, &x),
                     DKSHM_INVALID);
    char longName[DKSHM_OBJNAME_MAX + 2];
    memset(longName, 'n', sizeof longName - 1);
    longName[sizeof longName - 1] = '\0';
    ck_assert_int_eq(multilistOpen(seg, longName, NULL, MULTILIST_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistOpen(seg, "q", NULL, MULTILIST_EXCL, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistOpen(seg, "q", NULL, 0x80, &x), DKSHM_INVALID);
    multilistOptions bad = {.flags = 1};
    ck_assert_int_eq(multilistOpen(seg, "new", &bad, MULTILIST_CREATE, &x),
                     DKSHM_INVALID);
    bad = (multilistOptions){.maxItemBytes = MULTILIST_ITEM_MAX + 1};
    ck_assert_int_eq(multilistOpen(seg, "new", &bad, MULTILIST_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(dkshmObjectFind(seg, "new", NULL, NULL), DKSHM_NOTFOUND);
    assertPop(l, MULTILIST_HEAD, "keep");
    TEST_ASSERT_CHECK(multilistCheck, l);
    assertOwnership(l);
}
END_TEST

START_TEST(test_wrong_type) {
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(mb, 64, &off), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(seg, "other", DKSHM_TYPE_USER, off),
                     DKSHM_OK);
    multilist *x = NULL;
    ck_assert_int_eq(multilistOpen(seg, "other", NULL, 0, &x), DKSHM_TYPE);
    ck_assert_int_eq(multilistOpen(seg, "other", NULL, MULTILIST_CREATE, &x),
                     DKSHM_TYPE);
    ck_assert_ptr_null(x);
    /* A multidict's type number too (1), whatever is behind it. */
    ck_assert_int_eq(dkshmObjectCreate(seg, "dict", 1, off), DKSHM_OK);
    ck_assert_int_eq(multilistOpen(seg, "dict", NULL, 0, &x), DKSHM_TYPE);
}
END_TEST

START_TEST(test_read_only) {
    pushStr(l, MULTILIST_TAIL, "one");
    pushStr(l, MULTILIST_TAIL, "two");
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multilist *x = NULL;
    ck_assert_int_eq(multilistOpen(ro, "q", NULL, 0, &x), DKSHM_OK);
    char buf[16];
    size_t len;
    uint64_t n = 0;
    ck_assert_int_eq(multilistCount(x, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 2);
    multilistStats st;
    ck_assert_int_eq(multilistGetStats(x, &st), DKSHM_OK);
    ck_assert_uint_eq(st.pushes, 2);
    TEST_ASSERT_CHECK(multilistCheck, x);
    ck_assert_int_eq(multilistPushTail(x, "a", 1), DKSHM_READONLY);
    ck_assert_int_eq(multilistPush(x, MULTILIST_HEAD, "a", 1, 100),
                     DKSHM_READONLY);
    ck_assert_int_eq(multilistPopHead(x, buf, sizeof buf, &len),
                     DKSHM_READONLY);
    ck_assert_int_eq(multilistPop(x, MULTILIST_TAIL, buf, sizeof buf, &len,
                                  MULTILIST_FOREVER),
                     DKSHM_READONLY);
    ck_assert_int_eq(multilistPeek(x, MULTILIST_HEAD, buf, sizeof buf, &len),
                     DKSHM_READONLY);
    ck_assert_int_eq(multilistShutdown(x), DKSHM_READONLY);
    ck_assert_int_eq(multilistTrim(x), DKSHM_READONLY);
    multilist *y = NULL;
    ck_assert_int_eq(multilistOpen(ro, "absent", NULL, MULTILIST_CREATE, &y),
                     DKSHM_READONLY);
    ck_assert_int_eq(multilistOpen(ro, "absent", NULL, 0, &y), DKSHM_NOTFOUND);
    multilistClose(x);
    dkshmDetach(ro);
    ck_assert_uint_eq(count(l), 2);
    assertPop(l, MULTILIST_HEAD, "one");
}
END_TEST

/* ---- multilistForEachItem ------------------------------------------------ */

typedef struct itemSeen { /* per process */
    char items[64][32];
    uint64_t index[64];
    int n;
    int stopAt; /* return 7 at this item; -1: never */
} itemSeen;

static int collectItem(void *ctx, uint64_t index, const void *item,
                       size_t len) {
    itemSeen *v = ctx;
    if (v->n < 64 && len < 32) {
        memcpy(v->items[v->n], item, len);
        v->items[v->n][len] = '\0';
        v->index[v->n] = index;
    }
    v->n++;
    return v->n - 1 == v->stopAt ? 7 : 0;
}

static int walkItems(multilist *x, itemSeen *v, uint64_t limit) {
    memset(v, 0, sizeof *v);
    v->stopAt = -1;
    return multilistForEachItem(x, collectItem, v, limit);
}

/* The node blocks of X, head first (multilistForEachBlock's order). */
typedef struct nodeOffs {
    dkoff off[16];
    int n;
} nodeOffs;

static int collectNode(void *ctx, dkoff off, uint64_t bytes, int kind) {
    (void)bytes;
    nodeOffs *v = ctx;
    if (kind == MULTILIST_BLOCK_NODE && v->n < 16)
        v->off[v->n++] = off;
    return 0;
}

START_TEST(test_for_each_item) {
    itemSeen v;
    /* Empty. */
    ck_assert_int_eq(walkItems(l, &v, UINT64_MAX), DKSHM_OK);
    ck_assert_int_eq(v.n, 0);
    pushStr(l, MULTILIST_TAIL, "b");
    pushStr(l, MULTILIST_TAIL, "c");
    pushStr(l, MULTILIST_HEAD, "a");
    pushStr(l, MULTILIST_TAIL, "");
    /* An item too long for a cached node, and one of several pages. */
    char big[300];
    memset(big, 'x', sizeof big);
    ck_assert_int_eq(multilistPushTail(l, big, sizeof big), DKSHM_OK);
    ck_assert_int_eq(walkItems(l, &v, UINT64_MAX), DKSHM_OK);
    ck_assert_int_eq(v.n, 5);
    ck_assert_str_eq(v.items[0], "a");
    ck_assert_str_eq(v.items[1], "b");
    ck_assert_str_eq(v.items[2], "c");
    ck_assert_str_eq(v.items[3], "");
    for (int i = 0; i < 4; i++)
        ck_assert_uint_eq(v.index[i], (uint64_t)i);
    /* The limit. */
    ck_assert_int_eq(walkItems(l, &v, 2), DKSHM_OK);
    ck_assert_int_eq(v.n, 2);
    ck_assert_str_eq(v.items[1], "b");
    ck_assert_int_eq(walkItems(l, &v, 0), DKSHM_OK);
    ck_assert_int_eq(v.n, 0);
    /* The callback stops the walk and its value comes back. */
    memset(&v, 0, sizeof v);
    v.stopAt = 1;
    ck_assert_int_eq(multilistForEachItem(l, collectItem, &v, UINT64_MAX), 7);
    ck_assert_int_eq(v.n, 2);
    /* Bad input. */
    ck_assert_int_eq(multilistForEachItem(NULL, collectItem, &v, 1),
                     DKSHM_INVALID);
    ck_assert_int_eq(multilistForEachItem(l, NULL, &v, 1), DKSHM_INVALID);
    /* A read-only handle sees the same, in order, and writes nothing. */
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multilist *x = NULL;
    ck_assert_int_eq(multilistOpen(ro, "q", NULL, 0, &x), DKSHM_OK);
    ck_assert_int_eq(walkItems(x, &v, UINT64_MAX), DKSHM_OK);
    ck_assert_int_eq(v.n, 5);
    ck_assert_str_eq(v.items[0], "a");
    ck_assert_str_eq(v.items[2], "c");
    assertPop(l, MULTILIST_HEAD, "a");
    ck_assert_int_eq(walkItems(x, &v, UINT64_MAX), DKSHM_OK);
    ck_assert_int_eq(v.n, 4);
    ck_assert_str_eq(v.items[0], "b");
    multilistClose(x);
    dkshmDetach(ro);
    ck_assert_uint_eq(stats(l).pops, 1);
    TEST_ASSERT_CHECK(multilistCheck, l);
}
END_TEST

/* Damage makes the walk say CORRUPT, and never fault or loop. */
START_TEST(test_for_each_item_damaged) {
    pushStr(l, MULTILIST_TAIL, "one");
    pushStr(l, MULTILIST_TAIL, "two");
    pushStr(l, MULTILIST_TAIL, "three");
    nodeOffs nodes = {0};
    ck_assert_int_eq(multilistForEachBlock(l, collectNode, &nodes), DKSHM_OK);
    ck_assert_int_eq(nodes.n, 3);
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multilist *x = NULL;
    ck_assert_int_eq(multilistOpen(ro, "q", NULL, 0, &x), DKSHM_OK);
    itemSeen v;
    /* mlNode: next, prev, len, cap (8 bytes each). */
    struct {
        int node;
        unsigned field;
        uint64_t value;
    } damage[] = {
        {0, 0, 0},           /* next: null before the tail */
        {0, 0, 7},           /* next: misaligned */
        {0, 0, 1ull << 62},  /* next: far outside */
        {1, 0, 8},           /* next: inside the segment, below the heap */
        {1, 16, 1000},       /* len beyond the capacity */
        {1, 24, 1ull << 50}, /* capacity outside the segment */
        {2, 8, 0},           /* prev: not the node before */
    };
    for (size_t i = 0; i < sizeof damage / sizeof damage[0]; i++) {
        uint64_t *w =
            dkshmPtr(seg, nodes.off[damage[i].node] + damage[i].field);
        uint64_t saved = *w;
        *w = damage[i].value;
        int rc = walkItems(x, &v, UINT64_MAX);
        ck_assert_msg(rc == DKSHM_CORRUPT, "damage %zu: %s", i,
                      dkshmErrName(rc));
        *w = saved;
    }
    /* A cycle back to the head: node 1 leads to node 0 again, whose prev
     * (meaningless at the head) is made to agree. */
    uint64_t *next1 = dkshmPtr(seg, nodes.off[1]);
    uint64_t *prev0 = dkshmPtr(seg, nodes.off[0] + 8);
    uint64_t savedNext = *next1, savedPrev = *prev0;
    *next1 = nodes.off[0];
    *prev0 = nodes.off[1];
    ck_assert_int_eq(walkItems(x, &v, UINT64_MAX), DKSHM_CORRUPT);
    ck_assert_int_le(v.n, 2);
    /* ... which a limit that stops before it does not meet. */
    ck_assert_int_eq(walkItems(x, &v, 2), DKSHM_OK);
    *next1 = savedNext;
    *prev0 = savedPrev;
    ck_assert_int_eq(walkItems(x, &v, UINT64_MAX), DKSHM_OK);
    ck_assert_int_eq(v.n, 3);
    ck_assert_str_eq(v.items[2], "three");
    /* A change left uncommitted (records in the log, as a dead owner
     * leaves them): the walk cannot believe what it sees. */
    dkUndo *log = dkshmPtr(seg, multilistRootOff(l) + 256);
    __atomic_store_n(&log->count, 1, __ATOMIC_RELAXED);
    ck_assert_int_eq(walkItems(x, &v, UINT64_MAX), DKSHM_BUSY);
    __atomic_store_n(&log->count, 0, __ATOMIC_RELAXED);
    ck_assert_int_eq(walkItems(x, &v, UINT64_MAX), DKSHM_OK);
    multilistClose(x);
    dkshmDetach(ro);
    TEST_ASSERT_CHECK(multilistCheck, l);
}
END_TEST

/* ---- damaged lists: writers say CORRUPT, never fault ----------------- */

/* Words of the root block (mlRoot) and of a node (mlNode) that the
 * damage tests write, as tests/fuzzSegment damages them. */
enum {
    RT_HEAD = 80,
    RT_TAIL = 88,
    RT_COUNT = 96,
    RT_POOL0 = 128,
    RT_POOLCOUNT0 = 152,
    RT_SNAP_END = 184, /* head .. shutdown: what every writer changes */
    ND_NEXT = 0,
    ND_PREV = 8,
    ND_LEN = 16,
    ND_CAP = 24,
};

/* A list of 3 small items (nodes N0..N2, head first) and 3 cached class-0
 * nodes (C0..C2, in cache order). */
typedef struct dmgList {
    multilist *x;
    dkoff root;
    dkoff node[3], cached[3];
    int nNode, nCached;
} dmgList;

static int dmgCollect(void *ctx, dkoff off, uint64_t bytes, int kind) {
    (void)bytes;
    dmgList *d = ctx;
    if (kind == MULTILIST_BLOCK_NODE && d->nNode < 3)
        d->node[d->nNode++] = off;
    if (kind == MULTILIST_BLOCK_FREE && d->nCached < 3)
        d->cached[d->nCached++] = off;
    return 0;
}

static void dmgMake(dmgList *d, const char *name) {
    *d = (dmgList){.x = openList(name, 0)};
    char item[8];
    for (int i = 0; i < 6; i++) {
        snprintf(item, sizeof item, "i%d", i);
        pushStr(d->x, MULTILIST_TAIL, item);
    }
    for (int i = 0; i < 3; i++) {
        snprintf(item, sizeof item, "i%d", i);
        assertPop(d->x, MULTILIST_HEAD, item);
    }
    d->root = multilistRootOff(d->x);
    ck_assert_int_eq(multilistForEachBlock(d->x, dmgCollect, d), DKSHM_OK);
    ck_assert_int_eq(d->nNode, 3);
    ck_assert_int_eq(d->nCached, 3);
    TEST_ASSERT_CHECK(multilistCheck, d->x);
}

/* The words a failed writer must leave as they were: the root's list and
 * cache words and the six node headers. */
typedef struct dmgSnap {
    uint8_t root[RT_SNAP_END - RT_HEAD];
    uint8_t nodes[6][32];
} dmgSnap;

static void dmgSnapTake(const dmgList *d, dmgSnap *sn) {
    memcpy(sn->root, dkshmPtr(seg, d->root + RT_HEAD), sizeof sn->root);
    for (int i = 0; i < 3; i++) {
        memcpy(sn->nodes[i], dkshmPtr(seg, d->node[i]), 32);
        memcpy(sn->nodes[3 + i], dkshmPtr(seg, d->cached[i]), 32);
    }
}

enum {
    DOP_PEEKH,
    DOP_PEEKT,
    DOP_POPH,
    DOP_POPT,
    DOP_PUSHH,
    DOP_PUSHT,
    DOP_PUSHMANY,
    DOP_POPMANY,
    DOP_TRIM,
    DOP_N
};
static const char *const dopName[DOP_N] = {"PeekHead", "PeekTail", "PopHead",
                                           "PopTail",  "PushHead", "PushTail",
                                           "PushMany", "PopMany",  "Trim"};

/* Items a batch op moved: a batch that meets damage after some items
 * keeps them (each item is atomic, like a batch cut short by a crash). */
static size_t dmgMoved;

static int dmgOp(multilist *x, int op) {
    char buf[256];
    size_t len, lens[4], n = 0;
    int rc;
    dmgMoved = 0;
    const void *items[3] = {"x", "y", "z"};
    const size_t ilens[3] = {1, 1, 1};
    switch (op) {
    case DOP_PEEKH:
        return multilistPeek(x, MULTILIST_HEAD, buf, sizeof buf, &len);
    case DOP_PEEKT:
        return multilistPeek(x, MULTILIST_TAIL, buf, sizeof buf, &len);
    case DOP_POPH:
        return multilistPop(x, MULTILIST_HEAD, buf, sizeof buf, &len,
                            MULTILIST_NOWAIT);
    case DOP_POPT:
        return multilistPop(x, MULTILIST_TAIL, buf, sizeof buf, &len,
                            MULTILIST_NOWAIT);
    case DOP_PUSHH:
        return multilistPush(x, MULTILIST_HEAD, "h", 1, MULTILIST_NOWAIT);
    case DOP_PUSHT:
        return multilistPush(x, MULTILIST_TAIL, "t", 1, MULTILIST_NOWAIT);
    case DOP_PUSHMANY:
        rc = multilistPushMany(x, MULTILIST_TAIL, items, ilens, 3, &n,
                               MULTILIST_NOWAIT);
        dmgMoved = n;
        return rc;
    case DOP_POPMANY:
        rc = multilistPopMany(x, MULTILIST_HEAD, buf, sizeof buf, lens, 4, &n,
                              MULTILIST_NOWAIT);
        dmgMoved = n;
        return rc;
    default:
        return multilistTrim(x);
    }
}

/* Where a damage goes: the root, list node N0..N2 or cached node C0..C2. */
enum { DW_ROOT, DW_N0, DW_N1, DW_N2, DW_C0, DW_C1, DW_C2 };
/* What it writes: a value, or the offset of a block of the list. */
enum { DV_ABS, DV_PLUS, DV_N0, DV_N1, DV_N2, DV_C0 };
#define DM(op) (1u << (op))
#define DM_ALL_BUT_TRIM (DM(DOP_TRIM) - 1u)
#define DM_CACHE_TAKERS                                                        \
    (DM(DOP_PUSHH) | DM(DOP_PUSHT) | DM(DOP_PUSHMANY) | DM(DOP_TRIM))

typedef struct dmgSpec {
    int where;
    unsigned field;
    int kind;
    uint64_t value;
    unsigned mustCorrupt; /* ops that must say CORRUPT (DM bits) */
    const char *what;
} dmgSpec;

static const dmgSpec dmgSpecs[] = {
    {DW_ROOT, RT_HEAD, DV_ABS, 1ull << 62, DM_ALL_BUT_TRIM, "head outside"},
    {DW_ROOT, RT_HEAD, DV_PLUS, 4, DM_ALL_BUT_TRIM, "head misaligned"},
    {DW_ROOT, RT_TAIL, DV_ABS, 8, DM_ALL_BUT_TRIM, "tail below the heap"},
    {DW_ROOT, RT_COUNT, DV_ABS, 0,
     DM(DOP_POPH) | DM(DOP_POPT) | DM(DOP_PUSHH) | DM(DOP_PUSHT) |
         DM(DOP_PUSHMANY) | DM(DOP_POPMANY),
     "count 0 with a head"},
    {DW_ROOT, RT_COUNT, DV_ABS, 1ull << 40, DM_ALL_BUT_TRIM, "count huge"},
    {DW_ROOT, RT_POOL0, DV_ABS, 1ull << 62, DM_CACHE_TAKERS, "cache outside"},
    {DW_ROOT, RT_POOL0, DV_PLUS, 12, DM_CACHE_TAKERS, "cache misaligned"},
    {DW_ROOT, RT_POOL0, DV_N1, 0, DM(DOP_TRIM), "cache shares a list node"},
    {DW_ROOT, RT_POOLCOUNT0, DV_ABS, 5000, DM_CACHE_TAKERS, "cache count huge"},
    {DW_ROOT, RT_POOLCOUNT0, DV_ABS, 0, DM_CACHE_TAKERS, "cache count 0"},
    {DW_N0, ND_NEXT, DV_ABS, 1ull << 62, DM(DOP_POPH) | DM(DOP_POPMANY),
     "head's next outside"},
    {DW_N0, ND_NEXT, DV_N0, 0, DM(DOP_POPH) | DM(DOP_POPMANY),
     "head's next is itself"},
    {DW_N1, ND_PREV, DV_N2, 0, DM(DOP_POPH) | DM(DOP_POPMANY),
     "backward cycle"},
    {DW_N2, ND_PREV, DV_ABS, 7, DM(DOP_POPT), "tail's prev misaligned"},
    {DW_N0, ND_LEN, DV_ABS, 1000,
     DM(DOP_PEEKH) | DM(DOP_POPH) | DM(DOP_POPMANY), "length over capacity"},
    {DW_N2, ND_CAP, DV_ABS, 1ull << 50, DM(DOP_PEEKT) | DM(DOP_POPT),
     "capacity outside"},
    {DW_C0, ND_NEXT, DV_ABS, 1ull << 62, DM_CACHE_TAKERS,
     "cached next outside"},
    {DW_C1, ND_NEXT, DV_C0, 0, DM(DOP_TRIM), "cycle in the cache"},
    {DW_C0, ND_CAP, DV_ABS, 1ull << 50, DM_CACHE_TAKERS,
     "cached capacity outside"},
};
#define N_DMG (sizeof dmgSpecs / sizeof dmgSpecs[0])

static void dmgApply(const dmgList *d, const dmgSpec *sp) {
    dkoff blk = sp->where == DW_ROOT ? d->root
                : sp->where <= DW_N2 ? d->node[sp->where - DW_N0]
                                     : d->cached[sp->where - DW_C0];
    uint64_t *w = dkshmPtr(seg, blk + sp->field);
    uint64_t v = sp->value;
    switch (sp->kind) {
    case DV_PLUS:
        v = *w + sp->value;
        break;
    case DV_N0:
    case DV_N1:
    case DV_N2:
        v = d->node[sp->kind - DV_N0];
        break;
    case DV_C0:
        v = d->cached[0];
        break;
    }
    *w = v;
}

/* Damage a root or node word the way fuzzSegment did (bugs: Trim followed
 * a damaged cache link, Pop a damaged head or tail), then every writer and
 * reader: CORRUPT (with nothing changed) where it must, a valid result
 * otherwise, never a fault or a hang; multilistCheck names the damage. */
static void dmgRun(size_t first, size_t last) {
    for (size_t i = first; i < last && i < N_DMG; i++) {
        const dmgSpec *sp = &dmgSpecs[i];
        for (int op = 0; op < DOP_N; op++) {
            char name[32], why[256] = "";
            snprintf(name, sizeof name, "dmg%zu.%d", i, op);
            dmgList d;
            dmgMake(&d, name);
            dmgApply(&d, sp);
            int rc = multilistCheck(d.x, why, sizeof why);
            ck_assert_msg(rc == DKSHM_CORRUPT && why[0],
                          "%s: check says %s (%s)", sp->what, dkshmErrName(rc),
                          why);
            dmgSnap before, after;
            dmgSnapTake(&d, &before);
            rc = dmgOp(d.x, op);
            ck_assert_msg(rc == DKSHM_OK || rc == DKSHM_CORRUPT ||
                              rc == DKSHM_NOTFOUND || rc == DKSHM_FULL,
                          "%s: %s returned %s", sp->what, dopName[op],
                          dkshmErrName(rc));
            /* (A batch may first move items the damage does not touch.) */
            if ((sp->mustCorrupt & DM(op)) && dmgMoved == 0)
                ck_assert_msg(rc == DKSHM_CORRUPT, "%s: %s returned %s",
                              sp->what, dopName[op], dkshmErrName(rc));
            if (rc == DKSHM_CORRUPT && dmgMoved == 0) {
                dmgSnapTake(&d, &after);
                ck_assert_msg(memcmp(&before, &after, sizeof before) == 0,
                              "%s: %s said CORRUPT but changed the list",
                              sp->what, dopName[op]);
            }
            /* Whatever is left: more operations and a check, no fault. */
            for (int o2 = 0; o2 < DOP_N; o2++)
                (void)dmgOp(d.x, o2);
            rc = multilistCheck(d.x, why, sizeof why);
            ck_assert(rc == DKSHM_OK || rc == DKSHM_CORRUPT);
            multilistClose(d.x);
        }
    }
    /* The undamaged list beside them is untouched. */
    TEST_ASSERT_CHECK(multilistCheck, l);
}

START_TEST(test_damaged_root) {
    dmgRun(0, 10);
}
END_TEST

START_TEST(test_damaged_node) {
    dmgRun(10, N_DMG);
}
END_TEST

/* The two fuzzSegment reproducers, in their own words: a damaged cache
 * link (listroot, seed 0xb start 115) and a damaged head (any, seed 0xb
 * start 174). */
START_TEST(test_damaged_fuzz_cases) {
    dmgList d;
    dmgMake(&d, "fz1");
    *(uint64_t *)dkshmPtr(seg, d.root + RT_POOL0) ^= 1ull << 45;
    ck_assert_int_eq(multilistTrim(d.x), DKSHM_CORRUPT);
    multilistClose(d.x);
    dmgMake(&d, "fz2");
    *(uint64_t *)dkshmPtr(seg, d.root + RT_HEAD) ^= 1ull << 45;
    char buf[64];
    ck_assert_int_eq(popStr(d.x, MULTILIST_HEAD, buf, sizeof buf),
                     DKSHM_CORRUPT);
    ck_assert_int_eq(popStr(d.x, MULTILIST_TAIL, buf, sizeof buf),
                     DKSHM_CORRUPT);
    /* Put back, the list is whole again and works. */
    *(uint64_t *)dkshmPtr(seg, d.root + RT_HEAD) ^= 1ull << 45;
    TEST_ASSERT_CHECK(multilistCheck, d.x);
    assertPop(d.x, MULTILIST_HEAD, "i3");
    assertPop(d.x, MULTILIST_TAIL, "i5");
    ck_assert_int_eq(multilistTrim(d.x), DKSHM_OK);
    TEST_ASSERT_CHECK(multilistCheck, d.x);
    multilistClose(d.x);
}
END_TEST

/* A walk while another process pushes and pops: every view that is not
 * BUSY is a run of consecutive items in order. */
static int churnList(void *arg) {
    (void)arg;
    multilist *x;
    if (multilistOpen(seg, "q", NULL, 0, &x) != DKSHM_OK)
        return 1;
    uint64_t end = dkNowNs() + 400 * 1000000ull;
    char buf[32];
    size_t len;
    for (uint64_t i = 0; dkNowNs() < end; i++) {
        int n = snprintf(buf, sizeof buf, "%" PRIu64, i);
        if (multilistPushTail(x, buf, (size_t)n) != DKSHM_OK)
            return 2;
        if (i >= 20 && multilistPopHead(x, buf, sizeof buf, &len) != DKSHM_OK)
            return 3;
    }
    multilistClose(x);
    return 0;
}

static int checkRun(void *ctx, uint64_t index, const void *item, size_t len) {
    uint64_t *prev = ctx;
    char buf[32];
    if (len >= sizeof buf)
        return 1;
    memcpy(buf, item, len);
    buf[len] = '\0';
    uint64_t v = strtoull(buf, NULL, 10);
    if (index > 0 && v != *prev + 1)
        return 2;
    *prev = v;
    return 0;
}

START_TEST(test_for_each_item_changing) {
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multilist *x = NULL;
    ck_assert_int_eq(multilistOpen(ro, "q", NULL, 0, &x), DKSHM_OK);
    pid_t pid = testSpawn(churnList, NULL);
    int ok = 0, busy = 0;
    uint64_t end = dkNowNs() + 300 * 1000000ull;
    while (dkNowNs() < end) {
        uint64_t prev = 0;
        int rc = multilistForEachItem(x, checkRun, &prev, UINT64_MAX);
        if (rc == DKSHM_BUSY) {
            busy++;
            continue;
        }
        ck_assert_msg(rc == DKSHM_OK, "walk of a changing list: %d", rc);
        ok++;
    }
    ck_assert_int_eq(testWait(pid), 0);
    ck_assert_int_gt(ok + busy, 0);
    uint64_t prev = 0;
    ck_assert_int_eq(multilistForEachItem(x, checkRun, &prev, UINT64_MAX),
                     DKSHM_OK);
    multilistClose(x);
    dkshmDetach(ro);
}
END_TEST

START_TEST(test_full_segment) {
    multilistClose(l);
    testDropSegment(&seg, &mb);
    testMakeSegment("small", DKSHM_MIN_CAPACITY, NULL, &seg, &mb);
    l = openList("q", 0);
    uint8_t v[1000];
    int pushed = 0, rc;
    for (;;) {
        fillBytes(v, sizeof v, (uint64_t)pushed);
        rc = multilistPushTail(l, v, sizeof v);
        if (rc != DKSHM_OK)
            break;
        pushed++;
    }
    ck_assert_int_eq(rc, DKSHM_FULL);
    ck_assert_int_gt(pushed, 10);
    ck_assert_uint_eq(count(l), (uint64_t)pushed);
    /* Small items fail too once nothing is left, and nothing changes. */
    int small = 0;
    while (multilistPushTail(l, v, 8) == DKSHM_OK)
        small++;
    memboundStats m = testAllocStats(mb);
    ck_assert_int_eq(multilistPushTail(l, v, 8), DKSHM_FULL);
    ck_assert_int_eq(multilistPushHead(l, v, 200), DKSHM_FULL);
    memboundStats m2 = testAllocStats(mb);
    ck_assert_uint_eq(m2.used, m.used);
    ck_assert_uint_eq(m2.allocations, m.allocations);
    ck_assert_uint_eq(count(l), (uint64_t)(pushed + small));
    ck_assert_int_eq(multilistPushTail(l, v, 300 * 1024), DKSHM_TOOBIG);
    TEST_ASSERT_CHECK(multilistCheck, l);
    assertOwnership(l);
    uint8_t got[1000];
    size_t len;
    for (int i = 0; i < pushed; i++) {
        ck_assert_int_eq(multilistPopHead(l, got, sizeof got, &len), DKSHM_OK);
        fillBytes(v, sizeof v, (uint64_t)i);
        ck_assert_uint_eq(len, sizeof v);
        ck_assert_int_eq(memcmp(got, v, len), 0);
    }
    /* After pops of small items, the cache must not make a large push fail
     * for want of room: it gives its nodes back by itself. */
    for (int i = 0; i < small; i++)
        ck_assert_int_eq(multilistPopHead(l, got, sizeof got, &len), DKSHM_OK);
    for (int i = 0; i < 200; i++)
        ck_assert_int_eq(multilistPushTail(l, v, 8 + (size_t)i % 200),
                         DKSHM_OK);
    for (int i = 0; i < 200; i++)
        ck_assert_int_eq(multilistPopHead(l, got, sizeof got, &len), DKSHM_OK);
    ck_assert_uint_eq(stats(l).cachedNodes, 200);
    int again = 0;
    while (multilistPushTail(l, v, sizeof v) == DKSHM_OK)
        again++;
    ck_assert_int_ge(again, pushed);
    TEST_ASSERT_CHECK(multilistCheck, l);
    assertOwnership(l);
}
END_TEST

/* ---- multi-process: forked and exec'd producers and consumers ----------- */

enum { MP_ITEMS = 100000, MP_PRODUCERS = 2, MP_CONSUMERS = 3 };

/* Lives in the segment, bound to the name "seen": a bit per item, the
 * duplicates and per-consumer counts. */
typedef struct seenBlock {
    uint64_t dups;
    uint64_t bad;
    uint64_t consumed[8];
    uint64_t bits[(MP_ITEMS + 63) / 64];
} seenBlock;

static size_t mpItem(uint8_t *buf, uint32_t id) {
    size_t len = 8 + id % 57; /* 8..64 bytes: two node classes */
    memcpy(buf, &id, 4);
    uint32_t check = id * 2654435761u;
    memcpy(buf + 4, &check, 4);
    for (size_t i = 8; i < len; i++)
        buf[i] = (uint8_t)(id + i);
    return len;
}

static bool mpItemOk(const uint8_t *buf, size_t len, uint32_t *id) {
    if (len < 8)
        return false;
    uint8_t want[128];
    memcpy(id, buf, 4);
    if (*id >= MP_ITEMS)
        return false;
    return mpItem(want, *id) == len && memcmp(want, buf, len) == 0;
}

static void seeItem(seenBlock *sb, int idx, const uint8_t *buf, size_t len) {
    uint32_t id;
    if (!mpItemOk(buf, len, &id)) {
        __atomic_add_fetch(&sb->bad, 1, __ATOMIC_RELAXED);
        return;
    }
    uint64_t bit = 1ull << (id % 64);
    if (__atomic_fetch_or(&sb->bits[id / 64], bit, __ATOMIC_RELAXED) & bit)
        __atomic_add_fetch(&sb->dups, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sb->consumed[idx], 1, __ATOMIC_RELAXED);
}

/* Consumer 1 pops in batches, the others one at a time. */
static int consumeAll(multilist *x, seenBlock *sb, int idx) {
    uint8_t buf[16 * 128];
    size_t lens[16];
    for (;;) {
        size_t n = 1;
        int rc = idx == 1 ? multilistPopMany(x, MULTILIST_HEAD, buf, sizeof buf,
                                             lens, 16, &n, MULTILIST_FOREVER)
                          : multilistPop(x, MULTILIST_HEAD, buf, 128, &lens[0],
                                         MULTILIST_FOREVER);
        if (rc == DKSHM_SHUTDOWN)
            return 0;
        if (rc != DKSHM_OK)
            return 20 - rc;
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            seeItem(sb, idx, buf + at, lens[i]);
            at += lens[i];
        }
    }
}

/* Producer 1 pushes in batches of 16, the others one at a time. */
static int produce(multilist *x, int p) {
    uint8_t buf[16][128];
    const void *ptrs[16];
    size_t lens[16];
    uint32_t per = MP_ITEMS / MP_PRODUCERS;
    for (uint32_t i = 0; i < per;) {
        uint32_t n = p == 1 && per - i >= 16 ? 16 : 1;
        for (uint32_t j = 0; j < n; j++) {
            lens[j] = mpItem(buf[j], (uint32_t)p * per + i + j);
            ptrs[j] = buf[j];
        }
        size_t pushed;
        int rc = n > 1 ? multilistPushMany(x, MULTILIST_TAIL, ptrs, lens, n,
                                           &pushed, MULTILIST_FOREVER)
                       : multilistPush(x, MULTILIST_TAIL, buf[0], lens[0],
                                       MULTILIST_FOREVER);
        if (rc != DKSHM_OK)
            return 20 - rc;
        i += n;
    }
    return 0;
}

/* "checkMultilist --consumer SEGMENT LIST INDEX": attach by name, find the
 * list and the "seen" block by name, consume until shutdown. */
static int consumerMain(int argc, char **argv) {
    if (argc < 5)
        return 2;
    dkshm *s;
    if (dkshmAttach(argv[2], 0, &s) != DKSHM_OK)
        return 3;
    multilist *x;
    if (multilistOpen(s, argv[3], NULL, 0, &x) != DKSHM_OK)
        return 4;
    uint32_t type;
    dkoff off;
    if (dkshmObjectFind(s, "seen", &type, &off) != DKSHM_OK ||
        type != SEEN_TYPE)
        return 5;
    seenBlock *sb = dkshmPtr(s, off);
    if (!sb)
        return 6;
    int rc = consumeAll(x, sb, atoi(argv[4]));
    multilistClose(x);
    dkshmDetach(s);
    return rc;
}

START_TEST(test_procs_exactly_once) {
    multilist *q = openList("jobs", 64);
    dkoff seenOff;
    ck_assert_int_eq(memboundAllocOff(mb, sizeof(seenBlock), &seenOff),
                     DKSHM_OK);
    seenBlock *sb = dkshmPtr(seg, seenOff);
    memset(sb, 0, sizeof *sb);
    ck_assert_int_eq(dkshmObjectCreate(seg, "seen", SEEN_TYPE, seenOff),
                     DKSHM_OK);
    pid_t cons[MP_CONSUMERS], prod[MP_PRODUCERS];
    fflush(NULL);
    for (int i = 0; i < MP_CONSUMERS; i++) {
        cons[i] = fork();
        ck_assert_int_ge(cons[i], 0);
        if (cons[i] == 0) {
            if (i == MP_CONSUMERS - 1) { /* an unrelated program */
                char idx[8];
                snprintf(idx, sizeof idx, "%d", i);
                char *argv[] = {
                    "checkMultilist", "--consumer", (char *)testSegmentName(),
                    "jobs",           idx,          NULL};
                execv("/proc/self/exe", argv);
                _exit(127);
            }
            _exit(consumeAll(q, sb, i));
        }
    }
    uint64_t t0 = dkNowNs();
    for (int p = 0; p < MP_PRODUCERS; p++) {
        prod[p] = fork();
        ck_assert_int_ge(prod[p], 0);
        if (prod[p] == 0)
            _exit(produce(q, p));
    }
    for (int p = 0; p < MP_PRODUCERS; p++)
        ck_assert_int_eq(testWait(prod[p]), 0);
    /* Every item is pushed; consumers drain what is left after the
     * shutdown, then all of them get SHUTDOWN. */
    ck_assert_int_eq(multilistShutdown(q), DKSHM_OK);
    for (int i = 0; i < MP_CONSUMERS; i++)
        ck_assert_int_eq(testWait(cons[i]), 0);
    double secs = (double)(dkNowNs() - t0) / 1e9;
    ck_assert_uint_eq(sb->dups, 0);
    ck_assert_uint_eq(sb->bad, 0);
    uint64_t total = 0;
    for (int i = 0; i < MP_CONSUMERS; i++) {
        total += sb->consumed[i];
        ck_assert_uint_gt(sb->consumed[i], 0); /* everyone took part */
    }
    ck_assert_uint_eq(total, MP_ITEMS);
    for (uint32_t id = 0; id < MP_ITEMS; id++)
        if (!(sb->bits[id / 64] & (1ull << (id % 64))))
            ck_abort_msg("item %u never consumed", id);
    multilistStats st = stats(q);
    ck_assert_uint_eq(st.count, 0);
    ck_assert_uint_eq(st.pushes, MP_ITEMS);
    ck_assert_uint_eq(st.pops, MP_ITEMS);
    fprintf(stderr,
            "procs: %d items, %d producers, %d consumers (1 exec'd) "
            "in %.2f s; consumed %llu/%llu/%llu\n",
            MP_ITEMS, MP_PRODUCERS, MP_CONSUMERS, secs,
            (unsigned long long)sb->consumed[0],
            (unsigned long long)sb->consumed[1],
            (unsigned long long)sb->consumed[2]);
    TEST_ASSERT_CHECK(multilistCheck, q);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    multilist *all[2] = {l, q};
    assertOwnershipEx(all, 2, &seenOff, 1);
    multilistClose(q);
}
END_TEST

/* The same between threads of one process (for the thread sanitizer). */
enum { TH_ITEMS = 20000 };

typedef struct thCtx {
    multilist *q;
    int idx;
    uint64_t *bits;
    uint64_t dups, got;
} thCtx;

static void *thProducer(void *p) {
    thCtx *c = p;
    uint8_t buf[128];
    for (uint32_t i = 0; i < TH_ITEMS / 2; i++) {
        uint32_t id = (uint32_t)c->idx * (TH_ITEMS / 2) + i;
        size_t len = mpItem(buf, id);
        if (i % 97 == 0)
            len = 8; /* short ones mixed in */
        if (multilistPush(c->q, i % 3 ? MULTILIST_TAIL : MULTILIST_HEAD, buf,
                          len, MULTILIST_FOREVER) != DKSHM_OK)
            return (void *)1;
    }
    return NULL;
}

static void *thConsumer(void *p) {
    thCtx *c = p;
    uint8_t buf[128];
    for (;;) {
        size_t len;
        int rc = multilistPop(c->q, c->idx ? MULTILIST_TAIL : MULTILIST_HEAD,
                              buf, sizeof buf, &len, MULTILIST_FOREVER);
        if (rc == DKSHM_SHUTDOWN)
            return NULL;
        if (rc != DKSHM_OK || len < 4)
            return (void *)1;
        uint32_t id;
        memcpy(&id, buf, 4);
        if (id >= TH_ITEMS)
            return (void *)2;
        uint64_t bit = 1ull << (id % 64);
        if (__atomic_fetch_or(&c->bits[id / 64], bit, __ATOMIC_RELAXED) & bit)
            c->dups++;
        c->got++;
    }
}

START_TEST(test_threads_exactly_once) {
    multilist *q = openList("tq", 16);
    uint64_t bits[(TH_ITEMS + 63) / 64] = {0};
    thCtx pc[2], cc[2];
    pthread_t pt[2], ct[2];
    for (int i = 0; i < 2; i++) {
        cc[i] = (thCtx){.q = q, .idx = i, .bits = bits};
        ck_assert_int_eq(pthread_create(&ct[i], NULL, thConsumer, &cc[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pc[i] = (thCtx){.q = q, .idx = i, .bits = bits};
        ck_assert_int_eq(pthread_create(&pt[i], NULL, thProducer, &pc[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(pt[i], &r);
        ck_assert_ptr_null(r);
    }
    ck_assert_int_eq(multilistShutdown(q), DKSHM_OK);
    uint64_t got = 0, dups = 0;
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(ct[i], &r);
        ck_assert_ptr_null(r);
        got += cc[i].got;
        dups += cc[i].dups;
    }
    ck_assert_uint_eq(dups, 0);
    ck_assert_uint_eq(got, TH_ITEMS);
    for (uint32_t id = 0; id < TH_ITEMS; id++)
        if (!(bits[id / 64] & (1ull << (id % 64))))
            ck_abort_msg("item %u never consumed", id);
    TEST_ASSERT_CHECK(multilistCheck, q);
    multilist *all[2] = {l, q};
    assertOwnershipEx(all, 2, NULL, 0);
    multilistClose(q);
}
END_TEST

/* A waiter killed while blocked leaves nothing behind: the list works on,
 * another waiter is woken, nothing is held or leaked. */
START_TEST(test_waiter_killed) {
    pid_t victim = fork();
    ck_assert_int_ge(victim, 0);
    if (victim == 0) {
        char buf[8];
        size_t len;
        multilistPop(l, MULTILIST_HEAD, buf, sizeof buf, &len,
                     MULTILIST_FOREVER);
        _exit(1);
    }
    multilist *b = openList("b", 1);
    pushStr(b, MULTILIST_TAIL, "full");
    pid_t victim2 = fork();
    ck_assert_int_ge(victim2, 0);
    if (victim2 == 0) {
        /* A big item: its node is allocated in flight before it waits. */
        uint8_t big[5000] = {0};
        multilistPush(b, MULTILIST_TAIL, big, sizeof big, MULTILIST_FOREVER);
        _exit(1);
    }
    ck_assert(waitUntil(stats(l).popWaiters == 1, 5000));
    ck_assert(waitUntil(stats(b).pushWaiters == 1, 5000));
    kill(victim, SIGKILL);
    kill(victim2, SIGKILL);
    ck_assert_int_eq(testWait(victim), TEST_KILLED);
    ck_assert_int_eq(testWait(victim2), TEST_KILLED);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multilistCheck, l);
    TEST_ASSERT_CHECK(multilistCheck, b);
    multilist *all[2] = {l, b};
    assertOwnershipEx(all, 2, NULL, 0); /* the in-flight node was freed */
    /* A new waiter still gets woken and served. */
    pid_t p = testSpawn(childPopOne, NULL);
    testSleepMs(30);
    pushStr(l, MULTILIST_TAIL, "later");
    ck_assert_int_eq(testWait(p), 0);
    assertPop(b, MULTILIST_HEAD, "full");
    pushStr(b, MULTILIST_TAIL, "again");
    TEST_ASSERT_CHECK(multilistCheck, l);
    TEST_ASSERT_CHECK(multilistCheck, b);
    multilistClose(b);
}
END_TEST

/* ---- crash walks -------------------------------------------------------- */

typedef struct walk walk;
struct walk {
    const char *name;
    multilist *x;
    int (*op)(walk *w);
    void (*prepare)(walk *w);
    int (*state)(walk *w); /* 0: as before, 1: as after, -1: neither */
    memboundStats before, after;
    int seen[2];
    long points;
};

static int walkOp(void *arg) {
    walk *w = arg;
    int rc = w->op(w);
    return rc == DKSHM_OK ? 0 : 50 + (-rc);
}

/* Empty X and its cache, then push ITEMS (NULL-terminated) at the tail. */
static void reset(multilist *x, const char *const *items) {
    char buf[4096];
    size_t len;
    while (multilistPopHead(x, buf, sizeof buf, &len) == DKSHM_OK) {
    }
    ck_assert_int_eq(multilistTrim(x), DKSHM_OK);
    for (int i = 0; items && items[i]; i++)
        pushStr(x, MULTILIST_TAIL, items[i]);
}

static bool listIs(multilist *x, uint64_t n, const char *head,
                   const char *tail) {
    char h[4096], t[4096];
    if (count(x) != n)
        return false;
    if (n == 0)
        return true;
    return peekStr(x, MULTILIST_HEAD, h, sizeof h) == DKSHM_OK &&
           peekStr(x, MULTILIST_TAIL, t, sizeof t) == DKSHM_OK &&
           strcmp(h, head) == 0 && strcmp(t, tail) == 0;
}

static void assertAllocStats(const memboundStats *want, long k,
                             const char *what) {
    memboundStats m = testAllocStats(mb);
    ck_assert_msg(m.used == want->used && m.allocations == want->allocations,
                  "crash point %ld: allocator %llu bytes in %llu blocks, "
                  "expected %llu in %llu (%s)",
                  k, (unsigned long long)m.used,
                  (unsigned long long)m.allocations,
                  (unsigned long long)want->used,
                  (unsigned long long)want->allocations, what);
}

/* Recover at once the locks a dead process holds: fastMutexLock (which
 * dkshmReap uses) first sleeps DKSHM_LOCK_POLL_MS before it looks at the
 * owner, a try-lock looks at once. Not on every fourth crash point, so
 * that the reaper's own recovery is walked too. */
static void recoverNow(long k) {
    if (k % 4 == 0)
        return;
    for (uint32_t p = 0; p < seg->hdr->maxProcs; p++) {
        dkProcSlot *ps = dkSlotAt(seg, p);
        for (int i = 0; i < DK_HELD_MAX; i++) {
            dkoff off = __atomic_load_n(&ps->held[i], __ATOMIC_RELAXED);
            fastMutex *m = off ? dkshmPtr(seg, off) : NULL;
            if (!m || __atomic_load_n(&m->word, __ATOMIC_RELAXED) == 0)
                continue;
            int rc = fastMutexTryLock(seg, m);
            if (rc == DKSHM_OK || rc == DKSHM_RECOVERED)
                fastMutexUnlock(seg, m);
        }
    }
}

static void walkAfter(void *arg, long k) {
    walk *w = arg;
    recoverNow(k);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    char why[256];
    int rc = multilistCheck(w->x, why, sizeof why);
    ck_assert_msg(rc == DKSHM_OK, "%s crash point %ld: %s (%s)", w->name, k,
                  why, dkshmErrName(rc));
    TEST_ASSERT_CHECK(memboundCheck, mb);
    multilist *all[2] = {l, w->x};
    assertOwnershipEx(all, w->x == l ? 1 : 2, NULL, 0);
    int st = w->state(w);
    ck_assert_msg(st == 0 || st == 1,
                  "%s crash point %ld: operation half "
                  "done",
                  w->name, k);
    /* Nothing leaked or lost: the allocator is exactly as before or after. */
    assertAllocStats(st ? &w->after : &w->before, k, w->name);
    w->seen[st]++;
    w->prepare(w);
}

static void runWalk(walk *w, int minPoints) {
    /* The figures after a clean run, then back to the start. */
    w->prepare(w);
    w->before = testAllocStats(mb);
    ck_assert_int_eq(walkOp(w), 0);
    ck_assert_int_eq(w->state(w), 1);
    w->after = testAllocStats(mb);
    w->prepare(w);
    assertAllocStats(&w->before, 0, "prepare");
    TEST_ASSERT_CHECK(multilistCheck, w->x);
    w->points = testCrashWalk(walkOp, walkAfter, w, 5000);
    ck_assert_int_eq(w->state(w), 1);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multilistCheck, w->x);
    assertAllocStats(&w->after, w->points + 1, "final");
    ck_assert_msg(w->points >= minPoints, "%s: only %ld crash points", w->name,
                  w->points);
    ck_assert_int_gt(w->seen[0], 0);
    ck_assert_int_gt(w->seen[1], 0);
    fprintf(stderr, "crash walk %s: %ld points (%d before, %d after)\n",
            w->name, w->points, w->seen[0], w->seen[1]);
}

static const char *const AB[] = {"A", "B", NULL};
static const char *const ABC[] = {"A", "B", "C", NULL};

/* pushTail of a new node (the cache is empty). */
static int opPushNew(walk *w) {
    return multilistPushTail(w->x, "X-new", 5);
}
static void prepAB(walk *w) {
    reset(w->x, AB);
}
static int statePushNew(walk *w) {
    return listIs(w->x, 2, "A", "B")       ? 0
           : listIs(w->x, 3, "A", "X-new") ? 1
                                           : -1;
}

START_TEST(test_crash_push_new) {
    walk w = {.name = "pushTail new",
              .x = l,
              .op = opPushNew,
              .prepare = prepAB,
              .state = statePushNew};
    runWalk(&w, 20);
}
END_TEST

/* pushTail of a cached node. */
static void prepABCached(walk *w) {
    reset(w->x, AB);
    pushStr(w->x, MULTILIST_TAIL, "D");
    assertPop(w->x, MULTILIST_TAIL, "D");
    ck_assert_uint_eq(stats(w->x).cachedNodes, 1);
}

START_TEST(test_crash_push_cached) {
    walk w = {.name = "pushTail cached",
              .x = l,
              .op = opPushNew,
              .prepare = prepABCached,
              .state = statePushNew};
    runWalk(&w, 10);
}
END_TEST

/* pushHead of a large item into an empty list. */
static char bigItem[3000];
static int opPushBig(walk *w) {
    return multilistPushHead(w->x, bigItem, strlen(bigItem));
}
static void prepEmpty(walk *w) {
    reset(w->x, NULL);
}
static int statePushBig(walk *w) {
    return listIs(w->x, 0, NULL, NULL)         ? 0
           : listIs(w->x, 1, bigItem, bigItem) ? 1
                                               : -1;
}

START_TEST(test_crash_push_big) {
    memset(bigItem, 'b', sizeof bigItem - 1);
    walk w = {.name = "pushHead big",
              .x = l,
              .op = opPushBig,
              .prepare = prepEmpty,
              .state = statePushBig};
    runWalk(&w, 20);
}
END_TEST

/* popHead of a small item (its node goes to the cache). */
static int opPop(walk *w) {
    char buf[4096];
    size_t len;
    int rc = multilistPopHead(w->x, buf, sizeof buf, &len);
    return rc == DKSHM_OK && (len != 1 || buf[0] != 'A') ? -100 : rc;
}
static void prepABC(walk *w) {
    reset(w->x, ABC);
}
static int statePop(walk *w) {
    return listIs(w->x, 3, "A", "C") ? 0 : listIs(w->x, 2, "B", "C") ? 1 : -1;
}

START_TEST(test_crash_pop_cached) {
    walk w = {.name = "popHead",
              .x = l,
              .op = opPop,
              .prepare = prepABC,
              .state = statePop};
    runWalk(&w, 10);
}
END_TEST

/* popTail of a large item (its node goes through the in-flight list). */
static int opPopBig(walk *w) {
    char buf[4096];
    size_t len;
    int rc = multilistPopTail(w->x, buf, sizeof buf, &len);
    return rc == DKSHM_OK &&
                   (len != strlen(bigItem) || memcmp(buf, bigItem, len) != 0)
               ? -100
               : rc;
}
static void prepABBig(walk *w) {
    reset(w->x, AB);
    pushStr(w->x, MULTILIST_TAIL, bigItem);
}
static int statePopBig(walk *w) {
    return listIs(w->x, 3, "A", bigItem) ? 0
           : listIs(w->x, 2, "A", "B")   ? 1
                                         : -1;
}

START_TEST(test_crash_pop_big) {
    memset(bigItem, 'g', sizeof bigItem - 1);
    walk w = {.name = "popTail big",
              .x = l,
              .op = opPopBig,
              .prepare = prepABBig,
              .state = statePopBig};
    runWalk(&w, 15);
}
END_TEST

/* A batch push of three new nodes (the cache is empty): a prefix of the
 * batch is in after a crash; the allocator holds exactly its nodes. */
static const char *const XYZ[] = {"X", "Y", "Z"};

static int opPushMany(walk *w) {
    size_t lens[3] = {1, 1, 1}, pushed;
    return multilistPushMany(w->x, MULTILIST_TAIL, (const void *const *)XYZ,
                             lens, 3, &pushed, MULTILIST_NOWAIT);
}

static void walkBatch(walk *w, int (*state)(walk *w), const memboundStats *base,
                      int64_t perItem) {
    long k;
    int seen[4] = {0};
    for (k = 1; k < 5000; k++) {
        w->prepare(w);
        memboundStats m0 = testAllocStats(mb);
        ck_assert_uint_eq(m0.allocations, base->allocations);
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(walkOp(w));
        }
        int st = testWait(pid);
        ck_assert_msg(st == 0 || st == TEST_KILLED, "point %ld: %d", k, st);
        recoverNow(k);
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        TEST_ASSERT_CHECK(multilistCheck, w->x);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        assertOwnership(w->x);
        int done = state(w);
        ck_assert_msg(done >= 0 && done <= 3, "%s point %ld: items torn",
                      w->name, k);
        memboundStats m = testAllocStats(mb);
        ck_assert_msg((int64_t)m.allocations ==
                          (int64_t)base->allocations + perItem * done,
                      "%s point %ld: %d done, %llu allocations", w->name, k,
                      done, (unsigned long long)m.allocations);
        seen[done]++;
        if (st == 0) {
            ck_assert_int_eq(done, 3);
            break;
        }
    }
    fprintf(stderr,
            "crash walk %s: %ld points (%d/%d/%d/%d with 0/1/2/3 "
            "done)\n",
            w->name, k - 1, seen[0], seen[1], seen[2], seen[3]);
    ck_assert_int_gt(seen[0], 0);
    ck_assert_int_gt(seen[1], 0);
    ck_assert_int_gt(seen[2], 0);
}

static int statePushMany(walk *w) {
    uint64_t n = count(w->x);
    static const char *const tails[] = {"B", "X", "Y", "Z"};
    if (n < 2 || n > 5 || !listIs(w->x, n, "A", tails[n - 2]))
        return -1;
    return (int)n - 2;
}

START_TEST(test_crash_push_many) {
    walk w = {.name = "pushMany", .x = l, .op = opPushMany, .prepare = prepAB};
    prepAB(&w);
    memboundStats base = testAllocStats(mb);
    walkBatch(&w, statePushMany, &base, 1);
}
END_TEST

/* A batch pop of two small items and a large one. */
static int opPopMany(walk *w) {
    static uint8_t buf[8192];
    size_t lens[8], popped;
    int rc = multilistPopMany(w->x, MULTILIST_HEAD, buf, sizeof buf, lens, 3,
                              &popped, MULTILIST_NOWAIT);
    return rc == DKSHM_OK && popped != 3 ? -100 : rc;
}
static void prepPopMany(walk *w) {
    reset(w->x, AB);
    pushStr(w->x, MULTILIST_TAIL, bigItem);
    pushStr(w->x, MULTILIST_TAIL, "D");
    /* The cache holds nodes for A and B already (so popping them does not
     * change the allocator): push and pop two. */
    pushStr(w->x, MULTILIST_TAIL, "a");
    pushStr(w->x, MULTILIST_TAIL, "b");
    assertPop(w->x, MULTILIST_TAIL, "b");
    assertPop(w->x, MULTILIST_TAIL, "a");
}
static int statePopMany(walk *w) {
    uint64_t n = count(w->x);
    return listIs(w->x, 4, "A", "D")       ? 0
           : listIs(w->x, 3, "B", "D")     ? 1
           : listIs(w->x, 2, bigItem, "D") ? 2
           : listIs(w->x, 1, "D", "D")     ? 3
                                           : -1 - (int)n;
}

START_TEST(test_crash_pop_many) {
    memset(bigItem, 'm', sizeof bigItem - 1);
    walk w = {
        .name = "popMany", .x = l, .op = opPopMany, .prepare = prepPopMany};
    prepPopMany(&w);
    memboundStats base = testAllocStats(mb);
    /* A and B go to the cache (no change), the large node is freed: the
     * allocations drop by one only at the third item. Checked apart. */
    long k;
    int seen[4] = {0};
    for (k = 1; k < 5000; k++) {
        prepPopMany(&w);
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(walkOp(&w));
        }
        int st = testWait(pid);
        ck_assert_msg(st == 0 || st == TEST_KILLED, "point %ld: %d", k, st);
        recoverNow(k);
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        TEST_ASSERT_CHECK(multilistCheck, l);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        assertOwnership(l);
        int done = statePopMany(&w);
        ck_assert_msg(done >= 0, "popMany point %ld: torn (%d)", k, done);
        memboundStats m = testAllocStats(mb);
        ck_assert_uint_eq(m.allocations,
                          base.allocations - (done == 3 ? 1 : 0));
        seen[done]++;
        if (st == 0) {
            ck_assert_int_eq(done, 3);
            break;
        }
    }
    fprintf(stderr,
            "crash walk popMany: %ld points (%d/%d/%d/%d with "
            "0/1/2/3 done)\n",
            k - 1, seen[0], seen[1], seen[2], seen[3]);
    ck_assert_int_gt(seen[0], 0);
    ck_assert_int_gt(seen[3], 0);
}
END_TEST

/* Shutdown. */
static int opShutdown(walk *w) {
    return multilistShutdown(w->x);
}
static void prepShutdown(walk *w) {
    multilistClose(w->x);
    dkoff root;
    if (dkshmObjectRemove(seg, "sd", MULTILIST_TYPE, &root) == DKSHM_OK) {
        /* The list is empty and its cache trimmed: only the root. */
        ck_assert_int_eq(memboundFreeInflight(mb, root), DKSHM_OK);
    }
    w->x = openList("sd", 0);
}
static int stateShutdown(walk *w) {
    return stats(w->x).shutdown ? 1 : 0;
}

START_TEST(test_crash_shutdown) {
    walk w = {.name = "shutdown",
              .x = openList("sd", 0),
              .op = opShutdown,
              .prepare = prepShutdown,
              .state = stateShutdown};
    runWalk(&w, 3);
    multilistClose(w.x);
}
END_TEST

/* Trim: the cache of 10 nodes (two batches) goes back to the allocator;
 * a trim killed half-way leaves whole batches freed, so its state is
 * "some batches done": check the invariants at every point. */
static int opTrim(walk *w) {
    return multilistTrim(w->x);
}

START_TEST(test_crash_trim) {
    long k;
    for (k = 1; k < 5000; k++) {
        reset(l, NULL);
        for (int i = 0; i < 10; i++)
            pushStr(l, MULTILIST_TAIL, "t");
        char buf[8];
        size_t len;
        for (int i = 0; i < 10; i++)
            ck_assert_int_eq(multilistPopHead(l, buf, sizeof buf, &len),
                             DKSHM_OK);
        memboundStats m0 = testAllocStats(mb);
        ck_assert_uint_eq(stats(l).cachedNodes, 10);
        walk w = {.x = l, .op = opTrim};
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(walkOp(&w));
        }
        int st = testWait(pid);
        ck_assert(st == 0 || st == TEST_KILLED);
        recoverNow(k);
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        TEST_ASSERT_CHECK(multilistCheck, l);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        assertOwnership(l);
        uint64_t cached = stats(l).cachedNodes;
        memboundStats m = testAllocStats(mb);
        ck_assert_uint_eq(m0.allocations - m.allocations, 10 - cached);
        if (st == 0) {
            ck_assert_uint_eq(cached, 0);
            break;
        }
    }
    fprintf(stderr, "crash walk trim: %ld points\n", k - 1);
    ck_assert_int_gt(k, 30);
}
END_TEST

/* Create by name: the root is bound to the name or freed. */
static int opCreate(walk *w) {
    (void)w;
    multilist *x = NULL;
    int rc = multilistOpen(seg, "created", NULL,
                           MULTILIST_CREATE | MULTILIST_EXCL, &x);
    multilistClose(x);
    return rc;
}

START_TEST(test_crash_create) {
    memboundStats m0 = testAllocStats(mb);
    long k;
    for (k = 1; k < 5000; k++) {
        walk w = {.x = l, .op = opCreate};
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(walkOp(&w));
        }
        int st = testWait(pid);
        ck_assert(st == 0 || st == TEST_KILLED);
        recoverNow(k);
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        multilist *x = NULL;
        int rc = multilistOpen(seg, "created", NULL, 0, &x);
        if (rc == DKSHM_NOTFOUND) {
            ck_assert_int_ne(st, 0);
            assertOwnership(l);
            memboundStats m = testAllocStats(mb);
            ck_assert_uint_eq(m.allocations, m0.allocations);
            ck_assert_uint_eq(m.used, m0.used);
            continue;
        }
        ck_assert_int_eq(rc, DKSHM_OK);
        TEST_ASSERT_CHECK(multilistCheck, x);
        multilist *all[2] = {l, x};
        assertOwnershipEx(all, 2, NULL, 0);
        ck_assert_uint_eq(testAllocStats(mb).allocations, m0.allocations + 1);
        multilistClose(x);
        dkoff root;
        ck_assert_int_eq(
            dkshmObjectRemove(seg, "created", MULTILIST_TYPE, &root), DKSHM_OK);
        ck_assert_int_eq(memboundFreeInflight(mb, root), DKSHM_OK);
        if (st == 0)
            break;
    }
    fprintf(stderr, "crash walk create: %ld points\n", k - 1);
    ck_assert_int_gt(k, 10);
}
END_TEST

/* A pop from a full bounded list while another process is blocked pushing
 * into it: at every crash point of the pop, either it rolled back (the
 * pusher still waits, the list is as before) or it committed and the
 * pusher — woken before the commit — gets in, within a second. */
static pid_t waiterPid;

static void startWaiter(multilist *x) {
    fflush(NULL);
    waiterPid = fork();
    ck_assert_int_ge(waiterPid, 0);
    if (waiterPid == 0)
        _exit(multilistPush(x, MULTILIST_TAIL, "W", 1, 30000) == DKSHM_OK ? 0
                                                                          : 1);
    ck_assert(waitUntil(stats(x).pushWaiters >= 1, 5000));
}

START_TEST(test_crash_pop_wakes_waiter) {
    multilist *b = openList("wake", 3);
    long k;
    int before = 0, after = 0;
    memboundStats m0 = {0};
    for (k = 1; k < 5000; k++) {
        if (waiterPid == 0) {
            reset(b, ABC);
            m0 = testAllocStats(mb);
            startWaiter(b);
        }
        /* The waiter holds a node in flight while it waits (the cache
         * was empty): one more allocation than m0. */
        walk w = {.x = b, .op = opPop};
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(walkOp(&w));
        }
        int st = testWait(pid);
        ck_assert_msg(st == 0 || st == TEST_KILLED, "crash point %ld: %d", k,
                      st);
        if (st == TEST_KILLED) {
            recoverNow(k);
            ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        }
        char head[8];
        ck_assert_int_eq(peekStr(b, MULTILIST_HEAD, head, sizeof head),
                         DKSHM_OK);
        if (strcmp(head, "B") == 0) {
            /* Committed: the waiter must come in by itself. */
            ck_assert_msg(waitUntil(count(b) == 3, 1000),
                          "crash point %ld: the waiter was not woken", k);
            ck_assert_int_eq(testWait(waiterPid), 0);
            waiterPid = 0;
            ck_assert(listIs(b, 3, "B", "W"));
            after++;
        } else {
            ck_assert_msg(listIs(b, 3, "A", "C"),
                          "crash point %ld: pop half done", k);
            ck_assert_int_eq(waitpid(waiterPid, NULL, WNOHANG), 0);
            ck_assert_int_ne(st, 0);
            before++;
        }
        TEST_ASSERT_CHECK(multilistCheck, b);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        multilist *all[2] = {l, b};
        assertOwnershipEx(all, 2, NULL, 0);
        memboundStats m = testAllocStats(mb);
        /* Before: + the waiter's in-flight node. After: A's node went to
         * the cache, the waiter's node into the list. Same either way. */
        ck_assert_uint_eq(m.allocations, m0.allocations + 1);
        if (st == 0)
            break;
    }
    if (waiterPid) {
        kill(waiterPid, SIGKILL);
        testWait(waiterPid);
        waiterPid = 0;
    }
    fprintf(stderr,
            "crash walk pop waking a waiter: %ld points (%d before, "
            "%d after)\n",
            k - 1, before, after);
    ck_assert_int_gt(before, 0);
    ck_assert_int_gt(after, 0);
    multilistClose(b);
}
END_TEST

/* ---- random SIGKILLs ---------------------------------------------------- */

enum {
    RK_PRODUCERS = 2,
    RK_CONSUMERS = 2,
    RK_WORKERS = 4,
    RK_IDS = 1 << 22,
    RK_ITEM_MAX = 96
};

typedef struct rkShared { /* anonymous shared memory */
    uint64_t nextId;
    uint64_t dups;
    uint64_t bad;
    /* What each consumer popped last: written by the pop itself (under the
     * list lock, before its commit), so after a kill it names the item a
     * dead consumer may have taken. */
    struct {
        uint8_t buf[RK_ITEM_MAX];
    } slot[RK_CONSUMERS];
    uint64_t bits[RK_IDS / 64];
} rkShared;

static size_t rkItem(uint8_t *buf, uint64_t id) {
    size_t len = 16 + id % 64;
    memcpy(buf, &id, 8);
    uint64_t check = id * 0x9e3779b97f4a7c15ull ^ len;
    memcpy(buf + 8, &check, 8);
    for (size_t i = 16; i < len; i++)
        buf[i] = (uint8_t)(id * 7 + i);
    return len;
}

/* The id in BUF (LEN bytes; 0: deduce) if it is a whole item, else ~0. */
static uint64_t rkItemId(const uint8_t *buf, size_t len) {
    uint64_t id;
    memcpy(&id, buf, 8);
    if (id >= RK_IDS)
        return ~0ull;
    uint8_t want[RK_ITEM_MAX];
    size_t wl = rkItem(want, id);
    if (len && len != wl)
        return ~0ull;
    return memcmp(want, buf, wl) == 0 ? id : ~0ull;
}

static int rkProducer(multilist *x, rkShared *sh, int ackFd) {
    uint8_t buf[RK_ITEM_MAX];
    for (;;) {
        uint64_t id = __atomic_fetch_add(&sh->nextId, 1, __ATOMIC_RELAXED);
        if (id >= RK_IDS)
            for (;;)
                testSleepMs(100);
        size_t len = rkItem(buf, id);
        int rc;
        do
            rc = multilistPush(x, MULTILIST_TAIL, buf, len, 100);
        while (rc == DKSHM_TIMEDOUT);
        if (rc != DKSHM_OK)
            return 20 - rc;
        if (write(ackFd, &id, 8) != 8)
            return 2;
    }
}

static int rkConsumer(multilist *x, rkShared *sh, int c) {
    uint8_t *buf = sh->slot[c].buf;
    for (;;) {
        size_t len;
        int rc = multilistPop(x, MULTILIST_HEAD, buf, RK_ITEM_MAX, &len, 100);
        if (rc == DKSHM_TIMEDOUT)
            continue;
        if (rc != DKSHM_OK)
            return 20 - rc;
        uint64_t id = rkItemId(buf, len);
        if (id == ~0ull) {
            __atomic_add_fetch(&sh->bad, 1, __ATOMIC_RELAXED);
            continue;
        }
        uint64_t bit = 1ull << (id % 64);
        if (__atomic_fetch_or(&sh->bits[id / 64], bit, __ATOMIC_RELAXED) & bit)
            __atomic_add_fetch(&sh->dups, 1, __ATOMIC_RELAXED);
    }
}

static pid_t rkSpawn(multilist *x, rkShared *sh, int w, int ackFd) {
    fflush(NULL);
    pid_t p = fork();
    ck_assert_int_ge(p, 0);
    if (p == 0)
        _exit(w < RK_PRODUCERS ? rkProducer(x, sh, ackFd)
                               : rkConsumer(x, sh, w - RK_PRODUCERS));
    return p;
}

/* Read acknowledgements: at most MAXREADS reads (0: until none is left),
 * so that busy producers cannot keep the caller here. */
static void rkDrainAcks(int fd, uint8_t *acked, uint64_t *n, int maxReads) {
    uint64_t ids[512];
    ssize_t got;
    for (int r = 0; (maxReads == 0 || r < maxReads) &&
                    (got = read(fd, ids, sizeof ids)) > 0;
         r++) {
        /* No ck_assert in loops: each passing one is a system call. */
        if (got % 8 != 0)
            ck_abort_msg("torn acknowledgement");
        for (ssize_t i = 0; i < got / 8; i++) {
            if (ids[i] >= RK_IDS)
                ck_abort_msg("bad acknowledged id %llu",
                             (unsigned long long)ids[i]);
            acked[ids[i]] = 1;
            (*n)++;
        }
    }
}

START_TEST(test_random_kill) {
    multilist *q = openList("rk", 1000);
    rkShared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert(sh != MAP_FAILED);
    uint8_t *acked = calloc(RK_IDS, 1), *lostTo = calloc(RK_IDS, 1);
    ck_assert(acked && lostTo);
    int ack[2];
    ck_assert_int_eq(pipe(ack), 0);
    fcntl(ack[0], F_SETFL, O_NONBLOCK);
    fcntl(ack[1], F_SETPIPE_SZ, 1 << 20);
    pid_t pids[RK_WORKERS];
    for (int w = 0; w < RK_WORKERS; w++)
        pids[w] = rkSpawn(q, sh, w, ack[1]);
    uint64_t seed = 777, nAcked = 0;
    int kills[2] = {0, 0};
    uint64_t start = dkNowNs();
    /* A number of kills, not a duration: slow (sanitizer) builds do the
     * same test; the time cap only stops a hang. */
    while (kills[0] + kills[1] < 60 && dkNowNs() - start < 60000000000ull) {
        testSleepMs(1 + (unsigned)(testRng(&seed) % 12));
        rkDrainAcks(ack[0], acked, &nAcked, 64);
        int w = (int)(testRng(&seed) % RK_WORKERS);
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
        if (w >= RK_PRODUCERS) {
            uint64_t id = rkItemId(sh->slot[w - RK_PRODUCERS].buf, 0);
            if (id != ~0ull)
                lostTo[id] = 1; /* may have taken it and died */
        }
        kills[w >= RK_PRODUCERS]++;
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        if ((kills[0] + kills[1]) % 16 == 0)
            TEST_ASSERT_CHECK(multilistCheck, q);
        pids[w] = rkSpawn(q, sh, w, ack[1]);
    }
    for (int w = 0; w < RK_WORKERS; w++) {
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
        if (w >= RK_PRODUCERS) {
            uint64_t id = rkItemId(sh->slot[w - RK_PRODUCERS].buf, 0);
            if (id != ~0ull)
                lostTo[id] = 1;
        }
    }
    close(ack[1]);
    fcntl(ack[0], F_SETFL, 0);
    rkDrainAcks(ack[0], acked, &nAcked, 0);
    close(ack[0]);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multilistCheck, q);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    multilist *all[2] = {l, q};
    assertOwnershipEx(all, 2, NULL, 0);
    /* What is left in the list counts as consumed, once. */
    uint8_t buf[RK_ITEM_MAX];
    size_t len;
    uint64_t left = 0;
    while (multilistPopHead(q, buf, sizeof buf, &len) == DKSHM_OK) {
        uint64_t id = rkItemId(buf, len);
        if (id == ~0ull)
            ck_abort_msg("damaged item left in the list");
        uint64_t bit = 1ull << (id % 64);
        if (sh->bits[id / 64] & bit)
            ck_abort_msg("item %llu twice", (unsigned long long)id);
        sh->bits[id / 64] |= bit;
        left++;
    }
    ck_assert_uint_eq(sh->dups, 0);
    ck_assert_uint_eq(sh->bad, 0);
    uint64_t lost = 0, consumed = 0;
    for (uint64_t id = 0; id < RK_IDS; id++) {
        bool got = sh->bits[id / 64] & (1ull << (id % 64));
        consumed += got;
        if (acked[id] && !got) {
            /* Only an item a killed consumer held may be missing. */
            if (!lostTo[id])
                ck_abort_msg("acknowledged item %llu lost",
                             (unsigned long long)id);
            lost++;
        }
    }
    fprintf(stderr,
            "random kill: %d producer and %d consumer kills, %llu "
            "items acknowledged, %llu consumed, %llu left in the list, %llu "
            "taken by consumers as they were killed\n",
            kills[0], kills[1], (unsigned long long)nAcked,
            (unsigned long long)consumed, (unsigned long long)left,
            (unsigned long long)lost);
    ck_assert_uint_le(lost, (uint64_t)kills[1] + RK_CONSUMERS);
    ck_assert_int_eq(kills[0] + kills[1], 60);
    ck_assert_uint_gt(nAcked, 0);
    free(acked);
    free(lostTo);
    munmap(sh, sizeof *sh);
    multilistClose(q);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

static Suite *multilistSuite(void) {
    const testCaseSpec cases[] = {
        {"basic",
         {test_fifo_lifo_deque, test_item_sizes, test_buffer_too_small,
          test_capacity, test_pop_timeout, test_stats_and_trim,
          test_open_by_name, test_open_race, test_batches},
         60},
        {"badInput",
         {test_bad_input, test_wrong_type, test_read_only, test_full_segment,
          test_for_each_item, test_for_each_item_damaged,
          test_for_each_item_changing},
         60},
        {"damaged",
         {test_damaged_root, test_damaged_node, test_damaged_fuzz_cases},
         60},
        {"blocking",
         {test_blocking_wakeups, test_shutdown_wakes_all, test_waiter_killed},
         60},
        {"multiProcess",
         {test_procs_exactly_once, test_threads_exactly_once},
         120},
        {"crash",
         {test_crash_push_new, test_crash_push_cached, test_crash_push_big,
          test_crash_pop_cached, test_crash_pop_big, test_crash_shutdown,
          test_crash_trim, test_crash_create, test_crash_pop_wakes_waiter,
          test_crash_push_many, test_crash_pop_many},
         300},
        {"randomKill", {test_random_kill}, 120},
    };
    return testSuiteFrom("multilist", cases, sizeof cases / sizeof cases[0],
                         setup, teardown);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--consumer") == 0)
        return consumerMain(argc, argv);
    testSetPrefix("ml");
    return testRunSuite(multilistSuite());
}
