/* benchMap.c — multimap throughput: insert, overwrite, lookup (1 and N
 * processes), seek and full iteration at 1,000,000 keys of 16 bytes with
 * 64-byte values. A benchmark, not a test: it measures and prints.
 *
 * Keys are 16 bytes of a 64-bit mix of the key index (random order, no
 * shared prefixes beyond chance); lookups draw indices uniformly. For
 * context it also times binary search over the same keys in a plain
 * sorted array in process memory (the "no sharing, no tree" floor).
 *
 *   tests/benchMap [--keys N] [--value-size B] [--seconds S] [--procs N]
 *                  [--repeat N] [--json]
 */
#include "config.h"

#include "dkshm.h"

#include "benchCommon.h"

#include <inttypes.h>
#include <math.h>

typedef struct mapBenchOpts { /* per process */
    uint64_t keys;
    uint32_t vsize;
} mapBenchOpts;

static int mapOption(const char *name, const char *value, void *ctx) {
    mapBenchOpts *o = ctx;
    char *end = NULL;
    if (!strcmp(name, "--keys") && value) {
        o->keys = strtoull(value, &end, 10);
        return *end || o->keys == 0 ? -1 : 1;
    }
    if (!strcmp(name, "--value-size") && value) {
        unsigned long v = strtoul(value, &end, 10);
        if (*end || v > 1 << 20)
            return -1;
        o->vsize = (uint32_t)v;
        return 1;
    }
    return -1;
}

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void keyOf(uint64_t i, uint8_t k[16]) {
    uint64_t a = mix64(i), b = mix64(i ^ 0xabcdef1234567890ull);
    memcpy(k, &a, 8);
    memcpy(k + 8, &b, 8);
}

static uint64_t rng(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

typedef struct shared { /* in memory shared with the workers */
    benchBarrier bar;
    uint64_t ops[1024];
    uint64_t failed;
} shared;

static const char *segName;
static mapBenchOpts mo = {1000000, 64};
static benchOptions bo;
static shared *sh;

/* Lookups of random existing keys for bo.seconds; returns ops done. */
static uint64_t lookupLoop(multimap *m, uint64_t seed, const benchBarrier *b) {
    uint8_t k[16], v[1 << 16];
    uint64_t n = 0;
    for (;;) {
        for (int i = 0; i < 256; i++) {
            keyOf(rng(&seed) % mo.keys, k);
            size_t vl;
            if (multimapLookup(m, k, 16, v, sizeof v, &vl) != DKSHM_OK)
                __atomic_add_fetch(&sh->failed, 1, __ATOMIC_RELAXED);
        }
        n += 256;
        if (benchShouldStop(b))
            return n;
    }
}

static int lookupWorker(int idx, void *arg) {
    (void)arg;
    dkshm *s;
    multimap *m;
    if (dkshmAttach(segName, 0, &s) != DKSHM_OK ||
        multimapOpen(s, "bench", NULL, 0, &m) != DKSHM_OK)
        return 1;
    benchBarrierWait(&sh->bar);
    sh->ops[idx] = lookupLoop(m, 1234 + (uint64_t)idx * 7919, &sh->bar);
    multimapClose(m);
    dkshmDetach(s);
    return 0;
}

/* N workers look up for bo.seconds; ops/s over all of them. */
static double lookupProcs(int n) {
    benchBarrierInit(&sh->bar, n);
    memset(sh->ops, 0, sizeof sh->ops);
    pid_t pids[1024];
    int started = benchSpawn(n, lookupWorker, NULL, pids);
    benchBarrierWait(&sh->bar);
    uint64_t t0 = benchNowNs();
    benchSleep(bo.seconds);
    benchStop(&sh->bar);
    int failed = benchWaitAll(started, pids);
    double secs = (double)(benchNowNs() - t0) / 1e9;
    if (failed || started != n)
        return NAN;
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += sh->ops[i];
    return (double)total / secs;
}

static int cmp16(const void *a, const void *b) {
    return memcmp(a, b, 16);
}

int main(int argc, char **argv) {
    int prc = benchParseArgs(argc, argv, &bo, mapOption, &mo,
                             "  --keys N        keys in the map (default "
                             "1000000)\n"
                             "  --value-size B  bytes per value (default "
                             "64)\n");
    if (prc)
        return prc == 1 ? 0 : 2;
    benchReport r;
    benchReportInit(&r, "benchMap: multimap (B+tree in a shared segment)", argc,
                    argv);
    char note[160];
    snprintf(note, sizeof note,
             "%" PRIu64 " keys of 16 bytes, %u-byte values; %ld CPUs; "
             "median of %d runs of %.1f s",
             mo.keys, mo.vsize, sysconf(_SC_NPROCESSORS_ONLN), bo.repeat,
             bo.seconds);
    benchReportNote(&r, note);
    sh = benchSharedMem(sizeof *sh);
    static char name[64];
    snprintf(name, sizeof name, "/dkbench-map-%d", (int)getpid());
    segName = name;
    dkshmUnlink(segName);
    uint64_t perMap =
        mo.keys * (16 + 16 + ((mo.vsize + 7) & ~7u) + 64) + (64u << 20);
    uint64_t cap = perMap * (uint64_t)(bo.repeat + 1);
    dkshm *s;
    int rc = dkshmCreate(segName, cap, NULL, &s);
    if (rc != DKSHM_OK) {
        fprintf(stderr, "create: %s\n", dkshmStrerror(rc));
        return 1;
    }
    uint8_t *val = calloc(1, mo.vsize ? mo.vsize : 1);
    uint8_t k[16];
    double insRuns[1000], updRuns[1000], lk1[1000], lk2[1000], itRuns[1000],
        seekRuns[1000], baseRuns[1000];
    int reps = bo.repeat;
    multimap *m = NULL;
    /* Inserts: one fresh map per run; the last one stays as "bench". */
    for (int run = 0; run < reps; run++) {
        char mname[32];
        snprintf(mname, sizeof mname, run == reps - 1 ? "bench" : "ins%d", run);
        multimap *x;
        if (multimapOpen(s, mname, NULL, MULTIMAP_CREATE, &x) != DKSHM_OK)
            return 1;
        uint64_t t0 = benchNowNs();
        for (uint64_t i = 0; i < mo.keys; i++) {
            keyOf(i, k);
            memcpy(val, &i, mo.vsize < 8 ? mo.vsize : 8);
            if ((rc = multimapInsert(x, k, 16, val, mo.vsize, 0)) != DKSHM_OK) {
                fprintf(stderr, "insert: %s\n", dkshmStrerror(rc));
                return 1;
            }
        }
        insRuns[run] = (double)mo.keys / ((double)(benchNowNs() - t0) / 1e9);
        if (run == reps - 1)
            m = x;
        else
            multimapClose(x);
    }
    multimapStats st;
    multimapGetStats(m, &st);
    snprintf(note, sizeof note,
             "tree: height %u, %" PRIu64 " leaves, %" PRIu64 " inner, %.1f "
             "MiB of nodes, %.1f MiB of entries",
             st.height, st.leaves, st.inner, (double)st.nodeBytes / (1 << 20),
             (double)st.entryBytes / (1 << 20));
    benchReportNote(&r, note);
    /* Overwrites of existing keys (random order), timed. */
    for (int run = 0; run < reps; run++) {
        uint64_t seed = 77 + (uint64_t)run, n = 0;
        uint64_t t0 = benchNowNs(), end = t0 + (uint64_t)(bo.seconds * 1e9);
        while (benchNowNs() < end) {
            for (int i = 0; i < 256; i++) {
                keyOf(rng(&seed) % mo.keys, k);
                if (multimapInsert(m, k, 16, val, mo.vsize, 0) != DKSHM_OK)
                    return 1;
            }
            n += 256;
        }
        updRuns[run] = (double)n / ((double)(benchNowNs() - t0) / 1e9);
    }
    /* Lookups in this process. */
    for (int run = 0; run < reps; run++) {
        benchBarrierInit(&sh->bar, 0);
        uint64_t t0 = benchNowNs();
        uint64_t seed = 99 + (uint64_t)run, n = 0;
        uint8_t v[1 << 16];
        uint64_t end = t0 + (uint64_t)(bo.seconds * 1e9);
        while (benchNowNs() < end) {
            for (int i = 0; i < 256; i++) {
                keyOf(rng(&seed) % mo.keys, k);
                size_t vl;
                if (multimapLookup(m, k, 16, v, sizeof v, &vl) != DKSHM_OK)
                    sh->failed++;
            }
            n += 256;
        }
        lk1[run] = (double)n / ((double)(benchNowNs() - t0) / 1e9);
    }
    /* Lookups in 1 and N forked processes (each its own attach). */
    double lkp1[1000];
    for (int run = 0; run < reps; run++) {
        lkp1[run] = lookupProcs(1);
        lk2[run] = lookupProcs(bo.procs);
    }
    /* Seeks (GE of a random absent key, copying key and value). */
    for (int run = 0; run < reps; run++) {
        uint64_t seed = 5 + (uint64_t)run, n = 0;
        uint8_t kb[16], v[1 << 16];
        uint64_t t0 = benchNowNs(), end = t0 + (uint64_t)(bo.seconds * 1e9);
        while (benchNowNs() < end) {
            for (int i = 0; i < 256; i++) {
                uint64_t a = rng(&seed), b = rng(&seed);
                memcpy(k, &a, 8);
                memcpy(k + 8, &b, 8);
                size_t kl, vl;
                multimapSeek(m, MULTIMAP_GE, k, 16, kb, sizeof kb, &kl, v,
                             sizeof v, &vl);
            }
            n += 256;
        }
        seekRuns[run] = (double)n / ((double)(benchNowNs() - t0) / 1e9);
    }
    /* Full iteration. */
    for (int run = 0; run < reps; run++) {
        uint64_t cnt = 0;
        uint64_t t0 = benchNowNs();
        size_t kl, vl;
        uint8_t kb[16], v[1 << 16];
        rc = multimapFirst(m, kb, sizeof kb, &kl, v, sizeof v, &vl);
        while (rc == DKSHM_OK) {
            cnt++;
            rc = multimapSeek(m, MULTIMAP_GT, kb, kl, kb, sizeof kb, &kl, v,
                              sizeof v, &vl);
        }
        itRuns[run] = (double)cnt / ((double)(benchNowNs() - t0) / 1e9);
        if (cnt != mo.keys)
            fprintf(stderr, "iterate: %" PRIu64 " entries\n", cnt);
    }
    /* The floor: bsearch in a sorted array in process memory. */
    uint8_t *arr = malloc(mo.keys * 16);
    for (uint64_t i = 0; i < mo.keys; i++)
        keyOf(i, arr + i * 16);
    qsort(arr, mo.keys, 16, cmp16);
    for (int run = 0; run < reps; run++) {
        uint64_t seed = 99 + (uint64_t)run, n = 0, hits = 0;
        uint64_t t0 = benchNowNs(), end = t0 + (uint64_t)(bo.seconds * 1e9);
        while (benchNowNs() < end) {
            for (int i = 0; i < 256; i++) {
                keyOf(rng(&seed) % mo.keys, k);
                hits += bsearch(k, arr, mo.keys, 16, cmp16) != NULL;
            }
            n += 256;
        }
        baseRuns[run] = (double)n / ((double)(benchNowNs() - t0) / 1e9);
        benchCompilerBarrier();
        if (hits != n)
            fprintf(stderr, "bsearch missed\n");
    }
    free(arr);
    if (sh->failed)
        fprintf(stderr, "%" PRIu64 " lookups failed\n", sh->failed);
    char label[96];
    benchRow(&r, "insert, new keys (1 process)", benchMedian(insRuns, reps),
             "ops/s");
    benchRow(&r, "insert, overwrite existing (1 process)",
             benchMedian(updRuns, reps), "ops/s");
    benchRow(&r, "lookup (1 process, same process)", benchMedian(lk1, reps),
             "ops/s");
    benchRow(&r, "lookup (1 forked process)", benchMedian(lkp1, reps), "ops/s");
    snprintf(label, sizeof label, "lookup (%d processes, total)", bo.procs);
    benchRow(&r, label, benchMedian(lk2, reps), "ops/s");
    benchRow(&r, "seek GE of a random key (1 process)",
             benchMedian(seekRuns, reps), "ops/s");
    benchRow(&r, "iterate, one seek GT per entry (1 process)",
             benchMedian(itRuns, reps), "entries/s");
    benchRow(&r, "baseline: bsearch in a private sorted array",
             benchMedian(baseRuns, reps), "ops/s");
    benchReportPrint(&r);
    multimapClose(m);
    dkshmDetach(s);
    dkshmUnlink(segName);
    free(val);
    return 0;
}
