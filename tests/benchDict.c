/* benchDict.c — multidict against the "sharing tax" baseline.
 *
 * 1,000,000 keys of 16 bytes with 64-byte values (--keys, --vlen to
 * change): preload, then random gets in 1 and N processes and random sets
 * of existing keys in 1 process, side by side with two unshared, unlocked
 * in-process open-addressing hash tables doing the same work:
 *
 *   multidict     multidictGet as a program gets it: with a constant key
 *                 length its fast path is compiled into the loop
 *                 (multidictInline.h)
 *   multidict, called  (multidictGet), the library's function, as a
 *                 program gets it for keys of varying length or built
 *                 with DKSHM_NO_INLINE (its sets are the same call as the
 *                 first column's: multidictSet is never inlined)
 *   baseline      slots of {hash, pointer} to malloc'd entries holding the
 *                 key and value lengths and bytes: the same shape as
 *                 multidict (variable-length keys and values, one table
 *                 miss and one entry miss per lookup), minus the sharing:
 *                 pointers instead of checked offsets, no seqlock, no
 *                 locks, no undo log, malloc instead of a shared allocator
 *   baseline, called  the same baseline table behind a call the compiler
 *                 cannot see into, as a library is called (multidict is in
 *                 a shared library): same arguments and out-parameters as
 *                 multidictGet/Set. Inlined into the loop, the baseline's
 *                 length store is dropped (the loop never reads it) and no
 *                 argument is passed; this column shows what that is worth
 *   inline        slots holding the 16-byte key and 64-byte value inline:
 *                 the fastest a fixed-size table can be, for reference
 *   shm baseline  the baseline's code with its table and entries in a
 *                 shared segment of their own (membound blocks, used
 *                 through pointers by this process only): what the memory
 *                 a multidict lives in costs, apart from the code
 *
 * Both baselines hash with XXH3-64 and probe linearly; their tables get the
 * same load (<= 1/2) as multidict's at 1e6 keys. Keys are 8 bytes of index
 * and 8 of a multiplicative hash of it, computed per operation (no key
 * array to miss on); the order is a per-process xorshift sequence. Gets
 * copy the value out; sets overwrite it with a new value of the same size.
 *
 * Also reports the segment bytes the allocator gave out for the entries and
 * tables, and the pages they occupy; and the CPU time the get loops
 * received, since on a busy or virtual machine N processes may not get N
 * CPUs: gets per CPU-second with N processes over 1 process separates what
 * the machine withheld from what sharing costs (the baselines share
 * nothing, so their own scaling in the same run is the machine's).
 *
 *   tests/benchDict [--seconds S] [--repeat N] [--procs N] [--keys N]
 *                   [--vlen N] [--shards N] [--json]
 */
#include "benchCommon.h"

#include "dkshm.h"

#include <math.h>
#include <xxhash.h>

typedef struct dictBench { /* per process: options beyond benchCommon's */
    uint64_t keys;
    uint32_t vlen;
    uint32_t shards;
    const char *only; /* "VARIANT:OP" for profiling one loop */
} dictBench;

static int extraOption(const char *name, const char *value, void *ctx) {
    dictBench *b = ctx;
    char *end = NULL;
    if (!value)
        return -1;
    if (!strcmp(name, "--only")) {
        b->only = value;
        return 1;
    }
    unsigned long long v = strtoull(value, &end, 10);
    if (*end || v == 0)
        return -1;
    if (!strcmp(name, "--keys"))
        b->keys = v;
    else if (!strcmp(name, "--vlen") && v <= 4096)
        b->vlen = (uint32_t)v;
    else if (!strcmp(name, "--shards") && v <= MULTIDICT_SHARDS_MAX)
        b->shards = (uint32_t)v;
    else
        return -1;
    return 1;
}

static const char extraUsage[] =
    "  --keys N        keys to preload (default 1000000)\n"
    "  --vlen N        value bytes (default 64)\n"
    "  --shards N      multidict shards (default: the library default)\n"
    "  --only V:OP     profiling: preload, then run only variant V (dict,\n"
    "                  dictcall, base, basecall, inline, shmbase) doing OP\n"
    "                  (get, set) for --seconds\n";

/* ---- keys and values ---------------------------------------------------- */

static inline void makeKey(uint64_t i, uint64_t key[2]) {
    key[0] = i;
    key[1] = i * 0x9e3779b97f4a7c15ull;
}

static inline void makeValue(uint64_t i, uint64_t gen, uint8_t *v, uint32_t n) {
    uint64_t w = i ^ (gen << 40);
    for (uint32_t j = 0; j + 8 <= n; j += 8, w++)
        memcpy(v + j, &w, 8);
}

static inline uint64_t rngNext(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static inline uint64_t pick(uint64_t *s, uint64_t n) {
    return (uint64_t)(((unsigned __int128)rngNext(s) * n) >> 64);
}

/* ---- the baselines ------------------------------------------------------ */

typedef struct baseEntry { /* per process */
    uint32_t klen;
    uint32_t vlen;
    uint8_t bytes[]; /* key, then value */
} baseEntry;

typedef struct baseSlot {
    uint64_t hash;
    baseEntry *e;
} baseSlot;

typedef struct baseTable {
    baseSlot *slots;
    uint64_t mask;
    membound *mb; /* where its memory comes from; NULL: malloc */
} baseTable;

static void baseInit(baseTable *t, uint64_t keys, membound *mb) {
    uint64_t n = 16;
    while (n < keys * 2)
        n *= 2;
    t->mb = mb;
    t->slots = mb ? memboundCalloc(mb, n, sizeof *t->slots)
                  : calloc(n, sizeof *t->slots);
    if (!t->slots) {
        fprintf(stderr, "benchDict: no memory for the baseline table\n");
        exit(1);
    }
    t->mask = n - 1;
}

static baseEntry *baseFind(baseTable *t, const void *key, uint32_t klen,
                           uint64_t h, uint64_t *at) {
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        baseSlot *s = &t->slots[i];
        if (!s->e) {
            *at = i;
            return NULL;
        }
        if (s->hash == h && s->e->klen == klen &&
            memcmp(s->e->bytes, key, klen) == 0) {
            *at = i;
            return s->e;
        }
    }
}

static void baseSet(baseTable *t, const void *key, uint32_t klen,
                    const void *val, uint32_t vlen) {
    uint64_t h = XXH3_64bits(key, klen), at;
    baseEntry *e = baseFind(t, key, klen, h, &at);
    if (e && e->vlen == vlen) {
        memcpy(e->bytes + klen, val, vlen);
        return;
    }
    size_t bytes = sizeof(baseEntry) + klen + vlen;
    baseEntry *n = t->mb ? memboundAlloc(t->mb, bytes) : malloc(bytes);
    if (!n) {
        fprintf(stderr, "benchDict: no memory for a baseline entry\n");
        exit(1);
    }
    n->klen = klen;
    n->vlen = vlen;
    memcpy(n->bytes, key, klen);
    memcpy(n->bytes + klen, val, vlen);
    if (t->mb && e)
        memboundFree(t->mb, e);
    else
        free(e);
    t->slots[at] = (baseSlot){h, n};
}

static int baseGet(baseTable *t, const void *key, uint32_t klen, void *buf,
                   size_t cap, size_t *vlen) {
    uint64_t h = XXH3_64bits(key, klen), at;
    baseEntry *e = baseFind(t, key, klen, h, &at);
    if (!e)
        return DKSHM_NOTFOUND;
    *vlen = e->vlen;
    if (e->vlen > cap)
        return DKSHM_TOOBIG;
    memcpy(buf, e->bytes + klen, e->vlen);
    return DKSHM_OK;
}

/* The baseline as a library call: noipa keeps GCC from specialising it
 * for this caller (dropping the length argument, say), as it cannot for a
 * function in another object. */
#if defined(__GNUC__) && !defined(__clang__)
#define BENCH_CALL __attribute__((noinline, noipa))
#else
#define BENCH_CALL __attribute__((noinline))
#endif
BENCH_CALL static int baseGetCall(baseTable *t, const void *key, size_t klen,
                                  void *buf, size_t cap, size_t *vlen) {
    return baseGet(t, key, (uint32_t)klen, buf, cap, vlen);
}
BENCH_CALL static int baseSetCall(baseTable *t, const void *key, size_t klen,
                                  const void *val, size_t vlen) {
    baseSet(t, key, (uint32_t)klen, val, (uint32_t)vlen);
    return DKSHM_OK;
}

typedef struct inlineSlot { /* 16-byte key, value up to 64 bytes */
    uint64_t hash;
    uint64_t key[2];
    uint8_t value[64];
} inlineSlot;

typedef struct inlineTable {
    inlineSlot *slots;
    uint64_t mask;
} inlineTable;

static void inlineInit(inlineTable *t, uint64_t keys) {
    uint64_t n = 16;
    while (n < keys * 2)
        n *= 2;
    t->slots = calloc(n, sizeof *t->slots);
    t->mask = n - 1;
}

static inlineSlot *inlineFind(inlineTable *t, const uint64_t key[2],
                              uint64_t h) {
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        inlineSlot *s = &t->slots[i];
        if (s->hash == 0 ||
            (s->hash == h && s->key[0] == key[0] && s->key[1] == key[1]))
            return s;
    }
}

/* ---- measured loops ----------------------------------------------------- */

enum { V_DICT, V_DICTCALL, V_BASE, V_BASECALL, V_INLINE, V_SHMBASE, V_COUNT };

typedef struct runCtx { /* per process; forked workers inherit it */
    int variant;
    bool set;
    uint64_t keys;
    uint32_t vlen;
    multidict *d;
    baseTable *base;
    baseTable *shmBase;
    inlineTable *inl;
    benchBarrier *barrier;
    double seconds;
    uint64_t *ops; /* shared: one per worker */
    uint64_t *cpuNs; /* shared: CPU time of each worker's loop */
    double cpuShare; /* of the last run: CPU received / (processes *
                        seconds); < 1 when the machine is busy */
} runCtx;

/* Run gets or sets for the measurement time; returns operations done.
 * Exits the process on an unexpected result. */
static uint64_t runLoop(runCtx *c, uint64_t seed, uint64_t deadlineNs) {
    uint8_t buf[4096];
    uint64_t key[2], n = 0, sink = 0;
    uint64_t gen = seed;
    for (;;) {
        for (int b = 0; b < 1024; b++, n++) {
            uint64_t i = pick(&seed, c->keys);
            makeKey(i, key);
            size_t len = 0;
            int rc = DKSHM_OK;
            if (c->set) {
                makeValue(i, gen + n, buf, c->vlen); /* a new value each time */
                if (c->variant == V_DICT || c->variant == V_DICTCALL)
                    rc = multidictSet(c->d, key, 16, buf, c->vlen);
                else if (c->variant == V_BASECALL)
                    rc = baseSetCall(c->base, key, 16, buf, c->vlen);
                else if (c->variant == V_BASE || c->variant == V_SHMBASE)
                    baseSet(c->variant == V_BASE ? c->base : c->shmBase, key,
                            16, buf, c->vlen);
                else {
                    uint64_t h = XXH3_64bits(key, 16);
                    memcpy(inlineFind(c->inl, key, h)->value, buf, c->vlen);
                }
            } else {
                if (c->variant == V_DICT)
                    rc = multidictGet(c->d, key, 16, buf, sizeof buf, &len);
                else if (c->variant == V_DICTCALL)
                    rc = (multidictGet)(c->d, key, 16, buf, sizeof buf, &len);
                else if (c->variant == V_BASECALL)
                    rc = baseGetCall(c->base, key, 16, buf, sizeof buf, &len);
                else if (c->variant == V_BASE || c->variant == V_SHMBASE)
                    rc = baseGet(c->variant == V_BASE ? c->base : c->shmBase,
                                 key, 16, buf, sizeof buf, &len);
                else {
                    uint64_t h = XXH3_64bits(key, 16);
                    memcpy(buf, inlineFind(c->inl, key, h)->value, c->vlen);
                }
                sink += buf[0];
            }
            if (rc != DKSHM_OK) {
                fprintf(stderr, "benchDict: %s failed: %s\n",
                        c->set ? "set" : "get", dkshmErrName(rc));
                exit(1);
            }
        }
        if (benchNowNs() >= deadlineNs)
            break;
    }
    __asm__ __volatile__("" ::"r"(sink));
    return n;
}

static uint64_t cpuNowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int worker(int index, void *arg) {
    runCtx *c = arg;
    benchBarrierWait(c->barrier);
    uint64_t deadline = benchNowNs() + (uint64_t)(c->seconds * 1e9);
    uint64_t cpu0 = cpuNowNs();
    c->ops[index] = runLoop(
        c, 0x1234567ull * (uint64_t)(index + 1) + (uint64_t)getpid(), deadline);
    c->cpuNs[index] = cpuNowNs() - cpu0;
    return 0;
}

/* Ops per second of each variant in this process, interleaved: the
 * variants take turns in slices of SLICE_NS until each has had the
 * measurement time, so that a busy spell of a shared machine (other
 * tenants' memory traffic moves DRAM latency by tens of percent within a
 * second) falls on all of them alike. Variants that ran a second apart
 * differed by up to 0.15 in their ratio; interleaved, get ratios of
 * separate runs agree within about 0.03 (set ratios still move by about
 * 0.1: memory placement differs from run to run). */
#define SLICE_NS 20000000ull
static void measureInterleaved(runCtx *c, double out[V_COUNT]) {
    uint64_t ops[V_COUNT] = {0}, ns[V_COUNT] = {0};
    uint64_t slices = (uint64_t)(c->seconds * 1e9) / SLICE_NS;
    if (slices == 0)
        slices = 1;
    for (uint64_t k = 0; k < slices; k++) {
        for (int j = 0; j < V_COUNT; j++) {
            int v = (int)((j + k) % V_COUNT); /* the first one rotates */
            c->variant = v;
            uint64_t t0 = benchNowNs();
            ops[v] += runLoop(c, 99 + t0, t0 + SLICE_NS);
            ns[v] += benchNowNs() - t0;
        }
    }
    for (int v = 0; v < V_COUNT; v++)
        out[v] = (double)ops[v] / ((double)ns[v] / 1e9);
}

/* The median over N repeats of RUNS[A][rep] / RUNS[B][rep]. */
static double pairedRatio(double runs[][1000], int a, int b, int n) {
    double r[1000];
    for (int i = 0; i < n; i++)
        r[i] = runs[a][i] / runs[b][i];
    return benchMedian(r, n);
}

/* Ops per second of PROCS processes (0: in this process). */
static double measure(runCtx *c, int procs) {
    if (procs == 0) {
        uint64_t t0 = benchNowNs(), cpu0 = cpuNowNs();
        uint64_t n = runLoop(c, 99 + t0, t0 + (uint64_t)(c->seconds * 1e9));
        double secs = (double)(benchNowNs() - t0) / 1e9;
        c->cpuShare = (double)(cpuNowNs() - cpu0) / 1e9 / secs;
        return (double)n / secs;
    }
    c->barrier = benchBarrierCreate(procs);
    c->ops = benchSharedMem(sizeof(uint64_t) * (size_t)procs);
    c->cpuNs = benchSharedMem(sizeof(uint64_t) * (size_t)procs);
    pid_t pids[64];
    int started = benchSpawn(procs, worker, c, pids);
    benchBarrierWait(c->barrier);
    uint64_t t0 = benchNowNs();
    int failed = benchWaitAll(started, pids);
    double secs = (double)(benchNowNs() - t0) / 1e9;
    uint64_t total = 0, cpu = 0;
    for (int i = 0; i < procs; i++) {
        total += c->ops[i];
        cpu += c->cpuNs[i];
    }
    c->cpuShare = (double)cpu / 1e9 / ((double)procs * c->seconds);
    benchBarrierFree(c->barrier);
    munmap(c->ops, sizeof(uint64_t) * (size_t)procs);
    munmap(c->cpuNs, sizeof(uint64_t) * (size_t)procs);
    if (failed || started != procs)
        return NAN;
    /* Workers stop at their own deadline: time from the common start. */
    (void)secs;
    return (double)total / c->seconds;
}

int main(int argc, char **argv) {
    benchOptions o;
    dictBench b = {.keys = 1000000, .vlen = 64};
    int prc = benchParseArgs(argc, argv, &o, extraOption, &b, extraUsage);
    if (prc)
        return prc == 1 ? 0 : 2;
    if (o.procs > 64)
        o.procs = 64;
    benchReport r;
    benchReportInit(&r, "benchDict: multidict vs unshared hash tables", argc,
                    argv);
    char note[160];
    snprintf(note, sizeof note,
             "%llu keys of 16 bytes, %u-byte values; %.2f s per run, median "
             "of %d; %d processes for the multi-process row",
             (unsigned long long)b.keys, b.vlen, o.seconds, o.repeat, o.procs);
    benchReportNote(&r, note);

    uint64_t capacity = (uint64_t)(b.keys * (b.vlen + 200) + (64u << 20));
    dkshm *s;
    int rc = dkshmCreateAnonymous(capacity, NULL, &s);
    if (rc != DKSHM_OK) {
        fprintf(stderr, "benchDict: segment: %s\n", dkshmStrerror(rc));
        return 1;
    }
    membound *mb = memboundForSegment(s);
    size_t usedBefore = memboundBytesUsed(mb);
    memboundStats ms0;
    memboundGetStats(mb, &ms0);
    multidictOptions mo = {.shards = b.shards};
    multidict *d;
    if ((rc = multidictOpen(s, "bench", &mo, MULTIDICT_CREATE, &d)) !=
        DKSHM_OK) {
        fprintf(stderr, "benchDict: open: %s\n", dkshmStrerror(rc));
        return 1;
    }
    baseTable base, shmBase;
    baseInit(&base, b.keys, NULL);
    dkshm *bs; /* the shm baseline's own segment */
    if ((rc = dkshmCreateAnonymous(capacity, NULL, &bs)) != DKSHM_OK) {
        fprintf(stderr, "benchDict: segment: %s\n", dkshmStrerror(rc));
        return 1;
    }
    baseInit(&shmBase, b.keys, memboundForSegment(bs));
    inlineTable inl;
    inlineInit(&inl, b.keys);
    if (b.vlen > 64)
        fprintf(stderr, "benchDict: inline baseline holds 64 bytes\n");

    /* Preload: inserts of new keys, timed. */
    uint8_t val[4096];
    uint64_t key[2];
    double preload[V_COUNT];
    for (int v = 0; v < V_COUNT; v++) {
        if (v == V_BASECALL || v == V_DICTCALL) { /* loaded once */
            preload[v] = NAN;
            continue;
        }
        uint64_t t0 = benchNowNs();
        for (uint64_t i = 0; i < b.keys; i++) {
            makeKey(i, key);
            makeValue(i, 0, val, b.vlen);
            if (v == V_DICT) {
                if ((rc = multidictSet(d, key, 16, val, b.vlen)) != DKSHM_OK) {
                    fprintf(stderr, "benchDict: preload: %s\n",
                            dkshmStrerror(rc));
                    return 1;
                }
            } else if (v == V_BASE || v == V_SHMBASE) {
                baseSet(v == V_BASE ? &base : &shmBase, key, 16, val, b.vlen);
            } else {
                uint64_t h = XXH3_64bits(key, 16);
                inlineSlot *sl = inlineFind(&inl, key, h);
                sl->hash = h;
                memcpy(sl->key, key, 16);
                memcpy(sl->value, val, b.vlen > 64 ? 64 : b.vlen);
            }
        }
        preload[v] = (double)b.keys / ((double)(benchNowNs() - t0) / 1e9);
    }

    multidictStats st;
    multidictGetStats(d, &st);
    memboundStats ms;
    memboundGetStats(mb, &ms);
    snprintf(note, sizeof note,
             "multidict: %u shards, %llu slots (max load %.2f), %llu resizes",
             st.shards, (unsigned long long)st.slots, st.maxLoad,
             (unsigned long long)st.resizes);
    benchReportNote(&r, note);

    const char *cols[V_COUNT] = {"multidict",        "multidict, called",
                                 "baseline",         "baseline, called",
                                 "inline",           "shm baseline"};
    benchTable(&r, V_COUNT, cols);
    benchTableRow(&r, "preload (insert new keys)", "ops/s", preload);

    runCtx c = {.keys = b.keys,
                .vlen = b.vlen,
                .d = d,
                .base = &base,
                .shmBase = &shmBase,
                .inl = &inl,
                .seconds = o.seconds};
    if (b.only) {
        static const char *names[V_COUNT] = {"dict",     "dictcall",
                                             "base",     "basecall",
                                             "inline",   "shmbase"};
        size_t len = strcspn(b.only, ":");
        for (int v = 0; v < V_COUNT; v++)
            if (strlen(names[v]) == len && !strncmp(b.only, names[v], len))
                c.variant = v;
        c.set = strstr(b.only, ":set") != NULL;
        printf("%s: %.0f ops/s\n", b.only, measure(&c, 0));
        return 0;
    }
    /* In each repeat every variant does one kind of work: gets and sets
     * in 1 process interleaved in short slices (measureInterleaved), gets
     * in N processes back to back (the first variant rotates), so that the
     * two sides of a ratio see the same machine. A ratio below is the
     * median of the per-repeat ratios, not the ratio of the medians. */
    double get1[V_COUNT], getN[V_COUNT], set1[V_COUNT], share1[V_COUNT],
        shareN[V_COUNT];
    static double runs[5][V_COUNT][1000];
    for (int rep = 0; rep < o.repeat; rep++) {
        double rate[V_COUNT];
        for (int k = 0; k < 2; k++) {
            c.set = k == 1;
            uint64_t cpu0 = cpuNowNs(), t0 = benchNowNs();
            measureInterleaved(&c, rate);
            double share = (double)(cpuNowNs() - cpu0) /
                           (double)(benchNowNs() - t0);
            for (int v = 0; v < V_COUNT; v++) {
                runs[k ? 2 : 0][v][rep] = rate[v];
                if (!k)
                    runs[3][v][rep] = share;
            }
        }
        c.set = false;
        for (int j = 0; j < V_COUNT; j++) {
            int v = (j + rep) % V_COUNT;
            c.variant = v;
            runs[1][v][rep] = measure(&c, o.procs);
            runs[4][v][rep] = c.cpuShare;
        }
    }
    double getVsBase = pairedRatio(runs[0], V_DICT, V_BASE, o.repeat);
    double getVsCall = pairedRatio(runs[0], V_DICT, V_BASECALL, o.repeat);
    double calledVsBase = pairedRatio(runs[0], V_DICTCALL, V_BASE, o.repeat);
    double calledVsCall =
        pairedRatio(runs[0], V_DICTCALL, V_BASECALL, o.repeat);
    double setVsCall = pairedRatio(runs[2], V_DICT, V_BASECALL, o.repeat);
    double callVsBase = pairedRatio(runs[0], V_BASECALL, V_BASE, o.repeat);
    double getVsInline = pairedRatio(runs[0], V_DICT, V_INLINE, o.repeat);
    double getVsShm = pairedRatio(runs[0], V_DICT, V_SHMBASE, o.repeat);
    double shmVsBase = pairedRatio(runs[0], V_SHMBASE, V_BASE, o.repeat);
    double setVsBase = pairedRatio(runs[2], V_DICT, V_BASE, o.repeat);
    double setVsInline = pairedRatio(runs[2], V_DICT, V_INLINE, o.repeat);
    double setVsShm = pairedRatio(runs[2], V_DICT, V_SHMBASE, o.repeat);
    double scaling[1000];
    for (int rep = 0; rep < o.repeat; rep++)
        scaling[rep] = runs[1][V_DICT][rep] / runs[0][V_DICT][rep];
    double dictScaling = benchMedian(scaling, o.repeat);
    for (int v = 0; v < V_COUNT; v++) {
        get1[v] = benchMedian(runs[0][v], o.repeat);
        getN[v] = benchMedian(runs[1][v], o.repeat);
        set1[v] = benchMedian(runs[2][v], o.repeat);
        share1[v] = benchMedian(runs[3][v], o.repeat);
        shareN[v] = benchMedian(runs[4][v], o.repeat);
    }
    char name[96];
    benchTableRow(&r, "get, 1 process", "ops/s", get1);
    snprintf(name, sizeof name, "get, %d processes (total)", o.procs);
    benchTableRow(&r, name, "ops/s", getN);
    benchTableRow(&r, "set existing key, 1 process", "ops/s", set1);
    double ratio[V_COUNT];
    for (int v = 0; v < V_COUNT; v++)
        ratio[v] = getN[v] / get1[v];
    snprintf(name, sizeof name, "get scaling, %d processes / 1", o.procs);
    benchTableRow(&r, name, "x", ratio);
    /* A shared or virtual machine may not give every worker a whole CPU
     * (other jobs, a vCPU quota): then no variant scales. The CPU time the
     * loops received tells the machine's share apart from the code's: gets
     * per CPU-second with N processes over those with 1 is 1.0 when
     * sharing costs the code nothing. */
    benchTableRow(&r, "CPU received, get 1 process / 1 CPU", "x", share1);
    snprintf(name, sizeof name, "CPU received, get %d processes / %d CPUs",
             o.procs, o.procs);
    benchTableRow(&r, name, "x", shareN);
    for (int v = 0; v < V_COUNT; v++)
        ratio[v] = share1[v] > 0 && shareN[v] > 0
                       ? (getN[v] / (shareN[v] * o.procs)) /
                             (get1[v] / share1[v])
                       : NAN;
    snprintf(name, sizeof name, "get per CPU-second, %d processes / 1",
             o.procs);
    benchTableRow(&r, name, "x", ratio);

    printf("\n");
    benchRow(&r, "multidict get / baseline get", getVsBase,
             "x (target >= 0.7)");
    benchRow(&r, "multidict get / baseline, called get", getVsCall, "x");
    benchRow(&r, "multidict, called get / baseline get", calledVsBase,
             "x (the library call)");
    benchRow(&r, "multidict, called get / baseline, called get",
             calledVsCall, "x");
    benchRow(&r, "baseline, called get / baseline get", callVsBase,
             "x (the call's share)");
    benchRow(&r, "multidict get / inline get", getVsInline, "x");
    benchRow(&r, "multidict get / shm baseline get", getVsShm,
             "x (the code's share)");
    benchRow(&r, "shm baseline get / baseline get", shmVsBase,
             "x (the memory's share)");
    snprintf(name, sizeof name, "multidict get, %d procs / 1 proc", o.procs);
    benchRow(&r, name, dictScaling, "x (target >= 1.85)");
    benchRow(&r, "multidict set / baseline set", setVsBase,
             "x (target >= 0.5)");
    benchRow(&r, "multidict set / baseline, called set", setVsCall, "x");
    benchRow(&r, "multidict set / inline set", setVsInline, "x");
    benchRow(&r, "multidict set / shm baseline set", setVsShm, "x");
    double mib = 1024.0 * 1024.0;
    benchRow(&r, "segment: allocator bytes in use",
             (double)(memboundBytesUsed(mb) - usedBefore) / mib,
             "MiB (target <= 192)");
    benchRow(&r, "segment: ... plus slab slack (pages taken)",
             (double)((ms.used + ms.slabSlack) - (ms0.used + ms0.slabSlack)) /
                 mib,
             "MiB");
    benchRow(&r, "segment: entry bytes (headers, keys, values)",
             (double)st.bytes / mib, "MiB");
    benchRow(&r, "segment: slot tables", (double)st.tableBytes / mib, "MiB");
    benchRow(&r, "segment bytes per entry",
             (double)(memboundBytesUsed(mb) - usedBefore) / (double)b.keys,
             "bytes");
    benchReportPrint(&r);
    multidictClose(d);
    dkshmDetach(s);
    dkshmDetach(bs);
    return 0;
}
