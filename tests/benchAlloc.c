/* benchAlloc.c — membound against glibc malloc in the same run.
 *
 *   benchAlloc [--ops N] [--live N] [--json]
 *
 * Workload: each process keeps LIVE blocks; every op frees a random one and
 * allocates a new block of a random size (16..256 bytes: the slab path, or
 * 4 KiB..64 KiB with --large: the buddy path). Reported as ops/s (one op =
 * one free + one alloc):
 *   - 1 process: membound (named segment) vs malloc;
 *   - 2 processes: both on ONE shared membound vs each on its own malloc
 *     heap (the unshared baseline: what sharing costs).
 * Then the size overhead: 1,000,000 allocations of 80 bytes in a 128 MiB
 * segment, with the segment bytes each one costs.
 */
#include "benchCommon.h"

#include <dkshm.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct opts {
    long ops;
    long live;
    size_t minSize, maxSize;
} opts;

typedef struct allocator { /* per process */
    void *(*alloc)(void *ctx, size_t n);
    void (*release)(void *ctx, void *p);
    void *ctx;
} allocator;

static void *mbAlloc(void *ctx, size_t n) {
    return memboundAlloc(ctx, n);
}
static void mbFree(void *ctx, void *p) {
    memboundFree(ctx, p);
}
static void *mAlloc(void *ctx, size_t n) {
    (void)ctx;
    return malloc(n);
}
static void mFree(void *ctx, void *p) {
    (void)ctx;
    free(p);
}

/* Run the workload; returns ops done or -1 on an allocation failure. */
static long churn(const allocator *a, const opts *o, unsigned seed) {
    void **slots = calloc((size_t)o->live, sizeof *slots);
    if (!slots)
        return -1;
    size_t span = o->maxSize - o->minSize + 1;
    for (long i = 0; i < o->live; i++) {
        slots[i] = a->alloc(a->ctx, o->minSize + (size_t)rand_r(&seed) % span);
        if (!slots[i])
            return -1;
    }
    for (long i = 0; i < o->ops; i++) {
        long k = rand_r(&seed) % o->live;
        a->release(a->ctx, slots[k]);
        size_t n = o->minSize + (size_t)rand_r(&seed) % span;
        slots[k] = a->alloc(a->ctx, n);
        if (!slots[k])
            return -1;
        ((char *)slots[k])[0] = (char)i; /* touch it, as a user would */
    }
    for (long i = 0; i < o->live; i++)
        a->release(a->ctx, slots[i]);
    free(slots);
    return o->ops;
}

/* Ops/s of the workload in NPROCS forked processes, all starting together.
 * MAKE gives each child its allocator (after fork). */
static double runProcs(int nprocs, allocator (*make)(void *), void *arg,
                       const opts *o) {
    benchBarrier *b = benchBarrierCreate(nprocs);
    if (!b)
        return -1;
    pid_t pids[8];
    for (int i = 0; i < nprocs; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            allocator a = make(arg);
            benchBarrierWait(b);
            _exit(churn(&a, o, 1234u + (unsigned)i) == o->ops ? 0 : 1);
        }
    }
    benchBarrierWait(b);
    double t0 = benchNowSec();
    int failed = 0;
    for (int i = 0; i < nprocs; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        failed |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    double secs = benchNowSec() - t0;
    benchBarrierFree(b);
    return failed ? -1 : (double)o->ops * nprocs / secs;
}

static allocator makeMalloc(void *arg) {
    (void)arg;
    return (allocator){mAlloc, mFree, NULL};
}

static allocator makeMembound(void *arg) {
    return (allocator){mbAlloc, mbFree, memboundForSegment(arg)};
}

static int overhead(benchReport *r) {
    const char *name = "/dkshm-benchalloc-80";
    dkshmUnlink(name);
    dkshm *s;
    uint64_t cap = 128ull << 20;
    int rc = dkshmCreate(name, cap, NULL, &s);
    if (rc != DKSHM_OK) {
        fprintf(stderr, "benchAlloc: create: %s\n", dkshmStrerror(rc));
        return 1;
    }
    membound *m = memboundForSegment(s);
    long n = 1000000, got = 0;
    for (; got < n; got++) {
        dkoff off;
        if (memboundAllocOff(m, 80, &off) != DKSHM_OK)
            break;
    }
    memboundStats st;
    memboundGetStats(m, &st);
    dkshmInfo info;
    dkshmGetInfo(s, &info);
    uint64_t spent = st.used + st.slabSlack + st.metadata + info.heapOffset;
    benchRow(r, "80B x 1e6 allocated", (double)got, "allocs");
    benchRow(r, "80B x 1e6 segment capacity", (double)cap / 1048576.0, "MiB");
    benchRow(r, "80B x 1e6 segment bytes spent", (double)spent / 1048576.0,
             "MiB");
    benchRow(r, "80B x 1e6 bytes per allocation",
             got ? (double)spent / (double)got : 0, "B");
    benchRow(r, "80B x 1e6 resident", (double)info.residentBytes / 1048576.0,
             "MiB");
    dkshmDetach(s);
    dkshmUnlink(name);
    return got == n ? 0 : 1;
}

int main(int argc, char **argv) {
    opts o = {.ops = 2000000, .live = 1000, .minSize = 16, .maxSize = 256};
    benchReport r;
    benchReportInit(&r, "benchAlloc", argc, argv);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--ops") && i + 1 < argc)
            o.ops = atol(argv[++i]);
        else if (!strcmp(argv[i], "--live") && i + 1 < argc)
            o.live = atol(argv[++i]);
        else if (!strcmp(argv[i], "--large")) {
            o.minSize = 4096;
            o.maxSize = 65536;
        } else if (strcmp(argv[i], "--json") != 0) {
            fprintf(stderr, "usage: benchAlloc [--ops N] [--live N] "
                            "[--large] [--json]\n");
            return 2;
        }
    }
    if (o.ops < 1 || o.live < 1) {
        fprintf(stderr, "benchAlloc: --ops and --live must be >= 1\n");
        return 2;
    }

    char name[64];
    snprintf(name, sizeof name, "/dkshm-benchalloc-%d", (int)getpid());
    dkshm *s;
    int rc = dkshmCreate(name, 1ull << 30, NULL, &s);
    if (rc != DKSHM_OK) {
        fprintf(stderr, "benchAlloc: create: %s\n", dkshmStrerror(rc));
        return 1;
    }
    int bad = 0;
    for (int procs = 1; procs <= 2; procs++) {
        char label[96];
        double mb = runProcs(procs, makeMembound, s, &o);
        double ml = runProcs(procs, makeMalloc, NULL, &o);
        snprintf(label, sizeof label, "membound %d proc%s (shared)", procs,
                 procs > 1 ? "s" : "");
        benchRow(&r, label, mb, "ops/s");
        snprintf(label, sizeof label, "glibc malloc %d proc%s (private)",
                 procs, procs > 1 ? "s" : "");
        benchRow(&r, label, ml, "ops/s");
        snprintf(label, sizeof label, "membound/malloc ratio, %d proc%s",
                 procs, procs > 1 ? "s" : "");
        benchRow(&r, label, ml > 0 ? mb / ml : 0, "x");
        bad |= mb < 0 || ml < 0;
    }
    char why[160] = "";
    membound *m = memboundForSegment(s);
    dkshmReap(s, NULL);
    if (memboundCheck(m, why, sizeof why) != DKSHM_OK ||
        memboundCurrentAllocationCount(m) != 0) {
        fprintf(stderr, "benchAlloc: allocator not clean after run: %s\n",
                why);
        bad = 1;
    }
    dkshmDetach(s);
    dkshmUnlink(name);
    bad |= overhead(&r);
    benchReportPrint(&r);
    return bad;
}
