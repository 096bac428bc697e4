/* demo.c — the smallest real use of dkshm: a named segment, a pool of forked
 * workers, shared counters under a robust fastMutex, and allocations from
 * the segment's allocator.
 *
 *   demo [--workers N] [--ops N] [--keep] [--kill]
 *
 * The parent creates "/dkshm-demo-PID", places a shared tally (a fastMutex
 * and counters) in one membound block, and binds it to the name "tally" in
 * the segment's directory so that any process could find it. Each worker
 * allocates and frees blocks of varying sizes and, under the mutex, counts
 * what it did. With --kill, one extra worker is SIGKILLed while it holds
 * the lock; the next locker is told (DKSHM_RECOVERED) and carries on. The
 * parent then checks that the counters add up and the allocator is
 * consistent with nothing leaked, prints a line per worker, and removes the
 * segment unless --keep.
 */
#include <dkshm.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WORKERS 64

typedef struct tally { /* in the segment */
    fastMutex lock;
    uint64_t totalOps;
    uint64_t totalBytes;
    uint64_t recoveries;
    struct {
        uint64_t pid;
        uint64_t ops;
        uint64_t bytes;
    } worker[MAX_WORKERS];
} tally;

static int die(const char *what, int rc) {
    fprintf(stderr, "demo: %s: %s\n", what, dkshmStrerror(rc));
    return 1;
}

static int lockTally(dkshm *s, tally *t) {
    int rc = fastMutexLock(s, &t->lock);
    if (rc == DKSHM_RECOVERED) {
        /* The previous holder died mid-update; its update was rolled back
         * (the tally has no undo log, so it only counts here). */
        t->recoveries++;
        rc = DKSHM_OK;
    }
    return rc;
}

static int worker(dkshm *s, tally *t, int id, int ops) {
    membound *m = memboundForSegment(s);
    uint64_t bytes = 0;
    unsigned seed = (unsigned)getpid();
    for (int i = 0; i < ops; i++) {
        size_t size = 16 + (size_t)(rand_r(&seed) % 4096);
        void *p = memboundAlloc(m, size);
        if (!p)
            return die("alloc", DKSHM_FULL);
        memset(p, id, size);
        bytes += size;
        memboundFree(m, p);
        if (lockTally(s, t) != DKSHM_OK)
            return 1;
        t->totalOps++;
        t->totalBytes += size;
        t->worker[id].ops++;
        t->worker[id].bytes += size;
        t->worker[id].pid = (uint64_t)getpid();
        fastMutexUnlock(s, &t->lock);
    }
    (void)bytes;
    return 0;
}

int main(int argc, char **argv) {
    int workers = 4, ops = 20000;
    bool keep = false, killOne = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--workers") && i + 1 < argc)
            workers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ops") && i + 1 < argc)
            ops = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep"))
            keep = true;
        else if (!strcmp(argv[i], "--kill"))
            killOne = true;
        else {
            fprintf(stderr, "usage: demo [--workers N] [--ops N] [--keep] "
                            "[--kill]\n");
            return 2;
        }
    }
    if (workers < 1 || workers > MAX_WORKERS - 1 || ops < 1) {
        fprintf(stderr, "demo: workers must be 1..%d, ops >= 1\n",
                MAX_WORKERS - 1);
        return 2;
    }

    char name[DKSHM_NAME_MAX + 1];
    snprintf(name, sizeof name, "/dkshm-demo-%d", (int)getpid());
    dkshm *s;
    int rc = dkshmCreate(name, 64u << 20, NULL, &s);
    if (rc != DKSHM_OK)
        return die("create", rc);
    membound *m = memboundForSegment(s);
    dkoff off;
    rc = memboundAllocOff(m, sizeof(tally), &off);
    if (rc != DKSHM_OK)
        return die("alloc tally", rc);
    tally *t = dkshmPtr(s, off);
    memset(t, 0, sizeof *t);
    fastMutexInit(s, &t->lock, 0);
    rc = dkshmObjectCreate(s, "tally", DKSHM_TYPE_USER, off);
    if (rc != DKSHM_OK)
        return die("bind tally", rc);
    printf("segment %s: %d workers x %d ops\n", name, workers, ops);
    fflush(stdout);

    pid_t pids[MAX_WORKERS];
    for (int i = 0; i < workers; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            return die("fork", DKSHM_SYSTEM);
        if (pids[i] == 0)
            _exit(worker(s, t, i, ops));
    }
    if (killOne) {
        /* A worker that dies holding the lock, as a killed worker would. */
        pid_t victim = fork();
        if (victim == 0) {
            fastMutexLock(s, &t->lock);
            t->worker[workers].pid = (uint64_t)getpid();
            pause();
            _exit(0);
        }
        while (__atomic_load_n(&t->worker[workers].pid, __ATOMIC_ACQUIRE) == 0)
            usleep(1000);
        kill(victim, SIGKILL);
        waitpid(victim, NULL, 0);
        printf("killed worker %d while it held the lock\n", (int)victim);
    }
    int failed = 0;
    for (int i = 0; i < workers; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            failed++;
    }

    size_t reaped = 0;
    dkshmReap(s, &reaped);
    lockTally(s, t);
    uint64_t sumOps = 0, sumBytes = 0;
    for (int i = 0; i < workers; i++) {
        printf("worker %2d pid %-7" PRIu64 " ops %-8" PRIu64 " bytes %" PRIu64
               "\n",
               i, t->worker[i].pid, t->worker[i].ops, t->worker[i].bytes);
        sumOps += t->worker[i].ops;
        sumBytes += t->worker[i].bytes;
    }
    fastMutexUnlock(s, &t->lock);
    char why[128] = "";
    int check = memboundCheck(m, why, sizeof why);
    printf("total ops %" PRIu64 " (expected %" PRIu64 "), bytes %" PRIu64
           ", lock recoveries %" PRIu64 ", reaped %zu\n",
           t->totalOps, (uint64_t)workers * (uint64_t)ops, t->totalBytes,
           t->recoveries, reaped);
    printf("allocator: %zu live allocation(s), %zu bytes used, check %s%s%s\n",
           memboundCurrentAllocationCount(m), memboundBytesUsed(m),
           dkshmErrName(check), *why ? ": " : "", why);
    bool ok = failed == 0 && sumOps == t->totalOps &&
              sumBytes == t->totalBytes &&
              t->totalOps == (uint64_t)workers * (uint64_t)ops &&
              check == DKSHM_OK && memboundCurrentAllocationCount(m) == 1;
    if (keep)
        printf("kept %s (inspect it, then remove /dev/shm%s)\n", name, name);
    else
        dkshmUnlink(name);
    dkshmDetach(s);
    printf("%s\n", ok ? "demo: OK, every count adds up"
                      : "demo: FAILED, counts do not add up");
    return ok ? 0 : 1;
}
