/* benchQueue.c — items per second through a multilist from one producer
 * process to one consumer process, side by side with a pipe(2) carrying the
 * same items, in one run.
 *
 *   multilist   a bounded list (--capacity items, default 1024) in an
 *               anonymous dkshm segment shared by fork: the producer pushes
 *               at the tail with a blocking push, the consumer pops at the
 *               head with a blocking pop, until the producer shuts the list
 *               down and the consumer has drained it
 *   pipe(2)     one write(2) per item, one read(2) per item (the baseline:
 *               what a pool without shared memory would use)
 *
 * Each item carries a sequence number that the consumer checks (FIFO, no
 * loss, no duplicate), so a wrong queue is reported, not timed. Item sizes
 * are 16 and 64 bytes (--sizes a,b,... to change). Each measurement runs
 * --seconds (default 1), --repeat times (default 3), the two transports
 * taking turns; the median is reported. --pin puts the producer on CPU 0
 * and the consumer on CPU 1.
 *
 * Only the public API is used (dkshm.h).
 */
#include "config.h"

#include "dkshm.h"

#include "benchCommon.h"

#include <errno.h>
#include <math.h>
#include <sched.h>

#define MAX_SIZES 8
#define MAX_ITEM 4096
#define MAX_BATCH 256

typedef struct qShared { /* anonymous shared memory */
    benchBarrier bar;
    uint64_t consumed;
    uint64_t tEnd;
    uint32_t bad;
    uint32_t pad;
} qShared;

static benchOptions opt;
static uint64_t capacity = 1024;
static size_t sizes[MAX_SIZES] = {16, 64};
static int nSizes = 2;
static bool pin;
static int batchSize = 32;

static int extraOpt(const char *name, const char *value, void *ctx) {
    (void)ctx;
    char *end;
    if (!strcmp(name, "--capacity") && value) {
        capacity = strtoull(value, &end, 10);
        return *end ? -1 : 1;
    }
    if (!strcmp(name, "--batch") && value) {
        long v = strtol(value, &end, 10);
        if (*end || v < 1 || v > MAX_BATCH)
            return -1;
        batchSize = (int)v;
        return 1;
    }
    if (!strcmp(name, "--pin")) {
        pin = true;
        return 0;
    }
    if (!strcmp(name, "--sizes") && value) {
        nSizes = 0;
        const char *p = value;
        while (*p && nSizes < MAX_SIZES) {
            unsigned long v = strtoul(p, &end, 10);
            if (end == p || v < 8 || v > MAX_ITEM)
                return -1;
            sizes[nSizes++] = v;
            p = *end == ',' ? end + 1 : end;
            if (*end && *end != ',')
                return -1;
        }
        return nSizes ? 1 : -1;
    }
    return -1;
}

static void pinTo(int cpu) {
    if (!pin)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static void makeItem(uint8_t *buf, size_t len, uint64_t seq) {
    memcpy(buf, &seq, 8);
    memset(buf + 8, (int)(seq & 0xff), len - 8);
}

static bool itemOk(const uint8_t *buf, size_t len, size_t want, uint64_t seq) {
    uint64_t got;
    memcpy(&got, buf, 8);
    return len == want && got == seq && buf[len - 1] == (uint8_t)(seq & 0xff);
}

/* ---- multilist ----------------------------------------------------------- */

static int listProducer(dkshm *s, qShared *sh, size_t len, int batch) {
    pinTo(0);
    multilist *l;
    if (multilistOpen(s, "bench", NULL, 0, &l) != DKSHM_OK)
        return 1;
    static uint8_t items[MAX_BATCH][MAX_ITEM];
    const void *ptrs[MAX_BATCH];
    size_t lens[MAX_BATCH];
    for (int i = 0; i < batch; i++) {
        ptrs[i] = items[i];
        lens[i] = len;
    }
    benchBarrierWait(&sh->bar);
    for (uint64_t seq = 0;;) {
        if ((seq & 63) < (uint64_t)batch && benchShouldStop(&sh->bar))
            break;
        if (batch == 1) {
            makeItem(items[0], len, seq);
            if (multilistPush(l, MULTILIST_TAIL, items[0], len,
                              MULTILIST_FOREVER) != DKSHM_OK)
                return 2;
            seq++;
            continue;
        }
        for (int i = 0; i < batch; i++)
            makeItem(items[i], len, seq + (uint64_t)i);
        size_t pushed;
        if (multilistPushMany(l, MULTILIST_TAIL, ptrs, lens, (size_t)batch,
                              &pushed, MULTILIST_FOREVER) != DKSHM_OK)
            return 2;
        seq += (uint64_t)batch;
    }
    multilistShutdown(l);
    multilistClose(l);
    return 0;
}

static int listConsumer(dkshm *s, qShared *sh, size_t len, int batch) {
    pinTo(1);
    multilist *l;
    if (multilistOpen(s, "bench", NULL, 0, &l) != DKSHM_OK)
        return 1;
    static uint8_t buf[MAX_BATCH * MAX_ITEM];
    size_t lens[MAX_BATCH];
    benchBarrierWait(&sh->bar);
    uint64_t seq = 0;
    for (;;) {
        size_t got = 0;
        int rc;
        if (batch == 1)
            rc = multilistPop(l, MULTILIST_HEAD, buf, MAX_ITEM, &lens[0],
                              MULTILIST_FOREVER);
        else
            rc = multilistPopMany(l, MULTILIST_HEAD, buf, sizeof buf, lens,
                                  (size_t)batch, &got, MULTILIST_FOREVER);
        if (rc == DKSHM_SHUTDOWN)
            break;
        if (rc != DKSHM_OK)
            return 2;
        if (batch == 1)
            got = 1;
        size_t at = 0;
        for (size_t i = 0; i < got; i++) {
            if (!itemOk(buf + at, lens[i], len, seq))
                sh->bad++;
            at += lens[i];
            seq++;
        }
    }
    sh->tEnd = benchNowNs();
    sh->consumed = seq;
    multilistClose(l);
    return 0;
}

static double runList(qShared *sh, size_t len, int batch) {
    dkshm *s;
    if (dkshmCreateAnonymous(64ull << 20, NULL, &s) != DKSHM_OK)
        return NAN;
    multilistOptions o = {.maxItems = capacity};
    multilist *l;
    if (multilistOpen(s, "bench", &o, MULTILIST_CREATE, &l) != DKSHM_OK) {
        dkshmDetach(s);
        return NAN;
    }
    benchBarrierInit(&sh->bar, 2);
    sh->consumed = sh->tEnd = 0;
    sh->bad = 0;
    fflush(NULL);
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            return NAN;
        if (pids[i] == 0)
            _exit(i ? listConsumer(s, sh, len, batch)
                    : listProducer(s, sh, len, batch));
    }
    benchBarrierWait(&sh->bar);
    uint64_t t0 = benchNowNs();
    benchSleep(opt.seconds);
    benchStop(&sh->bar);
    int failed = benchWaitAll(2, pids);
    uint64_t count = 0;
    multilistCount(l, &count);
    multilistClose(l);
    dkshmDetach(s);
    if (failed || sh->bad || count != 0) {
        fprintf(stderr,
                "benchQueue: multilist run failed (%d workers, %u bad "
                "items, %llu left)\n",
                failed, sh->bad, (unsigned long long)count);
        return NAN;
    }
    return (double)sh->consumed / ((double)(sh->tEnd - t0) / 1e9);
}

/* ---- pipe(2) ------------------------------------------------------------- */

static int pipeProducer(int fd, qShared *sh, size_t len, int batch) {
    pinTo(0);
    static uint8_t items[MAX_BATCH * MAX_ITEM];
    size_t total = len * (size_t)batch;
    benchBarrierWait(&sh->bar);
    for (uint64_t seq = 0;;) {
        if ((seq & 63) < (uint64_t)batch && benchShouldStop(&sh->bar))
            break;
        for (int i = 0; i < batch; i++)
            makeItem(items + (size_t)i * len, len, seq + (uint64_t)i);
        size_t off = 0;
        while (off < total) {
            ssize_t n = write(fd, items + off, total - off);
            if (n < 0 && errno != EINTR)
                return 2;
            off += n > 0 ? (size_t)n : 0;
        }
        seq += (uint64_t)batch;
    }
    close(fd);
    return 0;
}

/* Reads what is there (up to BATCH items' worth) per call. */
static int pipeConsumer(int fd, qShared *sh, size_t len, int batch) {
    pinTo(1);
    static uint8_t buf[MAX_BATCH * MAX_ITEM];
    size_t have = 0, cap = len * (size_t)batch;
    benchBarrierWait(&sh->bar);
    uint64_t seq = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, cap - have);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 2;
        }
        have += (size_t)n;
        size_t at = 0;
        for (; have - at >= len; at += len, seq++)
            if (!itemOk(buf + at, len, len, seq))
                sh->bad++;
        memmove(buf, buf + at, have - at);
        have -= at;
    }
    sh->tEnd = benchNowNs();
    sh->consumed = seq;
    return 0;
}

static double runPipe(qShared *sh, size_t len, int batch) {
    int fds[2];
    if (pipe(fds) != 0)
        return NAN;
    benchBarrierInit(&sh->bar, 2);
    sh->consumed = sh->tEnd = 0;
    sh->bad = 0;
    fflush(NULL);
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            return NAN;
        if (pids[i] == 0) {
            close(fds[i ? 1 : 0]);
            _exit(i ? pipeConsumer(fds[0], sh, len, batch)
                    : pipeProducer(fds[1], sh, len, batch));
        }
    }
    close(fds[0]);
    close(fds[1]);
    benchBarrierWait(&sh->bar);
    uint64_t t0 = benchNowNs();
    benchSleep(opt.seconds);
    benchStop(&sh->bar);
    int failed = benchWaitAll(2, pids);
    if (failed || sh->bad) {
        fprintf(stderr, "benchQueue: pipe run failed\n");
        return NAN;
    }
    return (double)sh->consumed / ((double)(sh->tEnd - t0) / 1e9);
}

int main(int argc, char **argv) {
    int rc = benchParseArgs(argc, argv, &opt, extraOpt, NULL,
                            "  --capacity N    items the list holds "
                            "(default 1024)\n"
                            "  --sizes A,B,... item sizes in bytes, 8..4096 "
                            "(default 16,64)\n"
                            "  --batch N       items per call in the batched "
                            "runs (default 32; 1: none)\n"
                            "  --pin           producer on CPU 0, consumer "
                            "on CPU 1\n");
    if (rc)
        return rc == 1 ? 0 : 2;
    if (opt.iterations) {
        fprintf(stderr, "benchQueue: timed runs only (--seconds)\n");
        return 2;
    }
    benchReport r;
    benchReportInit(&r,
                    "benchQueue: 1 producer process -> 1 consumer "
                    "process",
                    argc, argv);
    char note[160];
    snprintf(note, sizeof note,
             "dkshm %s; %ld CPUs online; %.2g s per measurement, median of "
             "%d; list capacity %llu items; blocking push and pop%s",
             dkshmVersion(), sysconf(_SC_NPROCESSORS_ONLN), opt.seconds,
             opt.repeat, (unsigned long long)capacity,
             pin ? "; pinned to CPUs 0 and 1" : "");
    benchReportNote(&r, note);
    qShared *sh = benchSharedMem(sizeof *sh);
    if (!sh)
        return 1;
    static const char *const cols[] = {"multilist", "pipe(2)",
                                       "multilist/pipe"};
    int bad = 0;
    int batches[2] = {1, batchSize};
    for (int b = 0; b < (batchSize > 1 ? 2 : 1); b++) {
        int batch = batches[b];
        benchTable(&r, 3, cols);
        for (int i = 0; i < nSizes; i++) {
            double lv[1000], pv[1000];
            for (int k = 0; k < opt.repeat; k++) {
                lv[k] = runList(sh, sizes[i], batch);
                pv[k] = runPipe(sh, sizes[i], batch);
            }
            double v[3];
            v[0] = benchMedian(lv, opt.repeat);
            v[1] = benchMedian(pv, opt.repeat);
            v[2] = v[1] > 0 ? v[0] / v[1] : NAN;
            bad |= v[0] != v[0] || v[1] != v[1];
            char name[96];
            if (batch == 1)
                snprintf(name, sizeof name, "%zu-byte items, 1 per call",
                         sizes[i]);
            else
                snprintf(name, sizeof name, "%zu-byte items, %d per call",
                         sizes[i], batch);
            benchTableRow(&r, name, "items/s", v);
        }
    }
    benchReportPrint(&r);
    munmap(sh, sizeof *sh);
    return bad;
}
