/* checkMultiarray.c — Check suite for containers/multiarray: every
 * operation against a model for many element sizes, growth and shrinking,
 * large shifts done on a copy, index errors and every bad input, read-only
 * attachments, a full segment, readers in other processes and threads that
 * never see a torn element while a writer shifts and regrows the array,
 * crash walks over append/insert/delete/set/grow/shrink, and random
 * SIGKILLs of busy writers.
 *
 * Each test runs in its own process (fork mode) on its own segment, named
 * after the runner's and the test's pid and unlinked in teardown (main()
 * also removes what failed tests left behind).
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
#include "multiarray.h"
#include "multiarrayInternal.h"
#include "testUtil.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#define MiB (1024u * 1024u)

/* ---- fixture ------------------------------------------------------------ */

static dkshm *seg;
static membound *mb;
static multiarray *arr; /* 8-byte elements */

static multiarray *openArray(const char *name, uint32_t elemSize) {
    multiarrayOptions o = {.elemSize = elemSize};
    multiarray *x = NULL;
    int rc = multiarrayOpen(seg, name, &o, MULTIARRAY_CREATE, &x);
    ck_assert_msg(rc == DKSHM_OK, "open %s: %s", name, dkshmErrName(rc));
    return x;
}

static void setup(void) {
    testMakeSegment("t", 64 * MiB, NULL, &seg, &mb);
    arr = openArray("a", 8);
}

static void teardown(void) {
    multiarrayClose(arr);
    arr = NULL;
    testDropSegment(&seg, &mb);
}

/* ---- helpers ------------------------------------------------------------ */

/* Every live allocation is a block of one of the arrays XS or in a live
 * process's in-flight list, and nothing else; every array block is a live
 * allocation large enough. */
static void assertOwnershipN(multiarray **xs, int n) {
    testBlocks owned = {0};
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(
            multiarrayForEachBlock(xs[i], testBlocksCollect, &owned), DKSHM_OK);
    testBlocksAddInflight(&owned, seg);
    testAssertOwnership(mb, &owned, "array");
}

static void assertOwnership(multiarray *x) {
    multiarray *all[2] = {arr, x};
    assertOwnershipN(all, x == arr ? 1 : 2);
}

static uint64_t count(multiarray *x) {
    uint64_t n = 0;
    ck_assert_int_eq(multiarrayCount(x, &n), DKSHM_OK);
    return n;
}

static multiarrayStats stats(multiarray *x) {
    multiarrayStats st;
    ck_assert_int_eq(multiarrayGetStats(x, &st), DKSHM_OK);
    return st;
}

/* The content of an element of ES bytes tagged TAG. */
static void fillElem(uint8_t *e, size_t es, uint64_t tag) {
    for (size_t i = 0; i < es; i++)
        e[i] = (uint8_t)(tag * 131 + i * 7 + (tag >> 8) + (i >> 8));
}

/* A model of the array: tags, in order. */
typedef struct model {
    uint64_t *tag;
    size_t n, cap;
} model;

static void modelInsert(model *m, size_t at, uint64_t tag) {
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 256;
        m->tag = realloc(m->tag, m->cap * sizeof *m->tag);
        ck_assert_ptr_nonnull(m->tag);
    }
    memmove(m->tag + at + 1, m->tag + at, (m->n - at) * sizeof *m->tag);
    m->tag[at] = tag;
    m->n++;
}

static void modelDelete(model *m, size_t at) {
    memmove(m->tag + at, m->tag + at + 1, (m->n - at - 1) * sizeof *m->tag);
    m->n--;
}

/* The array holds exactly the model. No ck_assert in the loop: each
 * passing one is a system call. */
static void assertModel(multiarray *x, const model *m, size_t es) {
    ck_assert_uint_eq(count(x), m->n);
    uint8_t *got = malloc(es), *want = malloc(es);
    ck_assert(got && want);
    for (size_t i = 0; i < m->n; i++) {
        int rc = multiarrayGet(x, i, got);
        fillElem(want, es, m->tag[i]);
        if (rc != DKSHM_OK || memcmp(got, want, es) != 0)
            ck_abort_msg("element %zu of %zu (size %zu): %s", i, m->n, es,
                         dkshmErrName(rc));
    }
    ck_assert_int_eq(multiarrayGet(x, m->n, got), DKSHM_NOTFOUND);
    free(got);
    free(want);
}

/* NOPS random operations on X against a model. */
static void randomOps(multiarray *x, size_t es, int nOps, uint64_t seed,
                      size_t maxLen) {
    model m = {0};
    uint8_t *e = malloc(es);
    ck_assert_ptr_nonnull(e);
    for (int op = 0; op < nOps; op++) {
        uint64_t r = testRng(&seed), tag = testRng(&seed);
        int kind = (int)(r % 100);
        size_t at = m.n ? (size_t)((r >> 8) % m.n) : 0;
        fillElem(e, es, tag);
        int rc;
        if (kind < 40 && m.n < maxLen) {
            uint64_t idx = 99;
            rc = multiarrayAppend(x, e, &idx);
            if (rc == DKSHM_OK && idx != m.n)
                ck_abort_msg("append index %llu, expected %zu",
                             (unsigned long long)idx, m.n);
            if (rc == DKSHM_OK)
                modelInsert(&m, m.n, tag);
        } else if (kind < 60 && m.n < maxLen) {
            at = (size_t)((r >> 8) % (m.n + 1));
            rc = multiarrayInsert(x, at, e);
            if (rc == DKSHM_OK)
                modelInsert(&m, at, tag);
        } else if (kind < 80 && m.n) {
            rc = multiarraySet(x, at, e);
            if (rc == DKSHM_OK)
                m.tag[at] = tag;
        } else if (m.n) {
            rc = multiarrayDelete(x, at);
            if (rc == DKSHM_OK)
                modelDelete(&m, at);
        } else {
            continue;
        }
        if (rc != DKSHM_OK)
            ck_abort_msg("op %d kind %d at %zu of %zu (size %zu): %s", op, kind,
                         at, m.n, es, dkshmErrName(rc));
        if (op % 257 == 0) {
            assertModel(x, &m, es);
            TEST_ASSERT_CHECK(multiarrayCheck, x);
        }
    }
    assertModel(x, &m, es);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    /* Empty it from the front: shifts, then shrinks. */
    while (m.n) {
        if (multiarrayDelete(x, 0) != DKSHM_OK)
            ck_abort_msg("delete 0 of %zu", m.n);
        modelDelete(&m, 0);
    }
    assertModel(x, &m, es);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    free(e);
    free(m.tag);
}

/* ---- basic operations --------------------------------------------------- */

START_TEST(test_append_get_set) {
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t v = i * 3, idx;
        ck_assert_int_eq(multiarrayAppend(arr, &v, &idx), DKSHM_OK);
        ck_assert_uint_eq(idx, i);
    }
    ck_assert_uint_eq(count(arr), 1000);
    for (uint64_t i = 0; i < 1000; i++) {
        uint64_t v = 0;
        ck_assert_int_eq(multiarrayGet(arr, i, &v), DKSHM_OK);
        ck_assert_uint_eq(v, i * 3);
    }
    uint64_t v = 77;
    ck_assert_int_eq(multiarraySet(arr, 500, &v), DKSHM_OK);
    ck_assert_int_eq(multiarrayGet(arr, 500, &v), DKSHM_OK);
    ck_assert_uint_eq(v, 77);
    multiarrayStats st = stats(arr);
    ck_assert_uint_eq(st.count, 1000);
    ck_assert_uint_eq(st.capacity, 1024);
    ck_assert_uint_eq(st.elemSize, 8);
    ck_assert_uint_eq(st.blockBytes, 8192);
    size_t es;
    ck_assert_int_eq(multiarrayElemSize(arr, &es), DKSHM_OK);
    ck_assert_uint_eq(es, 8);
    TEST_ASSERT_CHECK(multiarrayCheck, arr);
    assertOwnership(arr);
}
END_TEST

START_TEST(test_insert_delete) {
    uint64_t v;
    for (v = 0; v < 10; v++)
        ck_assert_int_eq(multiarrayAppend(arr, &v, NULL), DKSHM_OK);
    v = 100;
    ck_assert_int_eq(multiarrayInsert(arr, 0, &v), DKSHM_OK); /* front */
    v = 200;
    ck_assert_int_eq(multiarrayInsert(arr, 5, &v), DKSHM_OK); /* middle */
    v = 300;
    ck_assert_int_eq(multiarrayInsert(arr, 12, &v), DKSHM_OK); /* = append */
    static const uint64_t want1[] = {100, 0, 1, 2, 3, 200, 4,
                                     5,   6, 7, 8, 9, 300};
    ck_assert_uint_eq(count(arr), 13);
    for (uint64_t i = 0; i < 13; i++) {
        ck_assert_int_eq(multiarrayGet(arr, i, &v), DKSHM_OK);
        ck_assert_uint_eq(v, want1[i]);
    }
    ck_assert_int_eq(multiarrayDelete(arr, 0), DKSHM_OK);
    ck_assert_int_eq(multiarrayDelete(arr, 4), DKSHM_OK);  /* the 200 */
    ck_assert_int_eq(multiarrayDelete(arr, 10), DKSHM_OK); /* the 300 */
    ck_assert_uint_eq(count(arr), 10);
    for (uint64_t i = 0; i < 10; i++) {
        ck_assert_int_eq(multiarrayGet(arr, i, &v), DKSHM_OK);
        ck_assert_uint_eq(v, i);
    }
    TEST_ASSERT_CHECK(multiarrayCheck, arr);
    assertOwnership(arr);
}
END_TEST

START_TEST(test_model_elem_sizes) {
    static const uint32_t sizes[] = {1, 3, 7, 8, 12, 24, 100, 1000, 1100, 5000};
    enum { N = sizeof sizes / sizeof sizes[0] };
    multiarray *all[N + 1] = {arr};
    for (size_t i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "m%u", sizes[i]);
        multiarray *x = all[i + 1] = openArray(name, sizes[i]);
        int ops = sizes[i] >= 1000 ? 400 : 2000;
        randomOps(x, sizes[i], ops, 1000 + i, sizes[i] >= 1000 ? 200 : 100000);
        assertOwnershipN(all, (int)i + 2);
    }
    for (size_t i = 0; i < N; i++)
        multiarrayClose(all[i + 1]);
}
END_TEST

START_TEST(test_large_shift_on_copy) {
    multiarray *x = openArray("big", 16);
    uint8_t e[16];
    for (uint64_t i = 0; i < 1000; i++) {
        fillElem(e, 16, i);
        ck_assert_int_eq(multiarrayAppend(x, e, NULL), DKSHM_OK);
    }
    multiarrayStats st0 = stats(x);
    /* Near the end: in place (no new block). */
    fillElem(e, 16, 5000);
    ck_assert_int_eq(multiarrayInsert(x, 995, e), DKSHM_OK);
    ck_assert_int_eq(multiarrayDelete(x, 996), DKSHM_OK);
    ck_assert_uint_eq(stats(x).rebuilds, st0.rebuilds);
    /* At the front: 16 KB to shift, done on a copy. */
    fillElem(e, 16, 6000);
    ck_assert_int_eq(multiarrayInsert(x, 0, e), DKSHM_OK);
    ck_assert_uint_eq(stats(x).rebuilds, st0.rebuilds + 1);
    ck_assert_int_eq(multiarrayDelete(x, 0), DKSHM_OK);
    ck_assert_uint_eq(stats(x).rebuilds, st0.rebuilds + 2);
    ck_assert_uint_eq(count(x), 1000);
    uint8_t got[16];
    for (uint64_t i = 0; i < 1000; i++) {
        fillElem(e, 16, i == 995 ? 5000 : i);
        ck_assert_int_eq(multiarrayGet(x, i, got), DKSHM_OK);
        if (memcmp(got, e, 16) != 0)
            ck_abort_msg("element %llu", (unsigned long long)i);
    }
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    assertOwnership(x);
    multiarrayClose(x);
}
END_TEST

START_TEST(test_grow_shrink) {
    memboundStats m0 = testAllocStats(mb);
    uint64_t v = 1;
    uint64_t lastCap = 0;
    int grows = 0;
    for (int i = 0; i < 5000; i++) {
        ck_assert_int_eq(multiarrayAppend(arr, &v, NULL), DKSHM_OK);
        uint64_t c = stats(arr).capacity;
        if (c != lastCap) {
            ck_assert(lastCap == 0 || c == 2 * lastCap);
            grows++;
            lastCap = c;
        }
    }
    ck_assert_uint_eq(lastCap, 8192);
    ck_assert_int_eq(grows, 11); /* 8, 16, ..., 8192 */
    ck_assert_uint_eq(testAllocStats(mb).allocations, m0.allocations + 1);
    assertOwnership(arr);
    while (count(arr) > 0)
        ck_assert_int_eq(multiarrayDelete(arr, count(arr) - 1), DKSHM_OK);
    ck_assert_uint_eq(stats(arr).capacity, 8); /* shrunk back to the least */
    ck_assert_uint_eq(testAllocStats(mb).allocations, m0.allocations + 1);
    TEST_ASSERT_CHECK(multiarrayCheck, arr);
    assertOwnership(arr);
    /* An initial capacity. */
    multiarrayOptions o = {.elemSize = 4, .initialCapacity = 1000};
    multiarray *x;
    ck_assert_int_eq(multiarrayOpen(seg, "pre", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_OK);
    ck_assert_uint_eq(stats(x).capacity, 1000);
    ck_assert_uint_eq(stats(x).count, 0);
    for (uint32_t i = 0; i < 1000; i++)
        ck_assert_int_eq(multiarrayAppend(x, &i, NULL), DKSHM_OK);
    ck_assert_uint_eq(stats(x).capacity, 1000);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    assertOwnership(x);
    multiarrayClose(x);
}
END_TEST

START_TEST(test_index_errors) {
    uint64_t v = 5;
    ck_assert_int_eq(multiarrayGet(arr, 0, &v), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarraySet(arr, 0, &v), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayDelete(arr, 0), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayInsert(arr, 1, &v), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayInsert(arr, 0, &v), DKSHM_OK);
    ck_assert_int_eq(multiarrayGet(arr, 1, &v), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayGet(arr, UINT64_MAX, &v), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarraySet(arr, 1, &v), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayDelete(arr, 1), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayDelete(arr, UINT64_MAX), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayInsert(arr, 2, &v), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayInsert(arr, UINT64_MAX, &v), DKSHM_NOTFOUND);
    ck_assert_uint_eq(count(arr), 1);
    ck_assert_int_eq(multiarrayGet(arr, 0, &v), DKSHM_OK);
    ck_assert_uint_eq(v, 5);
    TEST_ASSERT_CHECK(multiarrayCheck, arr);
}
END_TEST

START_TEST(test_open_by_name) {
    multiarray *a = NULL, *b = NULL;
    multiarrayOptions o = {.elemSize = 12};
    ck_assert_int_eq(multiarrayOpen(seg, "t", NULL, 0, &a), DKSHM_NOTFOUND);
    ck_assert_int_eq(multiarrayOpen(seg, "t", &o, 0, &a), DKSHM_NOTFOUND);
    ck_assert_int_eq(
        multiarrayOpen(seg, "t", &o, MULTIARRAY_CREATE | MULTIARRAY_EXCL, &a),
        DKSHM_OK);
    ck_assert_int_eq(
        multiarrayOpen(seg, "t", &o, MULTIARRAY_CREATE | MULTIARRAY_EXCL, &b),
        DKSHM_EXISTS);
    ck_assert_int_eq(multiarrayOpen(seg, "t", NULL, 0, &b), DKSHM_OK);
    uint8_t e[12] = "hello world", got[12];
    ck_assert_int_eq(multiarrayAppend(a, e, NULL), DKSHM_OK);
    ck_assert_int_eq(multiarrayGet(b, 0, got), DKSHM_OK);
    ck_assert_int_eq(memcmp(got, e, 12), 0);
    size_t es;
    ck_assert_int_eq(multiarrayElemSize(b, &es), DKSHM_OK);
    ck_assert_uint_eq(es, 12);
    multiarray *c = NULL;
    o.elemSize = 13; /* not this array's */
    ck_assert_int_eq(multiarrayOpen(seg, "t", &o, 0, &c), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, "t", &o, MULTIARRAY_CREATE, &c),
                     DKSHM_INVALID);
    ck_assert_ptr_null(c);
    multiarrayClose(a);
    multiarrayClose(b);
    /* Racing creators: one array. */
    pid_t pids[4];
    fflush(NULL);
    for (int i = 0; i < 4; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            multiarrayOptions oo = {.elemSize = 8};
            multiarray *x;
            if (multiarrayOpen(seg, "raced", &oo, MULTIARRAY_CREATE, &x) !=
                DKSHM_OK)
                _exit(1);
            uint64_t v = (uint64_t)i;
            _exit(multiarrayAppend(x, &v, NULL) == DKSHM_OK ? 0 : 2);
        }
    }
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(testWait(pids[i]), 0);
    multiarray *x = openArray("raced", 8);
    ck_assert_uint_eq(count(x), 4);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    multiarray *all[3] = {arr, x, NULL};
    ck_assert_int_eq(multiarrayOpen(seg, "t", NULL, 0, &all[2]), DKSHM_OK);
    assertOwnershipN(all, 3);
    multiarrayClose(all[2]);
    multiarrayClose(x);
}
END_TEST

/* A damaged root (block offset, capacity or count) is CORRUPT for every
 * writer and the locked read, with nothing changed: the writers used to
 * follow the root's block offset unchecked (fuzzSegment --seed
 * 0xc96ffc4c150a1a05 --start 61 --target arrroot, SEGV in maStoreBytes
 * from maRebuild). */
typedef struct maBlocks {
    dkoff root, data;
    uint64_t dataBytes;
} maBlocks;

static int maFindBlocks(void *ctx, dkoff off, uint64_t bytes, int kind) {
    maBlocks *b = ctx;
    if (kind == MULTIARRAY_BLOCK_ROOT)
        b->root = off;
    else if (kind == MULTIARRAY_BLOCK_DATA) {
        b->data = off;
        b->dataBytes = bytes;
    }
    return 0;
}

START_TEST(test_damaged_root) {
    uint64_t v = 7;
    for (uint64_t i = 0; i < 100; i++)
        ck_assert_int_eq(multiarrayAppend(arr, &i, NULL), DKSHM_OK);
    maBlocks b = {0};
    ck_assert_int_eq(multiarrayForEachBlock(arr, maFindBlocks, &b), DKSHM_OK);
    ck_assert(b.root && b.data);
    /* The root's word that holds the block offset, and the one that holds
     * the count (100), found by value in its first 128 bytes. */
    uint64_t *root = dkshmPtr(seg, b.root), *dataW = NULL, *countW = NULL;
    for (int i = 0; i < 16; i++) {
        if (root[i] == b.data)
            dataW = &root[i];
        else if (root[i] == 100 && !countW)
            countW = &root[i];
    }
    ck_assert_ptr_nonnull(dataW);
    ck_assert_ptr_nonnull(countW);
    const uint64_t bad[] = {dkshmCapacity(seg) - 8, 0xca674370de9a27a0ull,
                            b.data + 4, 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0] + 1; i++) {
        uint64_t *w = i < sizeof bad / sizeof bad[0] ? dataW : countW;
        uint64_t saved = *w;
        *w = i < sizeof bad / sizeof bad[0] ? bad[i] : UINT64_MAX / 2;
        uint64_t image[16];
        memcpy(image, root, sizeof image);
        ck_assert_int_eq(multiarrayAppend(arr, &v, NULL), DKSHM_CORRUPT);
        ck_assert_int_eq(multiarrayInsert(arr, 0, &v), DKSHM_CORRUPT);
        ck_assert_int_eq(multiarraySet(arr, 3, &v), DKSHM_CORRUPT);
        ck_assert_int_eq(multiarrayDelete(arr, 3), DKSHM_CORRUPT);
        ck_assert(memcmp(image, root, sizeof image) == 0);
        char why[128];
        ck_assert_int_eq(multiarrayCheck(arr, why, sizeof why), DKSHM_CORRUPT);
        *w = saved;
    }
    ck_assert_int_eq(multiarrayCheck(arr, NULL, 0), DKSHM_OK);
    ck_assert_int_eq(multiarrayAppend(arr, &v, NULL), DKSHM_OK);
    ck_assert_int_eq(multiarrayGet(arr, 100, &v), DKSHM_OK);
    ck_assert_uint_eq(v, 7);
}
END_TEST

START_TEST(test_bad_input) {
    uint64_t v = 1, n;
    size_t es;
    multiarrayStats st;
    char why[64];
    multiarray *x = NULL;
    ck_assert_int_eq(multiarrayAppend(NULL, &v, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayInsert(NULL, 0, &v), DKSHM_INVALID);
    ck_assert_int_eq(multiarraySet(NULL, 0, &v), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayGet(NULL, 0, &v), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayDelete(NULL, 0), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayCount(NULL, &n), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayElemSize(NULL, &es), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayGetStats(NULL, &st), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayCheck(NULL, why, sizeof why), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayForEachBlock(NULL, testBlocksCollect, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(multiarrayClose(NULL), DKSHM_OK);
    ck_assert_int_eq(multiarrayAppend(arr, NULL, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayInsert(arr, 0, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayAppend(arr, &v, NULL), DKSHM_OK);
    ck_assert_int_eq(multiarraySet(arr, 0, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayGet(arr, 0, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayCount(arr, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayElemSize(arr, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayGetStats(arr, NULL), DKSHM_INVALID);
    /* Open. */
    multiarrayOptions o = {.elemSize = 8};
    ck_assert_int_eq(multiarrayOpen(NULL, "x", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, "x", &o, MULTIARRAY_CREATE, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, NULL, &o, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, "", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, "bad name", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, "x", &o, MULTIARRAY_EXCL, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, "x", &o, 0x40, &x), DKSHM_INVALID);
    ck_assert_int_eq(multiarrayOpen(seg, "x", NULL, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID); /* no element size */
    o.elemSize = 0;
    ck_assert_int_eq(multiarrayOpen(seg, "x", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID);
    o.elemSize = MULTIARRAY_ELEM_MAX + 1;
    ck_assert_int_eq(multiarrayOpen(seg, "x", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID);
    o = (multiarrayOptions){.elemSize = 8, .flags = 1};
    ck_assert_int_eq(multiarrayOpen(seg, "x", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(dkshmObjectFind(seg, "x", NULL, NULL), DKSHM_NOTFOUND);
    /* The largest element size works. */
    o = (multiarrayOptions){.elemSize = MULTIARRAY_ELEM_MAX};
    ck_assert_int_eq(multiarrayOpen(seg, "huge", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_OK);
    uint8_t *e = calloc(1, MULTIARRAY_ELEM_MAX),
            *g = malloc(MULTIARRAY_ELEM_MAX);
    ck_assert(e && g);
    for (int i = 0; i < 3; i++) {
        e[i] = (uint8_t)(i + 1);
        ck_assert_int_eq(multiarrayInsert(x, 0, e), DKSHM_OK);
    }
    e[0] = 9;
    ck_assert_int_eq(multiarraySet(x, 1, e), DKSHM_OK); /* on a copy */
    ck_assert_int_eq(multiarrayGet(x, 1, g), DKSHM_OK);
    ck_assert_int_eq(memcmp(g, e, MULTIARRAY_ELEM_MAX), 0);
    ck_assert_int_eq(multiarrayDelete(x, 0), DKSHM_OK);
    ck_assert_uint_eq(count(x), 2);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    assertOwnership(x);
    free(e);
    free(g);
    multiarrayClose(x);
}
END_TEST

START_TEST(test_wrong_type) {
    dkoff off;
    ck_assert_int_eq(memboundAllocOff(mb, 64, &off), DKSHM_OK);
    ck_assert_int_eq(
        dkshmObjectCreate(seg, "other", 3 /* a multilist's */, off), DKSHM_OK);
    multiarray *x = NULL;
    multiarrayOptions o = {.elemSize = 8};
    ck_assert_int_eq(multiarrayOpen(seg, "other", &o, 0, &x), DKSHM_TYPE);
    ck_assert_int_eq(multiarrayOpen(seg, "other", &o, MULTIARRAY_CREATE, &x),
                     DKSHM_TYPE);
    ck_assert_ptr_null(x);
}
END_TEST

START_TEST(test_read_only) {
    for (uint64_t v = 0; v < 20; v++)
        ck_assert_int_eq(multiarrayAppend(arr, &v, NULL), DKSHM_OK);
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multiarray *x = NULL;
    ck_assert_int_eq(multiarrayOpen(ro, "a", NULL, 0, &x), DKSHM_OK);
    uint64_t v, n;
    ck_assert_int_eq(multiarrayCount(x, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 20);
    ck_assert_int_eq(multiarrayGet(x, 19, &v), DKSHM_OK);
    ck_assert_uint_eq(v, 19);
    ck_assert_int_eq(multiarrayGet(x, 20, &v), DKSHM_NOTFOUND);
    multiarrayStats st;
    ck_assert_int_eq(multiarrayGetStats(x, &st), DKSHM_OK);
    ck_assert_uint_eq(st.count, 20);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    ck_assert_int_eq(multiarrayAppend(x, &v, NULL), DKSHM_READONLY);
    ck_assert_int_eq(multiarrayInsert(x, 0, &v), DKSHM_READONLY);
    ck_assert_int_eq(multiarraySet(x, 0, &v), DKSHM_READONLY);
    ck_assert_int_eq(multiarrayDelete(x, 0), DKSHM_READONLY);
    multiarrayOptions o = {.elemSize = 8};
    multiarray *y = NULL;
    ck_assert_int_eq(multiarrayOpen(ro, "new", &o, MULTIARRAY_CREATE, &y),
                     DKSHM_READONLY);
    multiarrayClose(x);
    dkshmDetach(ro);
    ck_assert_uint_eq(count(arr), 20);
}
END_TEST

START_TEST(test_full_segment) {
    multiarrayClose(arr);
    testDropSegment(&seg, &mb);
    testMakeSegment("small", DKSHM_MIN_CAPACITY, NULL, &seg, &mb);
    arr = openArray("a", 8);
    multiarray *x = openArray("b", 100);
    uint8_t e[100];
    uint64_t n = 0;
    int rc;
    for (;;) {
        fillElem(e, 100, n);
        if ((rc = multiarrayAppend(x, e, NULL)) != DKSHM_OK)
            break;
        n++;
    }
    ck_assert_int_eq(rc, DKSHM_FULL);
    ck_assert_uint_gt(n, 100);
    memboundStats m = testAllocStats(mb);
    multiarrayStats st = stats(x);
    /* A front insert may still fit in place (if there is room in the block)
     * or needs a copy that cannot fit: either way all or nothing. */
    fillElem(e, 100, 999999);
    ck_assert_int_eq(multiarrayAppend(x, e, NULL), DKSHM_FULL);
    if (st.capacity == st.count)
        ck_assert_int_eq(multiarrayInsert(x, 0, e), DKSHM_FULL);
    memboundStats m2 = testAllocStats(mb);
    ck_assert_uint_eq(m2.used, m.used);
    ck_assert_uint_eq(m2.allocations, m.allocations);
    ck_assert_uint_eq(count(x), n);
    uint8_t got[100];
    for (uint64_t i = 0; i < n; i++) {
        fillElem(e, 100, i);
        if (multiarrayGet(x, i, got) != DKSHM_OK || memcmp(got, e, 100))
            ck_abort_msg("element %llu", (unsigned long long)i);
    }
    /* Deleting at the front needs a copy for more than 1 KiB of shift: in
     * a full segment that may fail FULL, changing nothing. */
    rc = multiarrayDelete(x, 0);
    ck_assert(rc == DKSHM_OK || rc == DKSHM_FULL);
    ck_assert_uint_eq(count(x), rc == DKSHM_OK ? n - 1 : n);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    assertOwnership(x);
    multiarrayClose(x);
}
END_TEST

/* ---- readers never see a torn element ----------------------------------- */

enum { TV_ES = 40 };

/* An element that checks itself: tag, and the rest derived from it. */
static bool elemOk(const uint8_t *e) {
    uint64_t tag;
    memcpy(&tag, e, 8);
    uint8_t want[TV_ES];
    fillElem(want, TV_ES, tag);
    return memcmp(e + 8, want + 8, TV_ES - 8) == 0;
}

static void mkElem(uint8_t *e, uint64_t tag) {
    fillElem(e, TV_ES, tag);
    memcpy(e, &tag, 8);
}

typedef struct tornShared { /* shared memory */
    uint32_t stop;
    uint32_t pad;
    uint64_t bad, reads, writes;
} tornShared;

/* multiarrayCount without ck_assert (threads, busy loops). */
static uint64_t countRaw(multiarray *x) {
    uint64_t n = 0;
    multiarrayCount(x, &n);
    return n;
}

static void tornWriter(multiarray *x, tornShared *sh, uint64_t seed) {
    uint8_t e[TV_ES];
    while (!__atomic_load_n(&sh->stop, __ATOMIC_RELAXED)) {
        uint64_t r = testRng(&seed), n = countRaw(x);
        mkElem(e, testRng(&seed));
        int kind = (int)(r % 4);
        uint64_t at = n ? (r >> 8) % n : 0;
        if (kind == 0 && n < 300)
            multiarrayInsert(x, at, e); /* in place or on a copy */
        else if (kind == 1 && n < 300)
            multiarrayAppend(x, e, NULL);
        else if (kind == 2 && n > 50)
            multiarrayDelete(x, at);
        else if (n)
            multiarraySet(x, at, e);
        __atomic_add_fetch(&sh->writes, 1, __ATOMIC_RELAXED);
    }
}

static void tornReader(multiarray *x, tornShared *sh, uint64_t seed) {
    uint8_t e[TV_ES];
    while (!__atomic_load_n(&sh->stop, __ATOMIC_RELAXED)) {
        uint64_t n = countRaw(x);
        int rc = multiarrayGet(x, n ? testRng(&seed) % n : 0, e);
        if (rc == DKSHM_OK && !elemOk(e))
            __atomic_add_fetch(&sh->bad, 1, __ATOMIC_RELAXED);
        else if (rc != DKSHM_OK && rc != DKSHM_NOTFOUND)
            __atomic_add_fetch(&sh->bad, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&sh->reads, 1, __ATOMIC_RELAXED);
    }
}

START_TEST(test_readers_never_torn) {
    multiarray *x = openArray("torn", TV_ES);
    uint8_t e[TV_ES];
    for (uint64_t i = 0; i < 100; i++) {
        mkElem(e, i);
        ck_assert_int_eq(multiarrayAppend(x, e, NULL), DKSHM_OK);
    }
    tornShared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t pids[3];
    fflush(NULL);
    for (int i = 0; i < 3; i++) {
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0) {
            if (i == 0) {
                tornWriter(x, sh, 17);
            } else if (i == 1) {
                tornReader(x, sh, 23);
            } else { /* a read-only attachment reads too */
                dkshm *ro;
                multiarray *y;
                if (dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro) !=
                        DKSHM_OK ||
                    multiarrayOpen(ro, "torn", NULL, 0, &y) != DKSHM_OK)
                    _exit(1);
                tornReader(y, sh, 29);
            }
            _exit(0);
        }
    }
    testSleepMs(1000);
    __atomic_store_n(&sh->stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(testWait(pids[i]), 0);
    fprintf(stderr, "torn: %llu reads, %llu writes, %llu bad\n",
            (unsigned long long)sh->reads, (unsigned long long)sh->writes,
            (unsigned long long)sh->bad);
    ck_assert_uint_eq(sh->bad, 0);
    ck_assert_uint_gt(sh->reads, 1000);
    ck_assert_uint_gt(sh->writes, 1000);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    assertOwnership(x);
    munmap(sh, sizeof *sh);
    multiarrayClose(x);
}
END_TEST

typedef struct thArg {
    multiarray *x;
    tornShared *sh;
    uint64_t seed;
    bool writer;
} thArg;

static void *tornThread(void *p) {
    thArg *t = p;
    if (t->writer)
        tornWriter(t->x, t->sh, t->seed);
    else
        tornReader(t->x, t->sh, t->seed);
    return NULL;
}

START_TEST(test_threads_never_torn) {
    multiarray *x = openArray("tt", TV_ES);
    uint8_t e[TV_ES];
    for (uint64_t i = 0; i < 100; i++) {
        mkElem(e, i);
        ck_assert_int_eq(multiarrayAppend(x, e, NULL), DKSHM_OK);
    }
    tornShared sh = {0};
    pthread_t th[4];
    thArg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thArg){
            .x = x, .sh = &sh, .seed = 100 + (uint64_t)i, .writer = i < 2};
        ck_assert_int_eq(pthread_create(&th[i], NULL, tornThread, &args[i]), 0);
    }
    testSleepMs(700);
    __atomic_store_n(&sh.stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    ck_assert_uint_eq(sh.bad, 0);
    ck_assert_uint_gt(sh.reads, 100);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    assertOwnership(x);
    multiarrayClose(x);
}
END_TEST

/* ---- crash walks -------------------------------------------------------- */

typedef struct walk walk;
struct walk {
    const char *name;
    multiarray *x;
    size_t es;
    int (*op)(walk *w);
    model before, after;      /* contents */
    void (*prepare)(walk *w); /* fill X as BEFORE */
    memboundStats mBefore, mAfter;
    int seen[2];
    long points;
};

static bool arrayIs(multiarray *x, const model *m, size_t es) {
    if (count(x) != m->n)
        return false;
    uint8_t *got = malloc(es), *want = malloc(es);
    bool ok = true;
    for (size_t i = 0; i < m->n && ok; i++) {
        fillElem(want, es, m->tag[i]);
        ok = multiarrayGet(x, i, got) == DKSHM_OK && memcmp(got, want, es) == 0;
    }
    free(got);
    free(want);
    return ok;
}

/* Rebuild X from scratch as M: a new array under the same name. */
static void rebuildAs(walk *w, const model *m, uint64_t initialCap) {
    if (w->x) {
        testBlocks b = {0};
        ck_assert_int_eq(multiarrayForEachBlock(w->x, testBlocksCollect, &b),
                         DKSHM_OK);
        multiarrayClose(w->x);
        dkoff root;
        ck_assert_int_eq(
            dkshmObjectRemove(seg, w->name, MULTIARRAY_TYPE, &root), DKSHM_OK);
        for (size_t i = 0; i < b.n; i++)
            if (b.b[i].off != root) /* the element block: the root's */
                ck_assert_int_eq(memboundFreeOff(mb, b.b[i].off), DKSHM_OK);
        ck_assert_int_eq(memboundFreeInflight(mb, root), DKSHM_OK);
        free(b.b);
    }
    multiarrayOptions o = {.elemSize = (uint32_t)w->es,
                           .initialCapacity = initialCap};
    ck_assert_int_eq(multiarrayOpen(seg, w->name, &o,
                                    MULTIARRAY_CREATE | MULTIARRAY_EXCL, &w->x),
                     DKSHM_OK);
    uint8_t *e = malloc(w->es);
    for (size_t i = 0; i < m->n; i++) {
        fillElem(e, w->es, m->tag[i]);
        ck_assert_int_eq(multiarrayAppend(w->x, e, NULL), DKSHM_OK);
    }
    free(e);
    ck_assert_uint_eq(stats(w->x).capacity, initialCap);
}

static int walkOp(void *arg) {
    walk *w = arg;
    int rc = w->op(w);
    return rc == DKSHM_OK ? 0 : 50 + (-rc);
}

/* Recover at once the locks a dead process holds (a try-lock looks at the
 * owner at once; dkshmReap's lock first sleeps DKSHM_LOCK_POLL_MS). Not on
 * every fourth point, so the reaper's own recovery is walked as well. */
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

static void assertAlloc(const memboundStats *want, long k, const char *what) {
    memboundStats m = testAllocStats(mb);
    ck_assert_msg(
        m.used == want->used && m.allocations == want->allocations,
        "%s crash point %ld: allocator %llu bytes in %llu blocks, "
        "expected %llu in %llu",
        what, k, (unsigned long long)m.used, (unsigned long long)m.allocations,
        (unsigned long long)want->used, (unsigned long long)want->allocations);
}

static void walkAfter(void *arg, long k) {
    walk *w = arg;
    recoverNow(k);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    char why[256];
    int rc = multiarrayCheck(w->x, why, sizeof why);
    ck_assert_msg(rc == DKSHM_OK, "%s crash point %ld: %s (%s)", w->name, k,
                  why, dkshmErrName(rc));
    TEST_ASSERT_CHECK(memboundCheck, mb);
    assertOwnership(w->x);
    int st = arrayIs(w->x, &w->before, w->es)  ? 0
             : arrayIs(w->x, &w->after, w->es) ? 1
                                               : -1;
    ck_assert_msg(st >= 0, "%s crash point %ld: operation half done", w->name,
                  k);
    assertAlloc(st ? &w->mAfter : &w->mBefore, k, w->name);
    w->seen[st]++;
    if (st == 1)
        w->prepare(w);
}

static void runWalk(walk *w, int minPoints) {
    w->x = NULL;
    w->prepare(w);
    w->mBefore = testAllocStats(mb);
    ck_assert_int_eq(walkOp(w), 0);
    ck_assert(arrayIs(w->x, &w->after, w->es));
    w->mAfter = testAllocStats(mb);
    w->prepare(w);
    assertAlloc(&w->mBefore, 0, "prepare");
    w->points = testCrashWalk(walkOp, walkAfter, w, 5000);
    ck_assert(arrayIs(w->x, &w->after, w->es));
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multiarrayCheck, w->x);
    assertAlloc(&w->mAfter, w->points + 1, w->name);
    ck_assert_msg(w->points >= minPoints, "%s: only %ld crash points", w->name,
                  w->points);
    ck_assert_int_gt(w->seen[0], 0);
    ck_assert_int_gt(w->seen[1], 0);
    fprintf(stderr, "crash walk %s: %ld points (%d before, %d after)\n",
            w->name, w->points, w->seen[0], w->seen[1]);
    multiarrayClose(w->x);
    free(w->before.tag);
    free(w->after.tag);
}

/* The walks: BEFORE holds N tags 0..N-1 in an array of capacity CAP. */
static uint64_t walkCap;
static void prepWalk(walk *w) {
    rebuildAs(w, &w->before, walkCap);
}

static void modelRange(model *m, size_t n) {
    for (size_t i = 0; i < n; i++)
        modelInsert(m, m->n, i);
}

static int opAppend(walk *w) {
    uint8_t e[64];
    fillElem(e, w->es, 777);
    return multiarrayAppend(w->x, e, NULL);
}
static int opInsert(walk *w) {
    uint8_t *e = malloc(w->es);
    fillElem(e, w->es, 777);
    int rc = multiarrayInsert(w->x, 1, e);
    free(e);
    return rc;
}
static int opSet(walk *w) {
    uint8_t *e = malloc(w->es);
    fillElem(e, w->es, 777);
    int rc = multiarraySet(w->x, 1, e);
    free(e);
    return rc;
}
static int opDelete(walk *w) {
    return multiarrayDelete(w->x, 1);
}

/* Set up BEFORE (N elements) and AFTER for the op, then walk. */
static void walkOne(const char *name, size_t es, size_t n, uint64_t cap,
                    int (*op)(walk *), int minPoints) {
    walk w = {.name = name, .es = es, .op = op, .prepare = prepWalk};
    modelRange(&w.before, n);
    modelRange(&w.after, n);
    if (op == opAppend)
        modelInsert(&w.after, n, 777);
    else if (op == opInsert)
        modelInsert(&w.after, 1, 777);
    else if (op == opSet)
        w.after.tag[1] = 777;
    else
        modelDelete(&w.after, 1);
    walkCap = cap;
    runWalk(&w, minPoints);
}

START_TEST(test_crash_append) {
    walkOne("append", 12, 5, 8, opAppend, 8);
}
END_TEST

START_TEST(test_crash_append_grow) {
    walkOne("appendGrow", 12, 8, 8, opAppend, 20);
}
END_TEST

START_TEST(test_crash_insert_inplace) {
    walkOne("insertInPlace", 12, 20, 32, opInsert, 20);
}
END_TEST

START_TEST(test_crash_insert_copy) {
    walkOne("insertCopy", 24, 200, 256, opInsert, 20);
}
END_TEST

START_TEST(test_crash_delete_inplace) {
    walkOne("deleteInPlace", 12, 20, 32, opDelete, 20);
}
END_TEST

START_TEST(test_crash_delete_copy) {
    walkOne("deleteCopy", 24, 200, 256, opDelete, 20);
}
END_TEST

START_TEST(test_crash_delete_shrink) {
    walkOne("deleteShrink", 8, 9, 64, opDelete, 20);
}
END_TEST

START_TEST(test_crash_set) {
    walkOne("set", 12, 5, 8, opSet, 6);
}
END_TEST

START_TEST(test_crash_set_copy) {
    walkOne("setCopy", 3000, 3, 4, opSet, 20);
}
END_TEST

/* ---- random SIGKILLs ---------------------------------------------------- */

/* Workers append and insert elements with unique ids and rewrite element
 * 0 (id 0) with new versions, and are killed at random. Every element
 * acknowledged (written to the pipe after the call returned) is there
 * exactly once; one that was not may be there once; every element is
 * whole; nothing leaks. */
enum { RK_WORKERS = 3, RK_IDS = 1 << 20, RK_MAX = 4000 };

typedef struct rkShared {
    uint64_t nextId;
} rkShared;

static void rkElem(uint8_t *e, uint64_t id, uint64_t ver) {
    fillElem(e, 32, id ^ (ver << 32));
    memcpy(e, &id, 8);
    memcpy(e + 8, &ver, 8);
}

static bool rkElemOk(const uint8_t *e, uint64_t *id) {
    uint64_t ver;
    memcpy(id, e, 8);
    memcpy(&ver, e + 8, 8);
    uint8_t want[32];
    rkElem(want, *id, ver);
    return memcmp(e, want, 32) == 0;
}

static int rkWorker(multiarray *x, rkShared *sh, int fd, uint64_t seed) {
    uint8_t e[32];
    for (uint64_t ver = 1;; ver++) {
        uint64_t r = testRng(&seed), n = countRaw(x);
        int rc;
        if (r % 10 < 2 || n >= RK_MAX) {
            rkElem(e, 0, ver);
            rc = multiarraySet(x, 0, e);
            continue;
        }
        uint64_t id = __atomic_add_fetch(&sh->nextId, 1, __ATOMIC_RELAXED);
        if (id >= RK_IDS)
            for (;;)
                testSleepMs(100);
        rkElem(e, id, 0);
        if (r % 10 < 6)
            rc = multiarrayAppend(x, e, NULL);
        else
            rc = multiarrayInsert(x, 1 + (r >> 8) % n, e);
        if (rc != DKSHM_OK)
            return 20 - rc;
        if (write(fd, &id, 8) != 8)
            return 2;
    }
}

START_TEST(test_random_kill) {
    multiarray *x = openArray("rk", 32);
    uint8_t e[32];
    rkElem(e, 0, 0);
    ck_assert_int_eq(multiarrayAppend(x, e, NULL), DKSHM_OK);
    rkShared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert(sh != MAP_FAILED);
    sh->nextId = 0;
    int ack[2];
    ck_assert_int_eq(pipe(ack), 0);
    fcntl(ack[0], F_SETFL, O_NONBLOCK);
    fcntl(ack[1], F_SETPIPE_SZ, 1 << 20);
    uint8_t *acked = calloc(RK_IDS, 1);
    ck_assert_ptr_nonnull(acked);
    pid_t pids[RK_WORKERS];
    uint64_t seed = 99;
    fflush(NULL);
    for (int w = 0; w < RK_WORKERS; w++) {
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0)
            _exit(rkWorker(x, sh, ack[1], testRng(&seed) | 1));
    }
    int kills = 0;
    uint64_t start = dkNowNs(), nAcked = 0;
    /* A number of kills, not a duration: slow (sanitizer) builds do the
     * same test; the time cap only stops a hang. */
    while (kills < 60 && dkNowNs() - start < 60000000000ull) {
        testSleepMs(1 + (unsigned)(testRng(&seed) % 10));
        uint64_t ids[512];
        ssize_t got;
        for (int rd = 0; rd < 64 && (got = read(ack[0], ids, sizeof ids)) > 0;
             rd++)
            for (ssize_t i = 0; i < got / 8; i++, nAcked++)
                acked[ids[i] % RK_IDS] = 1;
        int w = (int)(testRng(&seed) % RK_WORKERS);
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
        kills++;
        recoverNow(kills);
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        if (kills % 16 == 0)
            TEST_ASSERT_CHECK(multiarrayCheck, x);
        fflush(NULL);
        uint64_t s2 = testRng(&seed) | 1;
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0)
            _exit(rkWorker(x, sh, ack[1], s2));
    }
    for (int w = 0; w < RK_WORKERS; w++) {
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
    }
    close(ack[1]);
    fcntl(ack[0], F_SETFL, 0);
    uint64_t ids[512];
    ssize_t got;
    while ((got = read(ack[0], ids, sizeof ids)) > 0)
        for (ssize_t i = 0; i < got / 8; i++, nAcked++)
            acked[ids[i] % RK_IDS] = 1;
    close(ack[0]);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multiarrayCheck, x);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    assertOwnership(x);
    uint8_t *seen = calloc(RK_IDS, 1);
    ck_assert_ptr_nonnull(seen);
    uint64_t n = count(x);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id;
        if (multiarrayGet(x, i, e) != DKSHM_OK || !rkElemOk(e, &id) ||
            id >= RK_IDS)
            ck_abort_msg("element %llu damaged", (unsigned long long)i);
        if (i == 0 ? id != 0 : id == 0)
            ck_abort_msg("element %llu has id %llu", (unsigned long long)i,
                         (unsigned long long)id);
        if (seen[id]++)
            ck_abort_msg("id %llu twice", (unsigned long long)id);
    }
    uint64_t missing = 0;
    for (uint64_t id = 1; id < RK_IDS; id++)
        missing += acked[id] && !seen[id];
    fprintf(stderr,
            "random kill: %d kills, %llu acknowledged, %llu "
            "elements\n",
            kills, (unsigned long long)nAcked, (unsigned long long)n);
    ck_assert_uint_eq(missing, 0);
    ck_assert_int_eq(kills, 60);
    ck_assert_uint_gt(nAcked, 0);
    free(acked);
    free(seen);
    munmap(sh, sizeof *sh);
    multiarrayClose(x);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

static Suite *multiarraySuite(void) {
    const testCaseSpec cases[] = {
        {"basic",
         {test_append_get_set, test_insert_delete, test_model_elem_sizes,
          test_large_shift_on_copy, test_grow_shrink, test_index_errors,
          test_open_by_name},
         60},
        {"badInput",
         {test_bad_input, test_wrong_type, test_read_only, test_full_segment,
          test_damaged_root},
         60},
        {"multiProcess",
         {test_readers_never_torn, test_threads_never_torn},
         60},
        {"crash",
         {test_crash_append, test_crash_append_grow, test_crash_insert_inplace,
          test_crash_insert_copy, test_crash_delete_inplace,
          test_crash_delete_copy, test_crash_delete_shrink, test_crash_set,
          test_crash_set_copy},
         300},
        {"randomKill", {test_random_kill}, 120},
    };
    return testSuiteFrom("multiarray", cases, sizeof cases / sizeof cases[0],
                         setup, teardown);
}

int main(void) {
    testSetPrefix("ma");
    return testRunSuite(multiarraySuite());
}
