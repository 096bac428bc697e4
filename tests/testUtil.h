/* testUtil.h — helpers shared by the Check suites: unique segment names,
 * fork-and-wait, and the crash-walk loop. Header-only so every suite is one
 * program.
 */
#ifndef DKSHM_TEST_UTIL_H
#define DKSHM_TEST_UTIL_H

#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "segmentInternal.h"

/* A segment name unique to this process and TAG: "/dkt-<pid>-<tag>". */
static inline const char *testSegName(const char *tag) {
    static __thread char buf[DKSHM_NAME_MAX + 1];
    snprintf(buf, sizeof buf, "/dkt-%d-%s", (int)getpid(), tag);
    return buf;
}

/* Wait for PID; returns its exit status, or 128 + signal if it was killed,
 * or -1 if waiting failed. */
static inline int testWait(pid_t pid) {
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* Run FN(ARG) in a forked child and return testWait's result. The child
 * exits with FN's return value. */
static inline int testInChild(int (*fn)(void *), void *arg) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(fn(arg));
    return testWait(pid);
}

#define TEST_KILLED (128 + SIGKILL)

/* The crash walk of RECOVERY.md §4: for k = 1, 2, ... run OP in a child
 * armed to SIGKILL itself at its k-th crash point; after each death call
 * AFTER(ARG, k) in the parent (recover, reap, assert). Stops when a child
 * finishes without dying and returns how many points were walked; fails
 * the test if a child exits non-zero or the walk exceeds MAXPOINTS. */
static inline long testCrashWalk(int (*op)(void *), void (*after)(void *, long),
                                 void *arg, long maxPoints) {
    for (long k = 1; k <= maxPoints; k++) {
        fflush(NULL);
        pid_t pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
            dkshmTestCrashAt(k);
            int rc = op(arg);
            _exit(rc);
        }
        int st = testWait(pid);
        if (st == 0)
            return k - 1;
        ck_assert_msg(st == TEST_KILLED,
                      "crash walk: child at point %ld exited with %d", k, st);
        after(arg, k);
    }
    ck_abort_msg("crash walk: more than %ld crash points", maxPoints);
    return -1;
}

/* Run a suite in fork mode (each test in its own process) and return the
 * exit status for main(). */
static inline int testRunSuite(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
