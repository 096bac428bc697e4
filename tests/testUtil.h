/* testUtil.h — helpers shared by the Check suites: unique segment names
 * and the per-test fixture segment, Check-function assertions, the
 * ownership check of RECOVERY.md §1, a seeded generator, fork-and-wait, the
 * crash-walk loop and the suite builders. Header-only so every suite is one
 * program.
 */
#ifndef DKSHM_TEST_UTIL_H
#define DKSHM_TEST_UTIL_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "membound.h"
#include "memboundInternal.h"
#include "segmentInternal.h"

/* A segment name unique to this process and TAG: "/dkt-<pid>-<tag>". */
static inline const char *testSegName(const char *tag) {
    static __thread char buf[DKSHM_NAME_MAX + 1];
    snprintf(buf, sizeof buf, "/dkt-%d-%s", (int)getpid(), tag);
    return buf;
}

/* ---- names of one suite's segments -------------------------------------
 *
 * A suite that calls testSetPrefix("mb") in main(), before running, names
 * its segments "/dkt-mb-<runner pid>-<test pid>-<tag>": unique to the
 * runner and to the test process (fork mode), and all under one prefix. A
 * failed assertion ends a test process without its teardown, so
 * testRunSuite() calls testUnlinkLeftovers() after the run to remove what
 * such tests left.
 */

typedef struct testSuiteState {   /* per process */
    char prefix[16];              /* the suite's, as "mb" */
    pid_t runner;                 /* the pid of the suite's main() */
    char seg[DKSHM_NAME_MAX + 1]; /* the fixture segment's name, or "" */
} testSuiteState;

static inline testSuiteState *testState(void) {
    static testSuiteState st;
    return &st;
}

/* Set the suite's name prefix and take this process as the runner. */
static inline void testSetPrefix(const char *suite) {
    testSuiteState *st = testState();
    snprintf(st->prefix, sizeof st->prefix, "%s", suite);
    st->runner = getpid();
}

/* "/dkt-<suite>-<runner pid>-<this pid>-<tag>"; valid until the next call
 * in this thread. */
static inline const char *testSegNameFor(const char *tag) {
    static __thread char buf[DKSHM_NAME_MAX + 1];
    testSuiteState *st = testState();
    snprintf(buf, sizeof buf, "/dkt-%.*s-%d-%d-%s", (int)sizeof st->prefix - 1,
             st->prefix, (int)st->runner, (int)getpid(), tag);
    return buf;
}

/* Unlink every segment of this runner's tests. */
static inline void testUnlinkLeftovers(void) {
    testSuiteState *st = testState();
    char prefix[64];
    snprintf(prefix, sizeof prefix, "dkt-%.*s-%d-", (int)sizeof st->prefix - 1,
             st->prefix, (int)st->runner);
    DIR *dir = opendir("/dev/shm");
    if (!dir)
        return;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            char name[sizeof e->d_name + 1];
            snprintf(name, sizeof name, "/%s", e->d_name);
            dkshmUnlink(name);
        }
    }
    closedir(dir);
}

/* ---- the fixture segment ------------------------------------------------ */

/* Create the test's segment testSegNameFor(TAG) of CAPACITY bytes with OPT
 * (may be NULL), replacing a leftover of that name, into *SEG, and its
 * allocator into *MB (MB may be NULL). Fails the test on error. */
static inline void testMakeSegment(const char *tag, uint64_t capacity,
                                   const dkshmOptions *opt, dkshm **seg,
                                   membound **mb) {
    char *name = testState()->seg;
    snprintf(name, sizeof testState()->seg, "%s", testSegNameFor(tag));
    dkshmUnlink(name);
    int rc = dkshmCreate(name, capacity, opt, seg);
    ck_assert_msg(rc == DKSHM_OK, "create %s: %s", name, dkshmStrerror(rc));
    if (mb) {
        *mb = memboundForSegment(*seg);
        ck_assert_ptr_nonnull(*mb);
    }
}

/* This process's statistics counter CTR (DKSHM_CTR_...) in S's process
 * table; false if the process is not registered there. */
static inline bool testProcCounter(dkshm *s, int ctr, uint64_t *out) {
    dkshmProcInfo info[16];
    size_t n = 0;
    if (dkshmProcList(s, info, 16, &n) != DKSHM_OK)
        return false;
    for (size_t i = 0; i < n && i < 16; i++)
        if (info[i].pid == (uint32_t)getpid()) {
            *out = info[i].counters[ctr];
            return true;
        }
    return false;
}

/* The name of the segment testMakeSegment made ("" if none). */
static inline const char *testSegmentName(void) {
    return testState()->seg;
}

/* Detach *SEG (if any) and unlink the segment testMakeSegment made; clears
 * *SEG and *MB (MB may be NULL). */
static inline void testDropSegment(dkshm **seg, membound **mb) {
    if (*seg)
        dkshmDetach(*seg);
    *seg = NULL;
    if (mb)
        *mb = NULL;
    char *name = testState()->seg;
    if (name[0])
        dkshmUnlink(name);
    name[0] = '\0';
}

/* ---- assertions ---------------------------------------------------------- */

/* Run FN(HANDLE, why, sizeof why) — one of the ...Check functions — and
 * fail the test with FN's reason unless it returns DKSHM_OK. */
#define TEST_ASSERT_CHECK(fn, handle)                                          \
    do {                                                                       \
        char why_[256] = "";                                                   \
        int rc_ = fn((handle), why_, sizeof why_);                             \
        ck_assert_msg(rc_ == DKSHM_OK, "%s: %s (%s)", #fn, why_,               \
                      dkshmErrName(rc_));                                      \
    } while (0)

/* ---- ownership (RECOVERY.md §1) ---------------------------------------- */

typedef struct testBlock { /* per process */
    dkoff off;
    uint64_t bytes;
} testBlock;

typedef struct testBlocks { /* per process; {0} is empty */
    testBlock *b;
    size_t n, cap;
} testBlocks;

static inline void testBlocksPush(testBlocks *l, dkoff off, uint64_t bytes) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 1024;
        l->b = realloc(l->b, l->cap * sizeof *l->b);
        if (!l->b)
            ck_abort_msg("out of memory");
    }
    l->b[l->n++] = (testBlock){off, bytes};
}

/* A container's ...ForEachBlock callback: adds each block to CTX, a
 * testBlocks. */
static inline int testBlocksCollect(void *ctx, dkoff off, uint64_t bytes,
                                    int kind) {
    (void)kind;
    testBlocksPush(ctx, off, bytes);
    return 0;
}

/* Add the blocks in the in-flight lists of every process of S. */
static inline void testBlocksAddInflight(testBlocks *l, dkshm *s) {
    for (uint32_t p = 0; p < s->hdr->maxProcs; p++)
        for (int j = 0; j < DK_INFLIGHT_MAX; j++)
            if (dkInflightIsBlock(dkSlotAt(s, p)->inflight[j]))
                testBlocksPush(l, dkSlotAt(s, p)->inflight[j], 1);
}

static inline int testBlocksAllocFn(void *ctx, dkoff off, uint64_t size) {
    testBlocksPush(ctx, off, size);
    return 0;
}

static inline int testBlockCmp(const void *a, const void *b) {
    dkoff x = ((const testBlock *)a)->off, y = ((const testBlock *)b)->off;
    return x < y ? -1 : x > y;
}

/* Every live allocation of MB is one of the blocks OWNED (nothing leaked),
 * and every block of OWNED is a live allocation large enough; frees OWNED.
 * On a mismatch in number, lists on stderr the allocations no owner holds.
 * WHAT names the owners in the messages ("map"). Each comparison is a plain
 * test: a passing Check assertion costs a file write. */
static inline void testAssertOwnership(membound *mb, testBlocks *owned,
                                       const char *what) {
    testBlocks have = {0};
    ck_assert_int_eq(memboundForEachAllocation(mb, testBlocksAllocFn, &have),
                     DKSHM_OK);
    if (owned->n > 1)
        qsort(owned->b, owned->n, sizeof *owned->b, testBlockCmp);
    if (have.n > 1)
        qsort(have.b, have.n, sizeof *have.b, testBlockCmp);
    if (owned->n != have.n) {
        for (size_t i = 0, j = 0; i < have.n; i++) {
            if (j < owned->n && owned->b[j].off == have.b[i].off) {
                j++;
                continue;
            }
            fprintf(stderr,
                    "ownership: allocation %#llx (%llu bytes) owned by no "
                    "%s\n",
                    (unsigned long long)have.b[i].off,
                    (unsigned long long)have.b[i].bytes, what);
        }
    }
    ck_assert_msg(owned->n == have.n,
                  "ownership: %zu %s blocks, %zu allocations", owned->n, what,
                  have.n);
    for (size_t i = 0; i < owned->n; i++) {
        if (owned->b[i].off != have.b[i].off)
            ck_abort_msg("ownership: block %#llx vs allocation %#llx",
                         (unsigned long long)owned->b[i].off,
                         (unsigned long long)have.b[i].off);
        if (have.b[i].bytes < owned->b[i].bytes)
            ck_abort_msg("block %#llx: %llu bytes in a %llu-byte allocation",
                         (unsigned long long)owned->b[i].off,
                         (unsigned long long)owned->b[i].bytes,
                         (unsigned long long)have.b[i].bytes);
    }
    free(have.b);
    free(owned->b);
    *owned = (testBlocks){0};
}

/* M's statistics; fails the test on error. */
static inline memboundStats testAllocStats(membound *m) {
    memboundStats st;
    ck_assert_int_eq(memboundGetStats(m, &st), DKSHM_OK);
    return st;
}

/* ---- small utilities ----------------------------------------------------- */

/* xorshift64*: the next number from *S (never start it at 0). */
static inline uint64_t testRng(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* Sleep MS milliseconds, through signals. */
static inline void testSleepMs(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Wait for PID; returns its exit status, or 128 + signal if it was killed,
 * or -1 if waiting failed. */
static inline int testWait(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* Run FN(ARG) in a forked child and return testWait's result. The child
 * exits with FN's return value. */
static inline int testInChild(int (*fn)(void *), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(fn(arg));
    return testWait(pid);
}

/* Fork a child that runs FN(ARG) and exits with its result; fails the test
 * if fork fails. */
static inline pid_t testSpawn(int (*fn)(void *), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(fn(arg));
    return pid;
}

#define TEST_KILLED (128 + SIGKILL)

/* The crash walk of RECOVERY.md §4: for k = 1, 2, ... run OP in a child
 * armed to SIGKILL itself at its k-th crash point; after each death call
 * AFTER(ARG, k) in the parent (recover, reap, assert). Stops when a child
 * finishes without dying and returns how many points were walked; fails
 * the test if a child exits non-zero or the walk exceeds MAXPOINTS. */
static inline long testCrashWalk(int (*op)(void *), void (*after)(void *, long),
                                 void *arg, long maxPoints) {
    for (long k = 1; k <= maxPoints; k++) {
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            int rc = op(arg);
            _exit(rc);
        }
        int st = testWait(pid);
        if (st == 0)
            return k - 1;
        ck_assert_msg(st == TEST_KILLED,
                      "crash walk: child at point %ld exited with %d", k, st);
        after(arg, k);
    }
    ck_abort_msg("crash walk: more than %ld crash points", maxPoints);
    return -1;
}

/* Add to S a TCase NAME with TIMEOUT seconds and, unless both are NULL,
 * the checked fixture SETUP/TEARDOWN; returns it for its tests. */
static inline TCase *testAddCase(Suite *s, const char *name,
                                 void (*setup)(void), void (*teardown)(void),
                                 int timeout) {
    TCase *tc = tcase_create(name);
    if (setup || teardown)
        tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

#define TEST_CASE_MAX 16

/* One TCase of a table given to testSuiteFrom. */
typedef struct testCaseSpec {
    const char *name;
    const TTest *tests[TEST_CASE_MAX]; /* ends at the first NULL */
    int timeout;                       /* seconds */
} testCaseSpec;

/* The suite NAME of the N cases CASES, each with SETUP/TEARDOWN. */
static inline Suite *testSuiteFrom(const char *name, const testCaseSpec *cases,
                                   size_t n, void (*setup)(void),
                                   void (*teardown)(void)) {
    Suite *s = suite_create(name);
    for (size_t i = 0; i < n; i++) {
        TCase *tc =
            testAddCase(s, cases[i].name, setup, teardown, cases[i].timeout);
        for (int j = 0; j < TEST_CASE_MAX && cases[i].tests[j]; j++)
            tcase_add_test(tc, cases[i].tests[j]);
    }
    return s;
}

/* Run a suite in fork mode (each test in its own process) and return the
 * exit status for main(). After a suite that set a prefix, unlinks what its
 * tests left behind (testUnlinkLeftovers). */
static inline int testRunSuite(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (testState()->prefix[0])
        testUnlinkLeftovers();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
