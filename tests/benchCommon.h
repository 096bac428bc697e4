/* benchCommon.h — small helpers shared by the dkshm benchmark programs
 * (tests/benchLocks.c, tests/benchAlloc.c). Benchmarks, not tests: they
 * measure and print; they never pass or fail on timing.
 *
 *   benchNowNs(), benchNowSec()   monotonic clock
 *   benchSharedMem(n)             n zeroed bytes shared with forked children
 *   benchParseArgs()              --seconds, --iterations, --procs,
 *                                 --repeat, --json, --help, plus the
 *                                 caller's own options
 *   benchMedian(v, n)             median of n runs (shared machines are
 *                                 noisy: repeat and take the median)
 *   benchBarrier                  in shared memory: a reusable barrier for
 *                                 N workers plus the parent, a stop flag for
 *                                 timed runs, a count of finished workers
 *   benchSpawn, benchWaitAll,     fork N workers, wait for them
 *   benchRunWorkers
 *   benchReport                   the report: "name  value unit" rows and
 *                                 side-by-side tables as aligned text, or
 *                                 one JSON document with --json
 *
 * Typical use:
 *
 *   benchReport r;
 *   benchReportInit(&r, "benchFoo", argc, argv);  // --json from argv
 *   benchBarrier *b = benchBarrierCreate(n);      // n workers + parent
 *   ... fork n workers: setup, benchBarrierWait(b), work, _exit ...
 *   benchBarrierWait(b); t0 = benchNowNs(); ... wait ...
 *   benchRow(&r, "foo", value, "ops/s");
 *   benchReportPrint(&r);
 *
 * Header-only (everything static inline) so each benchmark is one program.
 */
#ifndef DKSHM_BENCH_COMMON_H
#define DKSHM_BENCH_COMMON_H

#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- clock and memory ---------------------------------------------------- */

static inline uint64_t benchNowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline double benchNowSec(void) {
    return (double)benchNowNs() / 1e9;
}

/* N zeroed bytes (page granular) shared with children forked later; NULL
 * on failure. Give them back with munmap(p, n). */
static inline void *benchSharedMem(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Keeps the compiler from moving memory accesses across it. */
static inline void benchCompilerBarrier(void) {
    __asm__ __volatile__("" ::: "memory");
}

/* Parent: sleep S seconds (the length of a timed run). */
static inline void benchSleep(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* The median of the N values at V (reordered). NaN values (failed runs)
 * are left out unless all are NaN. */
static inline double benchMedian(double *v, int n) {
    int m = 0;
    for (int i = 0; i < n; i++)
        if (v[i] == v[i])
            v[m++] = v[i];
    if (m == 0)
        return n ? v[0] : 0.0;
    for (int i = 1; i < m; i++) /* insertion sort: n is small */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2.0;
}

/* ---- options ------------------------------------------------------------ */

typedef struct benchOptions { /* per process */
    double seconds;           /* per measurement; used when iterations == 0 */
    uint64_t iterations;      /* per measurement (and per worker); 0: timed */
    int procs;                /* worker processes for multi-process runs */
    int repeat;               /* runs of each measurement; report the median */
    bool json;
} benchOptions;

/* The caller's own options. NAME is the argument, VALUE the next one (NULL
 * at the end). Return 1 if NAME was yours and took VALUE, 0 if it was yours
 * alone, -1 if it is unknown or bad. */
typedef int (*benchOptionFn)(const char *name, const char *value, void *ctx);

static inline void benchUsage(const char *prog, const char *extraUsage) {
    fprintf(stderr,
            "usage: %s [--seconds S | --iterations N] [--procs N] "
            "[--repeat N] [--json]%s\n"
            "  --seconds S     time each measurement for S seconds "
            "(default 1)\n"
            "  --iterations N  run N iterations per measurement and worker\n"
            "  --procs N       worker processes for multi-process runs "
            "(default 2)\n"
            "  --repeat N      run each measurement N times, report the "
            "median (default 3)\n"
            "  --json          print one JSON document instead of a table\n",
            prog, extraUsage ? " [options]" : "");
    if (extraUsage)
        fputs(extraUsage, stderr);
}

/* Fill O from ARGV (defaults first). EXTRA (may be NULL) sees the options
 * not known here; EXTRAUSAGE (may be NULL) documents them. Returns 0 to
 * run, 1 after --help, 2 on a bad option (usage printed). */
static inline int benchParseArgs(int argc, char **argv, benchOptions *o,
                                 benchOptionFn extra, void *ctx,
                                 const char *extraUsage) {
    *o = (benchOptions){.seconds = 1.0, .procs = 2, .repeat = 3};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        long n;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            benchUsage(argv[0], extraUsage);
            return 1;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--seconds") && v) {
            o->seconds = strtod(v, &end);
            if (*end || !(o->seconds > 0))
                goto bad;
            o->iterations = 0;
            i++;
        } else if (!strcmp(a, "--iterations") && v) {
            errno = 0;
            o->iterations = strtoull(v, &end, 10);
            if (*end || errno || o->iterations == 0)
                goto bad;
            i++;
        } else if (!strcmp(a, "--procs") && v) {
            n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 1024)
                goto bad;
            o->procs = (int)n;
            i++;
        } else if (!strcmp(a, "--repeat") && v) {
            n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 1000)
                goto bad;
            o->repeat = (int)n;
            i++;
        } else if (extra) {
            int used = extra(a, v, ctx);
            if (used < 0)
                goto bad;
            i += used;
        } else {
            goto bad;
        }
        continue;
    bad:
        fprintf(stderr, "%s: bad or incomplete option '%s'\n", argv[0], a);
        benchUsage(argv[0], extraUsage);
        return 2;
    }
    return 0;
}

/* ---- barrier, stop flag, finished count (in shared memory) -------------- */

typedef struct benchBarrier { /* in shared memory */
    uint32_t parties;         /* workers + the parent */
    uint32_t arrived;         /* in the current round */
    uint32_t round;           /* bumped when everyone arrived */
    uint32_t stop;            /* set by the parent to end a timed run */
    uint32_t done;            /* workers finished (benchBarrierDone) */
    uint32_t pad;
} benchBarrier;

/* Set up B, placed by the caller in memory shared with the workers, for
 * WORKERS workers plus the parent. */
static inline void benchBarrierInit(benchBarrier *b, int workers) {
    memset(b, 0, sizeof *b);
    b->parties = (uint32_t)workers + 1;
}

/* A barrier of its own shared page; NULL on failure. */
static inline benchBarrier *benchBarrierCreate(int workers) {
    benchBarrier *b = benchSharedMem(sizeof *b);
    if (b)
        benchBarrierInit(b, workers);
    return b;
}

static inline void benchBarrierFree(benchBarrier *b) {
    if (b)
        munmap(b, sizeof *b);
}

/* Every worker and the parent call this; all return once all have come.
 * Reusable: the next call starts the next round. */
static inline void benchBarrierWait(benchBarrier *b) {
    uint32_t round = __atomic_load_n(&b->round, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == b->parties) {
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->round, round + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&b->round, __ATOMIC_ACQUIRE) == round)
        sched_yield();
}

/* Timed runs: the parent stops the workers, which poll benchShouldStop. */
static inline void benchStop(benchBarrier *b) {
    __atomic_store_n(&b->stop, 1, __ATOMIC_RELEASE);
}

static inline bool benchShouldStop(const benchBarrier *b) {
    return __atomic_load_n(&b->stop, __ATOMIC_RELAXED) != 0;
}

/* Iteration-bounded runs: each worker says it finished; the parent waits
 * for all of them (and takes the time) without waiting for their exit. */
static inline void benchBarrierDone(benchBarrier *b) {
    __atomic_add_fetch(&b->done, 1, __ATOMIC_ACQ_REL);
}

static inline void benchBarrierWaitDone(benchBarrier *b) {
    while (__atomic_load_n(&b->done, __ATOMIC_ACQUIRE) < b->parties - 1)
        sched_yield();
}

/* ---- workers ------------------------------------------------------------- */

typedef int (*benchWorkerFn)(int index, void *arg);

/* Fork N workers running FN(i, ARG); each exits with FN's result. PIDS
 * gets their ids. Returns how many were started. */
static inline int benchSpawn(int n, benchWorkerFn fn, void *arg, pid_t *pids) {
    fflush(NULL);
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror("bench: fork");
            return i;
        }
        if (p == 0)
            _exit(fn(i, arg));
        pids[i] = p;
    }
    return n;
}

/* Wait for N workers; returns how many failed (non-zero exit or signal). */
static inline int benchWaitAll(int n, const pid_t *pids) {
    int failed = 0;
    for (int i = 0; i < n; i++) {
        int st;
        pid_t r;
        while ((r = waitpid(pids[i], &st, 0)) < 0 && errno == EINTR) {
        }
        if (r < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
    }
    return failed;
}

/* Spawn N (<= 1024) workers and wait for them; returns how many failed. */
static inline int benchRunWorkers(int n, benchWorkerFn fn, void *arg) {
    pid_t pids[1024];
    if (n < 0 || n > 1024)
        return n;
    int started = benchSpawn(n, fn, arg, pids);
    return benchWaitAll(started, pids) + (n - started);
}

/* ---- report -------------------------------------------------------------- */

#define BENCH_MAX_COLS 8
#define BENCH_MAX_RESULTS 256
#define BENCH_MAX_NOTES 8
#define BENCH_NAME_WIDTH 48

/* Copy SRC into DST[N], truncating. */
static inline void benchCopy(char *dst, size_t n, const char *src) {
    size_t len = strlen(src);
    if (len >= n)
        len = n - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

typedef struct benchResult { /* per process */
    char name[96];
    char variant[48]; /* the table column, "" for a plain row */
    double value;
    char unit[16];
} benchResult;

typedef struct benchReport { /* per process, the caller's */
    bool json;
    char title[96];
    int notes;
    char note[BENCH_MAX_NOTES][160];
    int cols;
    char col[BENCH_MAX_COLS][48];
    int n;
    benchResult r[BENCH_MAX_RESULTS];
} benchReport;

/* Start a report titled TITLE; "--json" anywhere in ARGV (may be NULL)
 * selects JSON. Text mode prints the title now and rows as they come;
 * JSON mode prints everything in benchReportPrint. */
static inline void benchReportInit(benchReport *r, const char *title, int argc,
                                   char **argv) {
    memset(r, 0, sizeof *r);
    benchCopy(r->title, sizeof r->title, title);
    for (int i = 1; argv && i < argc; i++)
        if (argv[i] && !strcmp(argv[i], "--json"))
            r->json = true;
    if (!r->json) {
        printf("%s\n", title);
        fflush(stdout);
    }
}

/* A line about the run (machine, parameters), printed under the title. */
static inline void benchReportNote(benchReport *r, const char *line) {
    if (r->notes < BENCH_MAX_NOTES)
        benchCopy(r->note[r->notes++], sizeof r->note[0], line);
    if (!r->json) {
        printf("%s\n", line);
        fflush(stdout);
    }
}

static inline void benchReportAdd(benchReport *r, const char *name,
                                  const char *variant, double value,
                                  const char *unit) {
    if (r->n >= BENCH_MAX_RESULTS)
        return;
    benchResult *x = &r->r[r->n++];
    benchCopy(x->name, sizeof x->name, name);
    benchCopy(x->variant, sizeof x->variant, variant ? variant : "");
    x->value = value;
    benchCopy(x->unit, sizeof x->unit, unit);
}

static inline void benchFormatValue(char *buf, size_t n, double v) {
    if (v != v)
        snprintf(buf, n, "-");
    else if (v >= 100000.0 || v <= -100000.0)
        snprintf(buf, n, "%.0f", v);
    else if (v >= 100.0 || v <= -100.0)
        snprintf(buf, n, "%.1f", v);
    else
        snprintf(buf, n, "%.2f", v);
}

/* A "name  value unit" row. */
static inline void benchRow(benchReport *r, const char *name, double value,
                            const char *unit) {
    benchReportAdd(r, name, NULL, value, unit);
    if (!r->json) {
        char v[32];
        benchFormatValue(v, sizeof v, value);
        printf("%-*s %14s %s\n", BENCH_NAME_WIDTH, name, v, unit);
        fflush(stdout);
    }
}

/* Start a side-by-side table of NCOLS variants (what is compared). */
static inline void benchTable(benchReport *r, int ncols,
                              const char *const *cols) {
    r->cols = ncols > BENCH_MAX_COLS ? BENCH_MAX_COLS : ncols;
    for (int i = 0; i < r->cols; i++)
        benchCopy(r->col[i], sizeof r->col[i], cols[i]);
    if (!r->json) {
        printf("\n%-*s", BENCH_NAME_WIDTH, "");
        for (int i = 0; i < r->cols; i++)
            printf(" %18s", r->col[i]);
        printf("\n");
        fflush(stdout);
    }
}

/* One row of the current table: VALUES[i] for column i (NaN: no result). */
static inline void benchTableRow(benchReport *r, const char *name,
                                 const char *unit, const double *values) {
    for (int i = 0; i < r->cols; i++)
        if (values[i] == values[i])
            benchReportAdd(r, name, r->col[i], values[i], unit);
    if (!r->json) {
        char label[160];
        snprintf(label, sizeof label, "%s (%s)", name, unit);
        printf("%-*s", BENCH_NAME_WIDTH, label);
        for (int i = 0; i < r->cols; i++) {
            char v[32];
            benchFormatValue(v, sizeof v, values[i]);
            printf(" %18s", v);
        }
        printf("\n");
        fflush(stdout);
    }
}

static inline void benchJsonString(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* Finish: text mode ends the table; JSON mode prints the whole document
 * {"benchmark", "notes": [...], "results": [{"name", "variant", "value",
 * "unit"}, ...]}. */
static inline void benchReportPrint(benchReport *r) {
    if (!r->json) {
        printf("\n");
        fflush(stdout);
        return;
    }
    printf("{\"benchmark\": ");
    benchJsonString(r->title);
    printf(", \"notes\": [");
    for (int i = 0; i < r->notes; i++) {
        printf("%s", i ? ", " : "");
        benchJsonString(r->note[i]);
    }
    printf("], \"results\": [");
    for (int i = 0; i < r->n; i++) {
        benchResult *x = &r->r[i];
        printf("%s\n  {\"name\": ", i ? "," : "");
        benchJsonString(x->name);
        printf(", \"variant\": ");
        benchJsonString(x->variant);
        if (x->value - x->value == 0) /* finite: JSON has no NaN/inf */
            printf(", \"value\": %.6g, \"unit\": ", x->value);
        else
            printf(", \"value\": null, \"unit\": ");
        benchJsonString(x->unit);
        printf("}");
    }
    printf("\n]}\n");
    fflush(stdout);
}

#endif
