/* sys.c — the few Linux system interfaces dkshm stands on: clocks, futexes,
 * process liveness, and committing or returning the backing file's pages.
 *
 * Liveness: a pid alone is not an identity, because pids are reused. A
 * process is named by (pid, start time), the start time being field 22 of
 * /proc/PID/stat, which the kernel fixes at fork. kill(pid, 0) answers
 * "no such process" cheaply; only when it says "exists" (or EPERM: exists,
 * other user) is /proc read to compare the start time.
 *
 * Commit: the backing file is sparse. Touching a hole of a tmpfs file that
 * has no room left raises SIGBUS, so the allocator commits (fallocate) a
 * range before handing it out, turning "no room" into DKSHM_FULL. Decommit
 * punches the hole back so that freed memory goes back to the kernel.
 */
#include "config.h"

#include "segmentInternal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

uint64_t dkNowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t dkRealNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int dkFutexWait(uint32_t *word, uint32_t expect, uint64_t timeoutNs) {
    struct timespec ts, *tp = NULL;
    if (timeoutNs) {
        ts.tv_sec = (time_t)(timeoutNs / 1000000000ull);
        ts.tv_nsec = (long)(timeoutNs % 1000000000ull);
        tp = &ts;
    }
    /* Not FUTEX_PRIVATE_FLAG: the word is shared between processes. */
    long r = syscall(SYS_futex, word, FUTEX_WAIT, expect, tp, NULL, 0);
    if (r == 0)
        return DKSHM_OK;
    if (errno == ETIMEDOUT)
        return DKSHM_TIMEDOUT;
    return DKSHM_OK; /* EAGAIN (value changed) or EINTR: caller re-checks */
}

void dkFutexWake(uint32_t *word, int n) {
    syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* Threads of PID; a process whose main thread exited shows state Z while
 * its other threads still run. */
static long threadCount(uint32_t pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%u/status", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    const char *t = strstr(buf, "\nThreads:");
    return t ? strtol(t + 9, NULL, 10) : 0;
}

uint64_t dkProcStartTime(uint32_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: fields
     * are counted from the last ')'. starttime is field 22. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p + 1, ' ');
    }
    if (!p)
        return 0;
    unsigned long long st = strtoull(p + 1, NULL, 10);
    /* A zombie keeps its entry until reaped by its parent, but it can no
     * longer touch the segment: it counts as dead. Field 3 is the state. */
    char *state = strrchr(buf, ')');
    if (state && state[1] == ' ' && (state[2] == 'Z' || state[2] == 'X') &&
        threadCount(pid) <= 1)
        return 0;
    return st ? st : 1;
}

bool dkProcAlive(uint32_t pid, uint64_t start) {
    if (pid == 0 || pid > (uint32_t)INT_MAX)
        return false;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return false;
    uint64_t now = dkProcStartTime(pid);
    if (now == 0)
        return false; /* gone, or a zombie */
    return start == 0 || now == start;
}

int dkCommit(dkshm *s, dkoff off, uint64_t len) {
    if (s->fd < 0)
        return DKSHM_OK;
    if (off > s->size || len > s->size - off)
        return DKSHM_INVALID;
    int r;
    do {
        r = fallocate(s->fd, 0, (off_t)off, (off_t)len);
    } while (r != 0 && errno == EINTR);
    if (r == 0)
        return DKSHM_OK;
    if (errno == ENOSPC || errno == ENOMEM || errno == EFBIG)
        return DKSHM_FULL;
    if (errno == EOPNOTSUPP)
        return DKSHM_OK; /* a filesystem without fallocate: nothing to do */
    return DKSHM_SYSTEM;
}

void dkDecommit(dkshm *s, dkoff off, uint64_t len) {
    if (off > s->size || len > s->size - off)
        return;
    if (s->fd >= 0 &&
        fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)off, (off_t)len) == 0)
        return;
    madvise(s->base + off, len, MADV_REMOVE);
}
