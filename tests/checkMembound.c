/* checkMembound.c — Check suite for alloc/membound: allocation and free of
 * every size, bad input, a full segment, exact statistics, decommit,
 * density of small objects, many processes and threads, crash walks over
 * alloc/free/reclaim/reset, and check() on damaged metadata.
 *
 * Each test runs in its own process (fork mode) on its own segment, named
 * after the pid and unlinked in teardown.
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
#include "testUtil.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>

#define MiB (1024u * 1024u)

/* ---- fixture: one named segment per test ------------------------------- */

static dkshm *seg;
static membound *mb;
static char extraName[DKSHM_NAME_MAX + 1];

static void setupSmall(void) {
    testMakeSegment("small", 16 * MiB, NULL, &seg, &mb);
}

static void teardown(void) {
    testDropSegment(&seg, &mb);
    if (extraName[0])
        dkshmUnlink(extraName);
    extraName[0] = '\0';
}

static void fill(void *p, size_t n, unsigned seed) {
    unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        c[i] = (unsigned char)(seed + i * 7);
}

static bool filled(const void *p, size_t n, unsigned seed) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != (unsigned char)(seed + i * 7))
            return false;
    return true;
}

/* ---- basic -------------------------------------------------------------- */

START_TEST(test_alloc_free_sizes) {
    static const size_t sizes[] = {1,    15,   16,    17,    79,     80,
                                   81,   127,  128,   129,   500,    1000,
                                   2047, 2048, 2049,  4095,  4096,   4097,
                                   8192, 9000, 65536, 70000, 1 * MiB};
    enum { N = sizeof sizes / sizeof sizes[0] };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = memboundAlloc(mb, sizes[i]);
        ck_assert_msg(p[i] != NULL, "alloc %zu", sizes[i]);
        ck_assert(memboundOwns(mb, p[i]));
        ck_assert_uint_eq((uintptr_t)p[i] % 16, 0);
        size_t usable = 0;
        ck_assert_int_eq(memboundUsableSize(mb, dkshmOff(seg, p[i]), &usable),
                         DKSHM_OK);
        ck_assert_uint_ge(usable, sizes[i]);
        if (sizes[i] > MEMBOUND_SLAB_MAX) {
            ck_assert_uint_eq(usable & (usable - 1), 0); /* power of two */
            ck_assert_uint_lt(usable / 2, sizes[i] < 4096 ? 4096 : sizes[i]);
        } else {
            ck_assert_uint_le(usable, MEMBOUND_SLAB_MAX);
            ck_assert_uint_lt(usable, sizes[i] + sizes[i] / 4 + 16);
        }
        fill(p[i], sizes[i], (unsigned)i);
    }
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), N);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    for (int i = 0; i < N; i++)
        ck_assert_msg(filled(p[i], sizes[i], (unsigned)i), "contents %d", i);
    for (int i = N - 1; i >= 0; i--)
        ck_assert_int_eq(memboundFree(mb, p[i]), DKSHM_OK);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

START_TEST(test_random_churn) {
    enum { N = 4000 };
    void **p = calloc(N, sizeof *p);
    size_t *len = calloc(N, sizeof *len);
    uint64_t seed = 12345;
    for (int round = 0; round < 6; round++) {
        for (int i = 0; i < N; i++) {
            if (p[i] && (testRng(&seed) & 1)) {
                ck_assert_msg(filled(p[i], len[i], (unsigned)i), "data %d", i);
                ck_assert_int_eq(memboundFree(mb, p[i]), DKSHM_OK);
                p[i] = NULL;
            } else if (!p[i]) {
                uint64_t r = testRng(&seed);
                len[i] = (r % 16 == 0) ? 2049 + r % 30000 : 1 + r % 2048;
                p[i] = memboundAlloc(mb, len[i]);
                ck_assert_msg(p[i] != NULL, "alloc %zu: %s", len[i],
                              strerror(errno));
                fill(p[i], len[i], (unsigned)i);
            }
        }
        TEST_ASSERT_CHECK(memboundCheck, mb);
    }
    size_t n = 0;
    for (int i = 0; i < N; i++)
        if (p[i])
            n++;
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), n);
    for (int i = 0; i < N; i++)
        if (p[i])
            ck_assert_int_eq(memboundFree(mb, p[i]), DKSHM_OK);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    free(p);
    free(len);
}
END_TEST

START_TEST(test_realloc) {
    char *p = memboundRealloc(mb, NULL, 10); /* NULL: allocates */
    ck_assert_ptr_nonnull(p);
    fill(p, 10, 1);
    char *q = memboundRealloc(mb, p, 14); /* same 16-byte slot */
    ck_assert_ptr_eq(q, p);
    q = memboundRealloc(mb, p, 100); /* grow into another class */
    ck_assert_ptr_nonnull(q);
    ck_assert(filled(q, 10, 1));
    fill(q, 100, 2);
    p = memboundRealloc(mb, q, 5000); /* grow into a buddy block */
    ck_assert_ptr_nonnull(p);
    ck_assert(filled(p, 100, 2));
    fill(p, 5000, 3);
    q = memboundRealloc(mb, p, 6000); /* same 8 KiB block */
    ck_assert_ptr_eq(q, p);
    q = memboundRealloc(mb, p, 20); /* shrink: moves to a slot */
    ck_assert_ptr_nonnull(q);
    ck_assert(filled(q, 20, 3));
    size_t usable;
    ck_assert_int_eq(memboundUsableSize(mb, dkshmOff(seg, q), &usable),
                     DKSHM_OK);
    ck_assert_uint_eq(usable, 32);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 1);
    /* Growth that cannot fit leaves the block alone. */
    errno = 0;
    ck_assert_ptr_null(memboundRealloc(mb, q, 1ull << 40));
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert(filled(q, 20, 3));
    ck_assert_ptr_null(memboundRealloc(mb, q, 0)); /* frees */
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 0);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

START_TEST(test_calloc) {
    unsigned char *p = memboundAlloc(mb, 3000);
    memset(p, 0xff, 3000);
    memboundFree(mb, p);
    unsigned char *z = memboundCalloc(mb, 30, 100);
    ck_assert_ptr_nonnull(z);
    for (int i = 0; i < 3000; i++)
        ck_assert_uint_eq(z[i], 0);
    p = memboundAlloc(mb, 80);
    memset(p, 0xaa, 80);
    memboundFree(mb, p);
    z = memboundCalloc(mb, 10, 8);
    ck_assert_ptr_nonnull(z);
    for (int i = 0; i < 80; i++)
        ck_assert_uint_eq(z[i], 0);
    size_t before = memboundCurrentAllocationCount(mb);
    errno = 0;
    ck_assert_ptr_null(memboundCalloc(mb, SIZE_MAX / 2, 3));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(memboundCalloc(mb, 3, SIZE_MAX / 2));
    ck_assert_int_eq(errno, ENOMEM);
    errno = 0;
    ck_assert_ptr_null(memboundCalloc(mb, 0, 8));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), before);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

START_TEST(test_handle_cache) {
    ck_assert_ptr_eq(memboundForSegment(seg), mb);
    ck_assert_ptr_eq(memboundSegment(mb), seg);
    ck_assert_ptr_null(memboundForSegment(NULL));
    ck_assert_ptr_null(memboundSegment(NULL));
    /* Shutdown of a segment's handle is a no-op: the segment owns it. */
    memboundShutdown(mb);
    void *p = memboundAlloc(mb, 10);
    ck_assert_ptr_nonnull(p);
    ck_assert(!memboundShutdownSafe(mb)); /* live allocation */
    memboundFree(mb, p);
    /* Visit every allocation. */
    dkoff offs[5];
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(
            memboundAllocOff(mb, 1000u * (unsigned)i + 1, &offs[i]), DKSHM_OK);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 5);
    fastMutexState ls;
    ck_assert_int_eq(memboundLockState(mb, &ls), DKSHM_OK);
    ck_assert(!ls.held);
}
END_TEST

static int countVisit(void *ctx, dkoff off, uint64_t size) {
    (void)off;
    ((uint64_t *)ctx)[0]++;
    ((uint64_t *)ctx)[1] += size;
    return 0;
}

START_TEST(test_foreach_and_reset) {
    for (int i = 0; i < 300; i++)
        ck_assert_ptr_nonnull(memboundAlloc(mb, 1 + (size_t)i * 37));
    uint64_t seen[2] = {0, 0};
    ck_assert_int_eq(memboundForEachAllocation(mb, countVisit, seen), DKSHM_OK);
    ck_assert_uint_eq(seen[0], 300);
    ck_assert_uint_eq(seen[1], memboundBytesUsed(mb));
    /* Reset frees everything, in-flight blocks included. */
    dkoff off;
    ck_assert_int_eq(memboundAllocInflight(mb, 64, &off), DKSHM_OK);
    ck_assert_int_eq(memboundReset(mb), DKSHM_OK);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 0);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    size_t n;
    dkshmProcInfo pi[8];
    ck_assert_int_eq(dkshmProcList(seg, pi, 8, &n), DKSHM_OK);
    for (size_t i = 0; i < n && i < 8; i++)
        ck_assert_uint_eq(pi[i].inflight, 0);
    /* Back to the fresh heap's shape. */
    memboundStats st = testAllocStats(mb);
    ck_assert_uint_eq(st.free, st.capacity);
    ck_assert_uint_eq(memboundBytesAvailable(mb), st.capacity);
}
END_TEST

/* ---- bad input ---------------------------------------------------------- */

START_TEST(test_bad_handle_and_sizes) {
    errno = 0;
    ck_assert_ptr_null(memboundAlloc(NULL, 8));
    ck_assert_int_eq(errno, EINVAL);
    dkoff off = 99;
    ck_assert_int_eq(memboundAllocOff(NULL, 8, &off), DKSHM_INVALID);
    ck_assert_int_eq(memboundAllocOff(mb, 8, NULL), DKSHM_INVALID);
    ck_assert_int_eq(memboundFree(NULL, (void *)&off), DKSHM_INVALID);
    ck_assert_int_eq(memboundFree(mb, NULL), DKSHM_OK);
    ck_assert_int_eq(memboundFreeOff(mb, 0), DKSHM_OK);
    ck_assert_int_eq(memboundCheck(NULL, NULL, 0), DKSHM_INVALID);
    ck_assert_int_eq(memboundGetStats(NULL, NULL), DKSHM_INVALID);
    ck_assert_int_eq(memboundGetStats(mb, NULL), DKSHM_INVALID);
    ck_assert_int_eq(memboundReset(NULL), DKSHM_INVALID);
    ck_assert_uint_eq(memboundBytesUsed(NULL), 0);
    ck_assert_uint_eq(memboundCapacity(NULL), 0);
    ck_assert(!memboundOwns(NULL, &off));
    ck_assert(!memboundShutdownSafe(NULL));
    memboundShutdown(NULL);
    ck_assert_ptr_null(memboundCalloc(NULL, 1, 1));
    ck_assert_ptr_null(memboundRealloc(NULL, NULL, 1));

    errno = 0;
    ck_assert_ptr_null(memboundAlloc(mb, 0));
    ck_assert_int_eq(errno, EINVAL);
    ck_assert_int_eq(memboundAllocOff(mb, 0, &off), DKSHM_INVALID);
    ck_assert_uint_eq(off, 0);
    errno = 0;
    ck_assert_ptr_null(memboundAlloc(mb, SIZE_MAX));
    ck_assert_int_eq(errno, EINVAL);
    errno = 0;
    ck_assert_ptr_null(memboundAlloc(mb, memboundCapacity(mb) + 1));
    ck_assert_int_eq(errno, ENOMEM);
    ck_assert_int_eq(memboundAllocOff(mb, memboundCapacity(mb) + 1, &off),
                     DKSHM_TOOBIG);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 0);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* A rejected free: INVALID, and counted. */
#define BAD(expr)                                                              \
    do {                                                                       \
        ck_assert_int_eq((expr), DKSHM_INVALID);                               \
        bad++;                                                                 \
    } while (0)

START_TEST(test_bad_frees) {
    char *small = memboundAlloc(mb, 80);
    char *big = memboundAlloc(mb, 3 * 4096);
    ck_assert_ptr_nonnull(small);
    ck_assert_ptr_nonnull(big);
    memboundStats before = testAllocStats(mb);

    char *heapPtr = malloc(64);
    int bad = 0;
    BAD(memboundFree(mb, heapPtr));
    free(heapPtr);
    BAD(memboundFree(mb, small + 1));
    BAD(memboundFree(mb, small + 16));
    BAD(memboundFree(mb, small + 80));
    BAD(memboundFree(mb, small - 80));
    BAD(memboundFree(mb, big + 8));
    BAD(memboundFree(mb, big + 4096));
    BAD(memboundFree(mb, big + 3 * 4096));
    /* The segment header and the allocator's own tables. */
    BAD(memboundFree(mb, dkshmPtr(seg, 64)));
    BAD(memboundFree(mb, dkshmPtr(seg, seg->hdr->heap + 64)));
    BAD(memboundFreeOff(mb, 1));
    BAD(memboundFreeOff(mb, ~0ull));
    BAD(memboundFreeOff(mb, seg->size - 16));
    /* A pointer into another segment. */
    snprintf(extraName, sizeof extraName, "%s", testSegNameFor("other"));
    dkshmUnlink(extraName);
    dkshm *other;
    ck_assert_int_eq(dkshmCreate(extraName, 4 * MiB, NULL, &other), DKSHM_OK);
    membound *om = memboundForSegment(other);
    void *op = memboundAlloc(om, 80);
    ck_assert_ptr_nonnull(op);
    BAD(memboundFree(mb, op));
    ck_assert_int_eq(memboundFree(om, small), DKSHM_INVALID);
    ck_assert_int_eq(memboundFree(om, op), DKSHM_OK);
    dkshmDetach(other);
    /* Realloc of a bad pointer: NULL, EINVAL, nothing changed. */
    errno = 0;
    ck_assert_ptr_null(memboundRealloc(mb, small + 16, 200));
    ck_assert_int_eq(errno, EINVAL);
    bad++;

    memboundStats mid = testAllocStats(mb);
    ck_assert_uint_eq(mid.used, before.used);
    ck_assert_uint_eq(mid.allocations, before.allocations);
    ck_assert_uint_eq(mid.badFrees, before.badFrees + (uint64_t)bad);
    TEST_ASSERT_CHECK(memboundCheck, mb);

    /* Double frees. */
    ck_assert_int_eq(memboundFree(mb, small), DKSHM_OK);
    ck_assert_int_eq(memboundFree(mb, big), DKSHM_OK);
    memboundStats after = testAllocStats(mb);
    ck_assert_int_eq(memboundFree(mb, small), DKSHM_INVALID);
    ck_assert_int_eq(memboundFree(mb, big), DKSHM_INVALID);
    memboundStats twice = testAllocStats(mb);
    ck_assert_uint_eq(twice.used, after.used);
    ck_assert_uint_eq(twice.allocations, 0);
    ck_assert_uint_eq(twice.badFrees, after.badFrees + 2);
    ck_assert_int_eq(memboundFreeInflight(mb, dkshmOff(seg, small)),
                     DKSHM_NOTFOUND);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

START_TEST(test_read_only) {
    void *p = memboundAlloc(mb, 100);
    ck_assert_ptr_nonnull(p);
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    membound *rm = memboundForSegment(ro);
    ck_assert_ptr_nonnull(rm);
    ck_assert_ptr_ne(rm, mb);
    errno = 0;
    ck_assert_ptr_null(memboundAlloc(rm, 16));
    ck_assert_int_eq(errno, EROFS);
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(rm, 16, &off), DKSHM_READONLY);
    ck_assert_int_eq(memboundAllocInflight(rm, 16, &off), DKSHM_READONLY);
    dkoff poff = dkshmOff(seg, p);
    ck_assert_int_eq(memboundFreeOff(rm, poff), DKSHM_READONLY);
    ck_assert_int_eq(memboundFree(rm, dkshmPtr(ro, poff)), DKSHM_READONLY);
    ck_assert_int_eq(memboundFree(rm, (char *)dkshmPtr(ro, poff) + 1),
                     DKSHM_READONLY);
    ck_assert_int_eq(memboundReset(rm), DKSHM_READONLY);
    ck_assert_uint_eq(memboundCurrentAllocationCount(rm), 1);
    ck_assert_uint_eq(memboundBytesUsed(rm), 112);
    size_t usable;
    ck_assert_int_eq(memboundUsableSize(rm, poff, &usable), DKSHM_OK);
    ck_assert_uint_eq(usable, 112);
    TEST_ASSERT_CHECK(memboundCheck, rm); /* reads without the lock */
    memboundStats st = testAllocStats(rm);
    ck_assert_uint_eq(st.allocations, 1);
    dkshmDetach(ro);
    ck_assert_uint_eq(testAllocStats(mb).badFrees, 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* ---- full segment ------------------------------------------------------- */

START_TEST(test_full) {
    teardown();
    testMakeSegment("full", 4 * MiB, NULL, &seg, &mb);
    uint64_t biggest = testAllocStats(mb).largestFree;
    enum { MAXN = 200000 };
    void **p = calloc(MAXN, sizeof *p);
    uint64_t seed = 7;
    int n = 0;
    for (; n < MAXN; n++) {
        uint64_t r = testRng(&seed);
        size_t len = r % 8 == 0 ? 2049 + r % 20000 : 1 + r % 2048;
        p[n] = memboundAlloc(mb, len);
        if (!p[n])
            break;
    }
    ck_assert_int_lt(n, MAXN);
    ck_assert_int_eq(errno, ENOMEM);
    /* Now fill the crumbs with the smallest size. */
    while (n < MAXN && (p[n] = memboundAlloc(mb, 16)) != NULL)
        n++;
    ck_assert_int_eq(errno, ENOMEM);
    memboundStats st = testAllocStats(mb);
    ck_assert_uint_gt(st.fullErrors, 0);
    ck_assert_uint_eq(st.allocations, (uint64_t)n);
    ck_assert_uint_gt(st.used, st.capacity * 3 / 4);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    for (int i = 0; i < n; i += 2)
        ck_assert_int_eq(memboundFree(mb, p[i]), DKSHM_OK);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    for (int i = 1; i < n; i += 2)
        ck_assert_int_eq(memboundFree(mb, p[i]), DKSHM_OK);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    /* Empty slabs kept per class are given back under pressure: the
     * largest block of the fresh heap can be had again. */
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(mb, biggest, &off), DKSHM_OK);
    ck_assert_int_eq(memboundFreeOff(mb, off), DKSHM_OK);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    free(p);
}
END_TEST

/* ---- statistics --------------------------------------------------------- */

START_TEST(test_stats_exact) {
    memboundStats st = testAllocStats(mb);
    ck_assert_uint_eq(st.used, 0);
    ck_assert_uint_eq(st.allocations, 0);
    ck_assert_uint_eq(st.capacity, memboundCapacity(mb));
    ck_assert_uint_ge(st.capacity, 15 * MiB);
    ck_assert_uint_eq(st.pageSize, 4096);
    ck_assert_uint_ge(st.classes, 24);
    ck_assert_uint_gt(st.metadata, 0);
    ck_assert_uint_eq(st.free, st.capacity);
    ck_assert_uint_eq(memboundBytesAvailable(mb), st.capacity);
    /* largest: the biggest power-of-two block in the heap */
    ck_assert_uint_le(st.largestFree, st.capacity);
    ck_assert_uint_gt(st.largestFree * 2, st.capacity);
    ck_assert(st.fragmentation >= 0.0 && st.fragmentation <= 1.0);

    int c80 = -1, c16 = -1;
    for (uint32_t c = 0; c < st.classes; c++) {
        if (st.cls[c].size == 80)
            c80 = (int)c;
        if (st.cls[c].size == 16)
            c16 = (int)c;
    }
    ck_assert_int_ge(c80, 0);
    ck_assert_int_ge(c16, 0);
    dkoff a[3], big, t[2];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(memboundAllocOff(mb, 80, &a[i]), DKSHM_OK);
    ck_assert_int_eq(memboundAllocOff(mb, 5000, &big), DKSHM_OK);
    ck_assert_int_eq(memboundAllocOff(mb, 1, &t[0]), DKSHM_OK);
    ck_assert_int_eq(memboundAllocOff(mb, 16, &t[1]), DKSHM_OK);
    st = testAllocStats(mb);
    ck_assert_uint_eq(st.used, 3 * 80 + 8192 + 2 * 16);
    ck_assert_uint_eq(memboundBytesUsed(mb), st.used);
    ck_assert_uint_eq(st.allocations, 6);
    ck_assert_uint_eq(st.cls[c80].used, 3);
    ck_assert_uint_eq(st.cls[c80].slabs, 1); /* one page */
    ck_assert_uint_eq(st.cls[c80].free, 51 - 3);
    ck_assert_uint_eq(st.cls[c16].used, 2);
    ck_assert_uint_eq(st.slabSlack, 48 * 80 + st.cls[c16].free * 16);
    ck_assert_uint_eq(st.free, st.capacity - st.used - st.slabSlack);
    ck_assert_uint_eq(memboundBytesAvailable(mb),
                      st.capacity - 4096 * (2 + 2) + st.slabSlack);
    ck_assert(st.fragmentation >= 0.0 && st.fragmentation <= 1.0);
    ck_assert_int_eq(memboundFreeOff(mb, big), DKSHM_OK);
    ck_assert_int_eq(memboundFreeOff(mb, a[1]), DKSHM_OK);
    st = testAllocStats(mb);
    ck_assert_uint_eq(st.used, 2 * 80 + 2 * 16);
    ck_assert_uint_eq(st.allocations, 4);
    ck_assert_uint_eq(st.cls[c80].used, 2);
    ck_assert_uint_eq(st.cls[c80].free, 49);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* The per-process counters `dkshm-tool top` reads: this process's
 * allocations and frees with their real block sizes, and a lock wait.
 * False if this process is not in the table. */
static uint64_t myCounter(int ctr) {
    uint64_t v = 0;
    ck_assert_msg(testProcCounter(seg, ctr, &v), "this process is not in the table");
    return v;
}

/* A forked child's allocations: counted in its own slot (0: they were). */
static int countInChild(void *arg) {
    (void)arg;
    dkoff o[3];
    for (int i = 0; i < 3; i++)
        if (memboundAllocOff(mb, 64, &o[i]) != DKSHM_OK)
            return 1;
    uint64_t allocs = 0;
    if (!testProcCounter(seg, DKSHM_CTR_ALLOCS, &allocs))
        return 2;
    return allocs == 3 ? 0 : 3;
}

static fastMutex *ctrLock;
static int holdLockBriefly(void *arg) {
    (void)arg;
    if (fastMutexLock(seg, ctrLock) != DKSHM_OK)
        return 1;
    usleep(50000);
    return fastMutexUnlock(seg, ctrLock) == DKSHM_OK ? 0 : 2;
}

START_TEST(test_process_counters) {
    dkoff off[10];
    ck_assert_int_eq(memboundAllocOff(mb, 100, &off[0]), DKSHM_OK);
    uint64_t a0 = myCounter(DKSHM_CTR_ALLOCS);
    uint64_t f0 = myCounter(DKSHM_CTR_FREES);
    uint64_t held0 = myCounter(DKSHM_CTR_ALLOC_BYTES) -
                     myCounter(DKSHM_CTR_FREE_BYTES);
    ck_assert_uint_ge(a0, 1);
    for (int i = 1; i < 10; i++)
        ck_assert_int_eq(memboundAllocOff(mb, 100, &off[i]), DKSHM_OK);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(memboundFreeOff(mb, off[i]), DKSHM_OK);
    ck_assert_int_eq(memboundFreeOff(mb, off[4] + 8), DKSHM_INVALID);
    size_t usable = 0;
    ck_assert_int_eq(memboundUsableSize(mb, off[5], &usable), DKSHM_OK);
    ck_assert_uint_eq(myCounter(DKSHM_CTR_ALLOCS) - a0, 9);
    ck_assert_uint_eq(myCounter(DKSHM_CTR_FREES) - f0, 4); /* not the bad one */
    uint64_t held = myCounter(DKSHM_CTR_ALLOC_BYTES) -
                    myCounter(DKSHM_CTR_FREE_BYTES);
    ck_assert_uint_eq(held - held0, 5 * (uint64_t)usable);

    dkoff m;
    ck_assert_int_eq(memboundAllocOff(mb, sizeof(fastMutex), &m), DKSHM_OK);
    ctrLock = dkshmPtr(seg, m);
    ck_assert_int_eq(fastMutexInit(seg, ctrLock, 0), DKSHM_OK);
    uint64_t w0 = myCounter(DKSHM_CTR_LOCK_WAITS);
    uint64_t ns0 = myCounter(DKSHM_CTR_LOCK_WAIT_NS);
    pid_t pid = testSpawn(holdLockBriefly, NULL);
    /* Wait until the child holds it, then queue behind it. */
    while (__atomic_load_n(&ctrLock->word, __ATOMIC_ACQUIRE) == 0)
        usleep(1000);
    ck_assert_int_eq(fastMutexLock(seg, ctrLock), DKSHM_OK);
    ck_assert_int_eq(fastMutexUnlock(seg, ctrLock), DKSHM_OK);
    ck_assert_int_eq(testWait(pid), 0);
    ck_assert_uint_eq(myCounter(DKSHM_CTR_LOCK_WAITS) - w0, 1);
    ck_assert_uint_gt(myCounter(DKSHM_CTR_LOCK_WAIT_NS) - ns0, 1000000);

    /* A forked child inherits the handle, not the slot: it counts in its
     * own slot, and the parent's counters do not move. */
    uint64_t parentAllocs = myCounter(DKSHM_CTR_ALLOCS);
    pid = testSpawn(countInChild, NULL);
    ck_assert_int_eq(testWait(pid), 0);
    ck_assert_uint_eq(myCounter(DKSHM_CTR_ALLOCS), parentAllocs);
}
END_TEST

START_TEST(test_fragmentation) {
    enum { N = 512 };
    dkoff pg[N];
    /* A heap that is not a power of two pages starts as several blocks. */
    double fresh = testAllocStats(mb).fragmentation;
    ck_assert(fresh >= 0.0 && fresh < 1.0);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(memboundAllocOff(mb, 4096, &pg[i]), DKSHM_OK);
    memboundStats st = testAllocStats(mb);
    double f0 = st.fragmentation;
    ck_assert(f0 >= 0.0 && f0 <= 1.0);
    for (int i = 0; i < N; i += 2) /* no two freed pages are buddies */
        ck_assert_int_eq(memboundFreeOff(mb, pg[i]), DKSHM_OK);
    st = testAllocStats(mb);
    ck_assert(st.fragmentation > f0 && st.fragmentation <= 1.0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    for (int i = 1; i < N; i += 2)
        ck_assert_int_eq(memboundFreeOff(mb, pg[i]), DKSHM_OK);
    st = testAllocStats(mb);
    ck_assert_double_eq_tol(st.fragmentation, fresh, 1e-9);
    ck_assert_uint_eq(st.used, 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* ---- decommit ----------------------------------------------------------- */

static size_t residentPages(void *p, size_t len) {
    size_t pages = (len + 4095) / 4096;
    unsigned char *vec = malloc(pages);
    ck_assert_int_eq(mincore(p, len, vec), 0);
    size_t n = 0;
    for (size_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    free(vec);
    return n;
}

START_TEST(test_decommit) {
    teardown();
    testMakeSegment("decommit", 128 * MiB, NULL, &seg, &mb);
    size_t len = 32 * MiB;
    char *p = memboundAlloc(mb, len);
    ck_assert_ptr_nonnull(p);
    memset(p, 0x5a, len);
    size_t before = residentPages(p, len);
    ck_assert_uint_ge(before, len / 4096 - 16);
    ck_assert_int_eq(memboundFree(mb, p), DKSHM_OK);
    size_t after = residentPages(p, len);
    fprintf(stderr, "decommit: %zu resident pages before free, %zu after\n",
            before, after);
    ck_assert_uint_lt(after, 16);
    dkshmInfo info;
    ck_assert_int_eq(dkshmGetInfo(seg, &info), DKSHM_OK);
    ck_assert_uint_lt(info.residentBytes, 4 * MiB);
    /* Reused: committed again, reads as zeros. */
    char *q = memboundAlloc(mb, len);
    ck_assert_ptr_eq(q, p);
    ck_assert_uint_eq((unsigned char)q[12345], 0);
    q[0] = 1;
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* Freed memory within the retention budget stays committed: a program
 * that frees and allocates 64 KiB blocks in turn reuses the same pages,
 * resident, instead of punching them and faulting them in each time. */
START_TEST(test_retain_reuse) {
    size_t len = 64 * 1024;
    char *first = NULL;
    for (int i = 0; i < 200; i++) {
        char *p = memboundAlloc(mb, len);
        ck_assert_ptr_nonnull(p);
        if (!first)
            first = p;
        ck_assert_ptr_eq(p, first);
        memset(p, i, len);
        ck_assert_int_eq(memboundFree(mb, p), DKSHM_OK);
        ck_assert_uint_eq(residentPages(first, len), len / 4096);
    }
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* ... and past the budget (an eighth of a 64 MiB heap: 8 MiB) the rest
 * goes back to the kernel. */
START_TEST(test_retain_budget) {
    testDropSegment(&seg, &mb);
    testMakeSegment("budget", 64 * MiB, NULL, &seg, &mb);
    char *p[24];
    for (int i = 0; i < 24; i++) {
        p[i] = memboundAlloc(mb, 1 * MiB);
        ck_assert_ptr_nonnull(p[i]);
        memset(p[i], 0x33, 1 * MiB);
    }
    dkshmInfo info;
    ck_assert_int_eq(dkshmGetInfo(seg, &info), DKSHM_OK);
    ck_assert_uint_ge(info.residentBytes, 24 * MiB);
    for (int i = 0; i < 24; i++)
        ck_assert_int_eq(memboundFree(mb, p[i]), DKSHM_OK);
    ck_assert_int_eq(dkshmGetInfo(seg, &info), DKSHM_OK);
    fprintf(stderr, "retain: %llu KiB resident after freeing 24 MiB\n",
            (unsigned long long)info.residentBytes / 1024);
    ck_assert_uint_le(info.residentBytes, 8 * MiB + 2 * MiB);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* ---- density ------------------------------------------------------------ */

START_TEST(test_million_80) {
    teardown();
    testMakeSegment("dense", 128 * MiB, NULL, &seg, &mb);
    enum { N = 1000000 };
    dkoff *off = malloc(N * sizeof *off);
    for (uint32_t i = 0; i < N; i++) {
        int rc = memboundAllocOff(mb, 80, &off[i]);
        ck_assert_msg(rc == DKSHM_OK, "allocation %u: %s", i, dkshmErrName(rc));
        *(uint32_t *)dkshmPtr(seg, off[i]) = i;
    }
    for (uint32_t i = 0; i < N; i += 997)
        ck_assert_uint_eq(*(uint32_t *)dkshmPtr(seg, off[i]), i);
    memboundStats st = testAllocStats(mb);
    ck_assert_uint_eq(st.allocations, N);
    ck_assert_uint_eq(st.used, 80ull * N);
    int c80 = 4;
    ck_assert_uint_eq(st.cls[c80].size, 80);
    uint64_t slabBytes = st.cls[c80].slabs * st.pageSize;
    /* Per page of heap: the page plus 9 bytes of tables. */
    double perObject =
        (double)slabBytes * (st.pageSize + 9.0) / st.pageSize / N;
    fprintf(stderr,
            "density: 1e6 x 80 B in a 128 MiB segment: %llu slab pages, "
            "%.2f segment bytes per object (%.2f in slab pages), "
            "%.1f MiB of the segment left\n",
            (unsigned long long)st.cls[c80].slabs, perObject,
            (double)slabBytes / N, (double)(st.capacity - slabBytes) / MiB);
    ck_assert(perObject < 128.0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    for (uint32_t i = 0; i < N; i++)
        ck_assert_int_eq(memboundFreeOff(mb, off[i]), DKSHM_OK);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    free(off);
}
END_TEST

/* ---- many processes and threads ----------------------------------------- */

typedef struct churnArgs {
    membound *m;
    int ops;
    unsigned seed;
} churnArgs;

/* Random alloc/free with contents checked; frees everything at the end.
 * Returns 0 when all went well. */
static int churn(membound *m, int ops, unsigned seedIn) {
    enum { HOLD = 64 };
    void *p[HOLD] = {0};
    size_t len[HOLD] = {0};
    uint64_t seed = seedIn * 2654435761u + 1;
    int bad = 0;
    for (int i = 0; i < ops; i++) {
        int k = (int)(testRng(&seed) % HOLD);
        if (p[k]) {
            if (!filled(p[k], len[k], seedIn + (unsigned)k))
                bad = 1;
            if (memboundFree(m, p[k]) != DKSHM_OK)
                bad = 2;
            p[k] = NULL;
        } else {
            uint64_t r = testRng(&seed);
            len[k] = r % 20 == 0 ? 2049 + r % 60000 : 1 + r % 2048;
            p[k] = memboundAlloc(m, len[k]);
            if (!p[k])
                return 3;
            fill(p[k], len[k], seedIn + (unsigned)k);
        }
    }
    for (int k = 0; k < HOLD; k++) {
        if (p[k] && !filled(p[k], len[k], seedIn + (unsigned)k))
            bad = 4;
        if (p[k] && memboundFree(m, p[k]) != DKSHM_OK)
            bad = 5;
    }
    return bad;
}

static void runProcs(int nprocs) {
    pid_t pids[8];
    fflush(NULL);
    for (int i = 0; i < nprocs; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            dkshm *s;
            if (dkshmAttach(testSegmentName(), 0, &s) != DKSHM_OK)
                _exit(10);
            membound *m = memboundForSegment(s);
            if (!m)
                _exit(11);
            int rc = churn(m, 3000, (unsigned)(100 * nprocs + i));
            if (rc == 0 && memboundCheck(m, NULL, 0) != DKSHM_OK)
                rc = 12;
            dkshmDetach(s);
            _exit(rc);
        }
    }
    for (int i = 0; i < nprocs; i++) {
        int st = testWait(pids[i]);
        ck_assert_msg(st == 0, "child %d of %d exited %d", i, nprocs, st);
    }
    TEST_ASSERT_CHECK(memboundCheck, mb);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 0);
    ck_assert_uint_eq(memboundBytesUsed(mb), 0);
}

START_TEST(test_procs_2) {
    runProcs(2);
}
END_TEST

START_TEST(test_procs_4) {
    runProcs(4);
}
END_TEST

START_TEST(test_procs_8) {
    runProcs(8);
}
END_TEST

START_TEST(test_pool_fork) {
    membound *pool = memboundCreate(10 * MiB);
    ck_assert_ptr_nonnull(pool);
    ck_assert_uint_ge(memboundCapacity(pool), 10 * MiB);
    ck_assert_uint_lt(memboundCapacity(pool), 11 * MiB);
    void *shared = memboundAlloc(pool, 1024);
    ck_assert_ptr_nonnull(shared);
    fill(shared, 1024, 9);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        void *child = memboundAlloc(pool, 512);
        int rc = child && filled(shared, 1024, 9) ? 0 : 1;
        if (memboundFree(pool, child) != DKSHM_OK)
            rc = 2;
        _exit(rc);
    }
    ck_assert_int_eq(testWait(pid), 0);
    ck_assert_uint_eq(memboundCurrentAllocationCount(pool), 1);
    ck_assert(!memboundShutdownSafe(pool));
    ck_assert_int_eq(memboundFree(pool, shared), DKSHM_OK);
    ck_assert_uint_eq(memboundCurrentAllocationCount(pool), 0);
    TEST_ASSERT_CHECK(memboundCheck, pool);
    ck_assert_ptr_eq(memboundForSegment(memboundSegment(pool)), pool);
    ck_assert(memboundShutdownSafe(pool));

    /* The pool really holds SIZE bytes of allocations. */
    pool = memboundCreate(1 * MiB);
    ck_assert_ptr_nonnull(pool);
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(pool, 1 * MiB, &off), DKSHM_OK);
    memboundShutdown(pool);
    errno = 0;
    ck_assert_ptr_null(memboundCreate(0));
    ck_assert_int_eq(errno, EINVAL);
}
END_TEST

/* An unrelated program (exec'd: no inherited mapping, handle or library
 * state) attaches by name, allocates, writes and binds the block to a name;
 * we find it, see its bytes, and free it with our own handle. */
START_TEST(test_exec_attach_alloc) {
    memboundStats before = testAllocStats(mb);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "%s/tests/attachHelper %s alloc-write fromexec "
             "3000 171",
             TEST_BUILDDIR, testSegmentName());
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    unsigned long long reported = 0;
    ck_assert_int_eq(fscanf(p, "off=%llu", &reported), 1);
    ck_assert_int_eq(pclose(p), 0);
    uint32_t type = 0;
    dkoff off = 0;
    ck_assert_int_eq(dkshmObjectFind(seg, "fromexec", &type, &off), DKSHM_OK);
    ck_assert_uint_eq(type, DKSHM_TYPE_USER);
    ck_assert_uint_eq(off, reported);
    const unsigned char *c = dkshmPtr(seg, off);
    for (int i = 0; i < 3000; i++)
        ck_assert_uint_eq(c[i], 171);
    size_t usable = 0;
    ck_assert_int_eq(memboundUsableSize(mb, off, &usable), DKSHM_OK);
    ck_assert_uint_ge(usable, 3000);
    ck_assert_uint_eq(testAllocStats(mb).allocations, before.allocations + 1);
    ck_assert_int_eq(dkshmObjectRemove(seg, "fromexec", DKSHM_TYPE_USER, &off),
                     DKSHM_OK);
    /* Remove left it in our in-flight list: free it from there. */
    ck_assert_int_eq(memboundFreeInflight(mb, off), DKSHM_OK);
    ck_assert_uint_eq(testAllocStats(mb).allocations, before.allocations);
    ck_assert_uint_eq(testAllocStats(mb).used, before.used);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* dkshmObjectOpen with the allocator as root maker: the find-or-create an
 * application uses for its own named structures. */
static int makeRoot(void *ctx, dkoff *root) {
    int rc = memboundAllocInflight(ctx, 256, root);
    if (rc == DKSHM_OK)
        memset(dkshmPtr(memboundSegment(ctx), *root), 0x5a, 256);
    return rc;
}

static void discardRoot(void *ctx, dkoff root) {
    memboundFreeInflight(ctx, root);
}

static int openRace(void *arg) {
    (void)arg;
    dkoff root;
    bool created;
    int rc = dkshmObjectOpen(seg, "shared", DKSHM_TYPE_USER, DKSHM_OBJ_CREATE,
                             makeRoot, discardRoot, memboundForSegment(seg),
                             &root, &created);
    return rc != DKSHM_OK ? 100 : created ? 1 : 0;
}

START_TEST(test_object_open) {
    memboundStats before = testAllocStats(mb);
    dkoff root = 0, again = 0;
    bool created = true;
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", DKSHM_TYPE_USER, 0, NULL,
                                     NULL, NULL, &root, &created),
                     DKSHM_NOTFOUND);
    ck_assert(!created);
    /* Bad input changes nothing. */
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", 0, DKSHM_OBJ_CREATE,
                                     makeRoot, discardRoot, mb, &root, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", DKSHM_TYPE_USER,
                                     DKSHM_OBJ_CREATE, NULL, discardRoot, mb,
                                     &root, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", DKSHM_TYPE_USER,
                                     DKSHM_OBJ_EXCL, makeRoot, discardRoot, mb,
                                     &root, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmObjectOpen(seg, "bad name", DKSHM_TYPE_USER,
                                     DKSHM_OBJ_CREATE, makeRoot, discardRoot,
                                     mb, &root, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmObjectOpen(NULL, "obj", DKSHM_TYPE_USER,
                                     DKSHM_OBJ_CREATE, makeRoot, discardRoot,
                                     mb, &root, NULL),
                     DKSHM_INVALID);
    ck_assert_uint_eq(testAllocStats(mb).allocations, before.allocations);
    /* Create, open, exclusive, wrong type. */
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", DKSHM_TYPE_USER,
                                     DKSHM_OBJ_CREATE, makeRoot, discardRoot,
                                     mb, &root, &created),
                     DKSHM_OK);
    ck_assert(created);
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", DKSHM_TYPE_USER,
                                     DKSHM_OBJ_CREATE, makeRoot, discardRoot,
                                     mb, &again, &created),
                     DKSHM_OK);
    ck_assert(!created);
    ck_assert_uint_eq(again, root);
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", DKSHM_TYPE_USER,
                                     DKSHM_OBJ_CREATE | DKSHM_OBJ_EXCL,
                                     makeRoot, discardRoot, mb, &again, NULL),
                     DKSHM_EXISTS);
    ck_assert_int_eq(dkshmObjectOpen(seg, "obj", DKSHM_TYPE_USER + 1, 0, NULL,
                                     NULL, NULL, &again, NULL),
                     DKSHM_TYPE);
    ck_assert_uint_eq(testAllocStats(mb).allocations, before.allocations + 1);
    /* Processes racing to create one name: one creates, all share it, and
     * the losers' roots go back to the allocator. */
    pid_t pids[4];
    for (int i = 0; i < 4; i++)
        pids[i] = testSpawn(openRace, NULL);
    int creators = 0;
    for (int i = 0; i < 4; i++) {
        int st = testWait(pids[i]);
        ck_assert_int_le(st, 1);
        creators += st;
    }
    ck_assert_int_eq(creators, 1);
    dkshmReap(seg, NULL);
    ck_assert_uint_eq(testAllocStats(mb).allocations, before.allocations + 2);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

static void *threadMain(void *arg) {
    churnArgs *a = arg;
    return (void *)(intptr_t)churn(a->m, a->ops, a->seed);
}

START_TEST(test_threads) {
    membound *pool = memboundCreate(64 * MiB);
    ck_assert_ptr_nonnull(pool);
    pthread_t th[4];
    churnArgs args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (churnArgs){pool, 20000, (unsigned)(7 + i)};
        ck_assert_int_eq(pthread_create(&th[i], NULL, threadMain, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        ck_assert_int_eq((int)(intptr_t)ret, 0);
    }
    ck_assert_uint_eq(memboundCurrentAllocationCount(pool), 0);
    ck_assert_uint_eq(memboundBytesUsed(pool), 0);
    TEST_ASSERT_CHECK(memboundCheck, pool);
    memboundShutdown(pool);
}
END_TEST

/* ---- crash walks -------------------------------------------------------- */

typedef struct walk walk;
struct walk {
    size_t size;         /* what to allocate, or to pre-allocate */
    bool isFree;         /* the child frees target */
    bool freeInflight;   /* the child allocates in flight, then frees it
                            with memboundFreeInflight */
    dkoff target;        /* block the child frees */
    uint64_t blockBytes; /* its usable size */
    uint64_t before;     /* bytes used before the child ran */
    long deaths;
    void (*prepare)(walk *w); /* parent, before each child; may be NULL */
};

/* Allocate every free block but the largest: the fresh heap is tiled by
 * one block per set bit of its page count, so what is left is one block of
 * the top order and the next small request splits it all the way down. */
static void isolateTopBlock(void) {
    memboundStats st = testAllocStats(mb);
    uint64_t pages = st.capacity / st.pageSize;
    uint64_t top = st.largestFree / st.pageSize;
    dkoff off;
    for (uint64_t k = 1; k < top; k <<= 1)
        if (pages & k)
            ck_assert_int_eq(memboundAllocOff(mb, k * st.pageSize, &off),
                             DKSHM_OK);
    st = testAllocStats(mb);
    ck_assert_uint_eq(st.capacity - st.used, st.largestFree);
}

static int walkOp(walk *w) {
    if (w->freeInflight)
        return memboundFreeInflight(mb, w->target);
    if (w->isFree)
        return memboundFreeOff(mb, w->target);
    dkoff off;
    return memboundAllocInflight(mb, w->size, &off);
}

static void prepareFree(walk *w) {
    ck_assert_int_eq(memboundAllocOff(mb, w->size, &w->target), DKSHM_OK);
    size_t u;
    ck_assert_int_eq(memboundUsableSize(mb, w->target, &u), DKSHM_OK);
    w->blockBytes = u;
}

/* RECOVERY.md §4: run the operation in a child killed at its k-th crash
 * point, for k = 1, 2, ... until it completes; after each run recover,
 * reap, check and account for every byte. */
static void crashWalk(walk *w) {
    for (long k = 1; k < 5000; k++) {
        if (w->prepare)
            w->prepare(w);
        w->before = memboundBytesUsed(mb) - (w->isFree ? w->blockBytes : 0);
        uint64_t countBefore =
            memboundCurrentAllocationCount(mb) - (w->isFree ? 1 : 0);
        uint64_t withBlock = w->before + (w->isFree ? w->blockBytes : 0);
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            memboundStats st; /* register and lock once, unarmed */
            if (memboundGetStats(mb, &st) != DKSHM_OK)
                _exit(20);
            if (w->freeInflight &&
                memboundAllocInflight(mb, w->size, &w->target) != DKSHM_OK)
                _exit(22);
            dkshmTestCrashAt(k);
            int rc = walkOp(w);
            dkshmTestCrashAt(0);
            _exit(rc == DKSHM_OK ? 0 : 21);
        }
        int st = testWait(pid);
        ck_assert_msg(st == 0 || st == TEST_KILLED,
                      "crash point %ld: child exited %d", k, st);
        memboundStats ms;
        ck_assert_int_eq(memboundGetStats(mb, &ms), DKSHM_OK); /* recover */
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        char why[256];
        int rc = memboundCheck(mb, why, sizeof why);
        ck_assert_msg(rc == DKSHM_OK, "crash point %ld: %s", k, why);
        uint64_t used = memboundBytesUsed(mb);
        if (w->isFree) {
            ck_assert_msg(used == withBlock || used == w->before,
                          "crash point %ld: used %llu, expected %llu or %llu",
                          k, (unsigned long long)used,
                          (unsigned long long)withBlock,
                          (unsigned long long)w->before);
            if (st == 0)
                ck_assert_uint_eq(used, w->before);
            ck_assert_uint_eq(memboundCurrentAllocationCount(mb),
                              countBefore + (used == withBlock ? 1 : 0));
            if (used == withBlock) /* rolled back: free it ourselves */
                ck_assert_int_eq(memboundFreeOff(mb, w->target), DKSHM_OK);
        } else {
            ck_assert_uint_eq(memboundCurrentAllocationCount(mb), countBefore);
            ck_assert_msg(
                used == w->before, "crash point %ld: used %llu, expected %llu",
                k, (unsigned long long)used, (unsigned long long)w->before);
        }
        TEST_ASSERT_CHECK(memboundCheck, mb);
        if (st == 0) {
            w->deaths = k - 1;
            /* Some children died holding the lock: recovery did run. */
            fastMutexState ls;
            ck_assert_int_eq(memboundLockState(mb, &ls), DKSHM_OK);
            ck_assert_uint_gt(ls.recoveries, 0);
            return;
        }
    }
    ck_abort_msg("crash walk did not finish");
}

START_TEST(test_crash_alloc_slab_new) {
    isolateTopBlock();
    walk w = {.size = 80};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 20);
    fprintf(stderr, "crash walk alloc (new slab): %ld points\n", w.deaths);
}
END_TEST

START_TEST(test_crash_alloc_slab_existing) {
    dkoff keep;
    ck_assert_int_eq(memboundAllocOff(mb, 80, &keep), DKSHM_OK);
    walk w = {.size = 80};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 5);
}
END_TEST

START_TEST(test_crash_alloc_buddy_split) {
    isolateTopBlock();
    walk w = {.size = 4096};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 30);
    fprintf(stderr, "crash walk alloc (page, splits): %ld points\n", w.deaths);
}
END_TEST

START_TEST(test_crash_free_buddy_merge) {
    memboundSetRetainBytes(mb, 0); /* merge and punch at once */
    isolateTopBlock();
    walk w = {.size = 4096, .isFree = true, .prepare = prepareFree};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 30);
    fprintf(stderr, "crash walk free (page, merges): %ld points\n", w.deaths);
}
END_TEST

/* In flight -> allocator, as containers free: whether the free happened or
 * not, reaping the dead child leaves nothing behind. */
START_TEST(test_crash_free_inflight) {
    memboundSetRetainBytes(mb, 0);
    isolateTopBlock();
    walk w = {.size = 4096, .freeInflight = true};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 30);
}
END_TEST

START_TEST(test_crash_free_big_decommit) {
    memboundSetRetainBytes(mb, 0);
    isolateTopBlock();
    walk w = {.size = 1 * MiB, .isFree = true, .prepare = prepareFree};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 10);
}
END_TEST

/* A committed free block kept apart from its uncommitted free buddy must
 * not make a large allocation fail: it is punched and merged first. */
static void keepOneApart(walk *w) {
    (void)w;
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(mb, 64 * 1024, &off), DKSHM_OK);
    ck_assert_int_eq(memboundFreeOff(mb, off), DKSHM_OK);
}

START_TEST(test_consolidate) {
    isolateTopBlock();
    memboundStats st = testAllocStats(mb);
    uint64_t top = st.largestFree;
    keepOneApart(NULL);
    st = testAllocStats(mb);
    ck_assert_uint_lt(st.largestFree, top); /* the top block is split */
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(mb, top, &off), DKSHM_OK);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    ck_assert_int_eq(memboundFreeOff(mb, off), DKSHM_OK);
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

/* The allocation that must consolidate first, killed at every point. */
START_TEST(test_crash_consolidate) {
    isolateTopBlock();
    walk w = {.size = testAllocStats(mb).largestFree, .prepare = keepOneApart};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 20);
    fprintf(stderr, "crash walk alloc (consolidate): %ld points\n", w.deaths);
}
END_TEST

START_TEST(test_crash_free_slab) {
    dkoff keep;
    ck_assert_int_eq(memboundAllocOff(mb, 80, &keep), DKSHM_OK);
    walk w = {.size = 80, .isFree = true, .prepare = prepareFree};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 5);
}
END_TEST

/* Slab 1 full but for one slot, slab 2 holding only the target: freeing the
 * target empties slab 2, which goes back to the buddy level. */
static void prepareSlabRelease(walk *w) {
    memboundStats st = testAllocStats(mb);
    if (st.cls[4].used == 0) {
        dkoff first;
        ck_assert_int_eq(memboundAllocOff(mb, 80, &first), DKSHM_OK);
        st = testAllocStats(mb);
        uint64_t slots = st.cls[4].used + st.cls[4].free;
        dkoff o;
        for (uint64_t i = 1; i < slots; i++)
            ck_assert_int_eq(memboundAllocOff(mb, 80, &o), DKSHM_OK);
        ck_assert_int_eq(memboundFreeOff(mb, first), DKSHM_OK);
        /* Slab 1 is on the list with one free slot, and first in line. */
        ck_assert_int_eq(memboundAllocOff(mb, 80, &first), DKSHM_OK);
        ck_assert_int_eq(memboundFreeOff(mb, o), DKSHM_OK);
    }
    /* Slab 1 has one free slot; the next 80 fills it, the one after that
     * opens slab 2. */
    dkoff fill1;
    ck_assert_int_eq(memboundAllocOff(mb, 80, &fill1), DKSHM_OK);
    prepareFree(w);
    ck_assert_int_eq(memboundFreeOff(mb, fill1), DKSHM_OK);
    st = testAllocStats(mb);
    ck_assert_uint_eq(st.cls[4].slabs, 2);
}

START_TEST(test_crash_free_slab_release) {
    isolateTopBlock();
    walk w = {.size = 80, .isFree = true, .prepare = prepareSlabRelease};
    crashWalk(&w);
    ck_assert_int_gt(w.deaths, 20);
    memboundStats st = testAllocStats(mb);
    ck_assert_uint_eq(st.cls[4].slabs, 1); /* slab 2 went back */
}
END_TEST

/* A reaper killed while it frees a dead process's in-flight blocks. */
START_TEST(test_crash_reclaim) {
    uint64_t base = memboundBytesUsed(mb);
    long k;
    for (k = 1; k < 5000; k++) {
        fflush(NULL);
        pid_t holder = fork(); /* dies holding three blocks in flight */
        ck_assert_int_ge(holder, 0);
        if (holder == 0) {
            dkoff o;
            int rc = memboundAllocInflight(mb, 80, &o);
            rc |= memboundAllocInflight(mb, 4096, &o);
            rc |= memboundAllocInflight(mb, 100000, &o);
            _exit(rc == DKSHM_OK ? 0 : 1);
        }
        ck_assert_int_eq(testWait(holder), 0);
        ck_assert_uint_gt(memboundBytesUsed(mb), base);
        pid_t reaper = fork();
        ck_assert_int_ge(reaper, 0);
        if (reaper == 0) {
            memboundStats st;
            memboundGetStats(mb, &st);
            dkshmTestCrashAt(k);
            int rc = dkshmReap(seg, NULL);
            _exit(rc == DKSHM_OK ? 0 : 1);
        }
        int st = testWait(reaper);
        ck_assert(st == 0 || st == TEST_KILLED);
        memboundStats ms;
        ck_assert_int_eq(memboundGetStats(mb, &ms), DKSHM_OK);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        ck_assert_uint_eq(memboundBytesUsed(mb), base);
        if (st == 0)
            break;
    }
    ck_assert_int_gt(k, 20);
}
END_TEST

START_TEST(test_crash_reset) {
    long k;
    for (k = 1; k < 1000; k++) {
        for (int i = 0; i < 50; i++)
            ck_assert_ptr_nonnull(memboundAlloc(mb, 100 + (size_t)i * 300));
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            memboundStats st;
            memboundGetStats(mb, &st);
            dkshmTestCrashAt(k);
            _exit(memboundReset(mb) == DKSHM_OK ? 0 : 1);
        }
        int st = testWait(pid);
        ck_assert(st == 0 || st == TEST_KILLED);
        memboundStats ms;
        ck_assert_int_eq(memboundGetStats(mb, &ms), DKSHM_OK);
        TEST_ASSERT_CHECK(memboundCheck, mb);
        /* Either nothing happened, or the reset is complete. */
        ck_assert(ms.allocations == 0 || ms.allocations % 50 == 0);
        ck_assert_int_eq(memboundReset(mb), DKSHM_OK);
        if (st == 0)
            break;
    }
    ck_assert_int_gt(k, 2);
}
END_TEST

/* ---- damaged metadata --------------------------------------------------- */

/* A free whose block goes onto a free list with a damaged head: the head is
 * not written through (it names a page far outside the heap), the process
 * goes on, and check reports the damage. */
static int freeOntoDamagedHead(void *arg) {
    (void)arg;
    dkshm *s;
    if (dkshmCreateAnonymous(4 * MiB, NULL, &s) != DKSHM_OK)
        return 30;
    membound *m = memboundForSegment(s);
    memboundStats st;
    memboundGetStats(m, &st);
    /* Two 16-page blocks: buddies, or at least of the same order. */
    size_t big = 16 * (size_t)st.pageSize;
    void *a = memboundAlloc(m, big), *b = memboundAlloc(m, big);
    if (!a || !b)
        return 31;
    unsigned order = 4;
    memboundFree(m, a); /* on the order-4 list (its buddy is in use) */
    uint32_t *head = memboundFreeHead(m, order);
    if (!head || *head == UINT32_MAX)
        return 32;
    *head = 0x7ffffff0u;
    memboundFree(m, b); /* cannot merge with A: onto the damaged list */
    char why[256];
    return memboundCheck(m, why, sizeof why) == DKSHM_CORRUPT ? 0 : 33;
}

START_TEST(test_free_onto_damaged_head) {
    ck_assert_int_eq(testInChild(freeOntoDamagedHead, NULL), 0);
}
END_TEST

/* Scribble over the allocator's tables (not its lock or undo log) and over
 * slab headers; check() must report, never crash or hang. */
/* One damaged heap, built and scribbled on from the rng state at ARG (the
 * child's copy): 0 if check found nothing, 1 for CORRUPT, 2 otherwise. */
static int checkOneDamagedHeap(void *arg) {
    uint64_t *seed = arg;
    dkshm *s;
    if (dkshmCreateAnonymous(2 * MiB, NULL, &s) != DKSHM_OK)
        return 30;
    membound *m = memboundForSegment(s);
    void *keep[64];
    for (int i = 0; i < 64; i++)
        keep[i] = memboundAlloc(m, 1 + (size_t)(testRng(seed) % 9000));
    for (int i = 0; i < 64; i += 3)
        memboundFree(m, keep[i]);
    memboundStats st;
    memboundGetStats(m, &st);
    /* The per-page tables end at the first page; with the end of the undo
     * log they fill the 9 bytes per page before it. */
    dkoff pages = s->hdr->allocRoot + st.metadata;
    uint64_t n = st.capacity / st.pageSize;
    dkoff tables = pages - 9 * n - 4096;
    int hits = 1 + (int)(testRng(seed) % 8);
    for (int h = 0; h < hits; h++) {
        uint64_t r = testRng(seed);
        dkoff at;
        if (r % 2 == 0) /* a slab header: class, used, bitmap */
            at = (dkshmOff(s, keep[1 + 3 * (int)(r % 20)]) & ~4095ull) +
                 (r >> 8) % 16;
        else
            at = tables + (r >> 8) % (pages - tables);
        *(uint8_t *)dkshmPtr(s, at) ^= (uint8_t)(1 + (r >> 40) % 255);
    }
    char why[256];
    int rc = memboundCheck(m, why, sizeof why);
    return rc == DKSHM_OK ? 0 : rc == DKSHM_CORRUPT ? 1 : 2;
}

START_TEST(test_check_damage) {
    uint64_t seed = 99;
    int corrupt = 0;
    for (int iter = 0; iter < 300; iter++) {
        int st = testInChild(checkOneDamagedHeap, &seed);
        ck_assert_msg(st == 0 || st == 1, "iteration %d: child ended %d", iter,
                      st);
        corrupt += st == 1;
        testRng(&seed);
    }
    fprintf(stderr, "check: %d of 300 damaged heaps reported\n", corrupt);
    ck_assert_int_gt(corrupt, 90);
}
END_TEST

/* One in-flight entry, two logs: a process emptied an entry under lock A
 * (its operation not yet committed) and then allocated in flight under the
 * allocator's lock. Had the allocation reused the entry, A's rollback
 * after the process's death would put the first block back over the
 * second, which nothing would ever free. After the reap, nothing of the
 * dead process's is left allocated. */
static dkoff nestLock;
static int nestAndDie(void *arg) {
    (void)arg;
    fastMutex *a = dkshmPtr(seg, nestLock);
    dkUndo *log = dkshmPtr(seg, nestLock + 64);
    dkoff x, y;
    if (memboundAllocInflight(mb, 64, &x) != DKSHM_OK ||
        fastMutexLock(seg, a) != DKSHM_OK)
        return 1;
    if (dkInflightRemove(seg, log, x) != DKSHM_OK)
        return 2;
    if (memboundAllocInflight(mb, 64, &y) != DKSHM_OK)
        return 3;
    raise(SIGKILL);
    return 4;
}

/* An operation that adds to the in-flight list and then fails (rolled
 * back by its own process) leaves the entry free, not reserved: a process
 * whose writes keep failing never runs out of in-flight entries. */
START_TEST(test_inflight_abort_frees_entry) {
    ck_assert_int_eq(memboundAllocOff(mb, 64 + DK_UNDO_BYTES(8), &nestLock),
                     DKSHM_OK);
    fastMutex *a = dkshmPtr(seg, nestLock);
    dkUndo *log = dkshmPtr(seg, nestLock + 64);
    dkUndoInit(log, 8);
    ck_assert_int_eq(fastMutexInit(seg, a, nestLock + 64), DKSHM_OK);
    ck_assert_int_eq(fastMutexLock(seg, a), DKSHM_OK);
    for (int i = 0; i < 3 * DK_INFLIGHT_MAX; i++) {
        ck_assert_int_eq(dkInflightAdd(seg, log, nestLock), DKSHM_OK);
        ck_assert_int_eq(dkUndoRollback(seg, log), DKSHM_OK);
    }
    ck_assert_int_eq(fastMutexUnlock(seg, a), DKSHM_OK);
    dkshmProcInfo info[8];
    size_t n = 0;
    ck_assert_int_eq(dkshmProcList(seg, info, 8, &n), DKSHM_OK);
    for (size_t i = 0; i < n && i < 8; i++)
        ck_assert_uint_eq(info[i].inflight, 0);
}
END_TEST

START_TEST(test_inflight_two_logs) {
    ck_assert_int_eq(memboundAllocOff(mb, 64 + DK_UNDO_BYTES(8), &nestLock),
                     DKSHM_OK);
    dkUndoInit(dkshmPtr(seg, nestLock + 64), 8);
    ck_assert_int_eq(fastMutexInit(seg, dkshmPtr(seg, nestLock), nestLock + 64),
                     DKSHM_OK);
    ck_assert_int_eq(testInChild(nestAndDie, NULL), TEST_KILLED);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 3);
    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(seg, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 1);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 1); /* the lock */
}
END_TEST

/* A pool that nobody reaps: each worker dies holding a block in flight
 * (its slot can only be freed by taking the allocator's lock). With every
 * slot taken by such dead workers, the next worker's registration must
 * reap them itself rather than fail FULL. */
static int allocInflightAndDie(void *arg) {
    (void)arg;
    dkoff x;
    int rc = memboundAllocInflight(mb, 64, &x);
    if (rc != DKSHM_OK)
        return 10 - rc; /* FULL here was the bug */
    raise(SIGKILL);
    return 1;
}

START_TEST(test_unreaped_pool) {
    testDropSegment(&seg, &mb); /* the fixture's: this one has 4 slots */
    dkshmOptions o = {.maxProcs = 4};
    testMakeSegment("pool", 16 * MiB, &o, &seg, &mb);
    for (int i = 0; i < 12; i++)
        ck_assert_int_eq(testInChild(allocInflightAndDie, NULL), TEST_KILLED);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 0);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

/* Slab blocks are aligned to the largest power of two (16 to 64) that
 * divides their class size, so a block spans no more cache lines than its
 * size requires when that is a multiple of 32: every 96-byte block two
 * lines, every 64-byte block one. */
START_TEST(test_slot_alignment) {
    static const size_t sizes[] = {16, 32, 48, 64, 80, 96, 128, 192, 256, 2048};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t align = sizes[i] & -sizes[i];
        align = align > 64 ? 64 : align;
        size_t lines = (sizes[i] + 63) / 64;
        void *p[200];
        for (int j = 0; j < 200; j++) { /* a few slabs' worth */
            p[j] = memboundAlloc(mb, sizes[i]);
            ck_assert_ptr_nonnull(p[j]);
            uintptr_t a = (uintptr_t)p[j];
            ck_assert_msg(a % align == 0, "%zu-byte block at %#lx", sizes[i],
                          (unsigned long)(a % 64));
            if (sizes[i] % 32 == 0) /* else no alignment can promise it */
                ck_assert_uint_eq((a + sizes[i] - 1) / 64 - a / 64 + 1, lines);
        }
        for (int j = 0; j < 200; j++)
            ck_assert_int_eq(memboundFree(mb, p[j]), DKSHM_OK);
    }
    TEST_ASSERT_CHECK(memboundCheck, mb);
}
END_TEST

static Suite *memboundSuite(void) {
    const testCaseSpec cases[] = {
        {"basic",
         {test_alloc_free_sizes, test_random_churn, test_realloc, test_calloc,
          test_handle_cache, test_foreach_and_reset, test_slot_alignment},
         30},
        {"badInput",
         {test_bad_handle_and_sizes, test_bad_frees, test_read_only},
         30},
        {"full", {test_full}, 60},
        {"stats",
         {test_stats_exact, test_fragmentation, test_process_counters},
         30},
        {"decommit",
         {test_decommit, test_retain_reuse, test_retain_budget,
          test_consolidate},
         60},
        {"density", {test_million_80}, 120},
        {"multiProcess",
         {test_procs_2, test_procs_4, test_procs_8, test_pool_fork,
          test_threads, test_exec_attach_alloc, test_object_open},
         120},
        {"crash",
         {test_crash_alloc_slab_new, test_crash_alloc_slab_existing,
          test_crash_alloc_buddy_split, test_crash_free_buddy_merge,
          test_crash_free_inflight, test_crash_free_big_decommit,
          test_crash_free_slab, test_crash_free_slab_release,
          test_crash_reclaim, test_crash_reset, test_inflight_two_logs,
          test_inflight_abort_frees_entry,
          test_unreaped_pool, test_crash_consolidate},
         300},
        {"check", {test_check_damage, test_free_onto_damaged_head}, 120},
    };
    return testSuiteFrom("membound", cases, sizeof cases / sizeof cases[0],
                         setupSmall, teardown);
}

int main(void) {
    testSetPrefix("mb");
    return testRunSuite(memboundSuite());
}
