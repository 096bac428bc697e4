/* checkMultidict.c — Check suite for containers/multidict: every operation,
 * every bad input, TTL expiry, cache eviction, growth past 100k keys, forked
 * and exec'd processes sharing counters and values, readers racing writers
 * (never a torn value), crash walks over set/replace/delete/incr/CAS/grow/
 * evict/clear/create, and random SIGKILLs of busy workers.
 *
 * Each test runs in its own process (fork mode) on its own segment, named
 * after the runner's and the test's pid and unlinked in teardown (main()
 * also removes what failed tests left behind).
 *
 * The exec'd part of the multi-process test is this same program started
 * again as "checkMultidict --child SEGMENT DICT MODE" (see childMain).
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
#include "multidict.h"
#include "multidictInternal.h"
#include "testUtil.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <xxhash.h>

#define MiB (1024u * 1024u)

/* ---- fixture ------------------------------------------------------------ */

static dkshm *seg;
static membound *mb;
static multidict *d;

static void makeSegment(const char *tag, uint64_t capacity) {
    testMakeSegment(tag, capacity, NULL, &seg, &mb);
}

static multidict *openDict(const char *name, uint32_t shards,
                           uint64_t maxBytes) {
    multidictOptions o = {.shards = shards, .maxBytes = maxBytes};
    multidict *x = NULL;
    int rc = multidictOpen(seg, name, &o, MULTIDICT_CREATE, &x);
    ck_assert_msg(rc == DKSHM_OK, "open %s: %s", name, dkshmErrName(rc));
    return x;
}

/* Replace the fixture's segment with a new one of CAPACITY bytes (TAG in
 * its name) and the fixture dict with a one-shard map NAME (a cache of
 * MAXBYTES when > 0). */
static void remakeFixture(const char *tag, uint64_t capacity, const char *name,
                          uint64_t maxBytes) {
    multidictClose(d);
    dkshmDetach(seg);
    dkshmUnlink(testSegmentName());
    makeSegment(tag, capacity);
    d = openDict(name, 1, maxBytes);
}

static void setup(void) {
    makeSegment("t", 256 * MiB);
    d = openDict("dict", 0, 0);
}

static void teardown(void) {
    for (int w = 0; w < 3; w++) { /* test_random_kill's logs */
        char path[128];
        snprintf(path, sizeof path, "/tmp/dkt-md-%d-rk%d.log", (int)getpid(),
                 w);
        unlink(path);
    }
    multidictClose(d);
    d = NULL;
    testDropSegment(&seg, &mb);
}

/* ---- helpers ------------------------------------------------------------ */

#define assertCheckDict(x) TEST_ASSERT_CHECK(multidictCheck, x)
#define assertCheckAlloc() TEST_ASSERT_CHECK(memboundCheck, mb)

/* RECOVERY.md §1 and §5: every live allocation of the segment is a block of
 * one of the dicts DS (and of nothing else: no leak, nothing in flight),
 * and every block of theirs is a live allocation large enough. */
static void assertOwnership(multidict **ds, int n) {
    testBlocks owned = {0};
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(
            multidictForEachBlock(ds[i], testBlocksCollect, &owned), DKSHM_OK);
    testAssertOwnership(mb, &owned, "dict");
}

static size_t keyOf(char *buf, const char *prefix, uint64_t i) {
    return (size_t)sprintf(buf, "%s%" PRIu64, prefix, i);
}

static void fillValue(uint8_t *v, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++)
        v[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 8));
}

static void setStr(multidict *x, const char *k, const char *v) {
    int rc = multidictSet(x, k, strlen(k), v, strlen(v));
    ck_assert_msg(rc == DKSHM_OK, "set %s: %s", k, dkshmErrName(rc));
}

/* Get K as a string ("" if absent: then the return is NOTFOUND). */
static int getStr(multidict *x, const char *k, char *out, size_t cap) {
    size_t len = 0;
    int rc = multidictGet(x, k, strlen(k), out, cap - 1, &len);
    out[rc == DKSHM_OK ? len : 0] = '\0';
    return rc;
}

static void assertValue(multidict *x, const char *k, const char *want) {
    char buf[512];
    int rc = getStr(x, k, buf, sizeof buf);
    ck_assert_msg(rc == DKSHM_OK, "get %s: %s", k, dkshmErrName(rc));
    ck_assert_str_eq(buf, want);
}

static void assertAbsent(multidict *x, const char *k) {
    char buf[512];
    ck_assert_int_eq(getStr(x, k, buf, sizeof buf), DKSHM_NOTFOUND);
}

static uint64_t count(multidict *x) {
    uint64_t n = 0;
    ck_assert_int_eq(multidictCount(x, &n), DKSHM_OK);
    return n;
}

static multidictStats stats(multidict *x) {
    multidictStats st;
    ck_assert_int_eq(multidictGetStats(x, &st), DKSHM_OK);
    return st;
}

/* ---- basic operations --------------------------------------------------- */

START_TEST(test_set_get_sizes) {
    static const size_t sizes[] = {0,   1,   7,   8,    9,    63,   64,    65,
                                   511, 512, 513, 1000, 4096, 5000, 100000};
    enum { N = sizeof sizes / sizeof sizes[0] };
    uint8_t *v = malloc(200000), *out = malloc(200000);
    char k[32];
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            size_t len = sizes[(i + round) % N]; /* each key changes size */
            fillValue(v, len, (uint64_t)(i + round * 100));
            size_t kl = keyOf(k, "key", (uint64_t)i);
            ck_assert_int_eq(multidictSet(d, k, kl, v, len), DKSHM_OK);
        }
        for (int i = 0; i < N; i++) {
            size_t len = sizes[(i + round) % N], got = 12345;
            fillValue(v, len, (uint64_t)(i + round * 100));
            size_t kl = keyOf(k, "key", (uint64_t)i);
            ck_assert_int_eq(multidictGet(d, k, kl, out, 200000, &got),
                             DKSHM_OK);
            ck_assert_uint_eq(got, len);
            ck_assert(memcmp(out, v, len) == 0);
        }
        assertCheckDict(d);
    }
    ck_assert_uint_eq(count(d), N);
    assertOwnership(&d, 1);
    free(v);
    free(out);
}
END_TEST

START_TEST(test_get_buffer_sizes) {
    setStr(d, "k", "0123456789");
    char buf[16];
    memset(buf, 'x', sizeof buf);
    size_t len = 0;
    /* Too small: TOOBIG, the length needed, nothing copied. */
    ck_assert_int_eq(multidictGet(d, "k", 1, buf, 9, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 10);
    for (size_t i = 0; i < sizeof buf; i++)
        ck_assert_int_eq(buf[i], 'x');
    /* Zero-length buffer: asks for the length. */
    len = 0;
    ck_assert_int_eq(multidictGet(d, "k", 1, buf, 0, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 10);
    ck_assert_int_eq(multidictGet(d, "k", 1, NULL, 0, &len), DKSHM_TOOBIG);
    ck_assert_uint_eq(len, 10);
    ck_assert_int_eq(buf[0], 'x');
    /* Exact size. */
    ck_assert_int_eq(multidictGet(d, "k", 1, buf, 10, &len), DKSHM_OK);
    ck_assert_uint_eq(len, 10);
    ck_assert(memcmp(buf, "0123456789", 10) == 0);
    /* An empty value fits any buffer, even none. */
    ck_assert_int_eq(multidictSet(d, "e", 1, NULL, 0), DKSHM_OK);
    len = 99;
    ck_assert_int_eq(multidictGet(d, "e", 1, NULL, 0, &len), DKSHM_OK);
    ck_assert_uint_eq(len, 0);
}
END_TEST

/* The get paths specialised by size (keys up to 32 bytes and values up to
 * 64 without calls, the rest with memcmp/memcpy): every key length around
 * those bounds with every value length around them, keys that differ only
 * in their last byte, and buffers one byte short. */
START_TEST(test_get_fast_path_sizes) {
    uint8_t k[48], v[160], out[200];
    for (size_t kl = 1; kl <= 40; kl++) {
        for (size_t vl = 0; vl <= 130; vl += (vl < 70 ? 1 : 29)) {
            memset(k, 'a', kl);
            k[kl - 1] = (uint8_t)vl; /* same prefix, last byte differs */
            fillValue(v, vl, kl * 1000 + vl);
            ck_assert_int_eq(multidictSet(d, k, kl, v, vl), DKSHM_OK);
        }
    }
    for (size_t kl = 1; kl <= 40; kl++) {
        for (size_t vl = 0; vl <= 130; vl += (vl < 70 ? 1 : 29)) {
            memset(k, 'a', kl);
            k[kl - 1] = (uint8_t)vl;
            fillValue(v, vl, kl * 1000 + vl);
            size_t got = 9999;
            memset(out, 0xee, sizeof out);
            ck_assert_int_eq(multidictGet(d, k, kl, out, vl, &got), DKSHM_OK);
            ck_assert_uint_eq(got, vl);
            ck_assert(memcmp(out, v, vl) == 0);
            for (size_t j = vl; j < sizeof out; j++)
                ck_assert_uint_eq(out[j], 0xee); /* nothing past the value */
            if (vl) {
                got = 0;
                memset(out, 0xee, sizeof out);
                ck_assert_int_eq(multidictGet(d, k, kl, out, vl - 1, &got),
                                 DKSHM_TOOBIG);
                ck_assert_uint_eq(got, vl);
                ck_assert_uint_eq(out[0], 0xee);
            }
            k[kl - 1] = 250; /* absent (lengths used: up to 128) */
            ck_assert_int_eq(multidictGet(d, k, kl, out, sizeof out, &got),
                             DKSHM_NOTFOUND);
        }
    }
    assertCheckDict(d);
}
END_TEST

/* ---- the inline get (multidictInline.h) ------------------------------- */

/* This process's count of DKSHM_CTR_READS; false if it is not registered. */
static bool readsCounter(uint64_t *out) {
    return testProcCounter(seg, DKSHM_CTR_READS, out);
}

/* multidictGet with the key length KL as a compile-time constant at each
 * call site, as the inline path needs (1..33: 33 is past what it takes). */
#define GET_CONST(N)                                                           \
    case N:                                                                    \
        return multidictGet(x, k, N, out, cap, got);
static int getConst(multidict *x, const uint8_t *k, size_t kl, uint8_t *out,
                    size_t cap, size_t *got) {
    switch (kl) {
        GET_CONST(1) GET_CONST(2) GET_CONST(3) GET_CONST(4) GET_CONST(5)
        GET_CONST(6) GET_CONST(7) GET_CONST(8) GET_CONST(9) GET_CONST(10)
        GET_CONST(11) GET_CONST(12) GET_CONST(13) GET_CONST(14) GET_CONST(15)
        GET_CONST(16) GET_CONST(17) GET_CONST(18) GET_CONST(19) GET_CONST(20)
        GET_CONST(21) GET_CONST(22) GET_CONST(23) GET_CONST(24) GET_CONST(25)
        GET_CONST(26) GET_CONST(27) GET_CONST(28) GET_CONST(29) GET_CONST(30)
        GET_CONST(31) GET_CONST(32) GET_CONST(33)
    }
    return -1000;
}
#undef GET_CONST

/* Every key length the inline path takes (and one past), values around its
 * 64-byte limit: the same results, bytes and lengths as the library's
 * function, (multidictGet), for present, absent and too-small buffers;
 * and again with the handle's view turned off (a library of another
 * layout), which sends every get to the library. Each get is counted
 * once. */
static void checkInlineGets(multidict *x) {
    uint8_t k[40], v[100], out[120], out2[120];
    for (size_t kl = 1; kl <= 33; kl++) {
        for (size_t vl = 0; vl <= 66; vl += (vl < 30 ? 7 : 1)) {
            memset(k, 'i', kl);
            k[kl - 1] = (uint8_t)vl;
            fillValue(v, vl, kl * 1000 + vl);
            uint64_t r0 = 0, r1 = 0;
            ck_assert(readsCounter(&r0));
            size_t got = 9999, got2 = 9999;
            memset(out, 0xee, sizeof out);
            ck_assert_int_eq(getConst(x, k, kl, out, vl, &got), DKSHM_OK);
            ck_assert_uint_eq(got, vl);
            ck_assert(memcmp(out, v, vl) == 0);
            ck_assert_uint_eq(out[vl], 0xee); /* nothing past the value */
            ck_assert(readsCounter(&r1));
            ck_assert_uint_eq(r1, r0 + 1);
            if (vl) {
                memset(out, 0xee, sizeof out);
                ck_assert_int_eq(getConst(x, k, kl, out, vl - 1, &got),
                                 DKSHM_TOOBIG);
                ck_assert_int_eq((multidictGet)(x, k, kl, out2, vl - 1, &got2),
                                 DKSHM_TOOBIG);
                ck_assert_uint_eq(got, vl);
                ck_assert_uint_eq(got2, vl);
                ck_assert_uint_eq(out[0], 0xee);
                ck_assert_int_eq(getConst(x, k, kl, NULL, 0, &got),
                                 DKSHM_TOOBIG);
                ck_assert_uint_eq(got, vl);
            }
            k[kl - 1] = 250; /* absent */
            ck_assert_int_eq(getConst(x, k, kl, out, sizeof out, &got),
                             DKSHM_NOTFOUND);
            ck_assert_int_eq(getConst(x, k, kl, NULL, 5, &got),
                             DKSHM_INVALID);
            ck_assert_int_eq(getConst(x, NULL, kl, out, sizeof out, &got),
                             DKSHM_INVALID);
            ck_assert_int_eq(getConst(x, k, kl, out, sizeof out, NULL),
                             DKSHM_INVALID);
        }
    }
}

START_TEST(test_get_inline) {
#if defined(__OPTIMIZE__) && !defined(__SANITIZE_THREAD__)
    /* This build compiles the inline path into the calls above (the
     * optimised, non-TSan builds make check runs); else they are calls. */
    ck_assert(MULTIDICT_INLINE_OK_ == 1);
#endif
    uint8_t k[40], v[100];
    for (size_t kl = 1; kl <= 33; kl++) {
        for (size_t vl = 0; vl <= 66; vl += (vl < 30 ? 7 : 1)) {
            memset(k, 'i', kl);
            k[kl - 1] = (uint8_t)vl;
            fillValue(v, vl, kl * 1000 + vl);
            ck_assert_int_eq(multidictSet(d, k, kl, v, vl), DKSHM_OK);
        }
    }
    checkInlineGets(d);
    multidictView_ *view = (multidictView_ *)(void *)d;
    ck_assert_uint_eq(view->abi, MULTIDICT_VIEW_ABI_);
    view->abi = MULTIDICT_VIEW_ABI_ + 1; /* as a newer library would */
    checkInlineGets(d);
    view->abi = MULTIDICT_VIEW_ABI_;
    /* A cache's gets set CLOCK bits: its handles send them all to the
     * library. */
    multidict *c = openDict("inline-cache", 2, 1 << 20);
    ck_assert_uint_eq(((multidictView_ *)(void *)c)->abi, 0);
    multidictClose(c);
    assertCheckDict(d);
}
END_TEST

/* A forked child that has not registered with the segment counts nothing,
 * as the library does, and never in its parent's slot; once it writes
 * (and so registers) its gets count in its own slot. */
static int inlineGetsInChild(void *arg) {
    (void)arg;
    uint8_t out[8];
    size_t got;
    uint64_t parentReads = 0, mine = 0;
    if (!readsCounter(&parentReads)) /* our pid is not registered yet */
        parentReads = 0;
    for (int i = 0; i < 10; i++)
        if (multidictGet(d, "fk", 2, out, sizeof out, &got) != DKSHM_OK)
            return 1;
    if (readsCounter(&mine))
        return 2; /* a get registered the process: it must not */
    if (multidictSet(d, "fk2", 3, "v", 1) != DKSHM_OK)
        return 3;
    for (int i = 0; i < 10; i++)
        if (multidictGet(d, "fk", 2, out, sizeof out, &got) != DKSHM_OK)
            return 4;
    if (!readsCounter(&mine) || mine != 10)
        return 5;
    return 0;
}

START_TEST(test_get_inline_fork_counts) {
    ck_assert_int_eq(multidictSet(d, "fk", 2, "value", 5), DKSHM_OK);
    uint64_t before = 0, after = 0;
    ck_assert(readsCounter(&before));
    ck_assert_int_eq(testInChild(inlineGetsInChild, NULL), 0);
    ck_assert(readsCounter(&after));
    ck_assert_uint_eq(after, before);
}
END_TEST

START_TEST(test_add_replace_delete) {
    ck_assert_int_eq(multidictReplace(d, "a", 1, "1", 1), DKSHM_NOTFOUND);
    assertAbsent(d, "a");
    ck_assert_int_eq(multidictAdd(d, "a", 1, "1", 1), DKSHM_OK);
    ck_assert_int_eq(multidictAdd(d, "a", 1, "2", 1), DKSHM_EXISTS);
    assertValue(d, "a", "1");
    ck_assert_int_eq(multidictReplace(d, "a", 1, "33", 2), DKSHM_OK);
    assertValue(d, "a", "33");
    ck_assert_int_eq(multidictPut(d, "a", 1, "4", 1, 0, MULTIDICT_REPLACE),
                     DKSHM_OK);
    assertValue(d, "a", "4");
    ck_assert_int_eq(multidictPut(d, "b", 1, "5", 1, 0, MULTIDICT_ADD),
                     DKSHM_OK);
    ck_assert_int_eq(multidictPut(d, "b", 1, "5", 1, 0, 7), DKSHM_INVALID);
    ck_assert_uint_eq(count(d), 2);
    ck_assert_int_eq(multidictDelete(d, "a", 1), DKSHM_OK);
    ck_assert_int_eq(multidictDelete(d, "a", 1), DKSHM_NOTFOUND);
    assertAbsent(d, "a");
    ck_assert_uint_eq(count(d), 1);
    ck_assert_int_eq(multidictAdd(d, "a", 1, "6", 1), DKSHM_OK);
    assertValue(d, "a", "6");
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

START_TEST(test_incr) {
    int64_t r = 0;
    ck_assert_int_eq(multidictIncr(d, "c", 1, 5, &r), DKSHM_OK); /* created */
    ck_assert_int_eq(r, 5);
    ck_assert_int_eq(multidictIncr(d, "c", 1, -7, &r), DKSHM_OK);
    ck_assert_int_eq(r, -2);
    ck_assert_int_eq(multidictIncr(d, "c", 1, 2, NULL), DKSHM_OK);
    int64_t v = 1;
    size_t len = 0;
    ck_assert_int_eq(multidictGet(d, "c", 1, &v, sizeof v, &len), DKSHM_OK);
    ck_assert_uint_eq(len, 8);
    ck_assert_int_eq(v, 0);
    /* Overflow: INVALID, nothing changed. */
    int64_t big = INT64_MAX;
    ck_assert_int_eq(multidictSet(d, "m", 1, &big, 8), DKSHM_OK);
    ck_assert_int_eq(multidictIncr(d, "m", 1, 1, &r), DKSHM_INVALID);
    ck_assert_int_eq(multidictGet(d, "m", 1, &v, sizeof v, &len), DKSHM_OK);
    ck_assert_int_eq(v, INT64_MAX);
    ck_assert_int_eq(multidictIncr(d, "m", 1, INT64_MIN, &r), DKSHM_OK);
    ck_assert_int_eq(r, -1);
    /* Not an int64: TYPE. */
    setStr(d, "s", "hello");
    ck_assert_int_eq(multidictIncr(d, "s", 1, 1, &r), DKSHM_TYPE);
    assertValue(d, "s", "hello");
    ck_assert_int_eq(multidictSet(d, "z", 1, NULL, 0), DKSHM_OK);
    ck_assert_int_eq(multidictIncr(d, "z", 1, 1, &r), DKSHM_TYPE);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

START_TEST(test_compare_and_set) {
    ck_assert_int_eq(multidictCompareAndSet(d, "k", 1, "a", 1, "b", 1),
                     DKSHM_NOTFOUND);
    setStr(d, "k", "old");
    ck_assert_int_eq(multidictCompareAndSet(d, "k", 1, "olD", 3, "new", 3),
                     DKSHM_EXISTS);
    ck_assert_int_eq(multidictCompareAndSet(d, "k", 1, "ol", 2, "new", 3),
                     DKSHM_EXISTS);
    assertValue(d, "k", "old");
    ck_assert_int_eq(multidictCompareAndSet(d, "k", 1, "old", 3, "new", 3),
                     DKSHM_OK);
    assertValue(d, "k", "new");
    /* To a larger value (a new block) and back to empty. */
    char big[300];
    memset(big, 'q', sizeof big);
    ck_assert_int_eq(
        multidictCompareAndSet(d, "k", 1, "new", 3, big, sizeof big), DKSHM_OK);
    ck_assert_int_eq(
        multidictCompareAndSet(d, "k", 1, big, sizeof big, NULL, 0), DKSHM_OK);
    size_t len = 9;
    ck_assert_int_eq(multidictGet(d, "k", 1, NULL, 0, &len), DKSHM_OK);
    ck_assert_uint_eq(len, 0);
    ck_assert_int_eq(multidictCompareAndSet(d, "k", 1, NULL, 0, "x", 1),
                     DKSHM_OK);
    assertValue(d, "k", "x");
    ck_assert_int_eq(multidictCompareAndSet(d, "k", 1, NULL, 3, "x", 1),
                     DKSHM_INVALID);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

typedef struct iterCtx {
    uint64_t seen, bytes, stopAt;
    uint8_t *mark; /* per key index */
    bool bad;
} iterCtx;

static bool iterFn(void *ctx, const void *key, size_t klen, const void *value,
                   size_t vlen) {
    iterCtx *c = ctx;
    char k[32];
    if (klen >= sizeof k) {
        c->bad = true;
        return false;
    }
    memcpy(k, key, klen);
    k[klen] = '\0';
    unsigned long i = strtoul(k + 1, NULL, 10);
    char want[32];
    int wl = snprintf(want, sizeof want, "value-%lu", i);
    if (vlen != (size_t)wl || memcmp(value, want, vlen) != 0 || c->mark[i])
        c->bad = true;
    c->mark[i] = 1;
    c->seen++;
    c->bytes += vlen;
    return c->stopAt == 0 || c->seen < c->stopAt;
}

START_TEST(test_count_iterate) {
    enum { N = 3000 };
    char k[32], v[32];
    for (int i = 0; i < N; i++) {
        size_t kl = keyOf(k, "k", (uint64_t)i);
        int vl = snprintf(v, sizeof v, "value-%d", i);
        ck_assert_int_eq(multidictSet(d, k, kl, v, (size_t)vl), DKSHM_OK);
    }
    ck_assert_uint_eq(count(d), N);
    iterCtx c = {.mark = calloc(N, 1)};
    ck_assert_int_eq(multidictIterate(d, iterFn, &c), DKSHM_OK);
    ck_assert(!c.bad);
    ck_assert_uint_eq(c.seen, N);
    memset(c.mark, 0, N);
    c.seen = 0;
    c.stopAt = 10;
    ck_assert_int_eq(multidictIterate(d, iterFn, &c), DKSHM_OK);
    ck_assert_uint_eq(c.seen, 10);
    free(c.mark);
    ck_assert_int_eq(multidictIterate(d, NULL, &c), DKSHM_INVALID);
    ck_assert_int_eq(multidictCount(d, NULL), DKSHM_INVALID);
}
END_TEST

/* A callback may write to the dict it iterates. */
static bool deleteFn(void *ctx, const void *key, size_t klen, const void *value,
                     size_t vlen) {
    (void)value;
    (void)vlen;
    multidict *x = ctx;
    return multidictDelete(x, key, klen) == DKSHM_OK;
}

static bool countFn(void *ctx, const void *key, size_t klen, const void *value,
                    size_t vlen) {
    (void)key;
    (void)klen;
    (void)value;
    (void)vlen;
    ++*(uint64_t *)ctx;
    return true;
}

START_TEST(test_iterate_and_write) {
    char k[32];
    for (int i = 0; i < 500; i++) {
        size_t kl = keyOf(k, "k", (uint64_t)i);
        ck_assert_int_eq(multidictSet(d, k, kl, "v", 1), DKSHM_OK);
    }
    ck_assert_int_eq(multidictIterate(d, deleteFn, d), DKSHM_OK);
    ck_assert_uint_eq(count(d), 0);
    assertCheckDict(d);
}
END_TEST

START_TEST(test_clear) {
    multidict *base[1] = {d};
    char k[32];
    for (int i = 0; i < 5000; i++) {
        size_t kl = keyOf(k, "k", (uint64_t)i);
        ck_assert_int_eq(multidictSet(d, k, kl, k, kl), DKSHM_OK);
    }
    ck_assert_int_eq(multidictClear(d), DKSHM_OK);
    ck_assert_uint_eq(count(d), 0);
    assertAbsent(d, "k7");
    assertCheckDict(d);
    assertOwnership(base, 1);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), 1); /* the root */
    ck_assert_int_eq(multidictClear(d), DKSHM_OK);            /* empty */
    setStr(d, "again", "yes");
    assertValue(d, "again", "yes");
    assertCheckDict(d);
}
END_TEST

START_TEST(test_binary_and_long_keys) {
    uint8_t k1[] = {0, 1, 0, 2}, k2[] = {0, 1, 0, 3}, k3[] = {0};
    ck_assert_int_eq(multidictSet(d, k1, sizeof k1, "a", 1), DKSHM_OK);
    ck_assert_int_eq(multidictSet(d, k2, sizeof k2, "b", 1), DKSHM_OK);
    ck_assert_int_eq(multidictSet(d, k3, sizeof k3, "c", 1), DKSHM_OK);
    char v[2];
    size_t len;
    ck_assert_int_eq(multidictGet(d, k2, sizeof k2, v, 2, &len), DKSHM_OK);
    ck_assert_int_eq(v[0], 'b');
    ck_assert_int_eq(multidictGet(d, k1, 3, v, 2, &len), DKSHM_NOTFOUND);
    /* Prefixes and near-misses of the same length are different keys. */
    ck_assert_int_eq(multidictSet(d, "abcdefgh1", 9, "x", 1), DKSHM_OK);
    assertAbsent(d, "abcdefgh2");
    assertAbsent(d, "abcdefgh");
    /* The longest key, and one byte more. */
    uint8_t *big = malloc(MULTIDICT_KEY_MAX + 1);
    fillValue(big, MULTIDICT_KEY_MAX + 1, 5);
    ck_assert_int_eq(multidictSet(d, big, MULTIDICT_KEY_MAX, "L", 1), DKSHM_OK);
    ck_assert_int_eq(multidictGet(d, big, MULTIDICT_KEY_MAX, v, 2, &len),
                     DKSHM_OK);
    ck_assert_int_eq(v[0], 'L');
    ck_assert_int_eq(multidictSet(d, big, MULTIDICT_KEY_MAX + 1, "L", 1),
                     DKSHM_TOOBIG);
    ck_assert_int_eq(multidictGet(d, big, MULTIDICT_KEY_MAX + 1, v, 2, &len),
                     DKSHM_TOOBIG);
    ck_assert_int_eq(multidictDelete(d, big, MULTIDICT_KEY_MAX), DKSHM_OK);
    free(big);
    assertCheckDict(d);
}
END_TEST

START_TEST(test_stats) {
    multidictStats st = stats(d);
    ck_assert_uint_eq(st.shards, MULTIDICT_SHARDS_DEFAULT);
    ck_assert_uint_eq(st.count, 0);
    char k[32];
    uint8_t v[64] = {0};
    for (int i = 0; i < 1000; i++) {
        size_t kl = keyOf(k, "key-", (uint64_t)i);
        ck_assert_int_eq(multidictSet(d, k, kl, v, sizeof v), DKSHM_OK);
    }
    st = stats(d);
    ck_assert_uint_eq(st.count, 1000);
    ck_assert_uint_gt(st.bytes, 1000 * (16 + 64)); /* header + value */
    ck_assert_uint_ge(st.slots * 3, (st.count + st.tombstones) * 4);
    ck_assert_uint_gt(st.resizes, 0);
    ck_assert_uint_le(st.minShardCount, st.maxShardCount);
    ck_assert(st.maxLoad > 0 && st.maxLoad <= 0.75);
    ck_assert_uint_eq(st.maxBytes, 0);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < st.shards; i++) {
        multidictShardStats ss;
        ck_assert_int_eq(multidictGetShardStats(d, i, &ss), DKSHM_OK);
        sum += ss.count;
        ck_assert(!ss.locked);
    }
    ck_assert_uint_eq(sum, 1000);
    multidictShardStats ss;
    ck_assert_int_eq(multidictGetShardStats(d, st.shards, &ss), DKSHM_INVALID);
    ck_assert_int_eq(multidictGetStats(d, NULL), DKSHM_INVALID);
}
END_TEST

START_TEST(test_open_by_name) {
    setStr(d, "shared", "yes");
    multidict *d2 = NULL;
    ck_assert_int_eq(multidictOpen(seg, "dict", NULL, 0, &d2), DKSHM_OK);
    assertValue(d2, "shared", "yes");
    setStr(d2, "back", "also");
    assertValue(d, "back", "also");
    ck_assert_int_eq(multidictClose(d2), DKSHM_OK);
    ck_assert_int_eq(multidictClose(NULL), DKSHM_OK);
    /* EXCL on an existing name; CREATE on an existing name opens it. */
    ck_assert_int_eq(multidictOpen(seg, "dict", NULL,
                                   MULTIDICT_CREATE | MULTIDICT_EXCL, &d2),
                     DKSHM_EXISTS);
    ck_assert_ptr_null(d2);
    ck_assert_int_eq(multidictOpen(seg, "dict", NULL, MULTIDICT_CREATE, &d2),
                     DKSHM_OK);
    assertValue(d2, "shared", "yes");
    multidictClose(d2);
    /* Shards and options are fixed at creation. */
    multidictOptions o = {.shards = 4};
    ck_assert_int_eq(
        multidictOpen(seg, "four", &o, MULTIDICT_CREATE | MULTIDICT_EXCL, &d2),
        DKSHM_OK);
    ck_assert_uint_eq(stats(d2).shards, 4);
    multidictClose(d2);
    o.shards = 64;
    ck_assert_int_eq(multidictOpen(seg, "four", &o, MULTIDICT_CREATE, &d2),
                     DKSHM_OK);
    ck_assert_uint_eq(stats(d2).shards, 4);
    multidictClose(d2);
    o.shards = 1;
    ck_assert_int_eq(multidictOpen(seg, "one", &o, MULTIDICT_CREATE, &d2),
                     DKSHM_OK);
    setStr(d2, "x", "1");
    assertCheckDict(d2);
    multidictClose(d2);
}
END_TEST

/* Many processes open-or-create the same name at once: one creates, all
 * use the same map, and no root is leaked. */
static int raceOpen(void *arg) {
    (void)arg;
    multidict *x;
    int rc = multidictOpen(seg, "raced", NULL, MULTIDICT_CREATE, &x);
    if (rc != DKSHM_OK)
        return 10;
    char k[32];
    size_t kl = keyOf(k, "p", (uint64_t)getpid());
    rc = multidictSet(x, k, kl, "v", 1);
    multidictClose(x);
    return rc == DKSHM_OK ? 0 : 11;
}

START_TEST(test_open_race) {
    pid_t pids[6];
    for (int i = 0; i < 6; i++) {
        fflush(NULL);
        pids[i] = fork();
        ck_assert_int_ge(pids[i], 0);
        if (pids[i] == 0)
            _exit(raceOpen(NULL));
    }
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(testWait(pids[i]), 0);
    multidict *x = NULL;
    ck_assert_int_eq(multidictOpen(seg, "raced", NULL, 0, &x), DKSHM_OK);
    ck_assert_uint_eq(count(x), 6);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    multidict *all[2] = {d, x};
    assertOwnership(all, 2);
    multidictClose(x);
}
END_TEST

/* ---- bad input ---------------------------------------------------------- */

START_TEST(test_bad_input) {
    char buf[8];
    size_t len;
    int64_t r;
    /* Null handle. */
    ck_assert_int_eq(multidictGet(NULL, "k", 1, buf, 8, &len), DKSHM_INVALID);
    ck_assert_int_eq(multidictSet(NULL, "k", 1, "v", 1), DKSHM_INVALID);
    ck_assert_int_eq(multidictAdd(NULL, "k", 1, "v", 1), DKSHM_INVALID);
    ck_assert_int_eq(multidictReplace(NULL, "k", 1, "v", 1), DKSHM_INVALID);
    ck_assert_int_eq(multidictSetTTL(NULL, "k", 1, "v", 1, 5), DKSHM_INVALID);
    ck_assert_int_eq(multidictDelete(NULL, "k", 1), DKSHM_INVALID);
    ck_assert_int_eq(multidictIncr(NULL, "k", 1, 1, &r), DKSHM_INVALID);
    ck_assert_int_eq(multidictCompareAndSet(NULL, "k", 1, "a", 1, "b", 1),
                     DKSHM_INVALID);
    ck_assert_int_eq(multidictClear(NULL), DKSHM_INVALID);
    ck_assert_int_eq(multidictCheck(NULL, NULL, 0), DKSHM_INVALID);
    uint64_t n;
    ck_assert_int_eq(multidictCount(NULL, &n), DKSHM_INVALID);
    /* Null and zero-length keys, too-long keys. */
    ck_assert_int_eq(multidictGet(d, NULL, 1, buf, 8, &len), DKSHM_INVALID);
    ck_assert_int_eq(multidictGet(d, "k", 0, buf, 8, &len), DKSHM_INVALID);
    ck_assert_int_eq(multidictSet(d, NULL, 1, "v", 1), DKSHM_INVALID);
    ck_assert_int_eq(multidictSet(d, "k", 0, "v", 1), DKSHM_INVALID);
    ck_assert_int_eq(multidictDelete(d, "k", 0), DKSHM_INVALID);
    ck_assert_int_eq(multidictIncr(d, NULL, 3, 1, &r), DKSHM_INVALID);
    ck_assert_int_eq(multidictSet(d, "k", MULTIDICT_KEY_MAX + 1ul, "v", 1),
                     DKSHM_TOOBIG);
    ck_assert_int_eq(multidictDelete(d, "k", SIZE_MAX), DKSHM_TOOBIG);
    /* Null buffers and lengths. */
    ck_assert_int_eq(multidictGet(d, "k", 1, NULL, 8, &len), DKSHM_INVALID);
    ck_assert_int_eq(multidictGet(d, "k", 1, buf, 8, NULL), DKSHM_INVALID);
    ck_assert_int_eq(multidictSet(d, "k", 1, NULL, 1), DKSHM_INVALID);
    ck_assert_int_eq(multidictCompareAndSet(d, "k", 1, "a", 1, NULL, 2),
                     DKSHM_INVALID);
    /* A value that can never fit. */
    ck_assert_int_eq(multidictSet(d, "k", 1, "v", SIZE_MAX / 2), DKSHM_TOOBIG);
    /* Nothing was stored by any of this. */
    ck_assert_uint_eq(count(d), 0);
    /* Open: bad arguments, names, flags and options. */
    multidict *x = (multidict *)1;
    ck_assert_int_eq(multidictOpen(NULL, "x", NULL, MULTIDICT_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(multidictOpen(seg, "x", NULL, MULTIDICT_CREATE, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(multidictOpen(seg, NULL, NULL, MULTIDICT_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multidictOpen(seg, "", NULL, MULTIDICT_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multidictOpen(seg, "a b", NULL, MULTIDICT_CREATE, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(multidictOpen(seg, "x", NULL, 0x100, &x), DKSHM_INVALID);
    ck_assert_int_eq(multidictOpen(seg, "x", NULL, MULTIDICT_EXCL, &x),
                     DKSHM_INVALID);
    multidictOptions o = {.shards = 3};
    ck_assert_int_eq(multidictOpen(seg, "x", &o, MULTIDICT_CREATE, &x),
                     DKSHM_INVALID);
    o.shards = MULTIDICT_SHARDS_MAX * 2;
    ck_assert_int_eq(multidictOpen(seg, "x", &o, MULTIDICT_CREATE, &x),
                     DKSHM_INVALID);
    o = (multidictOptions){.flags = 1};
    ck_assert_int_eq(multidictOpen(seg, "x", &o, MULTIDICT_CREATE, &x),
                     DKSHM_INVALID);
    /* A missing name without CREATE. */
    ck_assert_int_eq(multidictOpen(seg, "missing", NULL, 0, &x),
                     DKSHM_NOTFOUND);
    ck_assert_ptr_null(x);
    assertOwnership(&d, 1); /* no root left behind */
}
END_TEST

START_TEST(test_wrong_type) {
    dkoff root;
    ck_assert_int_eq(memboundAllocOff(mb, 64, &root), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(seg, "other", DKSHM_TYPE_USER, root),
                     DKSHM_OK);
    multidict *x = NULL;
    ck_assert_int_eq(multidictOpen(seg, "other", NULL, 0, &x), DKSHM_TYPE);
    ck_assert_int_eq(multidictOpen(seg, "other", NULL, MULTIDICT_CREATE, &x),
                     DKSHM_TYPE);
    ck_assert_ptr_null(x);
    /* A multidict entry whose root is not a multidict: CORRUPT. */
    ck_assert_int_eq(dkshmObjectCreate(seg, "fake", MULTIDICT_TYPE, root),
                     DKSHM_OK);
    ck_assert_int_eq(multidictOpen(seg, "fake", NULL, 0, &x), DKSHM_CORRUPT);
    ck_assert_ptr_null(x);
}
END_TEST

START_TEST(test_read_only) {
    setStr(d, "k", "v");
    int64_t r;
    ck_assert_int_eq(multidictIncr(d, "n", 1, 3, &r), DKSHM_OK);
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multidict *x = NULL;
    ck_assert_int_eq(multidictOpen(ro, "missing", NULL, MULTIDICT_CREATE, &x),
                     DKSHM_READONLY);
    ck_assert_int_eq(multidictOpen(ro, "dict", NULL, 0, &x), DKSHM_OK);
    char buf[8];
    size_t len;
    ck_assert_int_eq(multidictGet(x, "k", 1, buf, sizeof buf, &len), DKSHM_OK);
    ck_assert_uint_eq(len, 1);
    ck_assert_uint_eq(count(x), 2);
    ck_assert_int_eq(multidictSet(x, "k", 1, "w", 1), DKSHM_READONLY);
    ck_assert_int_eq(multidictAdd(x, "q", 1, "w", 1), DKSHM_READONLY);
    ck_assert_int_eq(multidictDelete(x, "k", 1), DKSHM_READONLY);
    ck_assert_int_eq(multidictIncr(x, "n", 1, 1, &r), DKSHM_READONLY);
    ck_assert_int_eq(multidictCompareAndSet(x, "k", 1, "v", 1, "w", 1),
                     DKSHM_READONLY);
    ck_assert_int_eq(multidictClear(x), DKSHM_READONLY);
    uint64_t seen = 0;
    ck_assert_int_eq(multidictIterate(x, countFn, &seen), DKSHM_OK);
    ck_assert_uint_eq(seen, 2);
    multidictStats st;
    ck_assert_int_eq(multidictGetStats(x, &st), DKSHM_OK);
    ck_assert_uint_eq(st.count, 2);
    assertCheckDict(x);
    multidictClose(x);
    dkshmDetach(ro);
    assertValue(d, "k", "v");
}
END_TEST

/* A segment too small for one more entry: FULL, nothing changed. */
START_TEST(test_full_segment) {
    remakeFixture("full", 1 * MiB, "dict", 0);
    uint8_t v[1000];
    char k[32];
    int i, rc = DKSHM_OK;
    for (i = 0; i < 100000; i++) {
        fillValue(v, sizeof v, (uint64_t)i);
        size_t kl = keyOf(k, "k", (uint64_t)i);
        if ((rc = multidictSet(d, k, kl, v, sizeof v)) != DKSHM_OK)
            break;
    }
    ck_assert_int_eq(rc, DKSHM_FULL);
    ck_assert_int_gt(i, 100);
    uint64_t n = count(d);
    ck_assert_uint_eq(n, (uint64_t)i);
    size_t used = memboundBytesUsed(mb),
           allocs = memboundCurrentAllocationCount(mb);
    /* More failures: a new key, a larger value for an old key. */
    size_t kl = keyOf(k, "k", (uint64_t)i);
    ck_assert_int_eq(multidictSet(d, k, kl, v, sizeof v), DKSHM_FULL);
    ck_assert_int_eq(multidictAdd(d, k, kl, v, sizeof v), DKSHM_FULL);
    /* Larger than any block a failed 1 KiB slab can have left free. */
    uint8_t bigger[20000] = {1};
    ck_assert_int_eq(multidictSet(d, "k0", 2, bigger, sizeof bigger),
                     DKSHM_FULL);
    ck_assert_uint_eq(memboundBytesUsed(mb), used);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), allocs);
    ck_assert_uint_eq(count(d), n);
    uint8_t out[1000];
    size_t len;
    ck_assert_int_eq(multidictGet(d, k, kl, out, sizeof out, &len),
                     DKSHM_NOTFOUND);
    fillValue(v, sizeof v, 0);
    ck_assert_int_eq(multidictGet(d, "k0", 2, out, sizeof out, &len), DKSHM_OK);
    ck_assert(memcmp(out, v, sizeof v) == 0);
    /* Take what the failed 1 KiB slab left free (smaller blocks), so
     * that no new block of any size fits. */
    static void *fill[4096];
    int nFill = 0;
    for (size_t sz = 16384; sz >= 16; sz /= 2)
        while (nFill < 4096 && (fill[nFill] = memboundAlloc(mb, sz)))
            nFill++;
    ck_assert_int_lt(nFill, 4096);
    /* A value too big to be rewritten in place needs room for its new
     * copy, as does one of another padded length. */
    ck_assert_int_eq(multidictSet(d, "k0", 2, v, sizeof v), DKSHM_FULL);
    ck_assert_int_eq(multidictSet(d, "k2", 2, v, 100), DKSHM_FULL);
    int64_t r;
    ck_assert_int_eq(multidictIncr(d, "k3", 2, 1, &r), DKSHM_TYPE);
    while (nFill > 0)
        memboundFree(mb, fill[--nFill]);
    ck_assert_int_eq(multidictDelete(d, "k1", 2), DKSHM_OK);
    ck_assert_int_eq(multidictSet(d, "k0", 2, v, sizeof v), DKSHM_OK);
    ck_assert_int_eq(multidictSet(d, k, kl, v, sizeof v), DKSHM_OK);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

/* ---- TTL ---------------------------------------------------------------- */

START_TEST(test_ttl_expiry) {
    ck_assert_int_eq(multidictSetTTL(d, "t", 1, "v", 1, 40), DKSHM_OK);
    ck_assert_int_eq(multidictPut(d, "p", 1, "v", 1, 0, MULTIDICT_SET),
                     DKSHM_OK);
    assertValue(d, "t", "v");
    testSleepMs(120);
    assertAbsent(d, "t");
    assertValue(d, "p", "v"); /* no TTL: never expires */
    /* The get reclaimed it. */
    ck_assert_uint_eq(count(d), 1);
    ck_assert_uint_ge(stats(d).expirations, 1);
    /* Expired keys behave as absent for every operation. */
    ck_assert_int_eq(multidictSetTTL(d, "a", 1, "1", 1, 30), DKSHM_OK);
    ck_assert_int_eq(multidictSetTTL(d, "r", 1, "1", 1, 30), DKSHM_OK);
    ck_assert_int_eq(multidictSetTTL(d, "c", 1, "1", 1, 30), DKSHM_OK);
    int64_t one = 1;
    ck_assert_int_eq(multidictPut(d, "i", 1, &one, 8, 30, MULTIDICT_SET),
                     DKSHM_OK);
    ck_assert_int_eq(multidictSetTTL(d, "x", 1, "1", 1, 30), DKSHM_OK);
    testSleepMs(100);
    ck_assert_int_eq(multidictAdd(d, "a", 1, "2", 1), DKSHM_OK);
    assertValue(d, "a", "2");
    ck_assert_int_eq(multidictReplace(d, "r", 1, "2", 1), DKSHM_NOTFOUND);
    ck_assert_int_eq(multidictCompareAndSet(d, "c", 1, "1", 1, "2", 1),
                     DKSHM_NOTFOUND);
    int64_t res;
    ck_assert_int_eq(multidictIncr(d, "i", 1, 5, &res), DKSHM_OK);
    ck_assert_int_eq(res, 5);
    ck_assert_int_eq(multidictDelete(d, "x", 1), DKSHM_NOTFOUND);
    assertCheckDict(d);
    /* An entry overwritten without TTL loses it; with a new one, gets it. */
    ck_assert_int_eq(multidictSetTTL(d, "k", 1, "v", 1, 40), DKSHM_OK);
    setStr(d, "k", "w");
    ck_assert_int_eq(multidictSetTTL(d, "j", 1, "v", 1, 10000), DKSHM_OK);
    ck_assert_int_eq(multidictSetTTL(d, "j", 1, "w", 1, 40), DKSHM_OK);
    testSleepMs(100);
    assertValue(d, "k", "w");
    assertAbsent(d, "j");
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

/* Expired entries nobody reads are reclaimed by writes (the sweep) and are
 * never seen by iterate. */
START_TEST(test_ttl_sweep) {
    multidict *x = openDict("sweep", 1, 0), *all[2] = {d, x};
    multidict *keep = d;
    d = x;
    char k[32];
    for (int i = 0; i < 200; i++) {
        size_t kl = keyOf(k, "t", (uint64_t)i);
        ck_assert_int_eq(multidictSetTTL(d, k, kl, "v", 1, 30), DKSHM_OK);
    }
    for (int i = 0; i < 20; i++) {
        size_t kl = keyOf(k, "p", (uint64_t)i);
        ck_assert_int_eq(multidictSet(d, k, kl, "v", 1), DKSHM_OK);
    }
    testSleepMs(100);
    uint64_t live = 0;
    ck_assert_int_eq(multidictIterate(d, countFn, &live), DKSHM_OK);
    ck_assert_uint_eq(live, 20);      /* expired: never seen */
    ck_assert_uint_eq(count(d), 220); /* nobody reclaimed them yet */
    /* Writes sweep: each reclaims up to 2 expired among 8 slots. */
    for (int round = 0; round < 200 && count(d) > 20; round++) {
        size_t kl = keyOf(k, "p", (uint64_t)(round % 20));
        ck_assert_int_eq(multidictSet(d, k, kl, "w", 1), DKSHM_OK);
    }
    ck_assert_uint_eq(count(d), 20);
    ck_assert_uint_ge(stats(d).expirations, 200);
    assertCheckDict(d);
    assertOwnership(all, 2);
    d = keep;
    multidictClose(x);
}
END_TEST

START_TEST(test_ttl_iterate) {
    char k[32];
    for (int i = 0; i < 50; i++) {
        size_t kl = keyOf(k, "t", (uint64_t)i);
        ck_assert_int_eq(multidictSetTTL(d, k, kl, "v", 1, 30), DKSHM_OK);
        kl = keyOf(k, "p", (uint64_t)i);
        ck_assert_int_eq(multidictSet(d, k, kl, "v", 1), DKSHM_OK);
    }
    uint64_t n = 0;
    ck_assert_int_eq(multidictIterate(d, countFn, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 100);
    testSleepMs(100);
    n = 0;
    ck_assert_int_eq(multidictIterate(d, countFn, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 50);
}
END_TEST

/* ---- cache -------------------------------------------------------------- */

START_TEST(test_cache_bound) {
    const uint64_t bound = 256 * 1024;
    multidict *keep = d;
    d = openDict("cache", 4, bound);
    multidict *all[2] = {keep, d};
    uint8_t v[100];
    char k[32];
    for (int i = 0; i < 20000; i++) {
        fillValue(v, sizeof v, (uint64_t)i);
        size_t kl = keyOf(k, "k", (uint64_t)i);
        int rc = multidictSet(d, k, kl, v, sizeof v);
        ck_assert_msg(rc == DKSHM_OK, "set %d: %s", i, dkshmErrName(rc));
    }
    multidictStats st = stats(d);
    ck_assert_uint_le(st.bytes, bound);
    ck_assert_uint_gt(st.bytes, bound / 2);
    ck_assert_uint_gt(st.evictions, 10000);
    ck_assert_uint_eq(st.maxBytes, bound);
    /* The newest keys are there, the oldest are gone. */
    uint8_t out[100];
    size_t len;
    fillValue(v, sizeof v, 19999);
    ck_assert_int_eq(multidictGet(d, "k19999", 6, out, sizeof out, &len),
                     DKSHM_OK);
    ck_assert(memcmp(out, v, sizeof v) == 0);
    assertAbsent(d, "k0");
    /* An entry larger than a shard's share can never fit. */
    uint8_t *huge = calloc(1, bound);
    ck_assert_int_eq(multidictSet(d, "huge", 4, huge, bound / 4), DKSHM_TOOBIG);
    free(huge);
    assertCheckDict(d);
    assertOwnership(all, 2);
    multidictClose(d);
    d = keep;
}
END_TEST

/* CLOCK keeps what is read: a hot set read between inserts survives a
 * stream of cold inserts far larger than the cache. */
START_TEST(test_cache_clock) {
    multidict *keep = d;
    d = openDict("clock", 1, 64 * 1024);
    uint8_t v[64] = {0};
    char k[32];
    enum { HOT = 40 };
    for (int i = 0; i < HOT; i++) {
        size_t kl = keyOf(k, "hot", (uint64_t)i);
        ck_assert_int_eq(multidictSet(d, k, kl, v, sizeof v), DKSHM_OK);
    }
    uint8_t out[64];
    size_t len;
    int missing = 0;
    for (int i = 0; i < 5000; i++) {
        size_t kl = keyOf(k, "cold", (uint64_t)i);
        ck_assert_int_eq(multidictSet(d, k, kl, v, sizeof v), DKSHM_OK);
        if (i % 8 == 0) {
            for (int h = 0; h < HOT; h++) {
                kl = keyOf(k, "hot", (uint64_t)h);
                if (multidictGet(d, k, kl, out, sizeof out, &len) != DKSHM_OK)
                    ck_assert_int_eq(multidictSet(d, k, kl, v, sizeof v),
                                     DKSHM_OK);
            }
        }
    }
    for (int h = 0; h < HOT; h++) {
        size_t kl = keyOf(k, "hot", (uint64_t)h);
        missing += multidictGet(d, k, kl, out, sizeof out, &len) != DKSHM_OK;
    }
    ck_assert_int_le(missing, HOT / 10);
    assertCheckDict(d);
    multidictClose(d);
    d = keep;
}
END_TEST

/* In cache mode a full segment evicts instead of failing. */
START_TEST(test_cache_full_segment) {
    remakeFixture("cfull", 1 * MiB, "cache", 1ull << 40);
    uint8_t v[500];
    char k[32];
    for (int i = 0; i < 20000; i++) {
        fillValue(v, sizeof v, (uint64_t)i);
        size_t kl = keyOf(k, "k", (uint64_t)i);
        int rc = multidictSet(d, k, kl, v, sizeof v);
        ck_assert_msg(rc == DKSHM_OK, "set %d: %s", i, dkshmErrName(rc));
    }
    multidictStats st = stats(d);
    ck_assert_uint_gt(st.evictions, 15000);
    ck_assert_uint_gt(st.count, 100);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

/* ---- growth ------------------------------------------------------------- */

START_TEST(test_growth_100k) {
    enum { N = 120000 };
    char k[32];
    uint64_t v;
    for (uint64_t i = 0; i < N; i++) {
        size_t kl = keyOf(k, "key:", i);
        v = i * 3;
        ck_assert_int_eq(multidictAdd(d, k, kl, &v, 8), DKSHM_OK);
    }
    ck_assert_uint_eq(count(d), N);
    assertCheckDict(d);
    for (uint64_t i = 0; i < N; i++) {
        size_t kl = keyOf(k, "key:", i), len;
        ck_assert_int_eq(multidictGet(d, k, kl, &v, 8, &len), DKSHM_OK);
        ck_assert_uint_eq(v, i * 3);
    }
    for (uint64_t i = 0; i < N; i += 2) {
        size_t kl = keyOf(k, "key:", i);
        ck_assert_int_eq(multidictDelete(d, k, kl), DKSHM_OK);
    }
    ck_assert_uint_eq(count(d), N / 2);
    assertCheckDict(d);
    for (uint64_t i = 0; i < N; i++) {
        size_t kl = keyOf(k, "key:", i), len;
        int rc = multidictGet(d, k, kl, &v, 8, &len);
        ck_assert_int_eq(rc, i % 2 ? DKSHM_OK : DKSHM_NOTFOUND);
    }
    /* Tombstones are reused and purged. */
    for (uint64_t i = 0; i < N; i += 2) {
        size_t kl = keyOf(k, "again:", i);
        ck_assert_int_eq(multidictSet(d, k, kl, &v, 8), DKSHM_OK);
    }
    multidictStats st = stats(d);
    ck_assert_uint_eq(st.count, N);
    ck_assert(st.maxLoad <= 0.75);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

/* A shard grown past 2^22 slots: its 22-bit tags no longer name a home
 * slot, so the resize hashes each entry's key (entries carry no hash).
 * Every key is still found where a get looks, and check agrees. */
START_TEST(test_growth_past_tag_bits) {
    remakeFixture("big", 320 * MiB, "one", 0);
    enum { N = 3200000 }; /* past 3/4 of 2^22 slots: a table of 2^23 */
    for (uint64_t i = 0; i < N; i++)
        ck_assert_int_eq(multidictSet(d, &i, 8, &i, 8), DKSHM_OK);
    multidictStats st = stats(d);
    ck_assert_uint_eq(st.count, N);
    ck_assert_uint_ge(st.slots, 1ull << 23);
    for (uint64_t i = 0; i < N; i += 997) {
        uint64_t v = 0;
        size_t len;
        ck_assert_int_eq(multidictGet(d, &i, 8, &v, 8, &len), DKSHM_OK);
        ck_assert_uint_eq(v, i);
    }
    assertCheckDict(d);
}
END_TEST

/* ---- multi-process ------------------------------------------------------ */

enum { CTR_PROCS = 4, CTR_KEYS = 8, CTR_ITERS = 5000 };

static int counterWorker(void *arg) {
    (void)arg;
    char k[16];
    for (int i = 0; i < CTR_ITERS; i++) {
        size_t kl = keyOf(k, "ctr", (uint64_t)(i % CTR_KEYS));
        if (multidictIncr(d, k, kl, (i % 3) + 1, NULL) != DKSHM_OK)
            return 1;
    }
    return 0;
}

START_TEST(test_procs_counters) {
    pid_t pids[CTR_PROCS];
    for (int p = 0; p < CTR_PROCS; p++) {
        fflush(NULL);
        pids[p] = fork();
        ck_assert_int_ge(pids[p], 0);
        if (pids[p] == 0)
            _exit(counterWorker(NULL));
    }
    for (int p = 0; p < CTR_PROCS; p++)
        ck_assert_int_eq(testWait(pids[p]), 0);
    int64_t want[CTR_KEYS] = {0};
    for (int i = 0; i < CTR_ITERS; i++)
        want[i % CTR_KEYS] += CTR_PROCS * ((i % 3) + 1);
    char k[16];
    for (int c = 0; c < CTR_KEYS; c++) {
        int64_t v;
        size_t kl = keyOf(k, "ctr", (uint64_t)c), len;
        ck_assert_int_eq(multidictGet(d, k, kl, &v, 8, &len), DKSHM_OK);
        ck_assert_int_eq(v, want[c]);
    }
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

/* The exec'd side: a program that shares nothing with the test but the
 * segment's name. Exit 0 when everything it checks holds. */
static int childMain(int argc, char **argv) {
    if (argc < 5)
        return 2;
    const char *segn = argv[2], *name = argv[3], *mode = argv[4];
    bool ro = strcmp(mode, "ro") == 0;
    dkshm *s;
    if (dkshmAttach(segn, ro ? DKSHM_RDONLY : 0, &s) != DKSHM_OK)
        return 3;
    multidict *x;
    if (multidictOpen(s, name, NULL, 0, &x) != DKSHM_OK)
        return 4;
    char k[32], v[64], want[64];
    for (int i = 0; i < 100; i++) {
        size_t kl = keyOf(k, "p", (uint64_t)i), len;
        int wl = snprintf(want, sizeof want, "parent-%d", i);
        if (multidictGet(x, k, kl, v, sizeof v, &len) != DKSHM_OK ||
            len != (size_t)wl || memcmp(v, want, len) != 0)
            return 5;
    }
    if (ro) {
        for (int i = 0; i < 100; i++) {
            size_t kl = keyOf(k, "c", (uint64_t)i), len;
            int wl = snprintf(want, sizeof want, "child-%d", i);
            if (multidictGet(x, k, kl, v, sizeof v, &len) != DKSHM_OK ||
                len != (size_t)wl || memcmp(v, want, len) != 0)
                return 6;
        }
        uint64_t n = 0;
        if (multidictIterate(x, countFn, &n) != DKSHM_OK || n != 201)
            return 7;
        if (multidictSet(x, "no", 2, "x", 1) != DKSHM_READONLY)
            return 8;
        if (multidictCheck(x, NULL, 0) != DKSHM_OK)
            return 9;
    } else {
        for (int i = 0; i < 100; i++) {
            size_t kl = keyOf(k, "c", (uint64_t)i);
            int vl = snprintf(v, sizeof v, "child-%d", i);
            if (multidictSet(x, k, kl, v, (size_t)vl) != DKSHM_OK)
                return 10;
            if (multidictIncr(x, "counter", 7, 1, NULL) != DKSHM_OK)
                return 11;
        }
    }
    multidictClose(x);
    dkshmDetach(s);
    return 0;
}

static int runSelf(const char *mode) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        char *argv[] = {"checkMultidict", "--child",
                        (char *)testSegmentName(), "dict", (char *)mode,
                        NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    return testWait(pid);
}

START_TEST(test_exec_attach) {
    char k[32], v[64];
    for (int i = 0; i < 100; i++) {
        size_t kl = keyOf(k, "p", (uint64_t)i);
        int vl = snprintf(v, sizeof v, "parent-%d", i);
        ck_assert_int_eq(multidictSet(d, k, kl, v, (size_t)vl), DKSHM_OK);
    }
    ck_assert_int_eq(multidictIncr(d, "counter", 7, 1000, NULL), DKSHM_OK);
    ck_assert_int_eq(runSelf("rw"), 0);
    ck_assert_int_eq(runSelf("rw"), 0); /* a second one overwrites */
    ck_assert_int_eq(runSelf("ro"), 0);
    int64_t c;
    size_t len;
    ck_assert_int_eq(multidictGet(d, "counter", 7, &c, 8, &len), DKSHM_OK);
    ck_assert_int_eq(c, 1200);
    assertValue(d, "c42", "child-42");
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

/* Values that say what they are: key index, version, length and a checksum
 * over all of it, so a torn or misplaced value cannot pass. */
enum { TV_KEYS = 512, TV_MAX = 700 };

static size_t tornValue(uint8_t *v, uint32_t key, uint32_t version) {
    size_t len = 24 + (size_t)((key * 131u + version * 17u) % (TV_MAX - 24));
    memcpy(v, &key, 4);
    memcpy(v + 4, &version, 4);
    for (size_t i = 16; i < len; i++)
        v[i] = (uint8_t)(key + version + i);
    uint64_t sum =
        XXH3_64bits(v + 16, len - 16) ^ key ^ ((uint64_t)version << 32);
    memcpy(v + 8, &sum, 8);
    return len;
}

static bool tornOk(const uint8_t *v, size_t len, uint32_t key) {
    if (len < 24)
        return false;
    uint32_t k, ver;
    uint64_t sum;
    memcpy(&k, v, 4);
    memcpy(&ver, v + 4, 4);
    memcpy(&sum, v + 8, 8);
    if (k != key)
        return false;
    size_t want = 24 + (size_t)((key * 131u + ver * 17u) % (TV_MAX - 24));
    return want == len &&
           sum == (XXH3_64bits(v + 16, len - 16) ^ key ^ ((uint64_t)ver << 32));
}

typedef struct tornShared { /* in shared memory */
    uint32_t stop;
    uint32_t bad;
    uint64_t reads, writes;
} tornShared;

static void tornWrite(multidict *x, uint64_t *seed, uint32_t version) {
    uint8_t v[TV_MAX];
    char k[16];
    uint32_t key = (uint32_t)(testRng(seed) % TV_KEYS);
    size_t kl = keyOf(k, "tv", key);
    size_t len = tornValue(v, key, version);
    int rc = (testRng(seed) % 8 == 0) ? multidictDelete(x, k, kl)
                                  : multidictSet(x, k, kl, v, len);
    if (rc != DKSHM_OK && rc != DKSHM_NOTFOUND)
        abort();
}

static bool tornRead(multidict *x, uint64_t *seed) {
    uint8_t v[TV_MAX];
    char k[16];
    uint32_t key = (uint32_t)(testRng(seed) % TV_KEYS);
    size_t kl = keyOf(k, "tv", key), len;
    int rc = multidictGet(x, k, kl, v, sizeof v, &len);
    if (rc == DKSHM_NOTFOUND)
        return true;
    return rc == DKSHM_OK && tornOk(v, len, key);
}

START_TEST(test_readers_never_torn) {
    tornShared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ck_assert_ptr_ne(sh, MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t pids[4];
    for (int p = 0; p < 4; p++) {
        fflush(NULL);
        pids[p] = fork();
        ck_assert_int_ge(pids[p], 0);
        if (pids[p] == 0) {
            uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(p + 1);
            uint32_t version = (uint32_t)p << 24;
            while (!__atomic_load_n(&sh->stop, __ATOMIC_RELAXED)) {
                if (p < 2) {
                    tornWrite(d, &seed, version++);
                    __atomic_fetch_add(&sh->writes, 1, __ATOMIC_RELAXED);
                } else {
                    if (!tornRead(d, &seed))
                        __atomic_fetch_add(&sh->bad, 1, __ATOMIC_RELAXED);
                    __atomic_fetch_add(&sh->reads, 1, __ATOMIC_RELAXED);
                }
            }
            _exit(0);
        }
    }
    testSleepMs(1500);
    __atomic_store_n(&sh->stop, 1, __ATOMIC_RELAXED);
    for (int p = 0; p < 4; p++)
        ck_assert_int_eq(testWait(pids[p]), 0);
    fprintf(stderr, "readers vs writers: %llu reads, %llu writes, %u torn\n",
            (unsigned long long)sh->reads, (unsigned long long)sh->writes,
            sh->bad);
    ck_assert_uint_eq(sh->bad, 0);
    ck_assert_uint_gt(sh->reads, 1000);
    ck_assert_uint_gt(sh->writes, 1000);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    assertCheckDict(d);
    assertOwnership(&d, 1);
    munmap(sh, sizeof *sh);
}
END_TEST

/* The same inside one process with threads (what TSan can see): two
 * writer threads, two readers, one iterator. */
typedef struct threadArg {
    tornShared *sh;
    int id;
} threadArg;

static bool tornIterFn(void *ctx, const void *key, size_t klen,
                       const void *value, size_t vlen) {
    char k[16];
    if (klen < 3 || klen >= sizeof k) {
        ++*(uint32_t *)ctx;
        return true;
    }
    memcpy(k, key, klen);
    k[klen] = '\0';
    if (!tornOk(value, vlen, (uint32_t)strtoul(k + 2, NULL, 10)))
        ++*(uint32_t *)ctx;
    return true;
}

static void *tornThread(void *p) {
    threadArg *a = p;
    uint64_t seed = 0x51ed2701u * (uint64_t)(a->id + 1);
    uint32_t version = 0;
    while (!__atomic_load_n(&a->sh->stop, __ATOMIC_RELAXED)) {
        if (a->id <= 1) {
            tornWrite(d, &seed, version++ | ((uint32_t)a->id << 24));
            __atomic_fetch_add(&a->sh->writes, 1, __ATOMIC_RELAXED);
        } else if (a->id == 4) {
            uint32_t bad = 0;
            if (multidictIterate(d, tornIterFn, &bad) != DKSHM_OK || bad)
                __atomic_fetch_add(&a->sh->bad, 1, __ATOMIC_RELAXED);
        } else {
            if (!tornRead(d, &seed))
                __atomic_fetch_add(&a->sh->bad, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&a->sh->reads, 1, __ATOMIC_RELAXED);
        }
    }
    return NULL;
}

START_TEST(test_threads_never_torn) {
    tornShared sh = {0};
    pthread_t t[5];
    threadArg a[5];
    for (int i = 0; i < 5; i++) {
        a[i] = (threadArg){&sh, i};
        ck_assert_int_eq(pthread_create(&t[i], NULL, tornThread, &a[i]), 0);
    }
    testSleepMs(1000);
    __atomic_store_n(&sh.stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 5; i++)
        pthread_join(t[i], NULL);
    ck_assert_uint_eq(sh.bad, 0);
    ck_assert_uint_gt(sh.reads, 100);
    assertCheckDict(d);
    assertOwnership(&d, 1);
}
END_TEST

/* ---- crash walks -------------------------------------------------------- */

typedef struct walk walk;
struct walk {
    const char *name;
    multidict *x;             /* the dict the op works on */
    int (*op)(walk *w);       /* run in the child */
    void (*prepare)(walk *w); /* bring the dict to the state before */
    int (*state)(walk *w);    /* 0: as before, 1: as after, -1: neither */
    int seen[2];
    long points;
};

static walk *curWalk;

static int walkOp(void *arg) {
    walk *w = arg;
    int rc = w->op(w);
    return rc == DKSHM_OK ? 0 : 50 + (-rc);
}

/* Recover every lock a dead child may hold right away: fastMutexTryLock
 * looks at the owner at once, where a blocking lock (and so dkshmReap)
 * first sleeps DKSHM_LOCK_POLL_MS. Used on every other crash point to keep
 * the walks short; on the others dkshmReap recovers by itself. The shard
 * locks sit 16 bytes into each shard's 64-byte line, after the 64-byte
 * root header (see multidict.c). */
static void recoverNow(multidict *x) {
    fastMutex *locks[1 + MULTIDICT_SHARDS_MAX];
    int n = 0;
    locks[n++] = dkshmPtr(seg, seg->hdr->allocRoot); /* mbRoot starts so */
    multidictStats st = stats(x);
    uint8_t *root = dkshmPtr(seg, multidictRootOff(x));
    for (uint32_t i = 0; i < st.shards; i++)
        locks[n++] = (fastMutex *)(root + 64 + (uint64_t)i * 64 + 16);
    for (int i = 0; i < n; i++) {
        int rc = fastMutexTryLock(seg, locks[i]);
        if (rc == DKSHM_OK || rc == DKSHM_RECOVERED)
            fastMutexUnlock(seg, locks[i]);
    }
}

static void walkAfter(void *arg, long k) {
    walk *w = arg;
    if (k % 2)
        recoverNow(w->x);
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    char why[256];
    int rc = multidictCheck(w->x, why, sizeof why);
    ck_assert_msg(rc == DKSHM_OK, "crash point %ld: %s (%s)", k, why,
                  dkshmErrName(rc));
    if (w->x != d)
        assertCheckDict(d);
    assertCheckAlloc();
    multidict *all[2] = {d, w->x};
    assertOwnership(all, w->x == d ? 1 : 2);
    int st = w->state(w);
    ck_assert_msg(st == 0 || st == 1, "crash point %ld: operation half done",
                  k);
    w->seen[st]++;
    w->prepare(w);
}

static void runWalk(walk *w, int minPoints) {
    curWalk = w;
    /* Once for real first: the allocator then has the slabs the operation
     * needs, so every run of the walk takes the same path. */
    w->prepare(w);
    ck_assert_int_eq(w->op(w), DKSHM_OK);
    w->prepare(w);
    /* Register the parent, so the children's slots are new ones. */
    assertCheckDict(w->x);
    w->points = testCrashWalk(walkOp, walkAfter, w, 5000);
    ck_assert_int_eq(w->state(w), 1);
    assertCheckDict(w->x);
    multidict *all[2] = {d, w->x};
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    assertOwnership(all, w->x == d ? 1 : 2);
    ck_assert_msg(w->points >= minPoints, "only %ld crash points", w->points);
    ck_assert_int_gt(w->seen[0], 0); /* died before the commit, */
    ck_assert_int_gt(w->seen[1], 0); /* and after it */
    fprintf(stderr, "crash walk %s: %ld points (%d before, %d after)\n",
            w->name, w->points, w->seen[0], w->seen[1]);
}

static void prefill(multidict *x, int n) {
    char k[16], v[80];
    for (int i = 0; i < n; i++) {
        size_t kl = keyOf(k, "k", (uint64_t)i);
        int vl = snprintf(v, sizeof v, "value-%d", i);
        ck_assert_int_eq(multidictSet(x, k, kl, v, (size_t)vl), DKSHM_OK);
    }
}

static bool hasStr(multidict *x, const char *k, const char *want) {
    char buf[512];
    int rc = getStr(x, k, buf, sizeof buf);
    return want ? rc == DKSHM_OK && strcmp(buf, want) == 0
                : rc == DKSHM_NOTFOUND;
}

/* Set a new key. */
static int opSetNew(walk *w) {
    return multidictSet(w->x, "new", 3, "fresh-value", 11);
}
/* The state before: exactly these entries and tables, whatever the
 * previous run left. */
static void reset(multidict *x, int n) {
    ck_assert_int_eq(multidictClear(x), DKSHM_OK);
    prefill(x, n);
}

static void prepSetNew(walk *w) {
    reset(w->x, 5);
}
static int stateSetNew(walk *w) {
    uint64_t n = count(w->x);
    if (hasStr(w->x, "new", NULL) && n == 5)
        return 0;
    if (hasStr(w->x, "new", "fresh-value") && n == 6)
        return 1;
    return -1;
}

START_TEST(test_crash_set_new) {
    walk w = {.name = "SetNew",
              .x = d,
              .op = opSetNew,
              .prepare = prepSetNew,
              .state = stateSetNew};
    runWalk(&w, 20);
}
END_TEST

/* Overwrite in place (same padded length) and with a new block. */
static const char *replaceWith;
static int opReplace(walk *w) {
    return multidictSet(w->x, "k1", 2, replaceWith, strlen(replaceWith));
}
static void prepReplace(walk *w) {
    reset(w->x, 5);
}
static int stateReplace(walk *w) {
    if (count(w->x) != 5 || !hasStr(w->x, "k0", "value-0"))
        return -1;
    return hasStr(w->x, "k1", "value-1")     ? 0
           : hasStr(w->x, "k1", replaceWith) ? 1
                                             : -1;
}

START_TEST(test_crash_replace_inplace) {
    replaceWith = "VALUE-1";
    walk w = {.name = "ReplaceInPlace",
              .x = d,
              .op = opReplace,
              .prepare = prepReplace,
              .state = stateReplace};
    runWalk(&w, 8);
}
END_TEST

START_TEST(test_crash_replace_newblock) {
    replaceWith = "a much longer value that needs a block of another size "
                  "class than the one it replaces";
    walk w = {.name = "ReplaceNewBlock",
              .x = d,
              .op = opReplace,
              .prepare = prepReplace,
              .state = stateReplace};
    runWalk(&w, 20);
}
END_TEST

/* A value too big to go in place: copied in before the lock. */
static uint8_t bigValue[6000];
static int opSetBig(walk *w) {
    return multidictSet(w->x, "big", 3, bigValue, sizeof bigValue);
}
static void prepSetBig(walk *w) {
    fillValue(bigValue, sizeof bigValue, 77);
    reset(w->x, 5);
}
static int stateSetBig(walk *w) {
    uint8_t out[sizeof bigValue];
    size_t len;
    int rc = multidictGet(w->x, "big", 3, out, sizeof out, &len);
    if (rc == DKSHM_NOTFOUND && count(w->x) == 5)
        return 0;
    if (rc == DKSHM_OK && len == sizeof out &&
        memcmp(out, bigValue, len) == 0 && count(w->x) == 6)
        return 1;
    return -1;
}

START_TEST(test_crash_set_big) {
    walk w = {.name = "SetBig",
              .x = d,
              .op = opSetBig,
              .prepare = prepSetBig,
              .state = stateSetBig};
    runWalk(&w, 20);
}
END_TEST

static int opDelete(walk *w) {
    return multidictDelete(w->x, "k2", 2);
}
static void prepDelete(walk *w) {
    reset(w->x, 5);
}
static int stateDelete(walk *w) {
    uint64_t n = count(w->x);
    if (hasStr(w->x, "k2", "value-2") && n == 5)
        return 0;
    if (hasStr(w->x, "k2", NULL) && n == 4)
        return 1;
    return -1;
}

START_TEST(test_crash_delete) {
    walk w = {.name = "Delete",
              .x = d,
              .op = opDelete,
              .prepare = prepDelete,
              .state = stateDelete};
    runWalk(&w, 10);
}
END_TEST

static int64_t ctrValue(multidict *x, const char *k) {
    int64_t v = INT64_MIN;
    size_t len;
    if (multidictGet(x, k, strlen(k), &v, 8, &len) != DKSHM_OK || len != 8)
        return INT64_MIN;
    return v;
}

static int opIncr(walk *w) {
    return multidictIncr(w->x, "ctr", 3, 1, NULL);
}
static void prepIncr(walk *w) {
    int64_t v = 41;
    reset(w->x, 0);
    ck_assert_int_eq(multidictSet(w->x, "ctr", 3, &v, 8), DKSHM_OK);
}
static int stateIncr(walk *w) {
    int64_t v = ctrValue(w->x, "ctr");
    return v == 41 ? 0 : v == 42 ? 1 : -1;
}

START_TEST(test_crash_incr) {
    walk w = {.name = "Incr",
              .x = d,
              .op = opIncr,
              .prepare = prepIncr,
              .state = stateIncr};
    runWalk(&w, 4);
}
END_TEST

static int opIncrNew(walk *w) {
    return multidictIncr(w->x, "nctr", 4, 5, NULL);
}
static void prepIncrNew(walk *w) {
    reset(w->x, 0);
}
static int stateIncrNew(walk *w) {
    int64_t v = ctrValue(w->x, "nctr");
    return v == INT64_MIN ? 0 : v == 5 ? 1 : -1;
}

START_TEST(test_crash_incr_new) {
    walk w = {.name = "IncrNew",
              .x = d,
              .op = opIncrNew,
              .prepare = prepIncrNew,
              .state = stateIncrNew};
    runWalk(&w, 20);
}
END_TEST

static int opCas(walk *w) {
    return multidictCompareAndSet(w->x, "k3", 2, "value-3", 7, "swapped-3", 9);
}
static void prepCas(walk *w) {
    reset(w->x, 5);
}
static int stateCas(walk *w) {
    return hasStr(w->x, "k3", "value-3")     ? 0
           : hasStr(w->x, "k3", "swapped-3") ? 1
                                             : -1;
}

START_TEST(test_crash_cas) {
    walk w = {.name = "Cas",
              .x = d,
              .op = opCas,
              .prepare = prepCas,
              .state = stateCas};
    runWalk(&w, 20);
}
END_TEST

/* A set that grows the shard's table: one shard, 12 entries in 16 slots,
 * the 13th needs 32. */
static int opGrow(walk *w) {
    return multidictSet(w->x, "grow", 4, "g", 1);
}
static void prepGrow(walk *w) {
    ck_assert_int_eq(multidictClear(w->x), DKSHM_OK);
    prefill(w->x, 12);
    multidictShardStats ss;
    ck_assert_int_eq(multidictGetShardStats(w->x, 0, &ss), DKSHM_OK);
    ck_assert_uint_eq(ss.slots, 16);
}
static int stateGrow(walk *w) {
    multidictShardStats ss;
    ck_assert_int_eq(multidictGetShardStats(w->x, 0, &ss), DKSHM_OK);
    for (int i = 0; i < 6; i++) {
        char k[16], v[16];
        snprintf(k, sizeof k, "k%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        if (!hasStr(w->x, k, v))
            return -1;
    }
    if (hasStr(w->x, "grow", NULL) && ss.count == 12 && ss.slots == 16)
        return 0;
    if (hasStr(w->x, "grow", "g") && ss.count == 13 && ss.slots == 32)
        return 1;
    return -1;
}

START_TEST(test_crash_grow) {
    walk w = {.name = "Grow",
              .x = openDict("grow", 1, 0),
              .op = opGrow,
              .prepare = prepGrow,
              .state = stateGrow};
    runWalk(&w, 30);
    multidictClose(w.x);
}
END_TEST

/* A set into a full cache: evictions (each its own commit) then the
 * insert. Either way the cache stays within its bound. */
enum { EV_KEYS = 40 };
static int opEvict(walk *w) {
    uint8_t v[200] = {9};
    return multidictSet(w->x, "newcomer", 8, v, sizeof v);
}
static void prepEvict(walk *w) {
    ck_assert_int_eq(multidictClear(w->x), DKSHM_OK);
    uint8_t v[200] = {0};
    char k[16];
    for (int i = 0; i < EV_KEYS; i++) {
        size_t kl = keyOf(k, "e", (uint64_t)i);
        ck_assert_int_eq(multidictSet(w->x, k, kl, v, sizeof v), DKSHM_OK);
    }
    ck_assert_uint_eq(count(w->x), EV_KEYS);
}
static int stateEvict(walk *w) {
    multidictStats st = stats(w->x);
    if (st.bytes > st.maxBytes)
        return -1;
    uint8_t out[200];
    size_t len;
    int rc = multidictGet(w->x, "newcomer", 8, out, sizeof out, &len);
    if (rc == DKSHM_NOTFOUND)
        return 0;
    return rc == DKSHM_OK && len == 200 && out[0] == 9 ? 1 : -1;
}

START_TEST(test_crash_evict) {
    /* 40 entries of 224 bytes fill 8960 of 9100 bytes: one more evicts. */
    walk w = {.name = "Evict",
              .x = openDict("evict", 1, 9100),
              .op = opEvict,
              .prepare = prepEvict,
              .state = stateEvict};
    runWalk(&w, 20);
    ck_assert_uint_ge(stats(w.x).evictions, 1);
    multidictClose(w.x);
}
END_TEST

/* Clear: every shard empties atomically. */
static int opClear(walk *w) {
    return multidictClear(w->x);
}
static void prepClear(walk *w) {
    reset(w->x, 6);
}
static int stateClear(walk *w) {
    int present = 0;
    for (int i = 0; i < 6; i++) {
        char k[16], v[16];
        snprintf(k, sizeof k, "k%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        present += hasStr(w->x, k, v);
    }
    /* Per shard all or nothing: compare each shard's count to its keys. */
    for (uint32_t s = 0; s < 4; s++) {
        multidictShardStats ss;
        ck_assert_int_eq(multidictGetShardStats(w->x, s, &ss), DKSHM_OK);
        int keys = 0, there = 0;
        for (int i = 0; i < 6; i++) {
            char k[16];
            int kl = snprintf(k, sizeof k, "k%d", i);
            if ((XXH3_64bits(k, (size_t)kl) >> 62) != s)
                continue;
            keys++;
            there += hasStr(w->x, k, NULL) ? 0 : 1;
        }
        if (there != 0 && there != keys)
            return -1;
        if ((uint64_t)there != ss.count)
            return -1;
    }
    return present == 6 ? 0 : present == 0 ? 1 : 2 /* some shards */;
}
static int stateClearAny(walk *w) {
    int st = stateClear(w);
    return st == 2 ? 1 : st;
}

START_TEST(test_crash_clear) {
    walk w = {.name = "Clear",
              .x = openDict("clear", 4, 0),
              .op = opClear,
              .prepare = prepClear,
              .state = stateClearAny};
    runWalk(&w, 30);
    multidictClose(w.x);
}
END_TEST

/* Create by name: the root is bound to the name or freed. */
static int opCreate(walk *w) {
    (void)w;
    multidict *x;
    int rc = multidictOpen(seg, "created", NULL,
                           MULTIDICT_CREATE | MULTIDICT_EXCL, &x);
    multidictClose(x);
    return rc;
}
static void prepCreate(walk *w) {
    (void)w;
    dkoff root;
    if (dkshmObjectRemove(seg, "created", MULTIDICT_TYPE, &root) == DKSHM_OK)
        ck_assert_int_eq(memboundFreeInflight(mb, root), DKSHM_OK);
}
static int stateCreate(walk *w) {
    (void)w;
    multidict *x = NULL;
    int rc = multidictOpen(seg, "created", NULL, 0, &x);
    if (rc == DKSHM_NOTFOUND)
        return 0;
    if (rc != DKSHM_OK)
        return -1;
    assertCheckDict(x);
    uint64_t n = count(x);
    multidictClose(x);
    return n == 0 ? 1 : -1;
}

static int collectCreated(void *ctx, dkoff off, uint64_t bytes, int kind) {
    (void)bytes;
    (void)kind;
    *(dkoff *)ctx = off;
    return 0;
}

START_TEST(test_crash_create) {
    walk w = {.name = "Create",
              .x = d,
              .op = opCreate,
              .prepare = prepCreate,
              .state = stateCreate};
    /* The ownership check only knows D: run the walk with a check that
     * counts the created root as well. */
    curWalk = &w;
    w.prepare(&w);
    assertCheckDict(d);
    long k;
    for (k = 1; k < 5000; k++) {
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(walkOp(&w));
        }
        int st = testWait(pid);
        ck_assert(st == 0 || st == TEST_KILLED);
        if (k % 2)
            recoverNow(d);
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        assertCheckAlloc();
        int s = stateCreate(&w);
        ck_assert_int_ge(s, 0);
        multidict *all[2] = {d, NULL};
        int n = 1;
        if (s == 1)
            ck_assert_int_eq(multidictOpen(seg, "created", NULL, 0, &all[n++]),
                             DKSHM_OK);
        assertOwnership(all, n);
        if (n == 2) {
            dkoff root = 0;
            multidictForEachBlock(all[1], collectCreated, &root);
            multidictClose(all[1]);
        }
        if (st == 0)
            break;
        w.seen[s]++;
        w.prepare(&w);
    }
    ck_assert_int_gt(k, 10);
    ck_assert_int_gt(w.seen[0], 0);
}
END_TEST

/* A dead writer still holding a shard: a read-only reader says BUSY (it
 * cannot recover), a read-write reader recovers and reads the old value;
 * after a reap (which rolls back but leaves the seq word odd) read-only
 * readers read again. */
START_TEST(test_dead_writer_readers) {
    setStr(d, "k1", "value-1");
    uint32_t shard = (uint32_t)(XXH3_64bits("k1", 2) >> 60);
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multidict *x;
    ck_assert_int_eq(multidictOpen(ro, "dict", NULL, 0, &x), DKSHM_OK);
    bool tested = false;
    for (long k = 1; k < 200 && !tested; k++) {
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(multidictSet(d, "k1", 2, "VALUE-1", 7) == DKSHM_OK ? 0 : 1);
        }
        int st = testWait(pid);
        ck_assert(st == 0 || st == TEST_KILLED);
        multidictShardStats ss;
        ck_assert_int_eq(multidictGetShardStats(d, shard, &ss), DKSHM_OK);
        if (st == TEST_KILLED && ss.locked && ss.ownerDead &&
            (__atomic_load_n(
                 (uint32_t *)((uint8_t *)dkshmPtr(seg, multidictRootOff(d)) +
                              64 + shard * 64),
                 __ATOMIC_RELAXED) &
             1)) {
            char buf[16];
            size_t len;
            ck_assert_int_eq(multidictGet(x, "k1", 2, buf, sizeof buf, &len),
                             DKSHM_BUSY);
            /* Other shards are not affected. */
            setStr(d, "other", "o");
            if ((uint32_t)(XXH3_64bits("other", 5) >> 60) != shard)
                ck_assert_int_eq(
                    multidictGet(x, "other", 5, buf, sizeof buf, &len),
                    DKSHM_OK);
            ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
            ck_assert_int_eq(multidictGet(x, "k1", 2, buf, sizeof buf, &len),
                             DKSHM_OK);
            ck_assert(len == 7 && memcmp(buf, "value-1", 7) == 0);
            assertValue(d, "k1", "value-1");
            tested = true;
        } else if (st == TEST_KILLED) {
            ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        }
        setStr(d, "k1", "value-1");
    }
    ck_assert(tested);
    /* A dead writer that nobody reaped: a read-write get recovers it. */
    for (long k = 1; k < 200; k++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            dkshmTestCrashAt(k);
            _exit(multidictSet(d, "k1", 2, "VALUE-1", 7) == DKSHM_OK ? 0 : 1);
        }
        int st = testWait(pid);
        multidictShardStats ss;
        ck_assert_int_eq(multidictGetShardStats(d, shard, &ss), DKSHM_OK);
        if (st == TEST_KILLED && ss.locked && ss.ownerDead) {
            char buf[16];
            size_t len;
            ck_assert_int_eq(multidictGet(d, "k1", 2, buf, sizeof buf, &len),
                             DKSHM_OK);
            ck_assert(len == 7 && (memcmp(buf, "value-1", 7) == 0 ||
                                   memcmp(buf, "VALUE-1", 7) == 0));
            ck_assert_int_eq(multidictGetShardStats(d, shard, &ss), DKSHM_OK);
            ck_assert(!ss.locked);
            ck_assert_uint_gt(ss.recoveries, 0);
            break;
        }
        ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
        setStr(d, "k1", "value-1");
    }
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    assertCheckDict(d);
    assertOwnership(&d, 1);
    multidictClose(x);
    dkshmDetach(ro);
}
END_TEST

/* ---- random SIGKILL ----------------------------------------------------- */

/* Workers do random sets, deletes and incrs on their own keys and log an
 * intent before and an acknowledgement after each; the parent kills them
 * at random and restarts them. At the end every acknowledged write is
 * there, and a write that was in progress when its worker died is either
 * there or not. */
enum { RK_WORKERS = 3, RK_KEYS = 48, RK_CTRS = 4 };

typedef struct rkRec { /* in the log files */
    uint8_t ack;       /* 0: intent, 1: done */
    uint8_t op;        /* 0 set, 1 delete, 2 incr */
    uint16_t key;
    uint32_t pad;
    uint64_t version;
} rkRec;

static char rkPath[RK_WORKERS][128];

static size_t rkValue(uint8_t *v, int w, int key, uint64_t version) {
    size_t len = 8 + (size_t)((version * 7 + (uint64_t)key) % 200);
    memcpy(v, &version, 8);
    for (size_t i = 8; i < len; i++)
        v[i] = (uint8_t)(w + key + version + i);
    return len;
}

static void rkKey(char *k, int w, int key, bool ctr) {
    sprintf(k, "%s%d-%d", ctr ? "c" : "w", w, key);
}

static int rkWorker(int w, uint64_t life) {
    int fd = open(rkPath[w], O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd < 0)
        return 1;
    uint64_t seed = (life + 1) * 0x9e3779b97f4a7c15ull + (uint64_t)w;
    for (uint64_t n = 0;; n++) {
        uint64_t r = testRng(&seed);
        rkRec rec = {.op = (uint8_t)(r % 10 < 6   ? 0
                                     : r % 10 < 8 ? 1
                                                  : 2),
                     .version = (life << 32) | n};
        rec.key = (uint16_t)((r >> 8) % (rec.op == 2 ? RK_CTRS : RK_KEYS));
        if (write(fd, &rec, sizeof rec) != sizeof rec)
            return 2;
        char k[32];
        rkKey(k, w, rec.key, rec.op == 2);
        uint8_t v[256];
        int rc;
        if (rec.op == 0) {
            size_t len = rkValue(v, w, rec.key, rec.version);
            rc = multidictSet(d, k, strlen(k), v, len);
        } else if (rec.op == 1) {
            rc = multidictDelete(d, k, strlen(k));
            if (rc == DKSHM_NOTFOUND)
                rc = DKSHM_OK;
        } else {
            rc = multidictIncr(d, k, strlen(k), 1, NULL);
        }
        if (rc != DKSHM_OK)
            return 3;
        rec.ack = 1;
        if (write(fd, &rec, sizeof rec) != sizeof rec)
            return 2;
    }
}

START_TEST(test_random_kill) {
    pid_t pids[RK_WORKERS];
    uint64_t lives[RK_WORKERS] = {0};
    for (int w = 0; w < RK_WORKERS; w++) {
        snprintf(rkPath[w], sizeof rkPath[w], "/tmp/dkt-md-%d-rk%d.log",
                 (int)getpid(), w);
        unlink(rkPath[w]);
    }
    for (int w = 0; w < RK_WORKERS; w++) {
        fflush(NULL);
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0)
            _exit(rkWorker(w, 0));
    }
    uint64_t seed = 4242;
    uint64_t start = dkNowNs();
    int kills = 0;
    enum { RK_KILLS = 100 };
    /* A number of kills, not a duration: slow (sanitizer) builds do the
     * same test. The time cap only stops a hang. */
    while (kills < RK_KILLS && dkNowNs() - start < 60000000000ull) {
        testSleepMs(1 + (unsigned)(testRng(&seed) % 15));
        int w = (int)(testRng(&seed) % RK_WORKERS);
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
        kills++;
        if (kills % 10 == 0) {
            ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
            assertCheckDict(d);
        }
        lives[w]++;
        fflush(NULL);
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0)
            _exit(rkWorker(w, lives[w]));
    }
    for (int w = 0; w < RK_WORKERS; w++) {
        kill(pids[w], SIGKILL);
        ck_assert_int_eq(testWait(pids[w]), TEST_KILLED);
    }
    ck_assert_int_eq(dkshmReap(seg, NULL), DKSHM_OK);
    assertCheckDict(d);
    assertCheckAlloc();
    assertOwnership(&d, 1);
    /* Replay the logs. */
    long acked = 0;
    for (int w = 0; w < RK_WORKERS; w++) {
        int fd = open(rkPath[w], O_RDONLY);
        ck_assert_int_ge(fd, 0);
        /* Per key: the last acknowledged state and, if the last record is
         * an intent (its worker died), the one that may have happened. */
        int64_t state[RK_KEYS]; /* -1 absent, else version index */
        uint64_t ver[RK_KEYS], pendVer[RK_KEYS];
        int pend[RK_KEYS]; /* -1 none, 0 set, 1 delete */
        int64_t ctr[RK_CTRS] = {0}, ctrPend[RK_CTRS] = {0};
        for (int i = 0; i < RK_KEYS; i++) {
            state[i] = -1;
            pend[i] = -1;
        }
        rkRec rec, intent = {0};
        bool open_ = false;
        while (read(fd, &rec, sizeof rec) == sizeof rec) {
            if (!rec.ack) {
                if (open_) { /* the previous op's worker died mid-op */
                    if (intent.op == 2)
                        ctrPend[intent.key]++;
                    else {
                        pend[intent.key] = intent.op;
                        pendVer[intent.key] = intent.version;
                    }
                }
                intent = rec;
                open_ = true;
                continue;
            }
            open_ = false;
            acked++;
            if (rec.op == 2) {
                ctr[rec.key]++;
            } else {
                state[rec.key] = rec.op == 0 ? 1 : -1;
                ver[rec.key] = rec.version;
                pend[rec.key] = -1;
            }
        }
        if (open_) {
            if (intent.op == 2)
                ctrPend[intent.key]++;
            else {
                pend[intent.key] = intent.op;
                pendVer[intent.key] = intent.version;
            }
        }
        close(fd);
        unlink(rkPath[w]);
        for (int i = 0; i < RK_KEYS; i++) {
            char k[32];
            rkKey(k, w, i, false);
            uint8_t v[256], want[256];
            size_t len;
            int rc = multidictGet(d, k, strlen(k), v, sizeof v, &len);
            bool ok = false;
            if (state[i] < 0 && rc == DKSHM_NOTFOUND)
                ok = true;
            if (state[i] > 0 && rc == DKSHM_OK) {
                size_t wl = rkValue(want, w, i, ver[i]);
                ok = wl == len && memcmp(v, want, len) == 0;
            }
            if (!ok && pend[i] == 1 && rc == DKSHM_NOTFOUND)
                ok = true;
            if (!ok && pend[i] == 0 && rc == DKSHM_OK) {
                size_t wl = rkValue(want, w, i, pendVer[i]);
                ok = wl == len && memcmp(v, want, len) == 0;
            }
            ck_assert_msg(ok, "worker %d key %d: state %lld pend %d rc %s", w,
                          i, (long long)state[i], pend[i], dkshmErrName(rc));
        }
        for (int i = 0; i < RK_CTRS; i++) {
            char k[32];
            rkKey(k, w, i, true);
            int64_t v = ctrValue(d, k);
            if (v == INT64_MIN)
                v = 0;
            ck_assert_msg(v >= ctr[i] && v <= ctr[i] + ctrPend[i],
                          "worker %d counter %d: %lld, acked %lld (+%lld)", w,
                          i, (long long)v, (long long)ctr[i],
                          (long long)ctrPend[i]);
        }
    }
    fprintf(stderr, "random kill: %d kills, %ld acknowledged writes\n", kills,
            acked);
    ck_assert_int_eq(kills, RK_KILLS);
    ck_assert_int_gt(acked, 0);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

/* ---- damage ------------------------------------------------------------- */

/* Layout knowledge (multidict.c's LAYOUT, version 1) for poking damage:
 * the root header, one 64-byte hot line per shard (seq, clearing, table,
 * lock {word, recoveries, undo}, count, tombs, bytes, ttlCount), then one
 * cold block per shard whose undo log {count, cap, ...} starts 64 bytes in. */
#define DMG_HDR 64u
#define DMG_LINE 64u
#define DMG_TABLE 8u
#define DMG_LOCK_UNDO 24u
#define DMG_COUNT 32u

static uint8_t *dmgLine(multidict *x, uint32_t shard) {
    return (uint8_t *)dkshmPtr(seg, multidictRootOff(x)) + DMG_HDR +
           DMG_LINE * shard;
}

/* The undo log of the only shard of a one-shard dict X. */
static uint32_t *dmgLog(multidict *x) {
    return (uint32_t *)(dmgLine(x, 1) + 64);
}

static uint64_t dmgNowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int collectEntry(void *ctx, dkoff off, uint64_t bytes, int kind) {
    (void)bytes;
    if (kind == MULTIDICT_BLOCK_ENTRY)
        *(dkoff *)ctx = off;
    return 0;
}

static void assertCorrupt(multidict *x, const char *whyHas) {
    char why[256];
    ck_assert_int_eq(multidictCheck(x, why, sizeof why), DKSHM_CORRUPT);
    ck_assert_msg(strstr(why, whyHas), "check said \"%s\", not \"%s\"", why,
                  whyHas);
}

/* Every writer of a shard whose lock or undo log is not its own says
 * CORRUPT and writes nothing (a writer appended by the damaged capacity
 * and crashed in undoAppend: fuzzer target dictroot). */
START_TEST(test_damage_undo_log) {
    multidict *x = openDict("dmg", 1, 0);
    setStr(x, "k", "v");
    int64_t r;
    ck_assert_int_eq(multidictIncr(x, "n", 1, 1, &r), DKSHM_OK);
    uint32_t *log = dmgLog(x);
    uint64_t *undo = (uint64_t *)(dmgLine(x, 0) + DMG_LOCK_UNDO);
    uint64_t undoWas = *undo;
    uint32_t capWas = log[1];
    for (int dmg = 0; dmg < 3; dmg++) {
        /* A writer that finds records in a free lock's log refuses, and
         * its unlock empties the log: poke again before each call. */
#define POKE()                                                                 \
    (dmg == 0   ? (void)(log[1] = 0xffffffffu) /* capacity */                 \
     : dmg == 1 ? (void)(log[0] = 100000)      /* records past it */          \
                : (void)(*undo = undoWas + 4096)) /* a foreign log */
        POKE();
        ck_assert_int_eq(multidictSet(x, "k", 1, "w", 1), DKSHM_CORRUPT);
        POKE();
        ck_assert_int_eq(multidictSetTTL(x, "t", 1, "w", 1, 60000),
                         DKSHM_CORRUPT);
        POKE();
        ck_assert_int_eq(multidictIncr(x, "n", 1, 1, &r), DKSHM_CORRUPT);
        POKE();
        ck_assert_int_eq(multidictCompareAndSet(x, "k", 1, "v", 1, "w", 1),
                         DKSHM_CORRUPT);
        POKE();
        ck_assert_int_eq(multidictDelete(x, "k", 1), DKSHM_CORRUPT);
        POKE();
        ck_assert_int_eq(multidictClear(x), DKSHM_CORRUPT);
        POKE();
        assertCorrupt(x, dmg == 0   ? "undo log capacity"
                         : dmg == 1 ? "cannot be locked"
                                    : "foreign undo log");
#undef POKE
        assertValue(x, "k", "v"); /* reads go on */
        log[1] = capWas;
        log[0] = 0;
        *undo = undoWas;
    }
    setStr(x, "k", "w");
    assertValue(x, "k", "w");
    assertCheckDict(x);
    multidictClose(x);
}
END_TEST

/* A root header copied over another's (a cache's over a plain dict's, as
 * the fuzzer did): it passes the checksum, but the geometry does not fit
 * the block, and a writer appended to an "undo log" by a capacity read
 * from another shard's line. Nothing crashes; writes say CORRUPT. */
START_TEST(test_damage_root_copied) {
    multidict *cache = openDict("cache", 2, 16384);
    multidict *plain = openDict("plain", 4, 0);
    setStr(plain, "k", "v");
    memcpy(dkshmPtr(seg, multidictRootOff(plain)),
           dkshmPtr(seg, multidictRootOff(cache)), DMG_HDR);
    multidict *x = NULL;
    ck_assert_int_eq(multidictOpen(seg, "plain", NULL, 0, &x), DKSHM_OK);
    int corrupt = 0;
    for (int i = 0; i < 200; i++) {
        char k[32], buf[16];
        size_t kl = keyOf(k, "key", (uint64_t)i), len;
        int64_t r;
        int rc = i & 1 ? multidictSetTTL(x, k, kl, "value", 5, 60000)
                       : multidictIncr(x, k, kl, 1, &r);
        ck_assert_msg(rc == DKSHM_OK || rc == DKSHM_CORRUPT, "write: %s",
                      dkshmErrName(rc));
        corrupt += rc == DKSHM_CORRUPT;
        rc = multidictGet(x, k, kl, buf, sizeof buf, &len);
        ck_assert_msg(rc == DKSHM_OK || rc == DKSHM_NOTFOUND ||
                          rc == DKSHM_CORRUPT,
                      "get: %s", dkshmErrName(rc));
    }
    ck_assert_int_eq(corrupt, 200);
    ck_assert_int_eq(multidictCheck(x, NULL, 0), DKSHM_CORRUPT);
    multidictClose(x);
    multidictClose(plain);
    multidictClose(cache);
}
END_TEST

/* An entry whose value length runs past the segment: writers, the get
 * slow path and iteration say CORRUPT, at once (a read-only iteration
 * retried it 100000 times: dkshm-tool dump took seconds). */
START_TEST(test_damage_entry_length) {
    multidict *x = openDict("dmg", 1, 0);
    setStr(x, "k", "12345678");
    dkoff eo = 0;
    ck_assert_int_eq(multidictForEachBlock(x, collectEntry, &eo), DKSHM_OK);
    ck_assert(eo != 0);
    /* The entry's first word: value length << 17 | key length. */
    uint64_t *lens = (uint64_t *)dkshmPtr(seg, eo);
    ck_assert_uint_eq(*lens, 8ull << 17 | 1);
    *lens = 1ull << 40 << 17 | 1;
    int64_t r;
    ck_assert_int_eq(multidictIncr(x, "k", 1, 1, &r), DKSHM_CORRUPT);
    ck_assert_int_eq(multidictCompareAndSet(x, "k", 1, "12345678", 8, "w", 1),
                     DKSHM_CORRUPT);
    ck_assert_int_eq(multidictSet(x, "k", 1, "w", 1), DKSHM_CORRUPT);
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    multidict *y = NULL;
    ck_assert_int_eq(multidictOpen(ro, "dmg", NULL, 0, &y), DKSHM_OK);
    multidict *hs[] = {x, y};
    for (int h = 0; h < 2; h++) {
        char buf[16];
        size_t len;
        uint64_t seen = 0, t0 = dmgNowNs();
        ck_assert_int_eq(multidictGet(hs[h], "k", 1, buf, sizeof buf, &len),
                         DKSHM_CORRUPT);
        ck_assert_int_eq(multidictIterate(hs[h], countFn, &seen),
                         DKSHM_CORRUPT);
        uint64_t ms = (dmgNowNs() - t0) / 1000000;
        ck_assert_msg(ms < 500, "%s handle: %llu ms", h ? "read-only" : "rw",
                      (unsigned long long)ms);
    }
    assertCorrupt(y, "bad lengths");
    multidictClose(y);
    dkshmDetach(ro);
    *lens = 8ull << 17 | 1;
    assertValue(x, "k", "12345678");
    assertCheckDict(x);
    multidictClose(x);
}
END_TEST

/* Damaged counters or table word: an insert does not ask for a table past
 * the largest (a shift by 64 looped for ever), a clear does not declare a
 * shard with a bad table word clean. */
START_TEST(test_damage_counters_table) {
    multidict *x = openDict("dmg", 1, 0);
    setStr(x, "k", "v");
    uint64_t *cnt = (uint64_t *)(dmgLine(x, 0) + DMG_COUNT);
    uint64_t cntWas = *cnt;
    *cnt = 1ull << 62;
    ck_assert_int_eq(multidictSet(x, "new", 3, "v", 1), DKSHM_CORRUPT);
    *cnt = cntWas;
    setStr(x, "new", "v");
    uint64_t *table = (uint64_t *)(dmgLine(x, 0) + DMG_TABLE);
    uint64_t tableWas = *table;
    *table = tableWas | (60ull << 56);
    ck_assert_int_eq(multidictSet(x, "k", 1, "w", 1), DKSHM_CORRUPT);
    ck_assert_int_eq(multidictSet(x, "other", 5, "w", 1), DKSHM_CORRUPT);
    ck_assert_int_eq(multidictClear(x), DKSHM_CORRUPT);
    /* Readers see the half-cleared shard empty; the table is still bad. */
    *table = tableWas;
    ck_assert_int_eq(multidictClear(x), DKSHM_OK);
    ck_assert_uint_eq(count(x), 0);
    assertCheckDict(x);
    multidictClose(x);
}
END_TEST

static Suite *multidictSuite(void) {
    const testCaseSpec cases[] = {
        {"basic",
         {test_set_get_sizes, test_get_buffer_sizes, test_get_fast_path_sizes,
          test_get_inline, test_get_inline_fork_counts, test_add_replace_delete,
          test_incr, test_compare_and_set, test_count_iterate,
          test_iterate_and_write, test_clear, test_binary_and_long_keys,
          test_stats, test_open_by_name, test_open_race},
         60},
        {"badInput",
         {test_bad_input, test_wrong_type, test_read_only, test_full_segment},
         60},
        {"ttl", {test_ttl_expiry, test_ttl_sweep, test_ttl_iterate}, 60},
        {"cache",
         {test_cache_bound, test_cache_clock, test_cache_full_segment},
         60},
        {"growth", {test_growth_100k}, 120},
        {"bigGrowth", {test_growth_past_tag_bits}, 300},
        {"multiProcess",
         {test_procs_counters, test_exec_attach, test_readers_never_torn,
          test_threads_never_torn},
         120},
        {"crash",
         {test_crash_set_new, test_crash_replace_inplace,
          test_crash_replace_newblock, test_crash_set_big, test_crash_delete,
          test_crash_incr, test_crash_incr_new, test_crash_cas, test_crash_grow,
          test_crash_evict, test_crash_clear, test_crash_create,
          test_dead_writer_readers},
         300},
        {"randomKill", {test_random_kill}, 120},
        {"damage",
         {test_damage_undo_log, test_damage_root_copied,
          test_damage_entry_length, test_damage_counters_table},
         60},
    };
    return testSuiteFrom("multidict", cases, sizeof cases / sizeof cases[0],
                         setup, teardown);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--child") == 0)
        return childMain(argc, argv);
    testSetPrefix("md");
    return testRunSuite(multidictSuite());
}
