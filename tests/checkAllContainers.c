/* checkAllContainers.c — every container of one segment used at once by
 * forked workers and by an unrelated (exec'd) program, with exact final
 * contents; and random SIGKILLs of workers holding OSRegulate permits.
 *
 * Each worker W does OPS rounds; round i:
 *   multidict "ctr":    incr "total" and "w<W>"
 *   multimap  "map":    insert int64 key W * OPS + i -> value i
 *   multilist "queue":  push (W, i)
 *   multiarray "log":   append (W, i)
 *   OSRegulate "lim":   acquire, bump a shared in-use count, release
 * The exec'd program is worker number WORKERS (it attaches by name).
 */
#include "config.h"

#include "OSRegulate.h"
#include "membound.h"
#include "multiarray.h"
#include "multidict.h"
#include "multilist.h"
#include "multimap.h"
#include "testUtil.h"

#define WORKERS 3 /* forked; one more is exec'd */
#define OPS 500
#define LIMIT 2

typedef struct item { /* queue and array element */
    uint32_t worker;
    uint32_t round;
} item;

typedef struct handles { /* per process */
    multidict *ctr;
    multimap *map;
    multilist *queue;
    multiarray *log;
    OSRegulate *lim;
} handles;

static int openAll(dkshm *s, bool create, handles *h) {
    multimapOptions mo = {.keyMode = MULTIMAP_KEYS_INT64};
    multiarrayOptions ao = {.elemSize = sizeof(item)};
    OSRegulateOptions ro = {.maxHolders = LIMIT};
    int rc;
    if ((rc = multidictOpen(s, "ctr", NULL, create ? MULTIDICT_CREATE : 0,
                            &h->ctr)) != DKSHM_OK ||
        (rc = multimapOpen(s, "map", &mo, create ? MULTIMAP_CREATE : 0,
                           &h->map)) != DKSHM_OK ||
        (rc = multilistOpen(s, "queue", NULL, create ? MULTILIST_CREATE : 0,
                            &h->queue)) != DKSHM_OK ||
        (rc = multiarrayOpen(s, "log", &ao, create ? MULTIARRAY_CREATE : 0,
                             &h->log)) != DKSHM_OK ||
        (rc = OSRegulateOpen(s, "lim", &ro, create ? OSREGULATE_CREATE : 0,
                             &h->lim)) != DKSHM_OK)
        return rc;
    return DKSHM_OK;
}

static void closeAll(handles *h) {
    multidictClose(h->ctr);
    multimapClose(h->map);
    multilistClose(h->queue);
    multiarrayClose(h->log);
    OSRegulateClose(h->lim);
}

/* The in-use count of the limiter lives under a name of its own. */
static int64_t *inUse(dkshm *s) {
    dkoff off;
    return dkshmObjectFind(s, "inuse", NULL, &off) == DKSHM_OK
               ? dkshmPtr(s, off)
               : NULL;
}

/* One worker's rounds. Returns 0, or the step that failed. */
static int work(dkshm *s, uint32_t w) {
    handles h;
    if (openAll(s, false, &h) != DKSHM_OK)
        return 10;
    int64_t *used = inUse(s);
    if (!used)
        return 11;
    char key[16];
    snprintf(key, sizeof key, "w%u", w);
    for (uint32_t i = 0; i < OPS; i++) {
        item it = {w, i};
        if (multidictIncr(h.ctr, "total", 5, 1, NULL) != DKSHM_OK ||
            multidictIncr(h.ctr, key, strlen(key), 1, NULL) != DKSHM_OK)
            return 12;
        if (multimapInsertInt(h.map, (int64_t)w * OPS + i, &i, sizeof i,
                              MULTIMAP_NOOVERWRITE) != DKSHM_OK)
            return 13;
        if (multilistPush(h.queue, MULTILIST_TAIL, &it, sizeof it,
                          MULTILIST_FOREVER) != DKSHM_OK)
            return 14;
        if (multiarrayAppend(h.log, &it, NULL) != DKSHM_OK)
            return 15;
        if (OSRegulateAcquire(h.lim, 0) != DKSHM_OK)
            return 16;
        int64_t now = __atomic_add_fetch(used, 1, __ATOMIC_SEQ_CST);
        int bad = now > LIMIT;
        __atomic_sub_fetch(used, 1, __ATOMIC_SEQ_CST);
        if (OSRegulateRelease(h.lim) != DKSHM_OK || bad)
            return 17;
    }
    closeAll(&h);
    return 0;
}

static dkshm *S;
static handles H;

static void setup(void) {
    testMakeSegment("all", 32u << 20, NULL, &S, NULL);
    ck_assert_int_eq(openAll(S, true, &H), DKSHM_OK);
    dkoff off;
    ck_assert_int_eq(
        memboundAllocOff(memboundForSegment(S), sizeof(int64_t), &off),
        DKSHM_OK);
    *(int64_t *)dkshmPtr(S, off) = 0;
    ck_assert_int_eq(dkshmObjectCreate(S, "inuse", DKSHM_TYPE_USER, off),
                     DKSHM_OK);
}

static void teardown(void) {
    closeAll(&H);
    testDropSegment(&S, NULL);
}

static void assertChecks(void) {
    TEST_ASSERT_CHECK(multidictCheck, H.ctr);
    TEST_ASSERT_CHECK(multimapCheck, H.map);
    TEST_ASSERT_CHECK(multilistCheck, H.queue);
    TEST_ASSERT_CHECK(multiarrayCheck, H.log);
    TEST_ASSERT_CHECK(OSRegulateCheck, H.lim);
    TEST_ASSERT_CHECK(memboundCheck, memboundForSegment(S));
}

START_TEST(test_forked_and_execd) {
    const uint32_t all = WORKERS + 1;
    pid_t pids[WORKERS + 1];
    for (uint32_t w = 0; w < WORKERS; w++) {
        fflush(NULL);
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0)
            _exit(work(S, w));
    }
    fflush(NULL);
    pids[WORKERS] = fork();
    ck_assert_int_ge(pids[WORKERS], 0);
    if (pids[WORKERS] == 0) {
        char w[16];
        snprintf(w, sizeof w, "%u", WORKERS);
        execl("/proc/self/exe", "checkAllContainers", "--worker",
              testSegmentName(), w, (char *)NULL);
        _exit(127);
    }
    for (uint32_t w = 0; w < all; w++)
        ck_assert_int_eq(testWait(pids[w]), 0);

    /* Exact contents. */
    size_t len;
    int64_t v = 0;
    ck_assert_int_eq(multidictGet(H.ctr, "total", 5, &v, sizeof v, &len),
                     DKSHM_OK);
    ck_assert_int_eq(v, (int64_t)all * OPS);
    for (uint32_t w = 0; w < all; w++) {
        char key[16];
        snprintf(key, sizeof key, "w%u", w);
        ck_assert_int_eq(
            multidictGet(H.ctr, key, strlen(key), &v, sizeof v, &len),
            DKSHM_OK);
        ck_assert_int_eq(v, OPS);
    }
    uint64_t n = 0;
    ck_assert_int_eq(multimapCount(H.map, &n), DKSHM_OK);
    ck_assert_uint_eq(n, (uint64_t)all * OPS);
    for (int64_t k = 0; k < (int64_t)all * OPS; k++) {
        uint32_t r;
        ck_assert_int_eq(multimapLookupInt(H.map, k, &r, sizeof r, &len),
                         DKSHM_OK);
        ck_assert_uint_eq(r, (uint32_t)(k % OPS));
    }
    /* Every queued item once, each worker's in order. */
    uint32_t next[WORKERS + 1] = {0};
    for (uint64_t i = 0; i < (uint64_t)all * OPS; i++) {
        item it;
        ck_assert_int_eq(multilistPop(H.queue, MULTILIST_HEAD, &it, sizeof it,
                                      &len, MULTILIST_NOWAIT),
                         DKSHM_OK);
        ck_assert_uint_lt(it.worker, all);
        ck_assert_uint_eq(it.round, next[it.worker]);
        next[it.worker]++;
    }
    ck_assert_int_eq(multilistPop(H.queue, MULTILIST_HEAD, NULL, 0, &len,
                                  MULTILIST_NOWAIT),
                     DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayCount(H.log, &n), DKSHM_OK);
    ck_assert_uint_eq(n, (uint64_t)all * OPS);
    uint32_t seen[WORKERS + 1] = {0};
    for (uint64_t i = 0; i < n; i++) {
        item it;
        ck_assert_int_eq(multiarrayGet(H.log, i, &it), DKSHM_OK);
        ck_assert_uint_lt(it.worker, all);
        ck_assert_uint_eq(it.round, seen[it.worker]);
        seen[it.worker]++;
    }
    OSRegulateStats st;
    ck_assert_int_eq(OSRegulateGetStats(H.lim, &st), DKSHM_OK);
    ck_assert_uint_eq(st.held, 0);
    ck_assert_uint_eq(st.acquired, (uint64_t)all * OPS);
    assertChecks();
}
END_TEST

/* Workers that only churn permits, SIGKILLed at random moments; the
 * limit holds throughout and no permit is lost. */
static int permitChurn(void *arg) {
    (void)arg;
    handles h;
    if (openAll(S, false, &h) != DKSHM_OK)
        return 10;
    for (;;) {
        if (OSRegulateAcquire(h.lim, 0) != DKSHM_OK)
            return 16;
        if (OSRegulateRelease(h.lim) != DKSHM_OK)
            return 18;
    }
}

START_TEST(test_random_kill_permits) {
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = testSpawn(permitChurn, NULL);
    uint64_t seed = 99;
    for (int kills = 0; kills < 40; kills++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        usleep(1000 + (unsigned)((seed >> 33) % 5000));
        int w = (int)((seed >> 20) % 3);
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
        pids[w] = testSpawn(permitChurn, NULL);
    }
    for (int i = 0; i < 3; i++) {
        kill(pids[i], SIGKILL);
        testWait(pids[i]);
    }
    /* Every permit a dead holder kept comes back to the next acquirer. */
    for (int i = 0; i < LIMIT; i++)
        ck_assert_int_eq(OSRegulateAcquire(H.lim, 5000000000ull), DKSHM_OK);
    ck_assert_int_eq(OSRegulateTryAcquire(H.lim), DKSHM_BUSY);
    for (int i = 0; i < LIMIT; i++)
        ck_assert_int_eq(OSRegulateRelease(H.lim), DKSHM_OK);
    OSRegulateStats st;
    ck_assert_int_eq(OSRegulateGetStats(H.lim, &st), DKSHM_OK);
    ck_assert_uint_eq(st.held, 0);
    ck_assert_int_eq(dkshmReap(S, NULL), DKSHM_OK);
    assertChecks();
}
END_TEST

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "--worker") == 0) {
        dkshm *s;
        if (dkshmAttach(argv[2], 0, &s) != DKSHM_OK)
            return 20;
        int rc = work(s, (uint32_t)atoi(argv[3]));
        dkshmDetach(s);
        return rc;
    }
    testSetPrefix("all");
    Suite *s = suite_create("allContainers");
    TCase *tc = testAddCase(s, "together", setup, teardown, 120);
    tcase_add_test(tc, test_forked_and_execd);
    tcase_add_test(tc, test_random_kill_permits);
    return testRunSuite(s);
}
