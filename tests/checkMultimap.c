/* checkMultimap.c — Check suite for containers/multimap: every operation
 * and every bad input, ordering against a reference under 100k random
 * inserts and deletes, int64 keys, iteration both ways from arbitrary keys,
 * duplicate, forked writers with readers, an exec'd process attaching by
 * name, crash walks over insert (plain, leaf split, root split, inner
 * split, long separators, upsert, first key) and delete (plain, merge,
 * borrow with a new separator block, a merge cascade that collapses the
 * root), create and duplicate, and random SIGKILLs of busy writers.
 *
 * Each test runs in its own process (fork mode) on its own segment, named
 * after the runner's and the test's pid and unlinked in teardown (main()
 * also removes what failed tests left behind).
 *
 * The exec'd part of the multi-process test is this same program started
 * again as "checkMultimap --child SEGMENT MAP MODE" (see childMain).
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
#include "multimap.h"
#include "multimapInternal.h"
#include "testUtil.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#define MiB (1024u * 1024u)
#define SLOTS 118 /* node capacity (multimap.c MM_SLOTS) */
#define MINFILL (SLOTS / 4)

/* Every Check assertion writes a record to a file, which dominates loops of
 * many thousand operations: these fail the same way but cost nothing when
 * they pass. */
#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond))                                                           \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #cond);              \
    } while (0)
#define EXPECT_RC(call, want)                                                  \
    do {                                                                       \
        int rc_ = (call), want_ = (want);                                      \
        if (rc_ != want_)                                                      \
            ck_abort_msg("%s:%d: %s: %s, expected %s", __FILE__, __LINE__,     \
                         #call, dkshmErrName(rc_), dkshmErrName(want_));       \
    } while (0)

/* ---- fixture ------------------------------------------------------------ */

static dkshm *seg;
static membound *mb;
static multimap *mm;

static void makeSegment(const char *tag, uint64_t capacity) {
    dkshmOptions o = {.maxProcs = 1024};
    testMakeSegment(tag, capacity, &o, &seg, &mb);
}

static multimap *openMap(const char *name, uint32_t keyMode) {
    multimapOptions o = {.keyMode = keyMode};
    multimap *x = NULL;
    int rc = multimapOpen(seg, name, &o, MULTIMAP_CREATE, &x);
    ck_assert_msg(rc == DKSHM_OK, "open %s: %s", name, dkshmErrName(rc));
    return x;
}

static void setup(void) {
    makeSegment("t", 256 * MiB);
    mm = openMap("map", MULTIMAP_KEYS_BYTES);
}

static void teardown(void) {
    multimapClose(mm);
    mm = NULL;
    testDropSegment(&seg, &mb);
}

/* ---- helpers ------------------------------------------------------------ */

/* RECOVERY.md §1 and §5: every live allocation of the segment is a block of
 * one of the maps MS (nothing leaked, nothing left in flight), and every
 * block of theirs is a live allocation large enough. */
static void assertOwnership(multimap **ms, int n) {
    testBlocks owned = {0};
    for (int i = 0; i < n; i++)
        EXPECT_RC(multimapForEachBlock(ms[i], testBlocksCollect, &owned),
                  DKSHM_OK);
    size_t blocks = owned.n;
    testAssertOwnership(mb, &owned, "map");
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), blocks);
}

static size_t keyOf(char *buf, const char *prefix, uint64_t i) {
    return (size_t)sprintf(buf, "%s%08" PRIu64, prefix, i);
}

static void putStr(multimap *x, const char *k, const char *v) {
    int rc = multimapInsert(x, k, strlen(k), v, strlen(v), MULTIMAP_UPSERT);
    if (rc != DKSHM_OK)
        ck_abort_msg("insert %s: %s", k, dkshmErrName(rc));
}

/* K's value as a string ("" if absent: then NOTFOUND). */
static int getStr(multimap *x, const char *k, char *out, size_t cap) {
    size_t len = 0;
    int rc = multimapLookup(x, k, strlen(k), out, cap - 1, &len);
    out[rc == DKSHM_OK ? len : 0] = '\0';
    return rc;
}

static void assertValue(multimap *x, const char *k, const char *want) {
    char buf[512];
    int rc = getStr(x, k, buf, sizeof buf);
    ck_assert_msg(rc == DKSHM_OK, "lookup %s: %s", k, dkshmErrName(rc));
    ck_assert_str_eq(buf, want);
}

static void assertAbsent(multimap *x, const char *k) {
    char buf[512];
    ck_assert_int_eq(getStr(x, k, buf, sizeof buf), DKSHM_NOTFOUND);
}

static uint64_t count(multimap *x) {
    uint64_t n = 0;
    EXPECT_RC(multimapCount(x, &n), DKSHM_OK);
    return n;
}

static multimapStats stats(multimap *x) {
    multimapStats st;
    EXPECT_RC(multimapGetStats(x, &st), DKSHM_OK);
    return st;
}

/* Bytes order: memcmp over the shorter, then the shorter first. */
static int keyCmp(const void *a, size_t al, const void *b, size_t bl) {
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c < 0 ? -1 : 1;
    return al < bl ? -1 : al > bl;
}

/* Collect a map's entries in iteration order. */
typedef struct kv {
    uint8_t *k;
    size_t kl;
    uint8_t *v;
    size_t vl;
} kv;

typedef struct kvList {
    kv *e;
    size_t n, cap;
    size_t stopAfter; /* 0: never */
} kvList;

static bool collectFn(void *ctx, const void *k, size_t kl, const void *v,
                      size_t vl) {
    kvList *l = ctx;
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->e = realloc(l->e, l->cap * sizeof *l->e);
        if (!l->e)
            ck_abort_msg("out of memory");
    }
    kv *e = &l->e[l->n++];
    e->k = malloc(kl ? kl : 1);
    e->v = malloc(vl ? vl : 1);
    memcpy(e->k, k, kl);
    memcpy(e->v, v, vl);
    e->kl = kl;
    e->vl = vl;
    return !(l->stopAfter && l->n >= l->stopAfter);
}

static void kvFree(kvList *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->e[i].k);
        free(l->e[i].v);
    }
    free(l->e);
    memset(l, 0, sizeof *l);
}

static kvList iterAll(multimap *x, const void *start, size_t sl,
                      uint32_t flags) {
    kvList l = {0};
    int rc = multimapIterate(x, start, sl, flags, collectFn, &l);
    ck_assert_msg(rc == DKSHM_OK, "iterate: %s", dkshmErrName(rc));
    return l;
}

/* ---- basic operations --------------------------------------------------- */

START_TEST(test_open_modes) {
    putStr(mm, "a", "1");
    multimap *x = NULL;
    EXPECT_RC(multimapOpen(seg, "map", NULL, 0, &x), DKSHM_OK);
    assertValue(x, "a", "1");
    multimapClose(x);
    EXPECT_RC(
        multimapOpen(seg, "map", NULL, MULTIMAP_CREATE | MULTIMAP_EXCL, &x),
        DKSHM_EXISTS);
    ck_assert_ptr_null(x);
    EXPECT_RC(multimapOpen(seg, "nope", NULL, 0, &x), DKSHM_NOTFOUND);
    EXPECT_RC(multimapOpen(seg, "nope", NULL, MULTIMAP_EXCL, &x),
              DKSHM_INVALID);
    EXPECT_RC(
        multimapOpen(seg, "new", NULL, MULTIMAP_CREATE | MULTIMAP_EXCL, &x),
        DKSHM_OK);
    uint32_t mode = 9;
    EXPECT_RC(multimapKeyMode(x, &mode), DKSHM_OK);
    ck_assert_uint_eq(mode, MULTIMAP_KEYS_BYTES);
    ck_assert_uint_eq(count(x), 0);
    multimapClose(x);
    /* Options are ignored when the map exists. */
    multimapOptions io = {.keyMode = MULTIMAP_KEYS_INT64};
    EXPECT_RC(multimapOpen(seg, "new", &io, MULTIMAP_CREATE, &x), DKSHM_OK);
    EXPECT_RC(multimapKeyMode(x, &mode), DKSHM_OK);
    ck_assert_uint_eq(mode, MULTIMAP_KEYS_BYTES);
    multimapClose(x);
    /* Another object type under the name. */
    dkoff blk;
    ck_assert_int_eq(memboundAllocOff(mb, 64, &blk), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(seg, "other", DKSHM_TYPE_USER, blk),
                     DKSHM_OK);
    EXPECT_RC(multimapOpen(seg, "other", NULL, MULTIMAP_CREATE, &x),
              DKSHM_TYPE);
    EXPECT_RC(multimapOpen(seg, "other", NULL, 0, &x), DKSHM_TYPE);
    EXPECT_RC(multimapDuplicate(mm, "other", NULL), DKSHM_EXISTS);
    EXPECT_RC(multimapClose(NULL), DKSHM_OK);
    /* A damaged header is CORRUPT, not a crash. */
    ck_assert_int_eq(dkshmObjectCreate(seg, "fake", MULTIMAP_TYPE, blk),
                     DKSHM_OK);
    EXPECT_RC(multimapOpen(seg, "fake", NULL, 0, &x), DKSHM_CORRUPT);
}
END_TEST

START_TEST(test_insert_lookup_delete) {
    ck_assert_uint_eq(count(mm), 0);
    assertAbsent(mm, "x");
    EXPECT_RC(multimapDelete(mm, "x", 1), DKSHM_NOTFOUND);
    putStr(mm, "x", "one");
    assertValue(mm, "x", "one");
    putStr(mm, "x", "two, longer"); /* upsert */
    assertValue(mm, "x", "two, longer");
    ck_assert_uint_eq(count(mm), 1);
    EXPECT_RC(multimapInsert(mm, "x", 1, "three", 5, MULTIMAP_NOOVERWRITE),
              DKSHM_EXISTS);
    assertValue(mm, "x", "two, longer");
    ck_assert_int_eq(multimapInsert(mm, "y", 1, "y!", 2, MULTIMAP_NOOVERWRITE),
                     DKSHM_OK);
    /* Buffers too small say how much is needed. */
    char buf[64];
    size_t len = 0;
    EXPECT_RC(multimapLookup(mm, "x", 1, buf, 3, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 11);
    len = 0;
    EXPECT_RC(multimapLookup(mm, "x", 1, NULL, 0, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 11);
    EXPECT_RC(multimapLookup(mm, "x", 1, buf, 11, &len), DKSHM_OK);
    /* Empty values. */
    EXPECT_RC(multimapInsert(mm, "e", 1, NULL, 0, 0), DKSHM_OK);
    len = 99;
    EXPECT_RC(multimapLookup(mm, "e", 1, NULL, 0, &len), DKSHM_OK);
    ck_assert_uint_eq(len, 0);
    ck_assert_uint_eq(count(mm), 3);
    EXPECT_RC(multimapDelete(mm, "x", 1), DKSHM_OK);
    assertAbsent(mm, "x");
    EXPECT_RC(multimapDelete(mm, "x", 1), DKSHM_NOTFOUND);
    ck_assert_uint_eq(count(mm), 2);
    EXPECT_RC(multimapDelete(mm, "e", 1), DKSHM_OK);
    EXPECT_RC(multimapDelete(mm, "y", 1), DKSHM_OK);
    ck_assert_uint_eq(count(mm), 0);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

START_TEST(test_value_sizes) {
    static const size_t sizes[] = {
        0, 1, 7, 8, 9, 63, 64, 65, 1000, 4096, 4097, 65536, 100001, 1 << 20};
    static uint8_t v[1 << 20], out[1 << 20];
    size_t n = sizeof sizes / sizeof sizes[0];
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < n; i++) {
            for (size_t j = 0; j < sizes[i]; j++)
                v[j] = (uint8_t)(i * 31 + j * 7 + round);
            char k[16];
            size_t kl = keyOf(k, "v", i);
            EXPECT_RC(multimapInsert(mm, k, kl, v, sizes[i], 0), DKSHM_OK);
        }
        for (size_t i = 0; i < n; i++) {
            char k[16];
            size_t kl = keyOf(k, "v", i), len = 0;
            EXPECT_RC(multimapLookup(mm, k, kl, out, sizeof out, &len),
                      DKSHM_OK);
            ck_assert_uint_eq(len, sizes[i]);
            for (size_t j = 0; j < len; j++)
                EXPECT(out[j] == (uint8_t)(i * 31 + j * 7 + round));
        }
    }
    ck_assert_uint_eq(count(mm), n);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

START_TEST(test_seek_first_last) {
    char k[32], v[32];
    size_t kl, vl;
    for (int how = MULTIMAP_FIRST; how <= MULTIMAP_LT; how++)
        EXPECT_RC(
            multimapSeek(mm, how, "k", 1, k, sizeof k, &kl, v, sizeof v, &vl),
            DKSHM_NOTFOUND);
    /* Even numbers 0, 2, ..., 998 (spanning several leaves). */
    for (int i = 0; i < 1000; i += 2) {
        char kk[32], vv[32];
        keyOf(kk, "k", (uint64_t)i);
        sprintf(vv, "v%d", i);
        putStr(mm, kk, vv);
    }
    EXPECT_RC(multimapFirst(mm, k, sizeof k, &kl, v, sizeof v, &vl), DKSHM_OK);
    EXPECT(kl == 9 && memcmp(k, "k00000000", 9) == 0);
    EXPECT(vl == 2 && memcmp(v, "v0", 2) == 0);
    EXPECT_RC(multimapLast(mm, k, sizeof k, &kl, v, sizeof v, &vl), DKSHM_OK);
    EXPECT(kl == 9 && memcmp(k, "k00000998", 9) == 0);
    for (int i = -1; i <= 999; i++) {
        char q[32];
        size_t ql = i < 0 ? 1 : keyOf(q, "k", (uint64_t)i);
        if (i < 0)
            q[0] = 'a'; /* before everything */
        int even = i >= 0 && i % 2 == 0;
        struct {
            int how;
            int want; /* expected number, -1: none */
        } cases[] = {
            {MULTIMAP_GE, i < 0 ? 0 : (i + 1) / 2 * 2},
            {MULTIMAP_GT, i < 0 ? 0 : (i / 2 + 1) * 2},
            {MULTIMAP_LE, i < 0 ? -1 : i / 2 * 2},
            {MULTIMAP_LT, i < 0  ? -1
                          : even ? i - 2
                                 : i / 2 * 2},
        };
        for (int c = 0; c < 4; c++) {
            int want = cases[c].want;
            if (want > 998 || want < 0)
                want = -1;
            int rc = multimapSeek(mm, cases[c].how, q, ql, k, sizeof k, &kl, v,
                                  sizeof v, &vl);
            if (want < 0) {
                if (rc != DKSHM_NOTFOUND)
                    ck_abort_msg("i %d how %d: %s", i, cases[c].how,
                                 dkshmErrName(rc));
                continue;
            }
            if (rc != DKSHM_OK)
                ck_abort_msg("i %d how %d: %s", i, cases[c].how,
                             dkshmErrName(rc));
            char wk[32];
            size_t wl = keyOf(wk, "k", (uint64_t)want);
            if (kl != wl || memcmp(k, wk, wl) != 0)
                ck_abort_msg("i %d how %d: got %.*s, want %s", i, cases[c].how,
                             (int)kl, k, wk);
        }
    }
    /* A key buffer too small: TOOBIG with both lengths. */
    kl = vl = 0;
    EXPECT_RC(multimapFirst(mm, k, 3, &kl, v, sizeof v, &vl), DKSHM_TOOBIG);
    ck_assert_uint_eq(kl, 9);
    ck_assert_uint_eq(vl, 2);
    /* Only the key, or only the value. */
    EXPECT_RC(multimapFirst(mm, k, sizeof k, &kl, NULL, 0, NULL), DKSHM_OK);
    EXPECT_RC(multimapLast(mm, NULL, 0, NULL, v, sizeof v, &vl), DKSHM_OK);
    EXPECT(vl == 4 && memcmp(v, "v998", 4) == 0);
    TEST_ASSERT_CHECK(multimapCheck, mm);
}
END_TEST

static bool deleteCurrent(void *ctx, const void *k, size_t kl, const void *v,
                          size_t vl) {
    (void)v;
    (void)vl;
    multimap *x = ctx;
    EXPECT_RC(multimapDelete(x, k, kl), DKSHM_OK);
    return true;
}

START_TEST(test_iterate) {
    enum { N = 3000 };
    for (int i = 0; i < N; i++) {
        char k[32], v[32];
        keyOf(k, "i", (uint64_t)i * 3);
        sprintf(v, "%d", i * 3);
        putStr(mm, k, v);
    }
    kvList all = iterAll(mm, NULL, 0, 0);
    ck_assert_uint_eq(all.n, N);
    for (size_t i = 0; i < all.n; i++) {
        char k[32];
        size_t kl = keyOf(k, "i", i * 3);
        EXPECT(all.e[i].kl == kl && memcmp(all.e[i].k, k, kl) == 0);
    }
    kvList rev = iterAll(mm, NULL, 0, MULTIMAP_ITER_REVERSE);
    ck_assert_uint_eq(rev.n, N);
    for (size_t i = 0; i < rev.n; i++)
        EXPECT(rev.e[i].kl == all.e[N - 1 - i].kl &&
               memcmp(rev.e[i].k, all.e[N - 1 - i].k, rev.e[i].kl) == 0);
    /* From arbitrary keys, present and absent, both ways. */
    uint64_t seed = 7;
    for (int t = 0; t < 200; t++) {
        uint64_t at = testRng(&seed) % (N * 3 + 6);
        char k[32];
        size_t kl = keyOf(k, "i", at);
        for (uint32_t fl = 0; fl < 4; fl++) {
            kvList part = {.stopAfter = 1 + testRng(&seed) % 50};
            EXPECT_RC(multimapIterate(mm, k, kl, fl, collectFn, &part),
                      DKSHM_OK);
            bool rv = fl & MULTIMAP_ITER_REVERSE,
                 ex = fl & MULTIMAP_ITER_EXCLUSIVE;
            /* Where the walk must start in ALL. */
            long first = -1;
            if (!rv) {
                for (size_t i = 0; i < all.n; i++) {
                    int c = keyCmp(all.e[i].k, all.e[i].kl, k, kl);
                    if (ex ? c > 0 : c >= 0) {
                        first = (long)i;
                        break;
                    }
                }
            } else {
                for (size_t i = all.n; i-- > 0;) {
                    int c = keyCmp(all.e[i].k, all.e[i].kl, k, kl);
                    if (ex ? c < 0 : c <= 0) {
                        first = (long)i;
                        break;
                    }
                }
            }
            size_t avail = first < 0 ? 0
                           : rv      ? (size_t)first + 1
                                     : all.n - (size_t)first;
            size_t want = avail < part.stopAfter ? avail : part.stopAfter;
            EXPECT(part.n == want);
            for (size_t i = 0; i < part.n; i++) {
                size_t j = rv ? (size_t)first - i : (size_t)first + i;
                EXPECT(part.e[i].kl == all.e[j].kl &&
                       memcmp(part.e[i].k, all.e[j].k, part.e[i].kl) == 0);
            }
            kvFree(&part);
        }
    }
    kvFree(&rev);
    /* The callback may write to the map: delete each key as it passes. */
    EXPECT_RC(multimapIterate(mm, NULL, 0, 0, deleteCurrent, mm), DKSHM_OK);
    ck_assert_uint_eq(count(mm), 0);
    kvFree(&all);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

START_TEST(test_int64_keys) {
    multimap *x = openMap("ints", MULTIMAP_KEYS_INT64);
    uint64_t seed = 5;
    enum { N = 5000 };
    static int64_t keys[N];
    for (int i = 0; i < N; i++) {
        int64_t k;
        switch (i) {
        case 0:
            k = INT64_MIN;
            break;
        case 1:
            k = INT64_MAX;
            break;
        case 2:
            k = 0;
            break;
        case 3:
            k = -1;
            break;
        case 4:
            k = 1;
            break;
        default:
            k = (int64_t)testRng(&seed) >> (testRng(&seed) % 60);
        }
        keys[i] = k;
        EXPECT_RC(multimapInsertInt(x, k, &k, sizeof k, 0), DKSHM_OK);
    }
    /* Sort the reference (duplicates are unlikely but possible). */
    for (int i = 1; i < N; i++)
        for (int j = i; j > 0 && keys[j - 1] > keys[j]; j--) {
            int64_t t = keys[j];
            keys[j] = keys[j - 1];
            keys[j - 1] = t;
        }
    int u = 0;
    for (int i = 0; i < N; i++)
        if (i == 0 || keys[i] != keys[u - 1])
            keys[u++] = keys[i];
    ck_assert_uint_eq(count(x), (uint64_t)u);
    kvList all = iterAll(x, NULL, 0, 0);
    ck_assert_uint_eq(all.n, (size_t)u);
    for (int i = 0; i < u; i++) {
        int64_t k, v;
        EXPECT(all.e[i].kl == 8);
        memcpy(&k, all.e[i].k, 8);
        memcpy(&v, all.e[i].v, 8);
        EXPECT(k == keys[i]);
        EXPECT(v == keys[i]);
    }
    kvFree(&all);
    int64_t k, v;
    size_t kl, vl;
    EXPECT_RC(multimapFirst(x, &k, 8, &kl, &v, 8, &vl), DKSHM_OK);
    ck_assert_int_eq(k, INT64_MIN);
    EXPECT_RC(multimapLast(x, &k, 8, &kl, &v, 8, &vl), DKSHM_OK);
    ck_assert_int_eq(k, INT64_MAX);
    int64_t q = -1;
    EXPECT_RC(multimapSeek(x, MULTIMAP_LT, &q, 8, &k, 8, &kl, NULL, 0, NULL),
              DKSHM_OK);
    ck_assert_int_lt(k, -1);
    EXPECT_RC(multimapSeek(x, MULTIMAP_GT, &q, 8, &k, 8, &kl, NULL, 0, NULL),
              DKSHM_OK);
    ck_assert_int_eq(k, 0);
    /* Reverse from 0 runs through the negatives. */
    int64_t zero = 0;
    kvList neg =
        iterAll(x, &zero, 8, MULTIMAP_ITER_REVERSE | MULTIMAP_ITER_EXCLUSIVE);
    int64_t prev = 0;
    for (size_t i = 0; i < neg.n; i++) {
        memcpy(&k, neg.e[i].k, 8);
        EXPECT(k < prev);
        prev = k;
    }
    ck_assert_int_eq(prev, INT64_MIN);
    kvFree(&neg);
    /* Keys must be 8 bytes. */
    EXPECT_RC(multimapInsert(x, "abc", 3, "v", 1, 0), DKSHM_INVALID);
    EXPECT_RC(multimapLookup(x, "abcdefghi", 9, &v, 8, &vl), DKSHM_INVALID);
    for (int i = 0; i < u; i += 2)
        EXPECT_RC(multimapDeleteInt(x, keys[i]), DKSHM_OK);
    for (int i = 0; i < u; i++) {
        int rc = multimapLookupInt(x, keys[i], &v, 8, &vl);
        EXPECT_RC(rc, i % 2 ? DKSHM_OK : DKSHM_NOTFOUND);
    }
    TEST_ASSERT_CHECK(multimapCheck, x);
    multimap *all2[2] = {mm, x};
    assertOwnership(all2, 2);
    multimapClose(x);
}
END_TEST

/* Keys with zero bytes, prefixes of each other, and long shared prefixes
 * (separators that need their own block). */
START_TEST(test_binary_long_keys) {
    static uint8_t k[MULTIMAP_KEY_MAX + 1];
    enum { N = 4000 };
    static struct {
        uint8_t b[80];
        size_t len;
    } ref[N];
    int n = 0;
    uint64_t seed = 3;
    for (int i = 0; i < N; i++) {
        size_t len;
        uint8_t b[80];
        switch (i % 4) {
        case 0: /* short, with zeros */
            len = 1 + testRng(&seed) % 5;
            for (size_t j = 0; j < len; j++)
                b[j] = (uint8_t)(testRng(&seed) % 3);
            break;
        case 1: /* "a" then zeros: prefixes of each other */
            len = 1 + (size_t)(i / 4) % 20;
            memset(b, 0, len);
            b[0] = 'a';
            break;
        default: /* a 40-byte common prefix, then a number */
            memset(b, 'p', 40);
            len = 40 + (size_t)sprintf((char *)b + 40, "%06d", i);
            break;
        }
        int rc = multimapInsert(mm, b, len, b, len, MULTIMAP_NOOVERWRITE);
        EXPECT(rc == DKSHM_OK || rc == DKSHM_EXISTS);
        if (rc == DKSHM_OK) {
            memcpy(ref[n].b, b, len);
            ref[n].len = len;
            n++;
        }
    }
    ck_assert_uint_eq(count(mm), (uint64_t)n);
    ck_assert_uint_gt(stats(mm).keyBlocks, 0);
    /* Sort the reference. */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && keyCmp(ref[j - 1].b, ref[j - 1].len, ref[j].b,
                                        ref[j].len) > 0;
             j--) {
            uint8_t t[80];
            size_t tl = ref[j].len;
            memcpy(t, ref[j].b, tl);
            memcpy(ref[j].b, ref[j - 1].b, ref[j - 1].len);
            ref[j].len = ref[j - 1].len;
            memcpy(ref[j - 1].b, t, tl);
            ref[j - 1].len = tl;
        }
    kvList all = iterAll(mm, NULL, 0, 0);
    ck_assert_uint_eq(all.n, (size_t)n);
    for (int i = 0; i < n; i++) {
        EXPECT(all.e[i].kl == ref[i].len);
        EXPECT(memcmp(all.e[i].k, ref[i].b, ref[i].len) == 0);
        EXPECT(memcmp(all.e[i].v, ref[i].b, ref[i].len) == 0);
    }
    kvFree(&all);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    /* The longest key, and one past it. */
    memset(k, 'z', sizeof k);
    EXPECT_RC(multimapInsert(mm, k, MULTIMAP_KEY_MAX, "max", 3, 0), DKSHM_OK);
    char buf[8];
    size_t vl;
    EXPECT_RC(multimapLookup(mm, k, MULTIMAP_KEY_MAX, buf, sizeof buf, &vl),
              DKSHM_OK);
    EXPECT(vl == 3 && memcmp(buf, "max", 3) == 0);
    EXPECT_RC(multimapInsert(mm, k, MULTIMAP_KEY_MAX + 1, "x", 1, 0),
              DKSHM_TOOBIG);
    EXPECT_RC(multimapLookup(mm, k, MULTIMAP_KEY_MAX + 1, buf, sizeof buf, &vl),
              DKSHM_TOOBIG);
    EXPECT_RC(multimapDelete(mm, k, MULTIMAP_KEY_MAX + 1), DKSHM_TOOBIG);
    /* Long keys that differ only at the end, enough to split leaves with
     * separators of several KiB. */
    for (int i = 0; i < 300; i++) {
        memset(k, 'L', 3000);
        size_t len = 3000 + (size_t)sprintf((char *)k + 3000, "%05d", i);
        EXPECT_RC(multimapInsert(mm, k, len, &i, sizeof i, 0), DKSHM_OK);
    }
    TEST_ASSERT_CHECK(multimapCheck, mm);
    for (int i = 0; i < 300; i += 3) {
        memset(k, 'L', 3000);
        size_t len = 3000 + (size_t)sprintf((char *)k + 3000, "%05d", i);
        EXPECT_RC(multimapDelete(mm, k, len), DKSHM_OK);
    }
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

/* 100k random inserts, overwrites and deletes against a reference. */
START_TEST(test_reference_random) {
    enum { KEYS = 20000, OPS = 100000 };
    static int32_t ver[KEYS]; /* -1 absent, else the version stored */
    for (int i = 0; i < KEYS; i++)
        ver[i] = -1;
    uint64_t seed = 2024;
    char k[48], v[80], out[128];
    /* Key I: a hash-ordered name of variable length. */
#define KEYI(buf, i)                                                           \
    (size_t)                                                                   \
        sprintf((buf), "%llx/%d",                                              \
                (unsigned long long)((uint64_t)(i)*0x9e3779b97f4a7c15ull >>    \
                                     ((i) % 40)),                              \
                (i))
    long present = 0;
    for (int op = 0; op < OPS; op++) {
        int i = (int)(testRng(&seed) % KEYS);
        size_t kl = KEYI(k, i);
        uint64_t r = testRng(&seed) % 10;
        if (r < 6) {
            int vl = snprintf(v, sizeof v, "%d:%d:%.*s", i, op, (int)(op % 40),
                              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            EXPECT_RC(multimapInsert(mm, k, kl, v, (size_t)vl, 0), DKSHM_OK);
            if (ver[i] < 0)
                present++;
            ver[i] = op;
        } else if (r < 9) {
            int rc = multimapDelete(mm, k, kl);
            EXPECT_RC(rc, ver[i] < 0 ? DKSHM_NOTFOUND : DKSHM_OK);
            if (ver[i] >= 0)
                present--;
            ver[i] = -1;
        } else {
            size_t vl;
            int rc = multimapLookup(mm, k, kl, out, sizeof out, &vl);
            if (ver[i] < 0) {
                EXPECT_RC(rc, DKSHM_NOTFOUND);
            } else {
                EXPECT_RC(rc, DKSHM_OK);
                int want = snprintf(v, sizeof v, "%d:%d:%.*s", i, ver[i],
                                    (int)(ver[i] % 40),
                                    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
                EXPECT(vl == (size_t)want && memcmp(out, v, vl) == 0);
            }
        }
        if (op % 25000 == 24999) {
            TEST_ASSERT_CHECK(multimapCheck, mm);
            ck_assert_uint_eq(count(mm), (uint64_t)present);
        }
    }
    /* Iteration equals the sorted reference. */
    kvList all = iterAll(mm, NULL, 0, 0);
    ck_assert_uint_eq(all.n, (size_t)present);
    long seen = 0;
    for (size_t j = 0; j < all.n; j++) {
        if (j)
            EXPECT(keyCmp(all.e[j - 1].k, all.e[j - 1].kl, all.e[j].k,
                          all.e[j].kl) < 0);
        char name[48];
        memcpy(name, all.e[j].k, all.e[j].kl);
        name[all.e[j].kl] = '\0';
        int i = atoi(strchr(name, '/') + 1);
        EXPECT(ver[i] >= 0);
        size_t kl = KEYI(k, i);
        EXPECT(kl == all.e[j].kl && memcmp(k, all.e[j].k, kl) == 0);
        seen++;
    }
    ck_assert_int_eq(seen, present);
    kvList rev = iterAll(mm, NULL, 0, MULTIMAP_ITER_REVERSE);
    ck_assert_uint_eq(rev.n, all.n);
    for (size_t j = 0; j < rev.n; j++)
        EXPECT(memcmp(rev.e[j].k, all.e[all.n - 1 - j].k, rev.e[j].kl) == 0);
    kvFree(&rev);
    kvFree(&all);
    multimapStats st = stats(mm);
    ck_assert_uint_ge(st.height, 1);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
#undef KEYI
}
END_TEST

START_TEST(test_sequential_fill) {
    enum { N = 20000 };
    char k[32];
    for (int i = 0; i < N; i++) {
        size_t kl = keyOf(k, "up", (uint64_t)i);
        EXPECT_RC(multimapInsert(mm, k, kl, &i, sizeof i, 0), DKSHM_OK);
    }
    multimapStats st = stats(mm);
    /* Ascending loads pack the leaves full. */
    ck_assert_uint_le(st.leaves, (N + SLOTS - 1) / SLOTS + 1);
    for (int i = N; i-- > 0;) {
        size_t kl = keyOf(k, "down", (uint64_t)i);
        EXPECT_RC(multimapInsert(mm, k, kl, &i, sizeof i, 0), DKSHM_OK);
    }
    TEST_ASSERT_CHECK(multimapCheck, mm);
    ck_assert_uint_eq(count(mm), 2 * N);
    /* Delete everything in a random order: the tree shrinks back. */
    static int order[2 * N];
    for (int i = 0; i < 2 * N; i++)
        order[i] = i;
    uint64_t seed = 11;
    for (int i = 2 * N - 1; i > 0; i--) {
        int j = (int)(testRng(&seed) % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < 2 * N; i++) {
        int x = order[i];
        size_t kl = keyOf(k, x < N ? "up" : "down", (uint64_t)(x % N));
        EXPECT_RC(multimapDelete(mm, k, kl), DKSHM_OK);
        if (i % 10000 == 0)
            TEST_ASSERT_CHECK(multimapCheck, mm);
    }
    st = stats(mm);
    ck_assert_uint_eq(st.count, 0);
    ck_assert_uint_le(st.leaves, 1);
    ck_assert_uint_eq(st.inner, 0);
    ck_assert_uint_eq(st.height, 0);
    ck_assert_uint_eq(st.entryBytes, 0);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

START_TEST(test_duplicate) {
    char k[32], v[32];
    for (int i = 0; i < 5000; i++) {
        keyOf(k, "d", (uint64_t)i);
        sprintf(v, "orig%d", i);
        putStr(mm, k, v);
    }
    multimap *c = NULL;
    EXPECT_RC(multimapDuplicate(mm, "copy", &c), DKSHM_OK);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(count(c), 5000);
    TEST_ASSERT_CHECK(multimapCheck, c);
    /* Same contents. */
    kvList a = iterAll(mm, NULL, 0, 0), b = iterAll(c, NULL, 0, 0);
    ck_assert_uint_eq(a.n, b.n);
    for (size_t i = 0; i < a.n; i++)
        EXPECT(a.e[i].kl == b.e[i].kl && a.e[i].vl == b.e[i].vl &&
               memcmp(a.e[i].k, b.e[i].k, a.e[i].kl) == 0 &&
               memcmp(a.e[i].v, b.e[i].v, a.e[i].vl) == 0);
    kvFree(&a);
    kvFree(&b);
    /* Independent both ways. */
    putStr(mm, "d00000001", "changed");
    EXPECT_RC(multimapDelete(mm, "d00000002", 9), DKSHM_OK);
    putStr(mm, "only-orig", "1");
    putStr(c, "only-copy", "1");
    EXPECT_RC(multimapDelete(c, "d00000003", 9), DKSHM_OK);
    assertValue(c, "d00000001", "orig1");
    assertValue(c, "d00000002", "orig2");
    assertAbsent(c, "only-orig");
    assertValue(mm, "d00000003", "orig3");
    assertAbsent(mm, "only-copy");
    /* By name, from another handle. */
    multimap *c2 = NULL;
    EXPECT_RC(multimapOpen(seg, "copy", NULL, 0, &c2), DKSHM_OK);
    assertValue(c2, "only-copy", "1");
    multimapClose(c2);
    EXPECT_RC(multimapDuplicate(mm, "copy", NULL), DKSHM_EXISTS);
    EXPECT_RC(multimapDuplicate(mm, "bad name", NULL), DKSHM_INVALID);
    /* An int64 map keeps its mode; an empty map copies. */
    multimap *x = openMap("ints", MULTIMAP_KEYS_INT64);
    multimap *xe = NULL, *xc = NULL;
    EXPECT_RC(multimapDuplicate(x, "ints-empty", &xe), DKSHM_OK);
    ck_assert_uint_eq(count(xe), 0);
    for (int64_t i = -50; i < 50; i++)
        EXPECT_RC(multimapInsertInt(x, i * 1000, &i, 8, 0), DKSHM_OK);
    EXPECT_RC(multimapDuplicate(x, "ints-copy", &xc), DKSHM_OK);
    uint32_t mode;
    EXPECT_RC(multimapKeyMode(xc, &mode), DKSHM_OK);
    ck_assert_uint_eq(mode, MULTIMAP_KEYS_INT64);
    int64_t first;
    size_t fl;
    EXPECT_RC(multimapFirst(xc, &first, 8, &fl, NULL, 0, NULL), DKSHM_OK);
    ck_assert_int_eq(first, -50000);
    multimap *allm[5] = {mm, c, x, xe, xc};
    for (int i = 0; i < 5; i++)
        TEST_ASSERT_CHECK(multimapCheck, allm[i]);
    assertOwnership(allm, 5);
    multimapClose(c);
    multimapClose(x);
    multimapClose(xe);
    multimapClose(xc);
}
END_TEST

START_TEST(test_stats) {
    multimapStats st = stats(mm);
    ck_assert_uint_eq(st.count, 0);
    ck_assert_uint_eq(st.leaves, 0);
    char k[32];
    for (int i = 0; i < 1000; i++) {
        size_t kl = keyOf(k, "s", (uint64_t)i);
        EXPECT_RC(multimapInsert(mm, k, kl, "0123456789", 10, 0), DKSHM_OK);
    }
    st = stats(mm);
    ck_assert_uint_eq(st.count, 1000);
    ck_assert_uint_eq(st.height, 1);
    ck_assert_uint_ge(st.leaves, 1000 / SLOTS);
    ck_assert_uint_eq(st.inner, 1);
    ck_assert_uint_eq(st.nodeBytes, (st.leaves + st.inner) * 4096);
    ck_assert_uint_eq(st.entryBytes, 1000 * (16 + 16 + 16));
    ck_assert_uint_eq(st.keyMode, MULTIMAP_KEYS_BYTES);
    EXPECT_RC(multimapGetStats(mm, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapGetStats(NULL, &st), DKSHM_INVALID);
}
END_TEST

/* ---- bad input ------------------------------------------------------------
 */

static bool noopFn(void *ctx, const void *k, size_t kl, const void *v,
                   size_t vl) {
    (void)ctx, (void)k, (void)kl, (void)v, (void)vl;
    return true;
}

/* A leaf slot whose entry offset is damaged: an overwrite and a delete of
 * its key are CORRUPT with nothing changed. The overwrite used to follow
 * the old entry's offset unchecked (fuzzSegment --seed 0x946c049164f73acb
 * --start 248 --target mapnode, a wild pointer in mmInsertLocked). */
typedef struct mmBlocks {
    dkoff node, entry;
    int nodes, entries;
} mmBlocks;

static int mmFindBlocks(void *ctx, dkoff off, uint64_t bytes, int kind) {
    mmBlocks *b = ctx;
    (void)bytes;
    if (kind == MULTIMAP_BLOCK_NODE) {
        b->node = off;
        b->nodes++;
    } else if (kind == MULTIMAP_BLOCK_ENTRY) {
        b->entry = off;
        b->entries++;
    }
    return 0;
}

START_TEST(test_damaged_entry_ref) {
    putStr(mm, "k", "v");
    mmBlocks b = {0};
    ck_assert_int_eq(multimapForEachBlock(mm, mmFindBlocks, &b), DKSHM_OK);
    ck_assert_int_eq(b.nodes, 1);
    ck_assert_int_eq(b.entries, 1);
    uint64_t *node = dkshmPtr(seg, b.node), *ref = NULL;
    for (int i = 0; i < 4096 / 8; i++)
        if (node[i] == b.entry)
            ref = &node[i];
    ck_assert_ptr_nonnull(ref);
    const uint64_t bad[] = {0xca674370de9a27a0ull, dkshmCapacity(seg) - 8,
                            b.entry + 8, b.node};
    static uint8_t image[4096];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        *ref = bad[i];
        memcpy(image, node, sizeof image);
        EXPECT_RC(multimapInsert(mm, "k", 1, "w", 1, 0), DKSHM_CORRUPT);
        ck_assert(memcmp(image, node, sizeof image) == 0);
        EXPECT_RC(multimapDelete(mm, "k", 1), DKSHM_CORRUPT);
        ck_assert(memcmp(image, node, sizeof image) == 0);
    }
    *ref = b.entry;
    assertValue(mm, "k", "v");
    putStr(mm, "k", "w");
    assertValue(mm, "k", "w");
    ck_assert_uint_eq(count(mm), 1);
}
END_TEST

START_TEST(test_bad_input) {
    char buf[8];
    size_t len;
    uint64_t n;
    multimap *x;
    EXPECT_RC(multimapOpen(NULL, "m", NULL, 0, &x), DKSHM_INVALID);
    EXPECT_RC(multimapOpen(seg, NULL, NULL, 0, &x), DKSHM_INVALID);
    EXPECT_RC(multimapOpen(seg, "m", NULL, 0, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapOpen(seg, "", NULL, MULTIMAP_CREATE, &x), DKSHM_INVALID);
    EXPECT_RC(multimapOpen(seg, "has space", NULL, MULTIMAP_CREATE, &x),
              DKSHM_INVALID);
    char longName[DKSHM_OBJNAME_MAX + 2];
    memset(longName, 'n', sizeof longName - 1);
    longName[sizeof longName - 1] = '\0';
    EXPECT_RC(multimapOpen(seg, longName, NULL, MULTIMAP_CREATE, &x),
              DKSHM_INVALID);
    EXPECT_RC(multimapOpen(seg, "m", NULL, 0x80, &x), DKSHM_INVALID);
    multimapOptions bad = {.keyMode = 7};
    EXPECT_RC(multimapOpen(seg, "m", &bad, MULTIMAP_CREATE, &x), DKSHM_INVALID);
    bad = (multimapOptions){.flags = 0x80};
    EXPECT_RC(multimapOpen(seg, "m", &bad, MULTIMAP_CREATE, &x), DKSHM_INVALID);

    EXPECT_RC(multimapInsert(NULL, "k", 1, "v", 1, 0), DKSHM_INVALID);
    EXPECT_RC(multimapInsert(mm, NULL, 1, "v", 1, 0), DKSHM_INVALID);
    EXPECT_RC(multimapInsert(mm, "k", 0, "v", 1, 0), DKSHM_INVALID);
    EXPECT_RC(multimapInsert(mm, "k", 1, NULL, 1, 0), DKSHM_INVALID);
    EXPECT_RC(multimapInsert(mm, "k", 1, "v", 1, 0x10), DKSHM_INVALID);
    EXPECT_RC(multimapInsert(mm, "k", MULTIMAP_KEY_MAX + 1, "v", 1, 0),
              DKSHM_TOOBIG);
    EXPECT_RC(multimapInsert(mm, "k", 1, "v", (size_t)1 << 62, 0),
              DKSHM_TOOBIG);
    EXPECT_RC(multimapLookup(NULL, "k", 1, buf, 8, &len), DKSHM_INVALID);
    EXPECT_RC(multimapLookup(mm, NULL, 1, buf, 8, &len), DKSHM_INVALID);
    EXPECT_RC(multimapLookup(mm, "k", 0, buf, 8, &len), DKSHM_INVALID);
    EXPECT_RC(multimapLookup(mm, "k", 1, NULL, 8, &len), DKSHM_INVALID);
    EXPECT_RC(multimapLookup(mm, "k", 1, buf, 8, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapDelete(NULL, "k", 1), DKSHM_INVALID);
    EXPECT_RC(multimapDelete(mm, NULL, 1), DKSHM_INVALID);
    EXPECT_RC(multimapDelete(mm, "k", 0), DKSHM_INVALID);
    EXPECT_RC(multimapCount(NULL, &n), DKSHM_INVALID);
    EXPECT_RC(multimapCount(mm, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapSeek(mm, (multimapSeekMode)42, "k", 1, NULL, 0, NULL,
                           NULL, 0, NULL),
              DKSHM_INVALID);
    EXPECT_RC(
        multimapSeek(mm, MULTIMAP_GE, NULL, 1, NULL, 0, NULL, NULL, 0, NULL),
        DKSHM_INVALID);
    EXPECT_RC(
        multimapSeek(mm, MULTIMAP_GE, "k", 1, NULL, 4, &len, NULL, 0, NULL),
        DKSHM_INVALID);
    EXPECT_RC(multimapFirst(NULL, NULL, 0, NULL, NULL, 0, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapIterate(mm, NULL, 0, 0, NULL, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapIterate(mm, NULL, 0, 0x40, noopFn, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapIterate(mm, "k", 0, 0, noopFn, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapIterate(NULL, NULL, 0, 0, noopFn, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapCheck(NULL, buf, sizeof buf), DKSHM_INVALID);
    EXPECT_RC(multimapDuplicate(NULL, "x", NULL), DKSHM_INVALID);
    EXPECT_RC(multimapDuplicate(mm, NULL, NULL), DKSHM_INVALID);
    EXPECT_RC(multimapKeyMode(mm, NULL), DKSHM_INVALID);
    /* Nothing of that changed anything. */
    ck_assert_uint_eq(count(mm), 0);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

START_TEST(test_read_only) {
    char k[32], v[32];
    for (int i = 0; i < 2000; i++) {
        keyOf(k, "r", (uint64_t)i);
        sprintf(v, "val%d", i);
        putStr(mm, k, v);
    }
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multimap *x = NULL;
    EXPECT_RC(multimapOpen(ro, "map", NULL, 0, &x), DKSHM_OK);
    multimap *y = NULL;
    EXPECT_RC(multimapOpen(ro, "map", NULL, MULTIMAP_CREATE, &y),
              DKSHM_OK); /* it exists: nothing to create */
    multimapClose(y);
    EXPECT_RC(multimapOpen(ro, "absent", NULL, MULTIMAP_CREATE, &y),
              DKSHM_READONLY);
    EXPECT_RC(multimapOpen(ro, "absent", NULL, 0, &y), DKSHM_NOTFOUND);
    assertValue(x, "r00000042", "val42");
    assertAbsent(x, "r99999999");
    ck_assert_uint_eq(count(x), 2000);
    kvList all = iterAll(x, NULL, 0, MULTIMAP_ITER_REVERSE);
    ck_assert_uint_eq(all.n, 2000);
    kvFree(&all);
    size_t kl, vl;
    EXPECT_RC(multimapSeek(x, MULTIMAP_GE, "r00000100x", 10, k, sizeof k, &kl,
                           v, sizeof v, &vl),
              DKSHM_OK);
    EXPECT(kl == 9 && memcmp(k, "r00000101", 9) == 0);
    TEST_ASSERT_CHECK(multimapCheck, x);
    multimapStats st;
    EXPECT_RC(multimapGetStats(x, &st), DKSHM_OK);
    ck_assert_uint_eq(st.count, 2000);
    /* Writes are refused and change nothing. */
    EXPECT_RC(multimapInsert(x, "new", 3, "v", 1, 0), DKSHM_READONLY);
    EXPECT_RC(multimapDelete(x, "r00000001", 9), DKSHM_READONLY);
    EXPECT_RC(multimapDuplicate(x, "copy", NULL), DKSHM_READONLY);
    assertValue(mm, "r00000001", "val1");
    assertAbsent(mm, "new");
    /* The read-only handle sees later writes. */
    putStr(mm, "later", "yes");
    assertValue(x, "later", "yes");
    multimapClose(x);
    dkshmDetach(ro);
}
END_TEST

START_TEST(test_full_segment) {
    teardown();
    makeSegment("full", 2 * MiB);
    mm = openMap("map", MULTIMAP_KEYS_BYTES);
    char k[32];
    static uint8_t val[700];
    memset(val, 'v', sizeof val);
    int i = 0, rc;
    memboundStats before, after;
    for (;; i++) {
        size_t kl = keyOf(k, "f", (uint64_t)i * 7 % 100003);
        ck_assert_int_eq(memboundGetStats(mb, &before), DKSHM_OK);
        uint64_t n0 = count(mm);
        rc = multimapInsert(mm, k, kl, val, sizeof val, 0);
        if (rc != DKSHM_OK)
            break;
        ck_assert_uint_eq(count(mm), n0 + 1);
        ck_assert_int_lt(i, 100000);
    }
    EXPECT_RC(rc, DKSHM_FULL);
    ck_assert_int_gt(i, 100);
    /* Nothing changed: no key, no bytes, a sound map. */
    ck_assert_int_eq(memboundGetStats(mb, &after), DKSHM_OK);
    ck_assert_uint_eq(after.used, before.used);
    ck_assert_uint_eq(after.allocations, before.allocations);
    ck_assert_uint_eq(count(mm), (uint64_t)i);
    size_t kl = keyOf(k, "f", (uint64_t)i * 7 % 100003), vl;
    EXPECT_RC(multimapLookup(mm, k, kl, NULL, 0, &vl), DKSHM_NOTFOUND);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
    /* Keep trying with smaller values until the very last byte: every
     * failure leaves the allocator exactly as it was. */
    for (size_t sz = 256; sz >= 1; sz /= 2) {
        for (int j = 0; j < 200; j++) {
            kl = keyOf(k, "g", (uint64_t)(i + j) * 13 % 100003);
            ck_assert_int_eq(memboundGetStats(mb, &before), DKSHM_OK);
            rc = multimapInsert(mm, k, kl, val, sz, 0);
            EXPECT(rc == DKSHM_OK || rc == DKSHM_FULL);
            if (rc == DKSHM_FULL) {
                ck_assert_int_eq(memboundGetStats(mb, &after), DKSHM_OK);
                ck_assert_uint_eq(after.used, before.used);
                ck_assert_uint_eq(after.allocations, before.allocations);
                break;
            }
        }
    }
    TEST_ASSERT_CHECK(multimapCheck, mm);
    /* An overwrite that does not fit keeps the old value. */
    kl = keyOf(k, "f", 0);
    static uint8_t bigv[64 * 1024];
    rc = multimapInsert(mm, k, kl, bigv, sizeof bigv, 0);
    EXPECT_RC(rc, DKSHM_FULL);
    EXPECT_RC(multimapLookup(mm, k, kl, NULL, 0, &vl), DKSHM_TOOBIG);
    ck_assert_uint_eq(vl, sizeof val);
    EXPECT_RC(multimapDuplicate(mm, "copy", NULL), DKSHM_FULL);
    multimap *tmp = NULL;
    EXPECT_RC(multimapOpen(seg, "copy", NULL, 0, &tmp), DKSHM_NOTFOUND);
    /* Deletes still work, and make room again. */
    uint64_t n = count(mm);
    for (int j = 0; j < 50; j++) {
        kl = keyOf(k, "f", (uint64_t)j * 7 % 100003);
        EXPECT_RC(multimapDelete(mm, k, kl), DKSHM_OK);
    }
    ck_assert_uint_eq(count(mm), n - 50);
    kl = keyOf(k, "f", 0);
    EXPECT_RC(multimapInsert(mm, k, kl, val, sizeof val, 0), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    assertOwnership(&mm, 1);
}
END_TEST

/* ---- processes ------------------------------------------------------------
 */

/* A value that says what it is: key, version, length and a checksum. */
static size_t mkValue(uint8_t *v, uint32_t key, uint32_t version) {
    size_t len = 16 + (key * 7 + version) % 80;
    memcpy(v, &key, 4);
    memcpy(v + 4, &version, 4);
    uint64_t sum = 0;
    for (size_t j = 16; j < len; j++) {
        v[j] = (uint8_t)(key * 13 + version * 3 + j);
        sum = sum * 31 + v[j];
    }
    memcpy(v + 8, &sum, 8);
    return len;
}

static bool valueOk(const uint8_t *v, size_t len, uint32_t key,
                    uint32_t *version) {
    uint8_t want[128];
    if (len < 16)
        return false;
    uint32_t k, ver;
    memcpy(&k, v, 4);
    memcpy(&ver, v + 4, 4);
    if (k != key || mkValue(want, key, ver) != len || memcmp(want, v, len) != 0)
        return false;
    if (version)
        *version = ver;
    return true;
}

enum { PW_KEYS = 3000, PW_ROUNDS = 4 };

static int procWriter(int w) {
    multimap *x = NULL;
    if (multimapOpen(seg, "map", NULL, 0, &x) != DKSHM_OK)
        return 1;
    char k[32];
    uint8_t v[128];
    for (uint32_t r = 0; r < PW_ROUNDS; r++)
        for (uint32_t i = 0; i < PW_KEYS; i++) {
            uint32_t key = (uint32_t)w * PW_KEYS + i;
            size_t kl = keyOf(k, "p", key);
            if (r == PW_ROUNDS - 1 && i % 3 == 0) {
                if (multimapDelete(x, k, kl) != DKSHM_OK)
                    return 2;
                continue;
            }
            size_t vl = mkValue(v, key, r);
            if (multimapInsert(x, k, kl, v, vl, 0) != DKSHM_OK)
                return 3;
        }
    multimapClose(x);
    return 0;
}

static int procReader(int nWriters, volatile uint32_t *stop) {
    multimap *x = NULL;
    if (multimapOpen(seg, "map", NULL, 0, &x) != DKSHM_OK)
        return 1;
    uint64_t seed = (uint64_t)getpid();
    char k[32];
    uint8_t v[128];
    long found = 0;
    while (!__atomic_load_n(stop, __ATOMIC_RELAXED)) {
        uint32_t key =
            (uint32_t)(testRng(&seed) % (uint64_t)(nWriters * PW_KEYS));
        size_t kl = keyOf(k, "p", key), vl;
        int rc = multimapLookup(x, k, kl, v, sizeof v, &vl);
        if (rc == DKSHM_OK) {
            if (!valueOk(v, vl, key, NULL))
                return 4; /* torn or misplaced */
            found++;
        } else if (rc != DKSHM_NOTFOUND) {
            return 5;
        }
        /* And a short ordered walk: strictly increasing keys. */
        if ((found & 63) == 0) {
            char prev[32] = "", cur[32];
            size_t pl = 0;
            for (int s = 0; s < 10; s++) {
                size_t cl;
                rc = multimapSeek(x, pl ? MULTIMAP_GT : MULTIMAP_GE,
                                  pl ? prev : k, pl ? pl : kl, cur, sizeof cur,
                                  &cl, NULL, 0, NULL);
                if (rc == DKSHM_NOTFOUND)
                    break;
                if (rc != DKSHM_OK)
                    return 6;
                if (pl && keyCmp(prev, pl, cur, cl) >= 0)
                    return 7;
                memcpy(prev, cur, cl);
                pl = cl;
            }
        }
    }
    multimapClose(x);
    return found > 0 ? 0 : 8;
}

START_TEST(test_procs_writers_readers) {
    enum { WRITERS = 2, READERS = 2 };
    uint32_t *stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(stop, MAP_FAILED);
    *stop = 0;
    pid_t w[WRITERS], r[READERS];
    /* Some values to find from the start. */
    for (uint32_t i = 0; i < WRITERS * PW_KEYS; i += 5) {
        char k[32];
        uint8_t v[128];
        size_t kl = keyOf(k, "p", i), vl = mkValue(v, i, 0);
        EXPECT_RC(multimapInsert(mm, k, kl, v, vl, 0), DKSHM_OK);
    }
    fflush(NULL);
    for (int i = 0; i < READERS; i++)
        if ((r[i] = fork()) == 0)
            _exit(procReader(WRITERS, stop));
    for (int i = 0; i < WRITERS; i++)
        if ((w[i] = fork()) == 0)
            _exit(procWriter(i));
    for (int i = 0; i < WRITERS; i++)
        ck_assert_int_eq(testWait(w[i]), 0);
    __atomic_store_n(stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < READERS; i++)
        ck_assert_int_eq(testWait(r[i]), 0);
    /* Exact final contents. */
    uint64_t want = 0;
    for (uint32_t key = 0; key < WRITERS * PW_KEYS; key++) {
        char k[32];
        uint8_t v[128];
        size_t kl = keyOf(k, "p", key), vl;
        int rc = multimapLookup(mm, k, kl, v, sizeof v, &vl);
        if ((key % PW_KEYS) % 3 == 0) {
            EXPECT_RC(rc, DKSHM_NOTFOUND);
        } else {
            uint32_t ver;
            EXPECT_RC(rc, DKSHM_OK);
            EXPECT(valueOk(v, vl, key, &ver));
            ck_assert_uint_eq(ver, PW_ROUNDS - 1);
            want++;
        }
    }
    ck_assert_uint_eq(count(mm), want);
    munmap(stop, 4096);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

/* Threads of one process sharing one handle: the same as the forked test,
 * for ThreadSanitizer to see (it cannot see across processes). */
typedef struct thArg {
    int idx;
    int writers;
    uint32_t *stop;
    int rc;
} thArg;

static void *thWriter(void *p) {
    thArg *a = p;
    char k[32];
    uint8_t v[128];
    for (uint32_t r = 0; r < 3 && !a->rc; r++)
        for (uint32_t i = 0; i < 1500; i++) {
            uint32_t key = (uint32_t)a->idx * 1500 + i;
            size_t kl = keyOf(k, "t", key);
            int rc;
            if (r == 2 && i % 3 == 0) {
                rc = multimapDelete(mm, k, kl);
            } else {
                size_t vl = mkValue(v, key, r);
                rc = multimapInsert(mm, k, kl, v, vl, 0);
            }
            if (rc != DKSHM_OK) {
                a->rc = 1;
                break;
            }
        }
    return NULL;
}

static void *thReader(void *p) {
    thArg *a = p;
    uint64_t seed = 99 + (uint64_t)a->idx;
    char k[32];
    uint8_t v[128];
    while (!__atomic_load_n(a->stop, __ATOMIC_ACQUIRE)) {
        uint32_t key =
            (uint32_t)(testRng(&seed) % (uint64_t)(a->writers * 1500));
        size_t kl = keyOf(k, "t", key), vl;
        int rc = multimapLookup(mm, k, kl, v, sizeof v, &vl);
        if (rc == DKSHM_OK ? !valueOk(v, vl, key, NULL)
                           : rc != DKSHM_NOTFOUND) {
            a->rc = 2;
            break;
        }
        char cur[32];
        size_t cl;
        rc = multimapSeek(mm, MULTIMAP_GE, k, kl, cur, sizeof cur, &cl, NULL, 0,
                          NULL);
        if (rc != DKSHM_OK && rc != DKSHM_NOTFOUND) {
            a->rc = 3;
            break;
        }
        if (rc == DKSHM_OK && keyCmp(cur, cl, k, kl) < 0) {
            a->rc = 4;
            break;
        }
    }
    return NULL;
}

START_TEST(test_threads) {
    enum { W = 2, R = 2 };
    uint32_t stop = 0;
    pthread_t tw[W], tr[R];
    thArg aw[W], ar[R];
    for (int i = 0; i < R; i++) {
        ar[i] = (thArg){i, W, &stop, 0};
        ck_assert_int_eq(pthread_create(&tr[i], NULL, thReader, &ar[i]), 0);
    }
    for (int i = 0; i < W; i++) {
        aw[i] = (thArg){i, W, &stop, 0};
        ck_assert_int_eq(pthread_create(&tw[i], NULL, thWriter, &aw[i]), 0);
    }
    for (int i = 0; i < W; i++) {
        pthread_join(tw[i], NULL);
        ck_assert_int_eq(aw[i].rc, 0);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < R; i++) {
        pthread_join(tr[i], NULL);
        ck_assert_int_eq(ar[i].rc, 0);
    }
    uint64_t want = 0;
    for (uint32_t key = 0; key < W * 1500; key++) {
        char k[32];
        uint8_t v[128];
        size_t kl = keyOf(k, "t", key), vl;
        int rc = multimapLookup(mm, k, kl, v, sizeof v, &vl);
        uint32_t ver;
        if ((key % 1500) % 3 == 0) {
            EXPECT_RC(rc, DKSHM_NOTFOUND);
        } else {
            EXPECT_RC(rc, DKSHM_OK);
            EXPECT(valueOk(v, vl, key, &ver) && ver == 2);
            want++;
        }
    }
    ck_assert_uint_eq(count(mm), want);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

/* The exec'd child: "checkMultimap --child SEGMENT MAP rw|ro". */
static int childMain(int argc, char **argv) {
    if (argc != 5)
        return 90;
    bool ro = strcmp(argv[4], "ro") == 0;
    dkshm *s;
    if (dkshmAttach(argv[2], ro ? DKSHM_RDONLY : 0, &s) != DKSHM_OK)
        return 91;
    multimap *x;
    if (multimapOpen(s, argv[3], NULL, 0, &x) != DKSHM_OK)
        return 92;
    char k[32], v[64], want[64];
    for (int i = 0; i < 500; i++) {
        size_t kl = keyOf(k, "parent", (uint64_t)i), vl;
        int wl = snprintf(want, sizeof want, "from-parent-%d", i);
        if (multimapLookup(x, k, kl, v, sizeof v, &vl) != DKSHM_OK ||
            vl != (size_t)wl || memcmp(v, want, vl) != 0)
            return 93;
    }
    if (ro) {
        for (int i = 0; i < 500; i++) {
            size_t kl = keyOf(k, "child", (uint64_t)i), vl;
            int wl = snprintf(want, sizeof want, "from-child-%d", i);
            if (multimapLookup(x, k, kl, v, sizeof v, &vl) != DKSHM_OK ||
                vl != (size_t)wl || memcmp(v, want, vl) != 0)
                return 94;
        }
        uint64_t n = 0;
        if (multimapCount(x, &n) != DKSHM_OK || n != 1000)
            return 95;
        if (multimapInsert(x, "no", 2, "x", 1, 0) != DKSHM_READONLY)
            return 96;
        if (multimapCheck(x, NULL, 0) != DKSHM_OK)
            return 97;
        size_t kl, vl;
        if (multimapFirst(x, k, sizeof k, &kl, v, sizeof v, &vl) != DKSHM_OK ||
            kl != 13 || memcmp(k, "child00000000", 13) != 0)
            return 98;
    } else {
        for (int i = 0; i < 500; i++) {
            size_t kl = keyOf(k, "child", (uint64_t)i);
            int vl = snprintf(v, sizeof v, "from-child-%d", i);
            if (multimapInsert(x, k, kl, v, (size_t)vl, 0) != DKSHM_OK)
                return 99;
        }
    }
    multimapClose(x);
    dkshmDetach(s);
    return 0;
}

static int runSelf(const char *mode) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char *argv[] = {
            "checkMultimap", "--child",    (char *)testSegmentName(),
            "map",           (char *)mode, NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    return testWait(pid);
}

START_TEST(test_exec_attach) {
    char k[32], v[64];
    for (int i = 0; i < 500; i++) {
        size_t kl = keyOf(k, "parent", (uint64_t)i);
        int vl = snprintf(v, sizeof v, "from-parent-%d", i);
        EXPECT_RC(multimapInsert(mm, k, kl, v, (size_t)vl, 0), DKSHM_OK);
    }
    ck_assert_int_eq(runSelf("rw"), 0);
    ck_assert_int_eq(runSelf("ro"), 0);
    assertValue(mm, "child00000042", "from-child-42");
    ck_assert_uint_eq(count(mm), 1000);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

/* Writers killed at every point of an insert, nobody reaping: readers on
 * a read-write handle get past each dead writer (recovering it when it
 * died inside its change) and never see the half-done insert. */
START_TEST(test_dead_writer_readers) {
    char k[32];
    for (int i = 0; i < 500; i++) {
        size_t kl = keyOf(k, "w", (uint64_t)i);
        EXPECT_RC(multimapInsert(mm, k, kl, "old", 3, 0), DKSHM_OK);
    }
    /* Reap once so the parent's own slot is the only live one. */
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    uint64_t rec0 = stats(mm).recoveries;
    long k2;
    for (k2 = 1; k2 < 400; k2++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            dkshmTestCrashAt(k2);
            int rc = multimapInsert(mm, "w00000250x", 10, "new", 3, 0);
            _exit(rc == DKSHM_OK ? 0 : 1);
        }
        int st = testWait(pid);
        char buf[16];
        ck_assert_int_eq(getStr(mm, "w00000100", buf, sizeof buf), DKSHM_OK);
        ck_assert_str_eq(buf, "old");
        int rc = getStr(mm, "w00000250x", buf, sizeof buf);
        if (st == 0) {
            EXPECT_RC(rc, DKSHM_OK);
            break;
        }
        ck_assert_int_eq(st, TEST_KILLED);
        EXPECT(rc == DKSHM_NOTFOUND || strcmp(buf, "new") == 0);
        if (rc == DKSHM_OK) /* died after its commit */
            EXPECT_RC(multimapDelete(mm, "w00000250x", 10), DKSHM_OK);
        ck_assert_uint_eq(count(mm), 500);
    }
    ck_assert_int_lt(k2, 400);
    ck_assert_uint_gt(stats(mm).recoveries, rec0);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    assertOwnership(&mm, 1);
}
END_TEST

/* ---- crash walks -----------------------------------------------------------
 */

/* Each walk runs OP in a child that dies at its k-th crash point, for
 * k = 1, 2, ... After each death the parent reaps, checks the map and the
 * allocator, checks that every allocation is owned (nothing leaked), that
 * the operation happened entirely or not at all, and that the allocator's
 * byte counts are exactly those of before (not done) or of after (done,
 * measured on a twin map built the same way). After a done state the walk
 * goes on with a freshly built map, so every point meets the same tree. */
typedef struct walk walk;
struct walk {
    void (*build)(walk *w);
    int (*op)(walk *w);
    int (*state)(walk *w); /* 0 not done, 1 done, -1 neither */
    bool intKeys;
    bool versioned;
    multimap *x; /* the map being walked */
    multimap *maps[64];
    int nMaps;
    int gen;
    uint64_t baseUsed, baseAllocs;
    int64_t dUsed, dAllocs; /* what a completed op changes */
    long points;
    int seen[2];
    int arg;             /* free for the walk */
    multimapStats final; /* of the tree the last, completed op changed */
};

static walk *curWalk;

/* Each tree of a walk lives in a segment of its own, so that the checks
 * after each crash point see only it (and the fixture's map). */
static void walkNewMap(walk *w) {
    for (int i = 0; i < w->nMaps; i++)
        if (w->maps[i] != mm)
            multimapClose(w->maps[i]);
    w->nMaps = 0;
    teardown();
    char tag[16];
    snprintf(tag, sizeof tag, "w%d", w->gen);
    makeSegment(tag, 256 * MiB);
    mm = openMap("map", MULTIMAP_KEYS_BYTES);
    w->maps[w->nMaps++] = mm;
    char name[32];
    snprintf(name, sizeof name, "walk%d", w->gen++);
    multimapOptions o = {.keyMode = w->intKeys ? MULTIMAP_KEYS_INT64
                                               : MULTIMAP_KEYS_BYTES,
                         .flags = w->versioned ? MULTIMAP_VERSIONED : 0};
    EXPECT_RC(multimapOpen(seg, name, &o, MULTIMAP_CREATE, &w->x), DKSHM_OK);
    w->maps[w->nMaps++] = w->x;
    w->build(w);
    memboundStats st;
    ck_assert_int_eq(memboundGetStats(mb, &st), DKSHM_OK);
    w->baseUsed = st.used;
    w->baseAllocs = st.allocations;
}

static int walkOp(void *arg) {
    walk *w = arg;
    int rc = w->op(w);
    return rc == DKSHM_OK ? 0 : 50 + (rc < 0 ? -rc : rc);
}

/* Take over every lock a dead process holds, at once. dkshmReap would do
 * the same, but fastMutexLock first sleeps a whole poll interval (20 ms)
 * before it looks at the owner; fastMutexTryLock looks at once. */
static void recoverDeadLocks(void) {
    for (uint32_t p = 0; p < seg->hdr->maxProcs; p++) {
        dkProcSlot *sl = dkSlotAt(seg, p);
        if (__atomic_load_n(&sl->word, __ATOMIC_ACQUIRE) == 0)
            continue;
        for (int j = 0; j < DK_HELD_MAX; j++) {
            dkoff off = __atomic_load_n(&sl->held[j], __ATOMIC_RELAXED);
            if (!off || !dkshmPtr(seg, off))
                continue;
            fastMutex *m = dkshmPtr(seg, off);
            uint32_t w = __atomic_load_n(&m->word, __ATOMIC_ACQUIRE);
            if (w && !dkOwnerAlive(seg, w)) {
                int rc = fastMutexTryLock(seg, m);
                if (rc == DKSHM_OK || rc == DKSHM_RECOVERED)
                    fastMutexUnlock(seg, m);
            }
        }
    }
}

static void walkAfter(void *arg, long k) {
    walk *w = arg;
    recoverDeadLocks();
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, w->x);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    int st = w->state(w);
    ck_assert_msg(st == 0 || st == 1, "crash point %ld: operation half done",
                  k);
    /* Ownership after the state check: it takes the lock, which may
     * finish a dead copier's work first. */
    assertOwnership(w->maps, w->nMaps);
    memboundStats ms;
    ck_assert_int_eq(memboundGetStats(mb, &ms), DKSHM_OK);
    int64_t du = (int64_t)(ms.used - w->baseUsed);
    int64_t da = (int64_t)(ms.allocations - w->baseAllocs);
    ck_assert_msg(du == (st ? w->dUsed : 0) && da == (st ? w->dAllocs : 0),
                  "crash point %ld (state %d): %lld bytes, %lld allocations "
                  "changed",
                  k, st, (long long)du, (long long)da);
    w->seen[st]++;
    if (st == 1)
        walkNewMap(w);
}

static void runWalk(walk *w, int minPoints) {
    curWalk = w;
    /* The twin: what the op does to the allocator when it completes. */
    walkNewMap(w);
    ck_assert_int_eq(w->state(w), 0);
    ck_assert_int_eq(w->op(w), DKSHM_OK);
    ck_assert_int_eq(w->state(w), 1);
    memboundStats st;
    ck_assert_int_eq(memboundGetStats(mb, &st), DKSHM_OK);
    w->dUsed = (int64_t)(st.used - w->baseUsed);
    w->dAllocs = (int64_t)(st.allocations - w->baseAllocs);
    TEST_ASSERT_CHECK(multimapCheck, w->x);
    walkNewMap(w);
    uint64_t t0 = dkNowNs();
    w->points = testCrashWalk(walkOp, walkAfter, w, 20000);
    fprintf(stderr, "walk time %.2f s\n", (double)(dkNowNs() - t0) / 1e9);
    ck_assert_int_eq(w->state(w), 1);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, w->x);
    assertOwnership(w->maps, w->nMaps);
    ck_assert_msg(w->points >= minPoints, "only %ld crash points", w->points);
    ck_assert_int_gt(w->seen[0], 0);
    fprintf(stderr, "crash walk: %ld points (%d before, %d after)\n", w->points,
            w->seen[0], w->seen[1]);
    w->final = stats(w->x);
    for (int i = 0; i < w->nMaps; i++)
        if (w->maps[i] != mm)
            multimapClose(w->maps[i]);
}

static void fillAsc(multimap *x, const char *prefix, int n) {
    char k[64];
    for (int i = 0; i < n; i++) {
        size_t kl = keyOf(k, prefix, (uint64_t)i);
        int rc = multimapInsert(x, k, kl, k, kl, 0);
        if (rc != DKSHM_OK)
            ck_abort_msg("fill %s: %s", k, dkshmErrName(rc));
    }
}

static bool has(multimap *x, const char *k) {
    size_t vl;
    int rc = multimapLookup(x, k, strlen(k), NULL, 0, &vl);
    EXPECT(rc == DKSHM_OK || rc == DKSHM_TOOBIG || rc == DKSHM_NOTFOUND);
    return rc != DKSHM_NOTFOUND;
}

/* Insert one key; the walk's arg is the tree's size before it. */
static const char *insKey;
static const char *insPrefix = "k";

static int opInsert(walk *w) {
    return multimapInsert(w->x, insKey, strlen(insKey), "new-value", 9, 0);
}

static int stateInsert(walk *w) {
    uint64_t n = count(w->x);
    if (!has(w->x, insKey) && n == (uint64_t)w->arg)
        return 0;
    if (has(w->x, insKey) && n == (uint64_t)w->arg + 1) {
        assertValue(w->x, insKey, "new-value");
        return 1;
    }
    return -1;
}

static void buildAsc(walk *w) {
    fillAsc(w->x, insPrefix, w->arg);
}

START_TEST(test_crash_insert_plain) {
    insKey = "k00000005x";
    walk w = {
        .build = buildAsc, .op = opInsert, .state = stateInsert, .arg = 50};
    runWalk(&w, 20);
}
END_TEST

START_TEST(test_crash_insert_first) {
    insKey = "first";
    walk w = {
        .build = buildAsc, .op = opInsert, .state = stateInsert, .arg = 0};
    runWalk(&w, 10);
}
END_TEST

START_TEST(test_crash_insert_root_leaf_split) {
    /* A full root leaf splits into two leaves under a new root. */
    insKey = "k00000060x";
    walk w = {
        .build = buildAsc, .op = opInsert, .state = stateInsert, .arg = SLOTS};
    runWalk(&w, 40);
    ck_assert_uint_eq(w.final.height, 1);
}
END_TEST

START_TEST(test_crash_insert_leaf_split) {
    /* Three full leaves; split the middle one. */
    insKey = "k00000200x";
    walk w = {.build = buildAsc,
              .op = opInsert,
              .state = stateInsert,
              .arg = 3 * SLOTS};
    runWalk(&w, 40);
}
END_TEST

START_TEST(test_crash_insert_inner_root_split) {
    /* SLOTS full leaves under a full root: a split in the middle goes up
     * and splits the root. */
    insKey = "k00000050x";
    walk w = {.build = buildAsc,
              .op = opInsert,
              .state = stateInsert,
              .arg = SLOTS * SLOTS};
    runWalk(&w, 60);
    ck_assert_uint_eq(w.final.height, 2);
}
END_TEST

START_TEST(test_crash_insert_long_separator) {
    /* Keys with a 40-byte common prefix: the separator needs a block. */
    static char key[80];
    memset(key, 'q', 40);
    strcpy(key + 40, "00000030x");
    insKey = key;
    insPrefix = "qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq";
    walk w = {.build = buildAsc,
              .op = opInsert,
              .state = stateInsert,
              .arg = 2 * SLOTS};
    runWalk(&w, 40);
    ck_assert_uint_gt(w.final.keyBlocks, 1);
}
END_TEST

static int opUpsert(walk *w) {
    (void)w;
    return multimapInsert(w->x, "k00000007", 9, "replaced", 8, 0);
}

static int stateUpsert(walk *w) {
    if (count(w->x) != (uint64_t)w->arg)
        return -1;
    char buf[64];
    ck_assert_int_eq(getStr(w->x, "k00000007", buf, sizeof buf), DKSHM_OK);
    if (strcmp(buf, "k00000007") == 0)
        return 0;
    return strcmp(buf, "replaced") == 0 ? 1 : -1;
}

START_TEST(test_crash_upsert) {
    walk w = {
        .build = buildAsc, .op = opUpsert, .state = stateUpsert, .arg = 300};
    runWalk(&w, 15);
}
END_TEST

/* Delete one key (delKey) from a tree built by a build function. */
static char delKey[96];

static int opDelete(walk *w) {
    return multimapDelete(w->x, delKey, strlen(delKey));
}

static int stateDelete(walk *w) {
    uint64_t n = count(w->x);
    bool h = has(w->x, delKey);
    if (h && n == (uint64_t)w->arg)
        return 0;
    if (!h && n == (uint64_t)w->arg - 1)
        return 1;
    return -1;
}

START_TEST(test_crash_delete_plain) {
    strcpy(delKey, "k00000010");
    walk w = {
        .build = buildAsc, .op = opDelete, .state = stateDelete, .arg = 300};
    runWalk(&w, 15);
}
END_TEST

/* Three full leaves, then the first is thinned to MINFILL and the second
 * to 50: deleting from the first merges it into the second. */
static void buildMerge(walk *w) {
    fillAsc(w->x, "k", 3 * SLOTS);
    char k[32];
    for (int i = MINFILL; i < SLOTS; i++) {
        size_t kl = keyOf(k, "k", (uint64_t)i);
        EXPECT_RC(multimapDelete(w->x, k, kl), DKSHM_OK);
    }
    for (int i = SLOTS + 50; i < 2 * SLOTS; i++) {
        size_t kl = keyOf(k, "k", (uint64_t)i);
        EXPECT_RC(multimapDelete(w->x, k, kl), DKSHM_OK);
    }
    w->arg = MINFILL + 50 + SLOTS;
    ck_assert_uint_eq(count(w->x), (uint64_t)w->arg);
    ck_assert_uint_eq(stats(w->x).leaves, 3);
}

START_TEST(test_crash_delete_merge) {
    strcpy(delKey, "k00000003");
    walk w = {.build = buildMerge, .op = opDelete, .state = stateDelete};
    runWalk(&w, 30);
    multimapStats st = w.final;
    ck_assert_uint_eq(st.leaves, 2); /* the twin, after the op */
}
END_TEST

/* The first leaf at MINFILL, its right sibling full: a delete borrows, and
 * with 40-byte common prefixes the new separator needs a block. */
static void buildBorrow(walk *w) {
    const char *pfx = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    fillAsc(w->x, pfx, 3 * SLOTS);
    char k[96];
    for (int i = MINFILL; i < SLOTS; i++) {
        size_t kl = keyOf(k, pfx, (uint64_t)i);
        EXPECT_RC(multimapDelete(w->x, k, kl), DKSHM_OK);
    }
    w->arg = MINFILL + 2 * SLOTS;
    ck_assert_uint_eq(count(w->x), (uint64_t)w->arg);
}

START_TEST(test_crash_delete_borrow) {
    keyOf(delKey, "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", 5);
    walk w = {.build = buildBorrow, .op = opDelete, .state = stateDelete};
    runWalk(&w, 30);
    multimapStats st = w.final;
    ck_assert_uint_eq(st.leaves, 3);
    ck_assert_uint_ge(st.keyBlocks, 2);
}
END_TEST

/* An ascending load of SLOTS * SLOTS + 1 keys: the last key sits alone in
 * the last leaf, under an inner node of two leaves, next to an inner node
 * of SLOTS - 1 leaves. Deleting it merges the leaf, then the inner node,
 * then collapses the root. */
static void buildCascade(walk *w) {
    fillAsc(w->x, "k", SLOTS * SLOTS + 1);
    w->arg = SLOTS * SLOTS + 1;
    ck_assert_uint_eq(stats(w->x).height, 2);
}

START_TEST(test_crash_delete_cascade) {
    keyOf(delKey, "k", SLOTS * SLOTS);
    walk w = {.build = buildCascade, .op = opDelete, .state = stateDelete};
    runWalk(&w, 40);
    ck_assert_uint_eq(w.final.height, 1);
}
END_TEST

/* Create a map by name (a new name for every tree of the walk). */
static int opCreate(walk *w) {
    char name[32];
    snprintf(name, sizeof name, "created%d", w->gen);
    multimap *x = NULL;
    int rc = multimapOpen(seg, name, NULL, MULTIMAP_CREATE | MULTIMAP_EXCL, &x);
    multimapClose(x);
    return rc;
}

static int stateCreate(walk *w) {
    char name[32];
    snprintf(name, sizeof name, "created%d", w->gen);
    multimap *x = NULL;
    int rc = multimapOpen(seg, name, NULL, 0, &x);
    if (rc == DKSHM_NOTFOUND)
        return 0;
    EXPECT_RC(rc, DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, x);
    ck_assert_int_lt(w->nMaps, 64);
    w->maps[w->nMaps++] = x;
    return count(x) == 0 ? 1 : -1;
}

START_TEST(test_crash_create) {
    walk w = {
        .build = buildAsc, .op = opCreate, .state = stateCreate, .arg = 3};
    runWalk(&w, 10);
}
END_TEST

/* Duplicate a small map (a copy that needs a split). */
static int opDup(walk *w) {
    char name[32];
    snprintf(name, sizeof name, "dup%d", w->gen);
    return multimapDuplicate(w->x, name, NULL);
}

static int stateDup(walk *w) {
    char name[32];
    snprintf(name, sizeof name, "dup%d", w->gen);
    multimap *d = NULL;
    int rc = multimapOpen(seg, name, NULL, 0, &d);
    if (rc == DKSHM_NOTFOUND)
        return 0;
    EXPECT_RC(rc, DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, d);
    bool full = count(d) == (uint64_t)w->arg;
    ck_assert_int_lt(w->nMaps, 64);
    w->maps[w->nMaps++] = d; /* its blocks are owned from now on */
    return full ? 1 : -1;
}

START_TEST(test_crash_duplicate) {
    walk w = {.build = buildAsc, .op = opDup, .state = stateDup, .arg = 20};
    runWalk(&w, 100);
}
END_TEST

/* ---- versioned maps (copy-on-write publishing) ----------------------------
 */

static multimap *openVersioned(const char *name, uint32_t keyMode) {
    multimapOptions o = {.keyMode = keyMode, .flags = MULTIMAP_VERSIONED};
    multimap *x = NULL;
    int rc = multimapOpen(seg, name, &o, MULTIMAP_CREATE, &x);
    ck_assert_msg(rc == DKSHM_OK, "open %s: %s", name, dkshmErrName(rc));
    return x;
}

/* Fill a draft: keys 0..n-1 with value VER (8 bytes). */
static void fillVersion(multimap *d, int n, uint64_t ver) {
    char k[32];
    for (int i = 0; i < n; i++) {
        size_t kl = keyOf(k, "v", (uint64_t)i);
        EXPECT_RC(multimapInsert(d, k, kl, &ver, 8, 0), DKSHM_OK);
    }
}

/* Every key 0..n-1 of X holds VER. */
static void assertVersion(multimap *x, int n, uint64_t ver) {
    ck_assert_uint_eq(count(x), (uint64_t)n);
    char k[32];
    for (int i = 0; i < n; i++) {
        size_t kl = keyOf(k, "v", (uint64_t)i), vl;
        uint64_t v = 0;
        EXPECT_RC(multimapLookup(x, k, kl, &v, 8, &vl), DKSHM_OK);
        EXPECT(vl == 8 && v == ver);
    }
}

START_TEST(test_versioned_basic) {
    multimap *a = openVersioned("ver", MULTIMAP_KEYS_BYTES);
    ck_assert_uint_eq(count(a), 0);
    assertAbsent(a, "v00000001");
    ck_assert_int_eq(multimapFirst(a, NULL, 0, NULL, NULL, 0, NULL),
                     DKSHM_NOTFOUND);
    ck_assert_uint_eq(stats(a).count, 0);
    /* The map itself is never written in place. */
    ck_assert_int_eq(multimapInsert(a, "k", 1, "v", 1, 0), DKSHM_INVALID);
    ck_assert_int_eq(multimapDelete(a, "k", 1), DKSHM_INVALID);
    ck_assert_int_eq(multimapDuplicate(a, "copy", NULL), DKSHM_INVALID);
    ck_assert_int_eq(multimapPublish(a), DKSHM_INVALID);
    multimap *nope = NULL;
    ck_assert_int_eq(multimapSnapshot(mm, &nope), DKSHM_INVALID);
    ck_assert_int_eq(multimapDraft(mm, &nope), DKSHM_INVALID);
    /* Version 1. */
    multimap *d1 = NULL;
    ck_assert_int_eq(multimapDraft(a, &d1), DKSHM_OK);
    ck_assert_uint_eq(count(d1), 0);
    fillVersion(d1, 1000, 1);
    ck_assert_uint_eq(count(a), 0); /* not visible before publishing */
    ck_assert_int_eq(multimapPublish(d1), DKSHM_OK);
    assertVersion(a, 1000, 1);
    /* A snapshot of version 1 outlives version 2. */
    multimap *s1 = NULL;
    ck_assert_int_eq(multimapSnapshot(a, &s1), DKSHM_OK);
    multimap *d2 = NULL;
    ck_assert_int_eq(multimapDraft(a, &d2), DKSHM_OK);
    assertVersion(d2, 1000, 1); /* a draft starts as the current version */
    fillVersion(d2, 1000, 2);
    char k[32];
    for (int i = 0; i < 100; i++) {
        size_t kl = keyOf(k, "x", (uint64_t)i);
        EXPECT_RC(multimapInsert(d2, k, kl, "extra", 5, 0), DKSHM_OK);
    }
    ck_assert_int_eq(multimapSnapshot(d2, &nope), DKSHM_INVALID);
    ck_assert_int_eq(multimapPublish(d2), DKSHM_OK);
    ck_assert_uint_eq(count(a), 1100);
    assertValue(a, "x00000042", "extra");
    assertVersion(s1, 1000, 1);
    ck_assert_int_eq(multimapInsert(s1, "k", 1, "v", 1, 0), DKSHM_READONLY);
    ck_assert_int_eq(multimapDelete(s1, "v00000001", 9), DKSHM_READONLY);
    kvList l = iterAll(s1, NULL, 0, MULTIMAP_ITER_REVERSE);
    ck_assert_uint_eq(l.n, 1000);
    kvFree(&l);
    /* A snapshot duplicates into an ordinary map. */
    multimap *c = NULL;
    ck_assert_int_eq(multimapDuplicate(s1, "snapcopy", &c), DKSHM_OK);
    assertVersion(c, 1000, 1);
    ck_assert_int_eq(multimapInsert(c, "k", 1, "v", 1, 0), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, a);
    TEST_ASSERT_CHECK(multimapCheck, s1);
    multimap *all[3] = {mm, a, c};
    assertOwnership(all, 3);
    /* Closing the last holder frees version 1. */
    memboundStats before, after;
    ck_assert_int_eq(memboundGetStats(mb, &before), DKSHM_OK);
    multimapClose(s1);
    ck_assert_int_eq(memboundGetStats(mb, &after), DKSHM_OK);
    ck_assert_uint_lt(after.allocations, before.allocations - 1000);
    assertOwnership(all, 3);
    /* A draft closed unpublished is discarded. */
    multimap *d3 = NULL;
    ck_assert_int_eq(multimapDraft(a, &d3), DKSHM_OK);
    fillVersion(d3, 10, 3);
    ck_assert_int_eq(memboundGetStats(mb, &before), DKSHM_OK);
    multimapClose(d3);
    ck_assert_int_eq(memboundGetStats(mb, &after), DKSHM_OK);
    ck_assert_uint_lt(after.allocations, before.allocations);
    assertOwnership(all, 3);
    /* Reopened by name: the current version. */
    multimap *a2 = NULL;
    ck_assert_int_eq(multimapOpen(seg, "ver", NULL, 0, &a2), DKSHM_OK);
    ck_assert_uint_eq(count(a2), 1100);
    multimapClose(a2);
    /* Read-only attachments read it but cannot hold a snapshot. */
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multimap *r = NULL;
    ck_assert_int_eq(multimapOpen(ro, "ver", NULL, 0, &r), DKSHM_OK);
    ck_assert_uint_eq(count(r), 1100);
    uint64_t rv = 0;
    size_t rvl;
    ck_assert_int_eq(multimapLookup(r, "v00000007", 9, &rv, 8, &rvl), DKSHM_OK);
    ck_assert_uint_eq(rv, 2);
    ck_assert_int_eq(multimapSnapshot(r, &nope), DKSHM_READONLY);
    TEST_ASSERT_CHECK(multimapCheck, r);
    multimapClose(r);
    dkshmDetach(ro);
    multimapClose(c);
    multimapClose(a);
}
END_TEST

/* Snapshot holders and drafters that die: their versions are reclaimed by
 * the next operation on the map. */
START_TEST(test_versioned_dead_holders) {
    multimap *a = openVersioned("ver", MULTIMAP_KEYS_INT64);
    multimap *d = NULL;
    ck_assert_int_eq(multimapDraft(a, &d), DKSHM_OK);
    for (int64_t i = 0; i < 500; i++)
        EXPECT_RC(multimapInsertInt(d, i, &i, 8, 0), DKSHM_OK);
    ck_assert_int_eq(multimapPublish(d), DKSHM_OK);
    multimap *all[2] = {mm, a};
    assertOwnership(all, 2);
    memboundStats base;
    ck_assert_int_eq(memboundGetStats(mb, &base), DKSHM_OK);
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* Hold a snapshot, start a draft, and die holding both. */
        multimap *sn = NULL, *dd = NULL;
        if (multimapSnapshot(a, &sn) != DKSHM_OK ||
            multimapDraft(a, &dd) != DKSHM_OK)
            _exit(1);
        int64_t k = 9999;
        multimapInsertInt(dd, k, &k, 8, 0);
        if (write(pfd[1], "r", 1) != 1)
            _exit(2);
        for (;;)
            pause();
    }
    char ch;
    ck_assert_int_eq(read(pfd[0], &ch, 1), 1);
    kill(pid, SIGKILL);
    ck_assert_int_eq(testWait(pid), TEST_KILLED);
    close(pfd[0]);
    close(pfd[1]);
    /* Publish a new version over the dead holder's. */
    ck_assert_int_eq(multimapDraft(a, &d), DKSHM_OK);
    int64_t k = 1, v = -1;
    ck_assert_int_eq(multimapInsertInt(d, k, &v, 8, 0), DKSHM_OK);
    ck_assert_int_eq(multimapPublish(d), DKSHM_OK);
    int64_t got = 0;
    size_t vl;
    ck_assert_int_eq(multimapLookupInt(a, 1, &got, 8, &vl), DKSHM_OK);
    ck_assert_int_eq(got, -1);
    ck_assert_int_eq(multimapLookupInt(a, 9999, &got, 8, &vl), DKSHM_NOTFOUND);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, a);
    assertOwnership(all, 2);
    /* Exactly one version of the same size as before: the dead holder's
     * version and the dead draft are gone. */
    memboundStats now;
    ck_assert_int_eq(memboundGetStats(mb, &now), DKSHM_OK);
    ck_assert_uint_eq(now.allocations, base.allocations);
    ck_assert_uint_eq(now.used, base.used);
    multimapClose(a);
}
END_TEST

/* Readers in other processes while versions are published: a lookup sees
 * one version or a later one, a snapshot sees one version entirely. */
enum { VR_KEYS = 1500, VR_VERSIONS = 25 };

static int verReader(int snap) {
    multimap *a = NULL;
    if (multimapOpen(seg, "ver", NULL, 0, &a) != DKSHM_OK)
        return 1;
    uint64_t seed = (uint64_t)getpid(), last = 0;
    char k[32];
    for (;;) {
        if (snap) {
            multimap *s = NULL;
            if (multimapSnapshot(a, &s) != DKSHM_OK)
                return 2;
            uint64_t n = 0, first = UINT64_MAX;
            if (multimapCount(s, &n) != DKSHM_OK)
                return 3;
            for (int i = 0; i < VR_KEYS; i += 7) {
                size_t kl = keyOf(k, "v", (uint64_t)i), vl;
                uint64_t v;
                if (multimapLookup(s, k, kl, &v, 8, &vl) != DKSHM_OK)
                    return 4;
                if (first == UINT64_MAX)
                    first = v;
                if (v != first)
                    return 5; /* two versions in one snapshot */
            }
            multimapClose(s);
            if (first < last)
                return 6;
            last = first;
        } else {
            size_t kl = keyOf(k, "v", testRng(&seed) % VR_KEYS), vl;
            uint64_t v;
            if (multimapLookup(a, k, kl, &v, 8, &vl) != DKSHM_OK)
                return 7;
            if (v < last)
                return 8; /* went back in time */
            last = v;
        }
        if (last == VR_VERSIONS)
            break;
    }
    multimapClose(a);
    return 0;
}

START_TEST(test_versioned_readers) {
    multimap *a = openVersioned("ver", MULTIMAP_KEYS_BYTES);
    multimap *d = NULL;
    ck_assert_int_eq(multimapDraft(a, &d), DKSHM_OK);
    fillVersion(d, VR_KEYS, 1);
    ck_assert_int_eq(multimapPublish(d), DKSHM_OK);
    pid_t r[3];
    fflush(NULL);
    for (int i = 0; i < 3; i++)
        if ((r[i] = fork()) == 0)
            _exit(verReader(i == 0));
    for (uint64_t v = 2; v <= VR_VERSIONS; v++) {
        ck_assert_int_eq(multimapDraft(a, &d), DKSHM_OK);
        fillVersion(d, VR_KEYS, v);
        ck_assert_int_eq(multimapPublish(d), DKSHM_OK);
    }
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(testWait(r[i]), 0);
    assertVersion(a, VR_KEYS, VR_VERSIONS);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, a);
    multimap *all[2] = {mm, a};
    assertOwnership(all, 2);
    multimapClose(a);
}
END_TEST

/* Crash walk: take a draft, change it, publish it. */
static int opPublish(walk *w) {
    multimap *d = NULL;
    int rc = multimapDraft(w->x, &d);
    if (rc != DKSHM_OK)
        return rc;
    rc = multimapInsert(d, "new-key", 7, "new", 3, 0);
    if (rc == DKSHM_OK)
        rc = multimapDelete(d, "k00000001", 9);
    if (rc != DKSHM_OK)
        return rc;
    return multimapPublish(d);
}

static int statePublish(walk *w) {
    uint64_t n = count(w->x);
    bool nk = has(w->x, "new-key"), old = has(w->x, "k00000001");
    if (n == (uint64_t)w->arg && !nk && old)
        return 0;
    if (n == (uint64_t)w->arg && nk && !old)
        return 1;
    return -1;
}

static void buildVersioned(walk *w) {
    multimap *d = NULL;
    ck_assert_int_eq(multimapDraft(w->x, &d), DKSHM_OK);
    fillAsc(d, "k", w->arg);
    ck_assert_int_eq(multimapPublish(d), DKSHM_OK);
}

START_TEST(test_crash_publish) {
    walk w = {.build = buildVersioned,
              .op = opPublish,
              .state = statePublish,
              .versioned = true,
              .arg = 6};
    runWalk(&w, 100);
}
END_TEST

/* ---- random kills ----------------------------------------------------------
 */

enum { RK_WORKERS = 3, RK_KEYS = 400 };

typedef struct rkRec { /* one pipe write */
    uint8_t worker;
    uint8_t op; /* 0 insert, 1 delete */
    uint8_t ack;
    uint8_t pad;
    uint32_t key;
    uint64_t version;
} rkRec;

static int rkWorker(int w, uint64_t life, int fd) {
    multimap *x = NULL;
    if (multimapOpen(seg, "map", NULL, 0, &x) != DKSHM_OK)
        return 1;
    uint64_t seed = (life + 1) * 0x9e3779b97f4a7c15ull + (uint64_t)w;
    for (uint64_t n = 0;; n++) {
        uint64_t r = testRng(&seed);
        rkRec rec = {.worker = (uint8_t)w,
                     .op = (uint8_t)(r % 10 < 7 ? 0 : 1),
                     .key = (uint32_t)((r >> 8) % RK_KEYS),
                     .version = (life << 32) | n};
        if (write(fd, &rec, sizeof rec) != sizeof rec)
            return 2;
        char k[32];
        size_t kl = keyOf(k, w == 0 ? "a" : w == 1 ? "b" : "c", rec.key);
        int rc;
        if (rec.op == 0) {
            uint8_t v[128];
            size_t vl = mkValue(v, rec.key, (uint32_t)rec.version);
            rc = multimapInsert(x, k, kl, v, vl, 0);
        } else {
            rc = multimapDelete(x, k, kl);
            if (rc == DKSHM_NOTFOUND)
                rc = DKSHM_OK;
        }
        if (rc != DKSHM_OK)
            return 3;
        rec.ack = 1;
        if (write(fd, &rec, sizeof rec) != sizeof rec)
            return 2;
    }
}

/* What the log says about one key. */
typedef struct rkKey {
    int state; /* -1 absent, 1 present with `ver` */
    uint32_t ver;
    int pend; /* -1 none, 0 insert of pendVer, 1 delete */
    uint32_t pendVer;
} rkKey;

START_TEST(test_random_kill) {
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    ck_assert_int_eq(fcntl(pfd[0], F_SETFL, O_NONBLOCK), 0);
    static rkRec recs[4000000];
    size_t nrec = 0;
    size_t partial = 0; /* bytes of a record read so far */
    pid_t pids[RK_WORKERS];
    uint64_t lives[RK_WORKERS] = {0};
    for (int w = 0; w < RK_WORKERS; w++) {
        fflush(NULL);
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0) {
            close(pfd[0]);
            _exit(rkWorker(w, 0, pfd[1]));
        }
    }
    uint64_t seed = 4242;
    uint64_t start = dkNowNs();
    int kills = 0;
#define DRAIN()                                                                \
    do {                                                                       \
        for (;;) {                                                             \
            ssize_t r =                                                        \
                read(pfd[0], (uint8_t *)recs + nrec * sizeof *recs + partial,  \
                     sizeof recs - nrec * sizeof *recs - partial);             \
            if (r <= 0)                                                        \
                break;                                                         \
            partial += (size_t)r;                                              \
            nrec += partial / sizeof *recs;                                    \
            partial %= sizeof *recs;                                           \
        }                                                                      \
    } while (0)
    /* A number of kills, not a duration: slow (sanitizer) builds do the
     * same test; the time cap only stops a hang. */
    while (kills < 60 && dkNowNs() - start < 60000000000ull) {
        testSleepMs(1 + (unsigned)(testRng(&seed) % 15));
        DRAIN();
        int w = (int)(testRng(&seed) % RK_WORKERS);
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
        kills++;
        if (kills % 10 == 0) {
            ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
            TEST_ASSERT_CHECK(multimapCheck, mm);
        }
        lives[w]++;
        fflush(NULL);
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0) {
            close(pfd[0]);
            _exit(rkWorker(w, lives[w], pfd[1]));
        }
    }
    for (int w = 0; w < RK_WORKERS; w++) {
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
    }
    close(pfd[1]);
    ck_assert_int_eq(fcntl(pfd[0], F_SETFL, 0), 0);
    DRAIN();
#undef DRAIN
    close(pfd[0]);
    ck_assert_uint_eq(partial, 0);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    TEST_ASSERT_CHECK(multimapCheck, mm);
    TEST_ASSERT_CHECK(memboundCheck, mb);
    assertOwnership(&mm, 1);
    /* Replay: per worker, records come in order. */
    static rkKey keys[RK_WORKERS][RK_KEYS];
    rkRec open_[RK_WORKERS];
    bool isOpen[RK_WORKERS] = {0};
    for (int w = 0; w < RK_WORKERS; w++)
        for (int i = 0; i < RK_KEYS; i++)
            keys[w][i] = (rkKey){-1, 0, -1, 0};
    long acked = 0;
    for (size_t i = 0; i < nrec; i++) {
        rkRec *r = &recs[i];
        ck_assert_int_lt(r->worker, RK_WORKERS);
        rkKey *kk = &keys[r->worker][r->key];
        if (!r->ack) {
            if (isOpen[r->worker]) { /* its worker died mid-op */
                rkRec *o = &open_[r->worker];
                rkKey *ok = &keys[o->worker][o->key];
                ok->pend = o->op;
                ok->pendVer = (uint32_t)o->version;
            }
            open_[r->worker] = *r;
            isOpen[r->worker] = true;
            continue;
        }
        isOpen[r->worker] = false;
        acked++;
        kk->state = r->op == 0 ? 1 : -1;
        kk->ver = (uint32_t)r->version;
        kk->pend = -1;
    }
    for (int w = 0; w < RK_WORKERS; w++)
        if (isOpen[w]) {
            rkKey *ok = &keys[w][open_[w].key];
            ok->pend = open_[w].op;
            ok->pendVer = (uint32_t)open_[w].version;
        }
    uint64_t present = 0;
    for (int w = 0; w < RK_WORKERS; w++)
        for (uint32_t i = 0; i < RK_KEYS; i++) {
            char k[32];
            size_t kl = keyOf(k, w == 0 ? "a" : w == 1 ? "b" : "c", i), vl;
            uint8_t v[128];
            int rc = multimapLookup(mm, k, kl, v, sizeof v, &vl);
            rkKey *kk = &keys[w][i];
            uint32_t ver = 0;
            bool okv = rc == DKSHM_OK && valueOk(v, vl, i, &ver);
            bool ok = (kk->state < 0 && rc == DKSHM_NOTFOUND) ||
                      (kk->state > 0 && okv && ver == kk->ver) ||
                      (kk->pend == 1 && rc == DKSHM_NOTFOUND) ||
                      (kk->pend == 0 && okv && ver == kk->pendVer);
            ck_assert_msg(ok, "worker %d key %u: state %d pend %d rc %s", w, i,
                          kk->state, kk->pend, dkshmErrName(rc));
            present += rc == DKSHM_OK;
        }
    ck_assert_uint_eq(count(mm), present);
    fprintf(stderr, "random kill: %d kills, %ld acknowledged writes\n", kills,
            acked);
    ck_assert_int_eq(kills, 60);
    ck_assert_int_gt(acked, 0); /* work survived; the checks above are the test */
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

static Suite *multimapSuite(void) {
    const testCaseSpec cases[] = {
        {"basic",
         {test_open_modes, test_insert_lookup_delete, test_value_sizes,
          test_seek_first_last, test_iterate, test_int64_keys,
          test_binary_long_keys, test_reference_random, test_sequential_fill,
          test_duplicate, test_stats},
         120},
        {"badInput",
         {test_bad_input, test_read_only, test_full_segment,
          test_damaged_entry_ref},
         60},
        {"multiProcess",
         {test_procs_writers_readers, test_threads, test_exec_attach,
          test_dead_writer_readers},
         120},
        {"crash",
         {test_crash_insert_plain, test_crash_insert_first,
          test_crash_insert_root_leaf_split, test_crash_insert_leaf_split,
          test_crash_insert_inner_root_split, test_crash_insert_long_separator,
          test_crash_upsert, test_crash_delete_plain, test_crash_delete_merge,
          test_crash_delete_borrow, test_crash_delete_cascade,
          test_crash_create, test_crash_duplicate},
         300},
        {"versioned",
         {test_versioned_basic, test_versioned_dead_holders,
          test_versioned_readers, test_crash_publish},
         120},
        {"randomKill", {test_random_kill}, 120},
    };
    return testSuiteFrom("multimap", cases, sizeof cases / sizeof cases[0],
                         setup, teardown);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--child") == 0)
        return childMain(argc, argv);
    testSetPrefix("mm");
    return testRunSuite(multimapSuite());
}
