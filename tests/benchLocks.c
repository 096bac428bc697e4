/* benchLocks.c — fastMutex against the process-shared pthread mutexes it
 * replaces, side by side, in one run.
 *
 *   fastMutex         dkshm's robust futex lock (shm/fastmutex.h)
 *   pthread pshared   pthread_mutex_t, PTHREAD_PROCESS_SHARED
 *   pthread robust    pthread_mutex_t, PTHREAD_PROCESS_SHARED +
 *                     PTHREAD_MUTEX_ROBUST (the baseline DESIGN.md names:
 *                     the same guarantee against a dead owner)
 *
 * All three live in the same dkshm segment (an anonymous one, shared with
 * the forked workers), each on its own cache lines, at the end of the heap
 * region (found through dkshmGetInfo; nothing here allocates).
 *
 * Measurements:
 *   1. uncontended lock+unlock pair, one process, ns per pair;
 *   2. contended: --procs processes (default 2) hammer one lock with an
 *      empty critical section (a counter increment), total pairs/s;
 *   3. the same with a small critical section and --work steps of
 *      arithmetic outside the lock, total pairs/s.
 * Each runs for --seconds (default 1) or --iterations per process, and is
 * repeated --repeat times (default 3), the three locks taking turns so
 * that a noisy neighbour hurts them alike; the median is reported. The
 * shared counter is checked against the pairs counted, so a lock that lets
 * two holders in is reported, not timed.
 *
 * Only the public API is used (dkshm.h), so this builds against the
 * installed library as well as in the tree.
 */
#include "config.h"

#include "dkshm.h"

#include "benchCommon.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>

enum { K_FAST, K_PSHARED, K_ROBUST, KINDS };
static const char *const kindName[KINDS] = {"fastMutex", "pthread pshared",
                                            "pthread robust"};

#define MAX_PROCS 1024
#define LINE 128 /* two cache lines: no false sharing with the prefetcher */

typedef struct benchShared { /* in the segment */
    _Alignas(LINE) fastMutex fm;
    _Alignas(LINE) pthread_mutex_t pm;
    _Alignas(LINE) pthread_mutex_t rm;
    _Alignas(LINE) uint64_t counter; /* guarded by the lock under test */
    _Alignas(LINE) benchBarrier bar;
    _Alignas(LINE) uint32_t failures;
    uint64_t ops[MAX_PROCS]; /* pairs done by each worker */
} benchShared;

static dkshm *S;
static benchShared *SH;
static benchOptions opt;
static benchReport rep;
static int workSteps = 200;

/* ---- the three locks ----------------------------------------------------- */

static void lockFailed(int kind, int rc) {
    __atomic_add_fetch(&SH->failures, 1, __ATOMIC_RELAXED);
    fprintf(stderr, "benchLocks: %s lock failed: %d\n", kindName[kind], rc);
}

static inline __attribute__((always_inline)) void lockK(int k) {
    int rc;
    switch (k) {
    case K_FAST:
        rc = fastMutexLock(S, &SH->fm);
        if (__builtin_expect(rc != DKSHM_OK, 0) && rc != DKSHM_RECOVERED)
            lockFailed(k, rc);
        break;
    case K_PSHARED:
        rc = pthread_mutex_lock(&SH->pm);
        if (__builtin_expect(rc != 0, 0))
            lockFailed(k, rc);
        break;
    default:
        rc = pthread_mutex_lock(&SH->rm);
        if (__builtin_expect(rc != 0, 0)) {
            if (rc == EOWNERDEAD)
                pthread_mutex_consistent(&SH->rm);
            else
                lockFailed(k, rc);
        }
        break;
    }
}

static inline __attribute__((always_inline)) void unlockK(int k) {
    switch (k) {
    case K_FAST:
        fastMutexUnlock(S, &SH->fm);
        break;
    case K_PSHARED:
        pthread_mutex_unlock(&SH->pm);
        break;
    default:
        pthread_mutex_unlock(&SH->rm);
        break;
    }
}

/* Arithmetic the compiler cannot drop: the work done outside the lock. */
static inline __attribute__((always_inline)) uint64_t work(uint64_t x, int n) {
    for (int i = 0; i < n; i++)
        x = x * 6364136223846793005ull + 1442695040888963407ull;
    return x;
}

static volatile uint64_t sink;

/* ---- 1. uncontended ------------------------------------------------------ */

static inline __attribute__((always_inline)) void pairs(int k, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        lockK(k);
        benchCompilerBarrier();
        unlockK(k);
    }
}

static __attribute__((noinline)) void pairsOf(int k, uint64_t n) {
    switch (k) {
    case K_FAST:
        pairs(K_FAST, n);
        break;
    case K_PSHARED:
        pairs(K_PSHARED, n);
        break;
    default:
        pairs(K_ROBUST, n);
        break;
    }
}

static double uncontendedNs(int k) {
    pairsOf(k, 20000); /* warm up; registers us for fastMutex */
    uint64_t n = 0;
    uint64_t t0 = benchNowNs(), t1;
    if (opt.iterations) {
        pairsOf(k, opt.iterations);
        n = opt.iterations;
        t1 = benchNowNs();
    } else {
        uint64_t budget = (uint64_t)(opt.seconds * 1e9);
        do {
            pairsOf(k, 100000);
            n += 100000;
            t1 = benchNowNs();
        } while (t1 - t0 < budget);
    }
    return (double)(t1 - t0) / (double)n;
}

/* ---- 2 and 3. several processes on one lock ------------------------------ */

typedef struct runArgs { /* per process */
    int kind;
    int work; /* steps outside the lock per pair; 0: none */
} runArgs;

static inline __attribute__((always_inline)) uint64_t hammer(int k, int steps,
                                                             uint64_t seed) {
    uint64_t done = 0, x = seed;
    if (opt.iterations) {
        for (uint64_t i = 0; i < opt.iterations; i++) {
            x = work(x, steps);
            lockK(k);
            SH->counter++;
            unlockK(k);
        }
        done = opt.iterations;
    } else {
        while (!benchShouldStop(&SH->bar)) {
            for (int i = 0; i < 256; i++) {
                x = work(x, steps);
                lockK(k);
                SH->counter++;
                unlockK(k);
            }
            done += 256;
        }
    }
    sink = x;
    return done;
}

static int worker(int idx, void *arg) {
    const runArgs *ra = arg;
    lockK(ra->kind); /* registers a fastMutex user before the clock runs */
    unlockK(ra->kind);
    benchBarrierWait(&SH->bar);
    uint64_t seed = (uint64_t)idx * 0x9e3779b97f4a7c15ull + 1;
    uint64_t done;
    switch (ra->kind) {
    case K_FAST:
        done = hammer(K_FAST, ra->work, seed);
        break;
    case K_PSHARED:
        done = hammer(K_PSHARED, ra->work, seed);
        break;
    default:
        done = hammer(K_ROBUST, ra->work, seed);
        break;
    }
    SH->ops[idx] = done;
    benchBarrierDone(&SH->bar);
    return __atomic_load_n(&SH->failures, __ATOMIC_RELAXED) ? 1 : 0;
}

/* Total pairs per second of OPT.procs processes on lock K. */
static double contendedRate(int k, int steps) {
    int n = opt.procs;
    SH->counter = 0;
    memset(SH->ops, 0, sizeof(uint64_t) * (size_t)n);
    runArgs ra = {.kind = k, .work = steps};
    pid_t pids[MAX_PROCS];
    benchBarrierInit(&SH->bar, n);
    int started = benchSpawn(n, worker, &ra, pids);
    if (started < n) {
        /* Let the ones that started through, and stop them at once. */
        benchStop(&SH->bar);
        SH->bar.parties = (uint32_t)started + 1;
        benchBarrierWait(&SH->bar);
        benchWaitAll(started, pids);
        return NAN;
    }
    benchBarrierWait(&SH->bar);
    uint64_t t0 = benchNowNs(), t1;
    if (opt.iterations) {
        benchBarrierWaitDone(&SH->bar);
    } else {
        benchSleep(opt.seconds);
        benchStop(&SH->bar);
    }
    t1 = benchNowNs();
    int failed = benchWaitAll(n, pids);
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += SH->ops[i];
    if (failed || SH->counter != total) {
        fprintf(stderr,
                "benchLocks: %s: %d workers failed, counter %llu for %llu "
                "pairs%s\n",
                kindName[k], failed, (unsigned long long)SH->counter,
                (unsigned long long)total,
                SH->counter != total ? ": MUTUAL EXCLUSION BROKEN" : "");
        return NAN;
    }
    /* Timed runs: workers finish their last batch of 256 after the stop. */
    return (double)total / ((double)(t1 - t0) / 1e9);
}

/* The median over OPT.repeat rounds, the kinds taking turns in each round.
 * STEPS < 0: uncontended ns per pair; else contended M pairs/s. */
static void measure(int steps, double out[KINDS]) {
    double runs[KINDS][1000];
    for (int r = 0; r < opt.repeat; r++)
        for (int k = 0; k < KINDS; k++)
            runs[k][r] =
                steps < 0 ? uncontendedNs(k) : contendedRate(k, steps) / 1e6;
    for (int k = 0; k < KINDS; k++)
        out[k] = benchMedian(runs[k], opt.repeat);
}

/* ---- setup and report ---------------------------------------------------- */

static int parseExtra(const char *name, const char *value, void *ctx) {
    (void)ctx;
    if (!strcmp(name, "--work") && value) {
        char *end;
        long n = strtol(value, &end, 10);
        if (*end || n < 0 || n > 1000000)
            return -1;
        workSteps = (int)n;
        return 1;
    }
    return -1;
}

static int setup(void) {
    int rc = dkshmCreateAnonymous(16u << 20, NULL, &S);
    if (rc != DKSHM_OK) {
        fprintf(stderr, "benchLocks: dkshmCreateAnonymous: %s\n",
                dkshmStrerror(rc));
        return -1;
    }
    dkshmInfo info;
    rc = dkshmGetInfo(S, &info);
    if (rc != DKSHM_OK || info.heapSize < (64u << 10)) {
        fprintf(stderr, "benchLocks: dkshmGetInfo: %s\n", dkshmStrerror(rc));
        return -1;
    }
    /* The end of the heap: nothing in this program allocates, so the
     * allocator never reaches it. */
    dkoff off =
        (info.heapOffset + info.heapSize - (64u << 10)) & ~(dkoff)(LINE - 1);
    SH = dkshmPtr(S, off);
    if (!SH || sizeof *SH > (64u << 10)) {
        fprintf(stderr, "benchLocks: no room at the end of the heap\n");
        return -1;
    }
    memset(SH, 0, sizeof *SH);
    rc = fastMutexInit(S, &SH->fm, 0);
    if (rc != DKSHM_OK) {
        fprintf(stderr, "benchLocks: fastMutexInit: %s\n", dkshmStrerror(rc));
        return -1;
    }
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (pthread_mutex_init(&SH->pm, &a) != 0)
        return -1;
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (pthread_mutex_init(&SH->rm, &a) != 0)
        return -1;
    pthread_mutexattr_destroy(&a);
    return 0;
}

int main(int argc, char **argv) {
    static const char extraUsage[] =
        "  --work N        arithmetic steps outside the lock in the third "
        "run (default 200)\n";
    int prc = benchParseArgs(argc, argv, &opt, parseExtra, NULL, extraUsage);
    if (prc != 0)
        return prc == 1 ? 0 : 2;
    if (opt.procs > MAX_PROCS)
        opt.procs = MAX_PROCS;
    if (setup() != 0)
        return 1;

    char note[256];
    if (opt.iterations)
        snprintf(note, sizeof note,
                 "%ld CPUs online; %llu iterations per measurement and "
                 "process; %d processes in the contended runs; median of %d",
                 sysconf(_SC_NPROCESSORS_ONLN),
                 (unsigned long long)opt.iterations, opt.procs, opt.repeat);
    else
        snprintf(note, sizeof note,
                 "%ld CPUs online; %.1f s per measurement; %d processes in "
                 "the contended runs; median of %d",
                 sysconf(_SC_NPROCESSORS_ONLN), opt.seconds, opt.procs,
                 opt.repeat);
    char title[96];
    snprintf(title, sizeof title, "dkshm lock benchmark (dkshm %s)",
             dkshmVersion());
    benchReportInit(&rep, title, argc, argv);
    benchReportNote(&rep, note);
    benchTable(&rep, KINDS, kindName);

    double v[KINDS];
    measure(-1, v);
    benchTableRow(&rep, "uncontended lock+unlock", "ns/pair", v);

    char name[96];
    measure(0, v);
    snprintf(name, sizeof name, "contended, %d procs, empty section",
             opt.procs);
    benchTableRow(&rep, name, "M pairs/s", v);

    measure(workSteps, v);
    snprintf(name, sizeof name, "%d procs, %d steps outside", opt.procs,
             workSteps);
    benchTableRow(&rep, name, "M pairs/s", v);

    benchReportPrint(&rep);
    int failures = (int)SH->failures;
    dkshmDetach(S);
    return failures ? 1 : 0;
}
