/* checkShm.c — the Check suite of the segment layer (shm/): names, creation
 * and attach, sparse capacity, offsets, damaged and foreign files,
 * permissions and read-only handles, the process table, unrelated processes
 * (tests/attachHelper), the named-object directory and its crash walks, and
 * the error table.
 *
 * Every test runs in its own process (fork mode). Segment names come from
 * segName(): "/dkt-<pid>-shm.<tag>", unique to the test process, removed by
 * the test itself and again by the teardown; when an assertion ends a test
 * (Check then _exits, running no teardown), sweepDeadNames() in the runner
 * removes them after the TCase. The children a test forks never call
 * ck_assert: they report through exit codes and pipes, and only the test
 * process asserts.
 *
 * The tests that need scratch memory in a segment use the last 64 KiB of the
 * heap: the segment layer alone lays nothing out there (no allocator hook
 * runs in this suite) and no test allocates.
 *
 * TCase "regressions" holds tests of properties shm/ once missed; each
 * says how. TCase "defects" (tag "defects") holds tests of properties shm/
 * does not meet yet: they fail until it is fixed, and CK_EXCLUDE_TAGS=defects
 * runs the rest.
 */
#include "config.h"

#include "testUtil.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <time.h>
#include <xxhash.h>

#ifndef TEST_BUILDDIR
#error "TEST_BUILDDIR must name the build directory (a string literal)"
#endif
#define HELPER_PATH TEST_BUILDDIR "/tests/attachHelper"

#define T_OBJ 0x51u /* object types the tests bind */
#define T_OTHER 0x52u
#define MIB ((uint64_t)1024 * 1024)
#define MSEC ((uint64_t)1000000)
#define NOBODY 65534
#define SCRATCH_BYTES 65536u

/* ---- small utilities ---------------------------------------------------- */

static uint64_t monoNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t realNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void shmPath(char *buf, size_t len, const char *name) {
    snprintf(buf, len, "/dev/shm%s", name);
}

/* Remove whatever sits at NAME in /dev/shm: a segment, a symlink, a fifo or
 * an empty directory that a test put there. */
static void removeShmName(const char *name) {
    char p[128];
    shmPath(p, sizeof p, name);
    if (unlink(p) != 0 && errno == EISDIR)
        rmdir(p);
    rmdir(p);
}

#define MAX_TEST_NAMES 16
static char testNames[MAX_TEST_NAMES][DKSHM_NAME_MAX + 1];
static int nTestNames;
static pid_t testNamesPid;

static void removeTestNames(void) {
    if (getpid() != testNamesPid)
        return; /* a forked child: the names are the test's */
    for (int i = 0; i < nTestNames; i++)
        removeShmName(testNames[i]);
}

/* Register FULL (a whole segment name) for removal at the end of the test. */
static const char *registerName(const char *full) {
    if (testNamesPid != getpid()) {
        testNamesPid = getpid();
        nTestNames = 0;
        atexit(removeTestNames);
    }
    ck_assert_int_lt(nTestNames, MAX_TEST_NAMES);
    char *n = testNames[nTestNames++];
    snprintf(n, DKSHM_NAME_MAX + 1, "%s", full);
    removeShmName(n); /* a leftover of a dead process that had our pid */
    return n;
}

/* Every name this suite makes is "/dkt-<pid>-shm.<tag>". */
#define TAG_PREFIX "shm."

/* "/dkt-<pid>-shm.<tag>", removed at the end of the test. */
static const char *segName(const char *tag) {
    char t[32];
    snprintf(t, sizeof t, TAG_PREFIX "%s", tag);
    return registerName(testSegName(t));
}

/* A failed assertion ends the test process with _exit: neither the
 * teardown nor atexit runs. This runs in Check's runner after each TCase
 * and at the end, and removes this suite's names whose test process is
 * gone. */
static void sweepDeadNames(void) {
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int pid = 0, off = 0;
        if (sscanf(e->d_name, "dkt-%d-%n", &pid, &off) != 1 || off == 0 ||
            strncmp(e->d_name + off, TAG_PREFIX, strlen(TAG_PREFIX)) != 0 ||
            strlen(e->d_name) >= DKSHM_NAME_MAX || pid <= 0)
            continue;
        if (kill(pid, 0) == 0 || errno != ESRCH)
            continue;
        char name[DKSHM_NAME_MAX + 1] = "/";
        memcpy(name + 1, e->d_name, strlen(e->d_name) + 1);
        removeShmName(name);
    }
    closedir(d);
}

static void setupNames(void) {
    testNamesPid = 0;
    nTestNames = 0;
}

static void teardownNames(void) {
    removeTestNames();
    nTestNames = 0;
}

static bool shmExists(const char *name) {
    char p[128];
    struct stat st;
    shmPath(p, sizeof p, name);
    return lstat(p, &st) == 0;
}

/* What a file in /dev/shm looks like: its bytes, size, mode and owner. */
typedef struct fileSnap {
    bool exists;
    uint64_t size;
    uint32_t mode;
    uint32_t uid;
    uint64_t hash;
} fileSnap;

static fileSnap snapFile(const char *name) {
    fileSnap f = {0};
    char p[128];
    shmPath(p, sizeof p, name);
    int fd = open(p, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return f;
    struct stat st;
    if (fstat(fd, &st) == 0) {
        f.exists = true;
        f.size = (uint64_t)st.st_size;
        f.mode = (uint32_t)(st.st_mode & 07777);
        f.uid = (uint32_t)st.st_uid;
        if (S_ISREG(st.st_mode)) {
            XXH3_state_t *x = XXH3_createState();
            XXH3_64bits_reset(x);
            static char buf[1 << 16];
            ssize_t n;
            while ((n = read(fd, buf, sizeof buf)) > 0)
                XXH3_64bits_update(x, buf, (size_t)n);
            f.hash = XXH3_64bits_digest(x);
            XXH3_freeState(x);
        }
    }
    close(fd);
    return f;
}

#define assertSameFile(a, b, what)                                             \
    do {                                                                       \
        fileSnap a_ = (a), b_ = (b);                                           \
        ck_assert_msg(                                                         \
            a_.exists == b_.exists && a_.size == b_.size &&                    \
                a_.mode == b_.mode && a_.uid == b_.uid && a_.hash == b_.hash,  \
            "%s: the file changed (size %" PRIu64 " -> %" PRIu64               \
            ", mode %o -> %o, hash %016" PRIx64 " -> %016" PRIx64 ")",         \
            what, a_.size, b_.size, a_.mode, b_.mode, a_.hash, b_.hash);       \
    } while (0)

static int rawOpen(const char *name, int flags) {
    char p[128];
    shmPath(p, sizeof p, name);
    return open(p, flags | O_NOFOLLOW | O_CLOEXEC, 0600);
}

static void rawReadHeader(const char *name, dkHeader *h) {
    int fd = rawOpen(name, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, h, sizeof *h, 0), (ssize_t)sizeof *h);
    close(fd);
}

static void rawWriteHeader(const char *name, const dkHeader *h) {
    int fd = rawOpen(name, O_RDWR);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, h, sizeof *h, 0), (ssize_t)sizeof *h);
    close(fd);
}

static uint64_t headerChecksum(const dkHeader *h) {
    return XXH3_64bits(h, offsetof(dkHeader, checksum));
}

/* Start time (field 22 of /proc/PID/stat), parsed here independently of
 * the library; 0 if the process does not exist. */
static uint64_t procStart(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    for (int field = 2; p && field < 22; field++)
        p = strchr(p + 1, ' ');
    return p ? strtoull(p + 1, NULL, 10) : 0;
}

/* Scratch memory at the end of the heap (see the top of the file). */
static dkoff scratchOff(const dkshm *s) {
    ck_assert_msg(s->hdr->allocRoot == 0,
                  "an allocator laid out this heap: checkShm expects the "
                  "segment layer alone (membound not linked in)");
    return s->hdr->heap + s->hdr->heapSize - SCRATCH_BYTES;
}

static dkDirEntry *dirEntry(const dkshm *s, uint32_t i) {
    return (dkDirEntry *)(s->base + s->hdr->directory) + i;
}

static dkUndo *dirUndo(const dkshm *s) {
    return (dkUndo *)s->hdr->dirUndo;
}

/* A hash of everything the segment layer keeps outside the heap: header,
 * process table and directory, but not the directory log's records past
 * its count, which are dead bytes by design. Equal before and after a call
 * that failed means it changed nothing. */
static uint64_t metaHash(const dkshm *s) {
    XXH3_state_t *x = XXH3_createState();
    XXH3_64bits_reset(x);
    XXH3_64bits_update(x, s->base, offsetof(dkHeader, dirUndo));
    const dkUndo *u = (const dkUndo *)s->hdr->dirUndo;
    uint32_t n = __atomic_load_n(&u->count, __ATOMIC_ACQUIRE);
    XXH3_64bits_update(x, u,
                       sizeof *u + (n <= u->cap ? n : 0) * sizeof(dkUndoRec));
    XXH3_64bits_update(x, s->base + sizeof(dkHeader),
                       s->hdr->heap - sizeof(dkHeader));
    uint64_t h = XXH3_64bits_digest(x);
    XXH3_freeState(x);
    return h;
}

static size_t procList(dkshm *s, dkshmProcInfo *out, size_t max) {
    size_t n = 0;
    ck_assert_int_eq(dkshmProcList(s, out, max, &n), DKSHM_OK);
    return n;
}

static const dkshmProcInfo *procOf(const dkshmProcInfo *p, size_t n,
                                   uint32_t pid) {
    for (size_t i = 0; i < n; i++)
        if (p[i].pid == pid)
            return &p[i];
    return NULL;
}

static size_t objList(dkshm *s, dkshmObjectInfo *out, size_t max) {
    size_t n = 0;
    ck_assert_int_eq(dkshmObjectList(s, out, max, &n), DKSHM_OK);
    return n;
}

static const dkshmObjectInfo *objIn(const dkshmObjectInfo *o, size_t n,
                                    const char *name) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(o[i].name, name) == 0)
            return &o[i];
    return NULL;
}

static uint32_t infoObjects(dkshm *s) {
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    return in.objects;
}

/* Write a slot by hand, as a process that registered would have. */
static void craftSlot(dkshm *s, uint32_t i, uint32_t state, uint32_t pid,
                      uint64_t start) {
    dkProcSlot *p = dkSlotAt(s, i);
    ck_assert_uint_eq(__atomic_load_n(&p->word, __ATOMIC_ACQUIRE), 0);
    p->uid = (uint32_t)getuid();
    p->startTime = start;
    p->attachTimeNs = realNs();
    memset(p->inflight, 0, sizeof p->inflight);
    __atomic_store_n(&p->word, ((uint64_t)state << 32) | pid, __ATOMIC_RELEASE);
}

/* A pid that belonged to a process which is gone now. */
static pid_t deadPid(void) {
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
        _exit(0);
    ck_assert_int_eq(testWait(pid), 0);
    return pid;
}

/* ---- forked children driven through pipes -------------------------------- */

typedef struct kid {
    pid_t pid;
    int cmd; /* the test writes commands here */
    int rep; /* and reads the child's reports here */
} kid;

typedef int (*kidFn)(void *arg, int cmd, int rep);

static kid startKid(kidFn fn, void *arg) {
    int c[2], r[2];
    ck_assert_int_eq(pipe(c), 0);
    ck_assert_int_eq(pipe(r), 0);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* Die with the test, whatever other children hold our pipes. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(99);
        close(c[1]);
        close(r[0]);
        _exit(fn(arg, c[0], r[1]));
    }
    close(c[0]);
    close(r[1]);
    return (kid){.pid = pid, .cmd = c[1], .rep = r[0]};
}

/* Read one line the child wrote (within 10 s). */
static void kidRead(kid *k, char *buf, size_t len) {
    size_t n = 0;
    uint64_t deadline = monoNs() + 10000 * MSEC;
    while (n + 1 < len) {
        struct pollfd pf = {.fd = k->rep, .events = POLLIN};
        int left = (int)((deadline - monoNs()) / MSEC);
        ck_assert_msg(monoNs() < deadline && poll(&pf, 1, left) == 1,
                      "child %d did not report", (int)k->pid);
        char c;
        ssize_t r = read(k->rep, &c, 1);
        ck_assert_msg(r == 1, "child %d closed its report pipe", (int)k->pid);
        if (c == '\n')
            break;
        buf[n++] = c;
    }
    buf[n] = '\0';
}

static int kidReadInt(kid *k) {
    char buf[64];
    kidRead(k, buf, sizeof buf);
    return atoi(buf);
}

static void kidSend(kid *k, char c) {
    ck_assert_int_eq(write(k->cmd, &c, 1), 1);
}

static int kidWait(kid *k) {
    close(k->cmd);
    close(k->rep);
    return testWait(k->pid);
}

static void report(int fd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void report(int fd, const char *fmt, ...) {
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0 && write(fd, buf, (size_t)n) != n)
        _exit(98);
}

/* Take and give back the directory lock: the first lock a process takes
 * registers it in the process table. Reports the result, then obeys
 * commands: 'x' exit without detaching, 'd' detach and exit. */
static int kidRegisterAndWait(void *arg, int cmd, int rep) {
    dkshm *s = arg;
    int rc = fastMutexLock(s, &s->hdr->dirLock);
    if (rc >= 0)
        rc = fastMutexUnlock(s, &s->hdr->dirLock);
    report(rep, "%d %u\n", rc, s->slot);
    if (rc != DKSHM_OK)
        return 1;
    char c;
    while (read(cmd, &c, 1) == 1) {
        if (c == 'x')
            return 0;
        if (c == 'd')
            return dkshmDetach(s) == DKSHM_OK ? 0 : 2;
    }
    return 0;
}

/* Report, touch nothing, wait for 'x'. */
static int kidIdle(void *arg, int cmd, int rep) {
    (void)arg;
    report(rep, "ready\n");
    char c;
    while (read(cmd, &c, 1) == 1 && c != 'x')
        ;
    return 0;
}

/* ---- the helper program ---------------------------------------------------
 */

typedef struct helper {
    pid_t pid;
    int in;  /* its stdin */
    int out; /* its stdout */
} helper;

static helper startHelper(const char *name, const char *const *args) {
    ck_assert_msg(access(HELPER_PATH, X_OK) == 0,
                  "%s is missing: build tests/attachHelper", HELPER_PATH);
    char *argv[16];
    int n = 0;
    argv[n++] = (char *)HELPER_PATH;
    argv[n++] = (char *)name;
    for (; args[n - 2] && n < 15; n++)
        argv[n] = (char *)args[n - 2];
    argv[n] = NULL;
    int i[2], o[2];
    ck_assert_int_eq(pipe(i), 0);
    ck_assert_int_eq(pipe(o), 0);
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(i[0], STDIN_FILENO);
        dup2(o[1], STDOUT_FILENO);
        close(i[0]);
        close(i[1]);
        close(o[0]);
        close(o[1]);
        execv(HELPER_PATH, argv);
        _exit(127);
    }
    close(i[0]);
    close(o[1]);
    return (helper){.pid = pid, .in = i[1], .out = o[0]};
}

/* Close the helper's stdin, collect its output and its exit status. */
static int finishHelper(helper *h, char *out, size_t len) {
    close(h->in);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < len && (r = read(h->out, out + n, len - 1 - n)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        n += (size_t)r;
    }
    out[n] = '\0';
    close(h->out);
    return testWait(h->pid);
}

static int runHelper(const char *name, const char *const *args, char *out,
                     size_t len) {
    helper h = startHelper(name, args);
    return finishHelper(&h, out, len);
}

/* The value of "KEY=..." in helper output, as a number. */
static bool helperValue(const char *out, const char *key, uint64_t *v) {
    char pat[64];
    snprintf(pat, sizeof pat, "%s=", key);
    for (const char *p = out; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
        if (strncmp(p, pat, strlen(pat)) == 0) {
            *v = strtoull(p + strlen(pat), NULL, 10);
            return true;
        }
    return false;
}

/* The helper's exit status for a dkshm return code. */
static int helperExit(int rc) {
    return rc == DKSHM_OK ? 0 : 100 - rc;
}

/* ======================================================================== */
/* names                                                                    */
/* ======================================================================== */

START_TEST(test_segment_name_rules) {
    char max[DKSHM_NAME_MAX + 1], over[DKSHM_NAME_MAX + 2], huge[300];
    /* The longest name: "/" and DKSHM_NAME_MAX - 1 = 62 characters. */
    max[0] = over[0] = huge[0] = '/';
    memset(max + 1, 'm', DKSHM_NAME_MAX - 1);
    max[DKSHM_NAME_MAX] = '\0';
    memset(over + 1, 'o', DKSHM_NAME_MAX);
    over[DKSHM_NAME_MAX + 1] = '\0';
    memset(huge + 1, 'h', sizeof huge - 2);
    huge[sizeof huge - 1] = '\0';
    ck_assert_uint_eq(strlen(max), 63);
    ck_assert_uint_eq(strlen(over), 64);

    const char *good[] = {"/a", "/A-z_0.9", "/.a",  "/a..",  "/-",
                          "/_", "/0",       "/a.b", "/...a", max};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        ck_assert_msg(dkshmValidateName(good[i]) == DKSHM_OK,
                      "\"%s\" should be a valid segment name", good[i]);
    /* 62 characters in all is valid too. */
    max[DKSHM_NAME_MAX - 1] = '\0';
    ck_assert_int_eq(dkshmValidateName(max), DKSHM_OK);
    max[DKSHM_NAME_MAX - 1] = 'm';

    const char *bad[] = {"",     "/",   "a",     "ab/",   "//x",       "/a/b",
                         "/..",  "/.",  "/....", "/a b",  "/\xc3\xa4", "/a\n",
                         "/a\t", "/a*", "/a\\b", "/a:b",  "\\a",       "./a",
                         "/a/",  over,  huge,    "/\x7f", "/\x01"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(dkshmValidateName(bad[i]) == DKSHM_INVALID,
                      "\"%s\" should be an invalid segment name", bad[i]);
    ck_assert_int_eq(dkshmValidateName(NULL), DKSHM_INVALID);

    /* Every entry point validates: nothing is created, nothing attached. */
    dkshm *s = (dkshm *)&s;
    ck_assert_int_eq(dkshmCreate(over, DKSHM_MIN_CAPACITY, NULL, &s),
                     DKSHM_INVALID);
    ck_assert_ptr_null(s);
    ck_assert(!shmExists(over));
    ck_assert_int_eq(dkshmCreate("/a b", DKSHM_MIN_CAPACITY, NULL, &s),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmAttach("/..", 0, &s), DKSHM_INVALID);
    ck_assert_int_eq(dkshmAttach(NULL, DKSHM_RDONLY, &s), DKSHM_INVALID);
    bool created = true;
    ck_assert_int_eq(dkshmOpen("//x", DKSHM_MIN_CAPACITY, NULL, &s, &created),
                     DKSHM_INVALID);
    ck_assert_ptr_null(s);
    ck_assert_int_eq(dkshmUnlink("/a/b"), DKSHM_INVALID);
    ck_assert_int_eq(dkshmUnlink(NULL), DKSHM_INVALID);
}
END_TEST

START_TEST(test_longest_name_works_end_to_end) {
    /* A name of the maximum length round-trips through the namespace, the
     * handle and the helpers that copy it. */
    char full[DKSHM_NAME_MAX + 1];
    int n = snprintf(full, sizeof full, "/dkt-%d-" TAG_PREFIX, (int)getpid());
    memset(full + n, 'L', sizeof full - 1 - (size_t)n);
    full[DKSHM_NAME_MAX] = '\0';
    const char *name = registerName(full);
    ck_assert_uint_eq(strlen(name), DKSHM_NAME_MAX);
    dkshm *a, *b;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &a), DKSHM_OK);
    ck_assert_str_eq(dkshmName(a), name);
    ck_assert_int_eq(dkshmAttach(name, DKSHM_RDONLY, &b), DKSHM_OK);
    ck_assert_str_eq(dkshmName(b), name);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(a), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
    ck_assert(!shmExists(name));
}
END_TEST

START_TEST(test_object_name_rules) {
    char max[DKSHM_OBJNAME_MAX + 1], over[DKSHM_OBJNAME_MAX + 2];
    memset(max, 'x', DKSHM_OBJNAME_MAX);
    max[DKSHM_OBJNAME_MAX] = '\0';
    memset(over, 'y', DKSHM_OBJNAME_MAX + 1);
    over[DKSHM_OBJNAME_MAX + 1] = '\0';
    const char *good[] = {"a",  "~",        "!",  "sessions/jobs:1",
                          "/x", "\x21\x7e", "..", "a-b_c.d@e#f$g%h&",
                          max};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        ck_assert_msg(dkshmValidateObjectName(good[i]) == DKSHM_OK,
                      "\"%s\" should be a valid object name", good[i]);
    const char *bad[] = {"",     over,       "a b",  " ",     "\t",   "a\n",
                         "\x7f", "\xc3\xa4", "\x20", "x\x01", "\x80", "\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(dkshmValidateObjectName(bad[i]) == DKSHM_INVALID,
                      "\"%s\" should be an invalid object name", bad[i]);
    ck_assert_int_eq(dkshmValidateObjectName(NULL), DKSHM_INVALID);
}
END_TEST

/* ======================================================================== */
/* create, attach, detach, unlink                                           */
/* ======================================================================== */

START_TEST(test_create_attach_detach_unlink) {
    const char *name = segName("life");
    const char *missing = segName("missing");
    uint64_t t0 = realNs();
    dkshm *a = NULL, *b = NULL, *x = (dkshm *)&x;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &a), DKSHM_OK);
    uint64_t t1 = realNs();
    ck_assert_ptr_nonnull(a);
    ck_assert(shmExists(name));
    ck_assert_uint_eq(dkshmCapacity(a), DKSHM_MIN_CAPACITY);
    ck_assert_str_eq(dkshmName(a), name);
    ck_assert(!dkshmReadOnly(a));

    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(a, &in), DKSHM_OK);
    ck_assert_uint_eq(in.layoutVersion, DK_LAYOUT_VERSION);
    ck_assert_uint_eq(in.format, DK_FORMAT);
    ck_assert_uint_eq(in.capacity, DKSHM_MIN_CAPACITY);
    ck_assert_uint_eq(in.creatorUid, getuid());
    ck_assert_uint_eq(in.creatorPid, (uint32_t)getpid());
    ck_assert(in.createTimeNs >= t0 && in.createTimeNs <= t1);
    ck_assert_uint_eq(in.flags, 0);
    ck_assert_uint_eq(in.maxProcs, DKSHM_DEFAULT_PROCS);
    ck_assert_uint_eq(in.maxObjects, DKSHM_DEFAULT_OBJECTS);
    ck_assert_uint_eq(in.liveProcs, 1);
    ck_assert_uint_eq(in.deadProcs, 0);
    ck_assert_uint_eq(in.objects, 0);
    long page = sysconf(_SC_PAGESIZE);
    ck_assert_uint_eq(in.heapOffset % (uint64_t)page, 0);
    ck_assert_uint_eq(in.heapOffset + in.heapSize, in.capacity);
    ck_assert_uint_ge(in.heapSize, 16 * (uint64_t)page);
    ck_assert_uint_eq(in.fileMode, 0600);
    ck_assert_uint_eq(in.fileUid, getuid());
    ck_assert_int_eq(dkshmGetInfo(a, NULL), DKSHM_INVALID);
    ck_assert_int_eq(dkshmGetInfo(NULL, &in), DKSHM_INVALID);

    /* A second create fails and leaves the first segment as it was. */
    fileSnap before = snapFile(name);
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &x),
                     DKSHM_EXISTS);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(dkshmCreate(name, 2 * MIB, NULL, &x), DKSHM_EXISTS);
    assertSameFile(before, snapFile(name), "create of an existing name");

    ck_assert_int_eq(dkshmAttach(name, 0, &b), DKSHM_OK);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    ck_assert_uint_eq(dkshmCapacity(b), DKSHM_MIN_CAPACITY);
    ck_assert_int_eq(dkshmGetInfo(b, &in), DKSHM_OK);
    ck_assert_uint_eq(in.liveProcs, 2);

    x = (dkshm *)&x;
    ck_assert_int_eq(dkshmAttach(missing, 0, &x), DKSHM_NOTFOUND);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(dkshmAttach(missing, DKSHM_RDONLY, &x), DKSHM_NOTFOUND);
    ck_assert(!shmExists(missing));
    ck_assert_int_eq(dkshmAttach(name, 0, NULL), DKSHM_INVALID);
    ck_assert_int_eq(dkshmAttach(name, 0x2, &x), DKSHM_INVALID);
    ck_assert_int_eq(dkshmAttach(name, DKSHM_RDONLY | 0x100, &x),
                     DKSHM_INVALID);

    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_int_eq(dkshmGetInfo(a, &in), DKSHM_OK);
    ck_assert_uint_eq(in.liveProcs, 1);
    ck_assert_uint_eq(in.deadProcs, 0);
    ck_assert_int_eq(dkshmDetach(NULL), DKSHM_OK);

    /* Unlinking removes the name; an attached process keeps its mapping. */
    *(volatile uint64_t *)dkshmPtr(a, scratchOff(a)) = 0xabcdef;
    ck_assert_int_eq(dkshmObjectCreate(a, "kept", T_OBJ, scratchOff(a)),
                     DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
    ck_assert(!shmExists(name));
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_NOTFOUND);
    ck_assert_int_eq(dkshmAttach(name, 0, &x), DKSHM_NOTFOUND);
    ck_assert_uint_eq(*(volatile uint64_t *)dkshmPtr(a, scratchOff(a)),
                      0xabcdef);
    ck_assert_int_eq(dkshmObjectFind(a, "kept", NULL, NULL), DKSHM_OK);
    /* The name is free again: a new, empty segment. */
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &b), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectFind(b, "kept", NULL, NULL), DKSHM_NOTFOUND);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(a), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_open_creates_then_attaches) {
    const char *name = segName("open");
    dkshm *a = NULL, *b = NULL;
    bool created = false;
    ck_assert_int_eq(dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, &a, &created),
                     DKSHM_OK);
    ck_assert(created);
    ck_assert_int_eq(dkshmObjectCreate(a, "first", T_OBJ, scratchOff(a)),
                     DKSHM_OK);
    created = true;
    /* Capacity and options only matter when creating. */
    dkshmOptions o = {.maxProcs = 8, .mode = 0644};
    ck_assert_int_eq(dkshmOpen(name, 4 * MIB, &o, &b, &created), DKSHM_OK);
    ck_assert(!created);
    ck_assert_uint_eq(dkshmCapacity(b), DKSHM_MIN_CAPACITY);
    dkshmInfo ia, ib;
    ck_assert_int_eq(dkshmGetInfo(a, &ia), DKSHM_OK);
    ck_assert_int_eq(dkshmGetInfo(b, &ib), DKSHM_OK);
    ck_assert_uint_eq(ia.createTimeNs, ib.createTimeNs);
    ck_assert_uint_eq(ib.maxProcs, DKSHM_DEFAULT_PROCS);
    ck_assert_uint_eq(ib.fileMode, 0600);
    ck_assert_int_eq(dkshmObjectFind(b, "first", NULL, NULL), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    /* CREATED may be NULL. */
    ck_assert_int_eq(dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, &b, NULL),
                     DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_int_eq(dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, NULL, &created),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmDetach(a), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* N processes open the same name at once: exactly one creates it. */
#define OPEN_RACERS 6

static int kidOpenRacer(void *arg, int cmd, int rep) {
    const char *name = arg;
    char c;
    if (read(cmd, &c, 1) != 1) /* the start signal */
        return 3;
    dkshm *s;
    bool created = false;
    int rc = dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, &s, &created);
    if (rc == DKSHM_OK &&
        dkshmObjectCreate(s, created ? "by-creator" : "x", T_OBJ,
                          scratchOff(s)) < 0 &&
        created)
        rc = DKSHM_CORRUPT;
    report(rep, "%d %d\n", rc, created ? 1 : 0);
    if (rc == DKSHM_OK)
        dkshmDetach(s);
    return 0;
}

START_TEST(test_open_race_has_one_creator) {
    const char *name = segName("race");
    kid k[OPEN_RACERS];
    for (int i = 0; i < OPEN_RACERS; i++)
        k[i] = startKid(kidOpenRacer, (void *)name);
    for (int i = 0; i < OPEN_RACERS; i++)
        kidSend(&k[i], 'g');
    int creators = 0;
    for (int i = 0; i < OPEN_RACERS; i++) {
        char line[32];
        kidRead(&k[i], line, sizeof line);
        int rc = 1, created = 0;
        ck_assert_int_eq(sscanf(line, "%d %d", &rc, &created), 2);
        ck_assert_msg(rc == DKSHM_OK, "racer %d: %s", i, dkshmErrName(rc));
        creators += created;
        ck_assert_int_eq(kidWait(&k[i]), 0);
    }
    ck_assert_int_eq(creators, 1);
    dkshm *s;
    ck_assert_int_eq(dkshmAttach(name, 0, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectFind(s, "by-creator", NULL, NULL), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectFind(s, "x", NULL, NULL), DKSHM_OK);
    ck_assert_uint_eq(procList(s, NULL, 0), 1); /* all racers detached */
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

static int kidWriteAnon(void *arg, int cmd, int rep) {
    (void)cmd;
    dkshm *s = arg;
    uint64_t *v = dkshmPtr(s, scratchOff(s));
    if (!v)
        return 1;
    __atomic_store_n(v, 0x5eed0000u + (uint32_t)getpid(), __ATOMIC_RELEASE);
    int rc = dkshmObjectCreate(s, "from-child", T_OBJ, scratchOff(s));
    report(rep, "%d\n", rc);
    return rc == DKSHM_OK ? 0 : 2;
}

START_TEST(test_anonymous_segment_shared_with_child) {
    dkshm *s = NULL, *x = (dkshm *)&x;
    ck_assert_int_eq(dkshmCreateAnonymous(DKSHM_MIN_CAPACITY, NULL, &s),
                     DKSHM_OK);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(dkshmName(s), "");
    ck_assert_uint_eq(dkshmCapacity(s), DKSHM_MIN_CAPACITY);
    ck_assert(!dkshmReadOnly(s));
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    ck_assert_uint_eq(in.fileMode, 0);
    ck_assert_uint_eq(in.liveProcs, 1);
    ck_assert_uint_lt(in.residentBytes, 4 * MIB);

    kid k = startKid(kidWriteAnon, s);
    ck_assert_int_eq(kidReadInt(&k), DKSHM_OK);
    pid_t child = k.pid;
    ck_assert_int_eq(kidWait(&k), 0);
    ck_assert_uint_eq(__atomic_load_n((uint64_t *)dkshmPtr(s, scratchOff(s)),
                                      __ATOMIC_ACQUIRE),
                      0x5eed0000u + (uint32_t)child);
    uint32_t type;
    dkoff root;
    ck_assert_int_eq(dkshmObjectFind(s, "from-child", &type, &root), DKSHM_OK);
    ck_assert_uint_eq(type, T_OBJ);
    ck_assert_uint_eq(root, scratchOff(s));
    /* The child registered (it took the directory lock) and died without
     * detaching: its slot is dead and reapable. */
    dkshmProcInfo p[4];
    size_t n = procList(s, p, 4);
    ck_assert_uint_eq(n, 2);
    ck_assert_ptr_nonnull(procOf(p, n, (uint32_t)child));
    ck_assert(!procOf(p, n, (uint32_t)child)->alive);
    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 1);

    /* Bad arguments. */
    ck_assert_int_eq(dkshmCreateAnonymous(DKSHM_MIN_CAPACITY, NULL, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmCreateAnonymous(0, NULL, &x), DKSHM_INVALID);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(dkshmCreateAnonymous(DKSHM_MAX_CAPACITY + 1, NULL, &x),
                     DKSHM_INVALID);
    dkshmOptions o = {.flags = 0x10};
    ck_assert_int_eq(dkshmCreateAnonymous(DKSHM_MIN_CAPACITY, &o, &x),
                     DKSHM_INVALID);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
}
END_TEST

static void assertMode(const char *name, uint32_t want) {
    char p[128];
    struct stat st;
    shmPath(p, sizeof p, name);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_msg((st.st_mode & 07777) == want, "%s: mode %o, want %o", name,
                  st.st_mode & 07777, want);
}

START_TEST(test_file_mode_ignores_umask) {
    static const struct {
        mode_t umask;
        uint32_t mode, want;
    } cases[] = {{0, 0, 0600},       {077, 0, 0600},  {0777, 0, 0600},
                 {077, 0640, 0640},  {0, 0640, 0640}, {022, 0666, 0666},
                 {0777, 0400, 0400}, {0, 0777, 0777}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char tag[16];
        snprintf(tag, sizeof tag, "mode%zu", i);
        const char *name = segName(tag);
        umask(cases[i].umask);
        dkshmOptions o = {.mode = cases[i].mode};
        dkshm *s;
        ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, &o, &s),
                         DKSHM_OK);
        assertMode(name, cases[i].want);
        dkshmInfo in;
        ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
        ck_assert_uint_eq(in.fileMode, cases[i].want);
        ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
        ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
    }
    /* dkshmOpen creating honours the mode too. */
    const char *name = segName("openmode");
    umask(0);
    dkshmOptions o = {.mode = 0640, .flags = DKSHM_EPHEMERAL};
    dkshm *s;
    bool created = false;
    ck_assert_int_eq(dkshmOpen(name, DKSHM_MIN_CAPACITY, &o, &s, &created),
                     DKSHM_OK);
    ck_assert(created);
    assertMode(name, 0640);
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    ck_assert_uint_eq(in.flags, DKSHM_EPHEMERAL);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_bad_create_arguments_leave_no_file) {
    const char *name = segName("badargs");
    static const struct {
        const char *what;
        uint64_t capacity;
        dkshmOptions opt;
        bool nullOut;
    } cases[] = {
        {"NULL out", DKSHM_MIN_CAPACITY, {0}, true},
        {"capacity 0", 0, {0}, false},
        {"capacity below the minimum", DKSHM_MIN_CAPACITY - 1, {0}, false},
        {"capacity 4096", 4096, {0}, false},
        {"capacity above the maximum", DKSHM_MAX_CAPACITY + 1, {0}, false},
        {"capacity UINT64_MAX", UINT64_MAX, {0}, false},
        {"capacity UINT64_MAX - 4095", UINT64_MAX - 4095, {0}, false},
        {"maxProcs 1025", DKSHM_MIN_CAPACITY, {.maxProcs = 1025}, false},
        {"maxProcs UINT32_MAX",
         DKSHM_MIN_CAPACITY,
         {.maxProcs = UINT32_MAX},
         false},
        {"maxObjects 65537", 64 * MIB, {.maxObjects = 65537}, false},
        {"unknown flag 0x2", DKSHM_MIN_CAPACITY, {.flags = 0x2}, false},
        {"unknown flag 0x80000000",
         DKSHM_MIN_CAPACITY,
         {.flags = 0x80000000u},
         false},
        {"mode 01000 (sticky)", DKSHM_MIN_CAPACITY, {.mode = 01000}, false},
        {"mode 04600 (setuid)", DKSHM_MIN_CAPACITY, {.mode = 04600}, false},
        {"mode 0x10000", DKSHM_MIN_CAPACITY, {.mode = 0x10000}, false},
        {"metadata larger than the capacity",
         DKSHM_MIN_CAPACITY,
         {.maxObjects = DKSHM_MAX_OBJECTS},
         false},
        {"1024 processes in 256 KiB",
         DKSHM_MIN_CAPACITY,
         {.maxProcs = DKSHM_MAX_PROCS},
         false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dkshm *s = (dkshm *)&s;
        int rc = dkshmCreate(name, cases[i].capacity, &cases[i].opt,
                             cases[i].nullOut ? NULL : &s);
        ck_assert_msg(rc == DKSHM_INVALID, "create, %s: %s", cases[i].what,
                      dkshmErrName(rc));
        ck_assert_msg(cases[i].nullOut || s == NULL,
                      "create, %s: *out not cleared", cases[i].what);
        ck_assert_msg(!shmExists(name), "create, %s: left a file",
                      cases[i].what);
        bool created = true;
        s = (dkshm *)&s;
        rc = dkshmOpen(name, cases[i].capacity, &cases[i].opt,
                       cases[i].nullOut ? NULL : &s, &created);
        ck_assert_msg(rc == DKSHM_INVALID, "open, %s: %s", cases[i].what,
                      dkshmErrName(rc));
        ck_assert_msg(!shmExists(name), "open, %s: left a file", cases[i].what);
        s = (dkshm *)&s;
        rc = dkshmCreateAnonymous(cases[i].capacity, &cases[i].opt,
                                  cases[i].nullOut ? NULL : &s);
        ck_assert_msg(rc == DKSHM_INVALID, "anonymous, %s: %s", cases[i].what,
                      dkshmErrName(rc));
        ck_assert_msg(cases[i].nullOut || s == NULL,
                      "anonymous, %s: *out not cleared", cases[i].what);
    }
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_NOTFOUND);

    /* The limits themselves are accepted; capacity rounds up to a page. */
    dkshm *s;
    dkshmOptions o = {.maxProcs = DKSHM_MAX_PROCS, .maxObjects = 1};
    ck_assert_int_eq(dkshmCreate(name, 8 * MIB, &o, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
    long page = sysconf(_SC_PAGESIZE);
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY + 1, NULL, &s),
                     DKSHM_OK);
    ck_assert_uint_eq(dkshmCapacity(s), DKSHM_MIN_CAPACITY + (uint64_t)page);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* A creation that fails half-way (here: the file cannot be sized because
 * RLIMIT_FSIZE is below the capacity) reports it and leaves no file. */
static int createUnderFsizeLimit(void *arg) {
    const char *name = arg;
    struct rlimit rl = {.rlim_cur = 128 * 1024, .rlim_max = 128 * 1024};
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
        return 1;
    dkshm *s = (dkshm *)&s;
    int rc = dkshmCreate(name, 4 * MIB, NULL, &s);
    if (rc == DKSHM_OK || s != NULL)
        return 2;
    if (rc != DKSHM_SYSTEM && rc != DKSHM_FULL)
        return 3;
    if (shmExists(name))
        return 4;
    return 0;
}

START_TEST(test_failed_creation_leaves_no_file) {
    const char *name = segName("fsize");
    int st = testInChild(createUnderFsizeLimit, (void *)name);
    ck_assert_msg(st == 0,
                  "failed creation: child step %d (2: succeeded, 3: wrong "
                  "code, 4: left the file)",
                  st);
    ck_assert(!shmExists(name));
}
END_TEST

/* ======================================================================== */
/* sparse capacity                                                          */
/* ======================================================================== */

START_TEST(test_large_segment_is_sparse) {
    const char *name = segName("sparse");
    const uint64_t gib = 1024 * MIB;
    uint64_t t0 = monoNs();
    dkshm *s, *b, *r;
    ck_assert_int_eq(dkshmCreate(name, gib, NULL, &s), DKSHM_OK);
    uint64_t took = monoNs() - t0;
    ck_assert_msg(took < 1000 * MSEC, "creating 1 GiB took %" PRIu64 " ms",
                  took / MSEC);
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    ck_assert_uint_eq(in.capacity, gib);
    ck_assert_uint_gt(in.heapSize, gib - 4 * MIB);
    ck_assert_msg(in.residentBytes < 4 * MIB && in.residentBytes > 0,
                  "1 GiB segment has %" PRIu64 " resident bytes",
                  in.residentBytes);
    uint64_t resident = in.residentBytes;
    char p[128];
    struct stat st;
    shmPath(p, sizeof p, name);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_uint_eq((uint64_t)st.st_size, gib);
    ck_assert_uint_eq((uint64_t)st.st_blocks * 512u, resident);

    /* Attaching, read-write or read-only, touches no data page. */
    t0 = monoNs();
    ck_assert_int_eq(dkshmAttach(name, 0, &b), DKSHM_OK);
    ck_assert_int_eq(dkshmAttach(name, DKSHM_RDONLY, &r), DKSHM_OK);
    took = monoNs() - t0;
    ck_assert_msg(took < 500 * MSEC, "attaching took %" PRIu64 " ms",
                  took / MSEC);
    ck_assert_int_eq(dkshmObjectCreate(b, "o", T_OBJ, in.heapOffset), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectFind(r, "o", NULL, NULL), DKSHM_OK);
    ck_assert_int_eq(dkshmGetInfo(r, &in), DKSHM_OK);
    ck_assert_uint_eq(in.residentBytes, resident);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_uint_eq((uint64_t)st.st_blocks * 512u, resident);
    ck_assert_int_eq(dkshmDetach(r), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ======================================================================== */
/* offsets                                                                  */
/* ======================================================================== */

START_TEST(test_offsets_and_pointers) {
    const char *name = segName("ptr");
    dkshm *a, *b;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &a), DKSHM_OK);
    ck_assert_int_eq(dkshmAttach(name, 0, &b), DKSHM_OK);
    uint64_t cap = dkshmCapacity(a);
    uint8_t *base = (uint8_t *)a->base;

    ck_assert_ptr_null(dkshmPtr(a, 0));
    ck_assert_ptr_null(dkshmPtr(a, cap));
    ck_assert_ptr_null(dkshmPtr(a, cap + 1));
    ck_assert_ptr_null(dkshmPtr(a, UINT64_MAX));
    ck_assert_ptr_null(dkshmPtr(NULL, 64));
    ck_assert_ptr_eq(dkshmPtr(a, 1), base + 1);
    ck_assert_ptr_eq(dkshmPtr(a, cap - 1), base + cap - 1);

    int local;
    ck_assert_uint_eq(dkshmOff(a, NULL), 0);
    ck_assert_uint_eq(dkshmOff(NULL, base + 8), 0);
    ck_assert_uint_eq(dkshmOff(a, &local), 0);
    ck_assert_uint_eq(dkshmOff(a, base - 1), 0);
    ck_assert_uint_eq(dkshmOff(a, base + cap), 0);
    ck_assert_uint_eq(dkshmOff(a, base + cap + 4096), 0);
    ck_assert_uint_eq(dkshmOff(a, base), 0); /* the null offset */
    ck_assert_uint_eq(dkshmOff(a, base + cap - 1), cap - 1);
    /* A pointer into another handle's mapping (a separate mmap) is not
     * inside ours. */
    ck_assert_uint_eq(dkshmOff(a, (uint8_t *)b->base + 8), 0);

    const dkoff offs[] = {1,       8,      4096, a->hdr->heap, scratchOff(a),
                          cap - 8, cap - 1};
    for (size_t i = 0; i < sizeof offs / sizeof *offs; i++) {
        void *pa = dkshmPtr(a, offs[i]), *pb = dkshmPtr(b, offs[i]);
        ck_assert_ptr_nonnull(pa);
        ck_assert_ptr_nonnull(pb);
        ck_assert_uint_eq(dkshmOff(a, pa), offs[i]);
        ck_assert_uint_eq(dkshmOff(b, pb), offs[i]);
    }
    /* Two mappings, one memory: a value stored through one handle is read
     * through the other at the same offset. */
    ck_assert_ptr_ne(a->base, b->base);
    uint64_t *wa = dkshmPtr(a, scratchOff(a) + 64);
    uint64_t *rb = dkshmPtr(b, scratchOff(b) + 64);
    *wa = 0x0123456789abcdefull;
    ck_assert_uint_eq(*(volatile uint64_t *)rb, 0x0123456789abcdefull);
    ck_assert_uint_eq(dkshmCapacity(NULL), 0);
    ck_assert(!dkshmReadOnly(NULL));
    ck_assert_str_eq(dkshmName(NULL), "");
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(a), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ======================================================================== */
/* damaged, foreign and other-version segments                              */
/* ======================================================================== */

enum damageKind {
    D_EMPTY,
    D_RANDOM,
    D_SHORT,
    D_ZEROS,
    D_MAGIC,
    D_VERSION,
    D_FORMAT,
    D_CHECKSUM,
    D_TRUNCATED,
    D_EXTENDED,
    D_CAPACITY,
    D_LAYOUT,
    D_MAXPROCS,
    D_BUSY_DEAD_CREATOR,
    D_COUNT
};

static const struct damage {
    const char *what;
    int expect;    /* from dkshmAttach, read-write and read-only */
    bool takeOver; /* dkshmOpen initialises it anew (a creator died) */
} damages[D_COUNT] = {
    [D_EMPTY] = {"zero-length file", DKSHM_CORRUPT, true},
    [D_RANDOM] = {"64 KiB of random bytes", DKSHM_CORRUPT, false},
    [D_SHORT] = {"the first 100 bytes of a header", DKSHM_CORRUPT, false},
    [D_ZEROS] = {"sized but never written (creator died)", DKSHM_CORRUPT, true},
    [D_MAGIC] = {"magic changed", DKSHM_CORRUPT, false},
    [D_VERSION] = {"layout version + 1", DKSHM_VERSION, false},
    [D_FORMAT] = {"format word of another lock size", DKSHM_VERSION, false},
    [D_CHECKSUM] = {"checksum byte flipped", DKSHM_CORRUPT, false},
    [D_TRUNCATED] = {"file truncated to half", DKSHM_CORRUPT, false},
    [D_EXTENDED] = {"file larger than the header says", DKSHM_CORRUPT, false},
    [D_CAPACITY] = {"header claims more than the file", DKSHM_CORRUPT, false},
    [D_LAYOUT] = {"heap offset moved (checksum valid)", DKSHM_CORRUPT, false},
    [D_MAXPROCS] = {"maxProcs 5000 (checksum valid)", DKSHM_CORRUPT, false},
    [D_BUSY_DEAD_CREATOR] = {"init BUSY, creator dead", DKSHM_CORRUPT, true},
};

#define DAMAGE_CAPACITY (1 * MIB)

static void writeFile(const char *name, const void *buf, size_t len) {
    int fd = rawOpen(name, O_RDWR | O_CREAT | O_EXCL);
    ck_assert_int_ge(fd, 0);
    fchmod(fd, 0600);
    if (len)
        ck_assert_int_eq(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

static void resizeFile(const char *name, uint64_t size) {
    int fd = rawOpen(name, O_RDWR);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
    close(fd);
}

static void makeDamaged(const char *name, enum damageKind kind) {
    if (kind == D_EMPTY) {
        writeFile(name, NULL, 0);
        return;
    }
    if (kind == D_RANDOM) {
        static uint64_t buf[8192];
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < 8192; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = x;
        }
        ck_assert(buf[0] != DK_MAGIC && buf[0] != 0);
        writeFile(name, buf, sizeof buf);
        return;
    }
    if (kind == D_ZEROS) {
        writeFile(name, NULL, 0);
        resizeFile(name, DAMAGE_CAPACITY);
        return;
    }
    /* The rest start from a good segment with something in it. */
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DAMAGE_CAPACITY, NULL, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "x", T_OBJ, scratchOff(s)), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    dkHeader h;
    rawReadHeader(name, &h);
    switch (kind) {
    case D_SHORT: {
        removeShmName(name);
        writeFile(name, &h, 100);
        return;
    }
    case D_MAGIC:
        h.magic ^= 0x0100;
        h.checksum = headerChecksum(&h);
        break;
    case D_VERSION:
        h.layoutVersion = DK_LAYOUT_VERSION + 1;
        h.checksum = headerChecksum(&h);
        break;
    case D_FORMAT:
        h.format ^= 0x08000000u; /* another sizeof(fastMutex) */
        h.checksum = headerChecksum(&h);
        break;
    case D_CHECKSUM:
        ((uint8_t *)&h.checksum)[3] ^= 0x40;
        break;
    case D_TRUNCATED:
        resizeFile(name, DAMAGE_CAPACITY / 2);
        return;
    case D_EXTENDED:
        resizeFile(name, DAMAGE_CAPACITY + MIB);
        return;
    case D_CAPACITY:
        /* A header consistent in itself, for a file twice as large. */
        h.capacity *= 2;
        h.heapSize += DAMAGE_CAPACITY;
        h.checksum = headerChecksum(&h);
        break;
    case D_LAYOUT:
        h.heap += h.pageSize;
        h.heapSize -= h.pageSize;
        h.checksum = headerChecksum(&h);
        break;
    case D_MAXPROCS:
        h.maxProcs = 5000;
        h.checksum = headerChecksum(&h);
        break;
    case D_BUSY_DEAD_CREATOR:
        __atomic_store_n(&h.initState, DK_INIT_BUSY, __ATOMIC_RELAXED);
        h.initPid = (uint32_t)deadPid();
        break;
    default:
        ck_abort_msg("unknown damage %d", (int)kind);
    }
    rawWriteHeader(name, &h);
}

START_TEST(test_damaged_segment) {
    const struct damage *d = &damages[_i];
    const char *name = segName("dmg");
    makeDamaged(name, (enum damageKind)_i);
    fileSnap before = snapFile(name);
    ck_assert(before.exists);

    for (int ro = 0; ro < 2; ro++) {
        dkshm *s = (dkshm *)&s;
        uint64_t t0 = monoNs();
        int rc = dkshmAttach(name, ro ? DKSHM_RDONLY : 0, &s);
        uint64_t took = monoNs() - t0;
        ck_assert_msg(rc == d->expect, "%s, %s attach: got %s, want %s",
                      d->what, ro ? "read-only" : "read-write",
                      dkshmErrName(rc), dkshmErrName(d->expect));
        ck_assert_msg(s == NULL, "%s: *out set on failure", d->what);
        ck_assert_msg(took < 1000 * MSEC, "%s: attach took %" PRIu64 " ms",
                      d->what, took / MSEC);
        assertSameFile(before, snapFile(name), d->what);
    }

    dkshm *s = (dkshm *)&s;
    bool created = false;
    int rc = dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, &s, &created);
    if (!d->takeOver) {
        ck_assert_msg(rc == d->expect, "%s, open: got %s, want %s", d->what,
                      dkshmErrName(rc), dkshmErrName(d->expect));
        ck_assert(!created);
        ck_assert_ptr_null(s);
        assertSameFile(before, snapFile(name), d->what);
    } else {
        /* The creator died during initialisation: open takes it over. */
        ck_assert_msg(rc == DKSHM_OK, "%s, open: got %s", d->what,
                      dkshmErrName(rc));
        ck_assert_msg(created, "%s: open took over but says it attached",
                      d->what);
        dkshmInfo in;
        ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
        ck_assert_uint_eq(in.creatorPid, (uint32_t)getpid());
        ck_assert_uint_eq(in.capacity, DKSHM_MIN_CAPACITY);
        ck_assert_uint_eq(in.objects, 0);
        ck_assert_uint_eq(in.liveProcs, 1);
        ck_assert_uint_eq(in.fileMode, 0600);
        ck_assert_uint_eq(snapFile(name).size, DKSHM_MIN_CAPACITY);
        dkshm *b;
        ck_assert_int_eq(dkshmAttach(name, DKSHM_RDONLY, &b), DKSHM_OK);
        ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
        ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    }
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* Things that are not segment files at all sit at the name. */
START_TEST(test_foreign_objects_at_the_name) {
    const char *good = segName("target");
    const char *link = segName("symlink");
    const char *dir = segName("dir");
    dkshm *s, *x = (dkshm *)&x;
    ck_assert_int_eq(dkshmCreate(good, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    fileSnap before = snapFile(good);

    /* A symlink to a good segment is not followed (O_NOFOLLOW). */
    char from[128], to[128];
    shmPath(from, sizeof from, link);
    shmPath(to, sizeof to, good);
    ck_assert_int_eq(symlink(to, from), 0);
    ck_assert_int_eq(dkshmAttach(link, 0, &x), DKSHM_PERM);
    ck_assert_ptr_null(x);
    ck_assert_int_eq(dkshmAttach(link, DKSHM_RDONLY, &x), DKSHM_PERM);
    bool created = true;
    ck_assert_int_eq(dkshmOpen(link, DKSHM_MIN_CAPACITY, NULL, &x, &created),
                     DKSHM_PERM);
    ck_assert(!created);
    ck_assert_int_eq(dkshmCreate(link, DKSHM_MIN_CAPACITY, NULL, &x),
                     DKSHM_EXISTS);
    assertSameFile(before, snapFile(good), "through a symlink");

    /* A directory: an error, never a crash. */
    char dpath[128];
    shmPath(dpath, sizeof dpath, dir);
    ck_assert_int_eq(mkdir(dpath, 0700), 0);
    /* (glibc's shm_open reports EISDIR as EINVAL.) */
    int rc = dkshmAttach(dir, 0, &x);
    ck_assert_msg(rc == DKSHM_INVALID || rc == DKSHM_SYSTEM ||
                      rc == DKSHM_CORRUPT,
                  "directory, read-write: %s", dkshmErrName(rc));
    rc = dkshmAttach(dir, DKSHM_RDONLY, &x);
    ck_assert_msg(rc == DKSHM_INVALID || rc == DKSHM_SYSTEM ||
                      rc == DKSHM_CORRUPT,
                  "directory, read-only: %s", dkshmErrName(rc));
    ck_assert_ptr_null(x);
    ck_assert_int_eq(rmdir(dpath), 0);
    ck_assert_int_eq(dkshmUnlink(good), DKSHM_OK);
}
END_TEST

/* ======================================================================== */
/* permissions and read-only handles                                        */
/* ======================================================================== */

static bool haveRoot(void) {
    if (geteuid() == 0)
        return true;
    printf("checkShm: not root: permission tests that switch to uid %d "
           "skipped\n",
           NOBODY);
    return false;
}

static int dropToNobody(void) {
    if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0)
        return -1;
    return (geteuid() == NOBODY && getegid() == NOBODY) ? 0 : -1;
}

static int nobodyOn0600(void *arg) {
    const char *name = arg;
    if (dropToNobody())
        return 1;
    dkshm *s = (dkshm *)&s;
    if (dkshmAttach(name, 0, &s) != DKSHM_PERM || s)
        return 2;
    s = (dkshm *)&s;
    if (dkshmAttach(name, DKSHM_RDONLY, &s) != DKSHM_PERM || s)
        return 3;
    bool created = true;
    if (dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, &s, &created) != DKSHM_PERM ||
        created)
        return 4;
    if (dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s) != DKSHM_EXISTS)
        return 5;
    if (dkshmUnlink(name) != DKSHM_PERM)
        return 6;
    return 0;
}

START_TEST(test_nobody_cannot_attach_0600) {
    if (!haveRoot())
        return;
    const char *name = segName("p600");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    fileSnap before = snapFile(name);
    ck_assert_uint_eq(before.mode, 0600);
    int st = testInChild(nobodyOn0600, (void *)name);
    ck_assert_msg(st == 0, "as nobody on a 0600 segment: failed at step %d",
                  st);
    assertSameFile(before, snapFile(name), "nobody on 0600");
    ck_assert_uint_eq(procList(s, NULL, 0), 1);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

static int nobodyOn0644(void *arg) {
    const char *name = arg;
    if (dropToNobody())
        return 1;
    dkshm *s = (dkshm *)&s;
    if (dkshmAttach(name, 0, &s) != DKSHM_PERM || s)
        return 2;
    if (dkshmAttach(name, DKSHM_RDONLY, &s) != DKSHM_OK || !s)
        return 3;
    if (!dkshmReadOnly(s))
        return 4;
    uint32_t type = 0;
    if (dkshmObjectFind(s, "x", &type, NULL) != DKSHM_OK || type != T_OBJ)
        return 5;
    dkshmInfo in;
    if (dkshmGetInfo(s, &in) != DKSHM_OK || in.fileMode != 0644 ||
        in.fileUid != 0 || in.creatorUid != 0 || in.objects != 1)
        return 6;
    /* Root's process is seen alive although we may not signal it. */
    dkshmProcInfo p[2];
    size_t n = 0;
    if (dkshmProcList(s, p, 2, &n) != DKSHM_OK || n != 1 || !p[0].alive ||
        p[0].uid != 0 || in.liveProcs != 1)
        return 7;
    if (fastMutexLock(s, &s->hdr->dirLock) != DKSHM_READONLY)
        return 8;
    if (dkshmDetach(s) != DKSHM_OK)
        return 9;
    return 0;
}

static int nobodyOn0666(void *arg) {
    const char *name = arg;
    if (dropToNobody())
        return 1;
    dkshm *s;
    /* Attaching read-write reaps dead processes: root's live one must
     * survive it although nobody may not signal it. */
    if (dkshmAttach(name, 0, &s) != DKSHM_OK)
        return 2;
    dkshmProcInfo p[4];
    size_t n = 0;
    if (dkshmProcList(s, p, 4, &n) != DKSHM_OK || n != 2)
        return 3;
    const dkshmProcInfo *me = procOf(p, n, (uint32_t)getpid());
    if (!me || me->uid != NOBODY || !me->alive)
        return 4;
    if (dkshmObjectCreate(s, "by-nobody", T_OBJ, scratchOff(s)) != DKSHM_OK)
        return 5;
    size_t reaped = 9;
    if (dkshmReap(s, &reaped) != DKSHM_OK || reaped != 0)
        return 6;
    if (dkshmDetach(s) != DKSHM_OK)
        return 7;
    return 0;
}

START_TEST(test_nobody_reads_0644_and_writes_0666) {
    if (!haveRoot())
        return;
    const char *name = segName("p644");
    dkshmOptions o = {.mode = 0644};
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, &o, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "x", T_OBJ, scratchOff(s)), DKSHM_OK);
    fileSnap before = snapFile(name);
    int st = testInChild(nobodyOn0644, (void *)name);
    ck_assert_msg(st == 0, "as nobody on a 0644 segment: failed at step %d",
                  st);
    assertSameFile(before, snapFile(name), "nobody reading 0644");

    char p[128];
    shmPath(p, sizeof p, name);
    ck_assert_int_eq(chmod(p, 0666), 0);
    st = testInChild(nobodyOn0666, (void *)name);
    ck_assert_msg(st == 0, "as nobody on a 0666 segment: failed at step %d",
                  st);
    dkshmProcInfo pi[4];
    size_t n = procList(s, pi, 4);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(pi[0].pid, (uint32_t)getpid());
    ck_assert(pi[0].alive);
    ck_assert_int_eq(dkshmObjectFind(s, "by-nobody", NULL, NULL), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* Whether the kernel may write 8 bytes at P in this process (no signal:
 * read(2) into a read-only page fails with EFAULT). */
static bool writable(void *p) {
    int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ssize_t n = read(fd, p, 8);
    int e = errno;
    close(fd);
    ck_assert(n == 8 || (n < 0 && e == EFAULT));
    return n == 8;
}

START_TEST(test_read_only_handle) {
    const char *name = segName("ro");
    dkshm *s, *r;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "x", T_OBJ, scratchOff(s)), DKSHM_OK);
    /* A dead process in the table: a read-write attach would reap it. */
    pid_t dead = deadPid();
    craftSlot(s, 7, DKSHM_PROC_LIVE, (uint32_t)dead, 12345);
    fileSnap before = snapFile(name);

    ck_assert_int_eq(dkshmAttach(name, DKSHM_RDONLY, &r), DKSHM_OK);
    ck_assert(dkshmReadOnly(r));
    ck_assert_str_eq(dkshmName(r), name);
    uint32_t type;
    dkoff root;
    ck_assert_int_eq(dkshmObjectFind(r, "x", &type, &root), DKSHM_OK);
    ck_assert_uint_eq(type, T_OBJ);
    ck_assert_uint_eq(root, scratchOff(s));
    ck_assert_int_eq(dkshmObjectFind(r, "y", NULL, NULL), DKSHM_NOTFOUND);
    dkshmObjectInfo oi[4];
    ck_assert_uint_eq(objList(r, oi, 4), 1);
    ck_assert_str_eq(oi[0].name, "x");
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(r, &in), DKSHM_OK);
    ck_assert_uint_eq(in.liveProcs, 1);
    ck_assert_uint_eq(in.deadProcs, 1);
    dkshmProcInfo pi[4];
    ck_assert_uint_eq(procList(r, pi, 4), 2);

    /* Everything that would write says READONLY and writes nothing. */
    ck_assert_int_eq(fastMutexLock(r, &r->hdr->dirLock), DKSHM_READONLY);
    ck_assert_int_eq(fastMutexTryLock(r, &r->hdr->dirLock), DKSHM_READONLY);
    ck_assert_int_eq(dkshmObjectCreate(r, "new", T_OBJ, scratchOff(r) + 64),
                     DKSHM_READONLY);
    ck_assert_int_eq(dkshmObjectRemove(r, "x", 0, &root), DKSHM_READONLY);
    size_t reaped = 77;
    ck_assert_int_eq(dkshmReap(r, &reaped), DKSHM_READONLY);
    ck_assert_uint_eq(reaped, 77);
    ck_assert_int_eq(fastMutexInit(r, dkshmPtr(r, scratchOff(r)), 0),
                     DKSHM_READONLY);

    /* The mapping itself is read-only. */
    ck_assert(!writable(dkshmPtr(r, scratchOff(r))));

    ck_assert_int_eq(dkshmDetach(r), DKSHM_OK);
    assertSameFile(before, snapFile(name),
                   "read-only attach, find, list, info, detach");
    ck_assert(writable(dkshmPtr(s, scratchOff(s) + 64))); /* control */

    /* A read-write attach does reap the dead slot (so the check above was
     * not vacuous). */
    ck_assert_int_eq(dkshmAttach(name, 0, &r), DKSHM_OK);
    ck_assert_uint_eq(procList(s, pi, 4), 2); /* s and r, dead one gone */
    ck_assert_ptr_null(procOf(pi, 2, (uint32_t)dead));
    ck_assert_int_eq(dkshmDetach(r), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ======================================================================== */
/* the process table                                                        */
/* ======================================================================== */

START_TEST(test_proc_table_records_self) {
    const char *name = segName("self");
    uint64_t t0 = realNs();
    dkshm *s, *b;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    uint64_t t1 = realNs();
    dkshmProcInfo p[4];
    size_t n = procList(s, p, 4);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(p[0].pid, (uint32_t)getpid());
    ck_assert_uint_eq(p[0].state, DKSHM_PROC_LIVE);
    ck_assert(p[0].alive);
    ck_assert_uint_eq(p[0].uid, getuid());
    ck_assert_uint_eq(p[0].startTime, procStart(getpid()));
    ck_assert_uint_ne(p[0].startTime, 0);
    ck_assert(p[0].attachTimeNs >= t0 && p[0].attachTimeNs <= t1);
    ck_assert_uint_eq(p[0].inflight, 0);
    ck_assert_uint_eq(p[0].readLocks, 0);
    ck_assert_int_eq(dkshmProcList(s, NULL, 1, &n), DKSHM_INVALID);
    ck_assert_int_eq(dkshmProcList(NULL, p, 4, &n), DKSHM_INVALID);
    n = 0;
    ck_assert_int_eq(dkshmProcList(s, NULL, 0, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 1);

    /* Each read-write handle has its own slot; detach frees it. */
    ck_assert_int_eq(dkshmAttach(name, 0, &b), DKSHM_OK);
    n = procList(s, p, 4);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(p[1].pid, (uint32_t)getpid());
    ck_assert_uint_ne(p[0].slot, p[1].slot);
    /* MAX smaller than the count still gives the count. */
    ck_assert_int_eq(dkshmProcList(s, p, 1, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_uint_eq(procList(s, p, 4), 1);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);

    /* After the last detach the table is empty. */
    ck_assert_int_eq(dkshmAttach(name, DKSHM_RDONLY, &b), DKSHM_OK);
    ck_assert_uint_eq(procList(b, p, 4), 0);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_proc_table_forked_child) {
    const char *name = segName("child");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    dkshmProcInfo p[8];
    uint32_t mySlot = s->slot;

    /* A child that never uses the inherited handle has no slot. */
    kid idle = startKid(kidIdle, s);
    char line[32];
    kidRead(&idle, line, sizeof line);
    ck_assert_uint_eq(procList(s, p, 8), 1);
    kidSend(&idle, 'x');
    ck_assert_int_eq(kidWait(&idle), 0);

    /* A child that takes a lock registers its own slot. */
    kid k = startKid(kidRegisterAndWait, s);
    int rc = -1;
    unsigned childSlot = 0;
    kidRead(&k, line, sizeof line);
    ck_assert_int_eq(sscanf(line, "%d %u", &rc, &childSlot), 2);
    ck_assert_int_eq(rc, DKSHM_OK);
    size_t n = procList(s, p, 8);
    ck_assert_uint_eq(n, 2);
    const dkshmProcInfo *c = procOf(p, n, (uint32_t)k.pid);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(c->slot, childSlot);
    ck_assert_uint_ne(c->slot, mySlot);
    ck_assert_uint_eq(c->state, DKSHM_PROC_LIVE);
    ck_assert(c->alive);
    ck_assert_uint_eq(c->startTime, procStart(k.pid));
    ck_assert(procOf(p, n, (uint32_t)getpid())->alive);
    ck_assert_uint_eq(s->slot, mySlot); /* our handle is untouched */

    /* It exits without detaching: its slot stays, dead. */
    pid_t childPid = k.pid;
    kidSend(&k, 'x');
    ck_assert_int_eq(kidWait(&k), 0);
    n = procList(s, p, 8);
    ck_assert_uint_eq(n, 2);
    c = procOf(p, n, (uint32_t)childPid);
    ck_assert_ptr_nonnull(c);
    ck_assert(!c->alive);
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    ck_assert_uint_eq(in.liveProcs, 1);
    ck_assert_uint_eq(in.deadProcs, 1);
    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 1);
    n = procList(s, p, 8);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(p[0].pid, (uint32_t)getpid());
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 0);
    ck_assert_int_eq(dkshmReap(s, NULL), DKSHM_OK);
    ck_assert_int_eq(dkshmReap(NULL, &reaped), DKSHM_INVALID);

    /* A child that detaches frees its own slot, not ours. */
    k = startKid(kidRegisterAndWait, s);
    kidRead(&k, line, sizeof line);
    ck_assert_uint_eq(procList(s, p, 8), 2);
    kidSend(&k, 'd');
    ck_assert_int_eq(kidWait(&k), 0);
    n = procList(s, p, 8);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(p[0].slot, mySlot);
    ck_assert(p[0].alive);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_proc_table_pid_reuse_guard) {
    const char *name = segName("reuse");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    pid_t me = getpid(), parent = getppid();
    uint64_t myStart = procStart(me), parentStart = procStart(parent);
    ck_assert_uint_ne(myStart, 0);
    ck_assert_uint_ne(parentStart, 0);
    /* Live pids, wrong start times: the processes that registered are
     * gone and their pids were reused. */
    craftSlot(s, 5, DKSHM_PROC_LIVE, (uint32_t)me, myStart + 1000);
    craftSlot(s, 6, DKSHM_PROC_LIVE, (uint32_t)parent, parentStart + 1);
    /* And one that really is the parent. */
    craftSlot(s, 9, DKSHM_PROC_LIVE, (uint32_t)parent, parentStart);
    dkshmProcInfo p[8];
    size_t n = procList(s, p, 8);
    ck_assert_uint_eq(n, 4);
    for (size_t i = 0; i < n; i++) {
        bool shouldLive = p[i].slot == s->slot || p[i].slot == 9;
        ck_assert_msg(p[i].alive == shouldLive, "slot %u pid %u: alive %d",
                      p[i].slot, p[i].pid, p[i].alive);
    }
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    ck_assert_uint_eq(in.liveProcs, 2);
    ck_assert_uint_eq(in.deadProcs, 2);
    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 2);
    n = procList(s, p, 8);
    ck_assert_uint_eq(n, 2);
    ck_assert(p[0].alive && p[1].alive);
    ck_assert(p[0].slot == s->slot || p[0].slot == 9);
    ck_assert(p[1].slot == s->slot || p[1].slot == 9);
    /* A reaped slot's generation moved on: lock words naming it are
     * known to have a dead owner. */
    ck_assert_uint_ge(dkSlotAt(s, 5)->gen, 1);
    __atomic_store_n(&dkSlotAt(s, 9)->word, 0, __ATOMIC_RELEASE);

    /* A process that died while claiming a slot is reaped too. */
    craftSlot(s, 3, DKSHM_PROC_CLAIMING, (uint32_t)deadPid(), 0);
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 1);
    ck_assert_uint_eq(procList(s, p, 8), 1);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_proc_table_full) {
    const char *name = segName("full");
    dkshmOptions o = {.maxProcs = 4};
    dkshm *s, *b = (dkshm *)&b;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, &o, &s), DKSHM_OK);
    kid k[3];
    char line[32];
    for (int i = 0; i < 3; i++) {
        k[i] = startKid(kidRegisterAndWait, s);
        kidRead(&k[i], line, sizeof line);
        ck_assert_int_eq(atoi(line), DKSHM_OK);
    }
    dkshmProcInfo p[8];
    ck_assert_uint_eq(procList(s, p, 8), 4);
    for (int i = 0; i < 4; i++)
        ck_assert(p[i].alive);

    /* The table is full of live processes. */
    kid late = startKid(kidRegisterAndWait, s);
    kidRead(&late, line, sizeof line);
    ck_assert_int_eq(atoi(line), DKSHM_FULL);
    ck_assert_int_eq(kidWait(&late), 1);
    uint64_t meta = metaHash(s);
    ck_assert_int_eq(dkshmAttach(name, 0, &b), DKSHM_FULL);
    ck_assert_ptr_null(b);
    ck_assert_uint_eq(metaHash(s), meta);
    bool created = true;
    ck_assert_int_eq(dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, &b, &created),
                     DKSHM_FULL);
    ck_assert(!created);
    /* Read-only attach needs no slot. */
    ck_assert_int_eq(dkshmAttach(name, DKSHM_RDONLY, &b), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    ck_assert_uint_eq(procList(s, p, 8), 4);

    /* One dies: its slot is reclaimed by the next registration. */
    pid_t victim = k[0].pid;
    ck_assert_int_eq(kill(victim, SIGKILL), 0);
    ck_assert_int_eq(kidWait(&k[0]), TEST_KILLED);
    ck_assert_int_eq(dkshmAttach(name, 0, &b), DKSHM_OK);
    size_t n = procList(s, p, 8);
    ck_assert_uint_eq(n, 4);
    ck_assert_ptr_null(procOf(p, n, (uint32_t)victim));
    for (size_t i = 0; i < n; i++)
        ck_assert(p[i].alive);
    ck_assert_int_eq(dkshmDetach(b), DKSHM_OK);
    /* The slot b left is free again: a child can register. */
    late = startKid(kidRegisterAndWait, s);
    kidRead(&late, line, sizeof line);
    ck_assert_int_eq(atoi(line), DKSHM_OK);
    kidSend(&late, 'd');
    ck_assert_int_eq(kidWait(&late), 0);

    for (int i = 1; i < 3; i++) {
        kidSend(&k[i], 'd');
        ck_assert_int_eq(kidWait(&k[i]), 0);
    }
    ck_assert_uint_eq(procList(s, p, 8), 1);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ======================================================================== */
/* unrelated processes (tests/attachHelper)                                 */
/* ======================================================================== */

START_TEST(test_unrelated_process_writes_object) {
    const char *name = segName("unrel");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    dkoff lockOff = scratchOff(s), valOff = lockOff + 64, root = lockOff + 128;
    fastMutex *m = dkshmPtr(s, lockOff);
    ck_assert_int_eq(fastMutexInit(s, m, 0), DKSHM_OK);
    uint64_t value = 0x1234567800000000ull | (uint32_t)getpid();
    char a[5][32], out[1024];
    snprintf(a[0], sizeof a[0], "%u", T_OTHER);
    snprintf(a[1], sizeof a[1], "%" PRIu64, root);
    snprintf(a[2], sizeof a[2], "%" PRIu64, lockOff);
    snprintf(a[3], sizeof a[3], "%" PRIu64, valOff);
    snprintf(a[4], sizeof a[4], "%" PRIu64, value);
    const char *args[] = {
        "write-object", "shared-counter", a[0], a[1], a[2], a[3], a[4], NULL};
    int st = runHelper(name, args, out, sizeof out);
    ck_assert_msg(st == 0, "helper write-object exited %d: %s", st, out);
    uint64_t slot = 0;
    ck_assert(helperValue(out, "slot", &slot));
    ck_assert_uint_ne(slot, s->slot);

    ck_assert_uint_eq(
        __atomic_load_n((uint64_t *)dkshmPtr(s, valOff), __ATOMIC_ACQUIRE),
        value);
    uint32_t type = 0;
    dkoff got = 0;
    ck_assert_int_eq(dkshmObjectFind(s, "shared-counter", &type, &got),
                     DKSHM_OK);
    ck_assert_uint_eq(type, T_OTHER);
    ck_assert_uint_eq(got, root);
    ck_assert_uint_eq(infoObjects(s), 1);
    ck_assert_uint_eq(__atomic_load_n(&m->word, __ATOMIC_ACQUIRE), 0);
    /* It detached: only we are left in the table. */
    dkshmProcInfo p[4];
    ck_assert_uint_eq(procList(s, p, 4), 1);

    /* And it finds what we bind. */
    ck_assert_int_eq(dkshmObjectCreate(s, "from-parent", T_OBJ, root + 64),
                     DKSHM_OK);
    const char *find[] = {"find", "from-parent", NULL};
    st = runHelper(name, find, out, sizeof out);
    ck_assert_msg(st == 0, "helper find exited %d", st);
    char want[64];
    snprintf(want, sizeof want, "type=%u root=%" PRIu64 "\n", T_OBJ, root + 64);
    ck_assert_str_eq(out, want);
    const char *findMissing[] = {"find", "absent", NULL};
    ck_assert_int_eq(runHelper(name, findMissing, out, sizeof out),
                     helperExit(DKSHM_NOTFOUND));
    const char *attach[] = {"attach", NULL};
    ck_assert_int_eq(runHelper(segName("nothing"), attach, out, sizeof out),
                     helperExit(DKSHM_NOTFOUND));
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_unrelated_process_reads_info) {
    const char *name = segName("uinfo");
    umask(077);
    dkshmOptions o = {.maxProcs = 32,
                      .maxObjects = 16,
                      .mode = 0640,
                      .flags = DKSHM_EPHEMERAL};
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, 2 * MIB, &o, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "one", T_OBJ, scratchOff(s)),
                     DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "two", T_OTHER, scratchOff(s) + 8),
                     DKSHM_OK);
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    fileSnap before = snapFile(name);
    char out[4096];
    const char *args[] = {"info", NULL};
    int st = runHelper(name, args, out, sizeof out);
    ck_assert_msg(st == 0, "helper info exited %d", st);
    static const char *keys[] = {
        "readonly",   "layoutVersion", "format",  "capacity",   "creatorUid",
        "creatorPid", "createTimeNs",  "flags",   "maxProcs",   "maxObjects",
        "liveProcs",  "deadProcs",     "objects", "heapOffset", "heapSize",
        "fileMode",   "fileUid",       "listed",  "procs"};
    uint64_t want[] = {1,
                       in.layoutVersion,
                       in.format,
                       in.capacity,
                       in.creatorUid,
                       (uint64_t)getpid(),
                       in.createTimeNs,
                       DKSHM_EPHEMERAL,
                       32,
                       16,
                       1,
                       0,
                       2,
                       in.heapOffset,
                       in.heapSize,
                       0640,
                       in.fileUid,
                       2,
                       1};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        uint64_t v = 0;
        ck_assert_msg(helperValue(out, keys[i], &v), "no %s in:\n%s", keys[i],
                      out);
        ck_assert_msg(v == want[i], "%s=%" PRIu64 ", want %" PRIu64, keys[i], v,
                      want[i]);
    }
    char line[128];
    snprintf(line, sizeof line, "object=two:%u:%" PRIu64 "\n", T_OTHER,
             scratchOff(s) + 8);
    ck_assert_msg(strstr(out, line), "no \"%s\" in:\n%s", line, out);
    snprintf(line, sizeof line, "name=%s\n", name);
    ck_assert_msg(strstr(out, line), "no \"%s\" in:\n%s", line, out);
    /* A read-only attacher writes nothing (s is attached and idle). */
    assertSameFile(before, snapFile(name), "helper info");
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_unrelated_process_dies_holding_lock) {
    const char *name = segName("ulock");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    char off[32], line[64];
    snprintf(off, sizeof off, "%zu", offsetof(dkHeader, dirLock));
    const char *args[] = {"hold-lock-and-wait", off, NULL};
    helper h = startHelper(name, args);
    kid k = {.pid = h.pid, .cmd = -1, .rep = h.out};
    kidRead(&k, line, sizeof line);
    int pid = 0;
    ck_assert_msg(sscanf(line, "locked pid=%d", &pid) == 1, "helper said %s",
                  line);
    ck_assert_int_eq(pid, h.pid);

    fastMutex *dl = &s->hdr->dirLock;
    ck_assert_int_eq(fastMutexTryLock(s, dl), DKSHM_BUSY);
    fastMutexState ms;
    ck_assert_int_eq(fastMutexInspect(s, dl, &ms), DKSHM_OK);
    ck_assert(ms.held && !ms.ownerDead);
    ck_assert_uint_eq(ms.ownerPid, (uint32_t)h.pid);
    /* Lookups take no lock: they are not held up by the holder. */
    uint64_t t0 = monoNs();
    ck_assert_int_eq(dkshmObjectFind(s, "nothing", NULL, NULL), DKSHM_NOTFOUND);
    ck_assert_uint_lt(monoNs() - t0, 100 * MSEC);
    ck_assert_uint_eq(procList(s, NULL, 0), 2);

    ck_assert_int_eq(kill(h.pid, SIGKILL), 0);
    close(h.in);
    close(h.out);
    ck_assert_int_eq(testWait(h.pid), TEST_KILLED);
    ck_assert_int_eq(fastMutexInspect(s, dl, &ms), DKSHM_OK);
    ck_assert(ms.held && ms.ownerDead);
    t0 = monoNs();
    ck_assert_int_eq(dkshmObjectCreate(s, "after", T_OBJ, scratchOff(s)),
                     DKSHM_OK);
    ck_assert_uint_lt(monoNs() - t0, 1000 * MSEC);
    ck_assert_uint_eq(__atomic_load_n(&dl->recoveries, __ATOMIC_RELAXED), 1);
    ck_assert_uint_eq(__atomic_load_n(&dl->word, __ATOMIC_RELAXED), 0);
    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, 1);
    ck_assert_uint_eq(procList(s, NULL, 0), 1);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ======================================================================== */
/* the directory                                                            */
/* ======================================================================== */

START_TEST(test_directory_create_find_list_remove) {
    const char *name = segName("dir");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    dkoff r1 = s->hdr->heap + 4096, r2 = s->hdr->heap + 8192;
    uint64_t t0 = realNs();
    ck_assert_int_eq(dkshmObjectCreate(s, "alpha", T_OBJ, r1), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "beta", T_OTHER, r2), DKSHM_OK);
    uint64_t t1 = realNs();
    uint32_t type = 0;
    dkoff root = 0;
    ck_assert_int_eq(dkshmObjectFind(s, "alpha", &type, &root), DKSHM_OK);
    ck_assert_uint_eq(type, T_OBJ);
    ck_assert_uint_eq(root, r1);
    ck_assert_int_eq(dkshmObjectFind(s, "beta", &type, NULL), DKSHM_OK);
    ck_assert_uint_eq(type, T_OTHER);
    ck_assert_int_eq(dkshmObjectFind(s, "beta", NULL, &root), DKSHM_OK);
    ck_assert_uint_eq(root, r2);
    ck_assert_int_eq(dkshmObjectFind(s, "alph", NULL, NULL), DKSHM_NOTFOUND);
    ck_assert_int_eq(dkshmObjectFind(s, "alphaa", NULL, NULL), DKSHM_NOTFOUND);
    ck_assert_uint_eq(infoObjects(s), 2);

    dkshmObjectInfo o[4];
    size_t n = objList(s, o, 4);
    ck_assert_uint_eq(n, 2);
    const dkshmObjectInfo *oa = objIn(o, n, "alpha");
    ck_assert_ptr_nonnull(oa);
    ck_assert_uint_eq(oa->type, T_OBJ);
    ck_assert_uint_eq(oa->root, r1);
    ck_assert(oa->createTimeNs >= t0 && oa->createTimeNs <= t1);
    ck_assert_ptr_nonnull(objIn(o, n, "beta"));

    /* Failures change nothing. */
    uint64_t meta = metaHash(s);
    ck_assert_int_eq(dkshmObjectCreate(s, "alpha", T_OBJ, r2), DKSHM_EXISTS);
    ck_assert_int_eq(dkshmObjectCreate(s, "alpha", T_OTHER, r1), DKSHM_EXISTS);
    ck_assert_int_eq(dkshmObjectRemove(s, "alpha", T_OTHER, &root), DKSHM_TYPE);
    ck_assert_int_eq(dkshmObjectRemove(s, "gamma", 0, &root), DKSHM_NOTFOUND);
    ck_assert_uint_eq(metaHash(s), meta);
    ck_assert_int_eq(dkshmObjectFind(s, "alpha", &type, &root), DKSHM_OK);
    ck_assert_uint_eq(root, r1);

    /* Remove hands the root to the caller: it is in our in-flight list
     * until it is bound again (or freed). */
    root = 0;
    ck_assert_int_eq(dkshmObjectRemove(s, "alpha", T_OBJ, &root), DKSHM_OK);
    ck_assert_uint_eq(root, r1);
    ck_assert_int_eq(dkshmObjectFind(s, "alpha", NULL, NULL), DKSHM_NOTFOUND);
    ck_assert_int_eq(dkshmObjectRemove(s, "alpha", 0, &root), DKSHM_NOTFOUND);
    ck_assert_uint_eq(infoObjects(s), 1);
    dkshmProcInfo p[2];
    ck_assert_uint_eq(procList(s, p, 2), 1);
    ck_assert_uint_eq(p[0].inflight, 1);
    ck_assert_int_eq(dkshmObjectCreate(s, "alpha2", T_OBJ, r1), DKSHM_OK);
    procList(s, p, 2);
    ck_assert_uint_eq(p[0].inflight, 0);
    /* ROOT may be NULL; expectType 0 matches any type. */
    ck_assert_int_eq(dkshmObjectRemove(s, "beta", 0, NULL), DKSHM_OK);
    ck_assert_uint_eq(infoObjects(s), 1);
    n = objList(s, o, 4);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(o[0].name, "alpha2");
    /* The freed entry is reused. */
    ck_assert_int_eq(dkshmObjectCreate(s, "beta", T_OBJ, r2), DKSHM_OK);
    ck_assert_uint_eq(objList(s, o, 4), 2);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_directory_bad_arguments) {
    const char *name = segName("dirbad");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    dkoff heap = s->hdr->heap, cap = dkshmCapacity(s);
    ck_assert_int_eq(dkshmObjectCreate(s, "x", T_OBJ, heap), DKSHM_OK);
    char longName[DKSHM_OBJNAME_MAX + 2];
    memset(longName, 'n', sizeof longName - 1);
    longName[sizeof longName - 1] = '\0';
    uint64_t meta = metaHash(s);
    fileSnap before = snapFile(name);

    ck_assert_int_eq(dkshmObjectCreate(s, "y", 0, heap), DKSHM_INVALID);
    const dkoff badRoots[] = {0,   1,       heap - 1,  s->hdr->directory,
                              cap, cap + 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof badRoots / sizeof *badRoots; i++)
        ck_assert_msg(dkshmObjectCreate(s, "y", T_OBJ, badRoots[i]) ==
                          DKSHM_INVALID,
                      "root %" PRIu64 " accepted", badRoots[i]);
    const char *badNames[] = {NULL, "", "a b", longName, "\x7f", "\xc3\xa4"};
    for (size_t i = 0; i < sizeof badNames / sizeof *badNames; i++) {
        ck_assert_int_eq(dkshmObjectCreate(s, badNames[i], T_OBJ, heap + 8),
                         DKSHM_INVALID);
        ck_assert_int_eq(dkshmObjectFind(s, badNames[i], NULL, NULL),
                         DKSHM_INVALID);
        ck_assert_int_eq(dkshmObjectRemove(s, badNames[i], 0, NULL),
                         DKSHM_INVALID);
    }
    ck_assert_int_eq(dkshmObjectCreate(NULL, "y", T_OBJ, heap), DKSHM_INVALID);
    ck_assert_int_eq(dkshmObjectFind(NULL, "x", NULL, NULL), DKSHM_INVALID);
    ck_assert_int_eq(dkshmObjectRemove(NULL, "x", 0, NULL), DKSHM_INVALID);
    size_t n = 0;
    ck_assert_int_eq(dkshmObjectList(NULL, NULL, 0, &n), DKSHM_INVALID);
    ck_assert_int_eq(dkshmObjectList(s, NULL, 3, &n), DKSHM_INVALID);
    ck_assert_uint_eq(metaHash(s), meta);
    assertSameFile(before, snapFile(name), "bad directory arguments");
    /* The edges of the heap are valid roots. */
    ck_assert_int_eq(dkshmObjectCreate(s, "last", T_OBJ, cap - 1), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectList(s, NULL, 0, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(dkshmObjectList(s, NULL, 0, NULL), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_directory_full_and_partial_list) {
    const char *name = segName("dirfull");
    dkshmOptions o = {.maxObjects = 4};
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, &o, &s), DKSHM_OK);
    dkoff heap = s->hdr->heap;
    const char *names[] = {"o0", "o1", "o2", "o3"};
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(
            dkshmObjectCreate(s, names[i], T_OBJ, heap + 64 * (dkoff)i),
            DKSHM_OK);
    uint64_t meta = metaHash(s);
    ck_assert_int_eq(dkshmObjectCreate(s, "o4", T_OBJ, heap + 512), DKSHM_FULL);
    ck_assert_int_eq(dkshmObjectCreate(s, "o0", T_OBJ, heap + 512),
                     DKSHM_EXISTS);
    ck_assert_uint_eq(metaHash(s), meta);
    ck_assert_int_eq(dkshmObjectFind(s, "o4", NULL, NULL), DKSHM_NOTFOUND);
    ck_assert_uint_eq(infoObjects(s), 4);

    /* A list shorter than the directory gives the full count. */
    dkshmObjectInfo out[4];
    memset(out, 0xee, sizeof out);
    size_t n = 0;
    ck_assert_int_eq(dkshmObjectList(s, out, 2, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 4);
    for (int i = 0; i < 2; i++) {
        ck_assert_uint_eq(out[i].type, T_OBJ);
        ck_assert(strlen(out[i].name) == 2 && out[i].name[0] == 'o');
    }
    ck_assert_str_ne(out[0].name, out[1].name);
    ck_assert_uint_eq(out[2].type, 0xeeeeeeeeu); /* untouched past MAX */
    n = 0;
    ck_assert_int_eq(dkshmObjectList(s, NULL, 0, &n), DKSHM_OK);
    ck_assert_uint_eq(n, 4);

    /* A freed entry makes room. */
    ck_assert_int_eq(dkshmObjectRemove(s, "o2", T_OBJ, NULL), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "o4", T_OBJ, heap + 64 * 2),
                     DKSHM_OK);
    ck_assert_uint_eq(objList(s, out, 4), 4);
    ck_assert_ptr_nonnull(objIn(out, 4, "o4"));
    ck_assert_ptr_null(objIn(out, 4, "o2"));
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_directory_remove_with_inflight_full) {
    const char *name = segName("dirinf");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    dkoff heap = s->hdr->heap;
    char nm[16];
    for (int i = 0; i <= DK_INFLIGHT_MAX; i++) {
        snprintf(nm, sizeof nm, "r%d", i);
        ck_assert_int_eq(dkshmObjectCreate(s, nm, T_OBJ, heap + 64 * (dkoff)i),
                         DKSHM_OK);
    }
    for (int i = 0; i < DK_INFLIGHT_MAX; i++) {
        snprintf(nm, sizeof nm, "r%d", i);
        ck_assert_int_eq(dkshmObjectRemove(s, nm, T_OBJ, NULL), DKSHM_OK);
    }
    dkshmProcInfo p[2];
    procList(s, p, 2);
    ck_assert_uint_eq(p[0].inflight, DK_INFLIGHT_MAX);
    /* No room to take the root in flight: the remove changes nothing. */
    snprintf(nm, sizeof nm, "r%d", DK_INFLIGHT_MAX);
    uint64_t meta = metaHash(s);
    uint32_t seq = s->hdr->dirSeq;
    dkoff root = 0;
    ck_assert_int_eq(dkshmObjectRemove(s, nm, T_OBJ, &root), DKSHM_FULL);
    ck_assert_uint_eq(root, 0);
    ck_assert_uint_eq(s->hdr->dirSeq, seq);
    ck_assert_uint_eq(metaHash(s), meta);
    ck_assert_int_eq(dkshmObjectFind(s, nm, NULL, &root), DKSHM_OK);
    ck_assert_uint_eq(root, heap + 64 * DK_INFLIGHT_MAX);
    ck_assert_uint_eq(infoObjects(s), 1);
    /* Binding one of the roots again makes room. */
    ck_assert_int_eq(dkshmObjectCreate(s, "again", T_OBJ, heap), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectRemove(s, nm, T_OBJ, &root), DKSHM_OK);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* Threads of one process share a handle: directory changes from several
 * threads while another lists, all consistent (and clean under TSan). */
#define DIR_THREADS 4
#define DIR_ROUNDS 200

typedef struct dirThread {
    dkshm *s;
    int id;
    int errors;
} dirThread;

static void *dirWriter(void *arg) {
    dirThread *t = arg;
    dkoff root = t->s->hdr->heap + 64 * (dkoff)(t->id + 1);
    for (int i = 0; i < DIR_ROUNDS; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "t%d-%d", t->id, i % 3);
        uint32_t type = 0;
        dkoff got = 0;
        if (dkshmObjectCreate(t->s, nm, T_OBJ + (uint32_t)t->id, root) !=
            DKSHM_OK)
            t->errors++;
        if (dkshmObjectFind(t->s, nm, &type, &got) != DKSHM_OK ||
            type != T_OBJ + (uint32_t)t->id || got != root)
            t->errors++;
        if (dkshmObjectRemove(t->s, nm, type, &got) != DKSHM_OK || got != root)
            t->errors++;
    }
    return NULL;
}

static void *dirReader(void *arg) {
    dirThread *t = arg;
    dkshmObjectInfo o[DIR_THREADS + 2];
    for (int i = 0; i < DIR_ROUNDS * 2; i++) {
        size_t n = 0;
        if (dkshmObjectList(t->s, o, DIR_THREADS + 2, &n) != DKSHM_OK ||
            n > DIR_THREADS + 1)
            t->errors++;
        for (size_t j = 0; j < n && j < DIR_THREADS + 2; j++)
            if (o[j].type == 0 || o[j].root == 0 || !o[j].name[0])
                t->errors++;
    }
    return NULL;
}

START_TEST(test_directory_shared_by_threads) {
    const char *name = segName("thr");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "fixed", T_OTHER, s->hdr->heap),
                     DKSHM_OK);
    pthread_t th[DIR_THREADS + 1];
    dirThread t[DIR_THREADS + 1];
    for (int i = 0; i <= DIR_THREADS; i++) {
        t[i] = (dirThread){.s = s, .id = i};
        ck_assert_int_eq(pthread_create(&th[i], NULL,
                                        i < DIR_THREADS ? dirWriter : dirReader,
                                        &t[i]),
                         0);
    }
    for (int i = 0; i <= DIR_THREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        ck_assert_msg(t[i].errors == 0, "thread %d: %d errors", i, t[i].errors);
    }
    ck_assert_uint_eq(infoObjects(s), 1);
    dkshmObjectInfo o[4];
    ck_assert_uint_eq(objList(s, o, 4), 1);
    dkshmProcInfo p[2];
    ck_assert_uint_eq(procList(s, p, 2), 1);
    ck_assert_uint_eq(p[0].inflight, DIR_THREADS); /* one root each */
    ck_assert_uint_eq(s->hdr->dirLock.recoveries, 0);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ---- crash walks ----------------------------------------------------------
 */

/* A test-only reclaim hook standing in for the allocator: it "frees" the
 * in-flight blocks of a dead slot by recording them. */
#define MAX_RECLAIMED 64
static dkoff reclaimedOffs[MAX_RECLAIMED];
static int nReclaimed;

static int fakeReclaim(dkshm *s, uint32_t slot) {
    dkProcSlot *p = dkSlotAt(s, slot);
    for (int j = 0; j < DK_INFLIGHT_MAX; j++) {
        dkoff off = __atomic_load_n(&p->inflight[j], __ATOMIC_ACQUIRE);
        if (!off)
            continue;
        if (nReclaimed < MAX_RECLAIMED)
            reclaimedOffs[nReclaimed++] = off;
        __atomic_store_n(&p->inflight[j], 0, __ATOMIC_RELEASE);
    }
    return DKSHM_OK;
}

static int timesReclaimed(dkoff off) {
    int n = 0;
    for (int i = 0; i < nReclaimed; i++)
        n += reclaimedOffs[i] == off;
    return n;
}

static void installHooks(bool reclaim) {
    dkLayerHooks h = {.reclaim = reclaim ? fakeReclaim : NULL};
    dkSetLayerHooks(&h);
    nReclaimed = 0;
}

/* Directory entries bound to ROOT. */
static int rootInDirectory(const dkshm *s, dkoff root) {
    int n = 0;
    for (uint32_t i = 0; i < s->hdr->maxObjects; i++) {
        const dkDirEntry *e = dirEntry(s, i);
        n += e->type != 0 && e->root == root;
    }
    return n;
}

/* In-flight entries holding ROOT in slots that are in use; *INFREE gets
 * those in FREE slots (which nobody will ever reclaim). *SLOT: the last
 * in-use slot found holding it. */
static int rootInFlight(const dkshm *s, dkoff root, int *inFree,
                        uint32_t *slot) {
    int n = 0, f = 0;
    for (uint32_t i = 0; i < s->hdr->maxProcs; i++) {
        dkProcSlot *p = dkSlotAt(s, i);
        uint64_t w = __atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
        for (int j = 0; j < DK_INFLIGHT_MAX; j++)
            if (__atomic_load_n(&p->inflight[j], __ATOMIC_RELAXED) == root) {
                if (w == 0) {
                    f++;
                } else {
                    n++;
                    if (slot)
                        *slot = i;
                }
            }
    }
    if (inFree)
        *inFree = f;
    return n;
}

typedef struct walk {
    dkshm *s;
    long iter; /* names and roots of this round */
    bool hook; /* the fake reclaim hook is installed */
    int sawPresent, sawAbsent;
    int deadKept; /* dead slots kept for their in-flight root (no hook) */
    int nBad;     /* rounds where a property failed (regression tests) */
    char bad[2048];
} walk;

static void walkName(char *buf, size_t len, const char *kind, long i) {
    snprintf(buf, len, "%s-%ld", kind, i);
}

/* Distinct roots for round I: objects, probes, victims. */
static dkoff walkRoot(const walk *w, long i, int kind) {
    return w->s->hdr->heap + (dkoff)(i * 4 + kind) * 64;
}

static void walkNote(walk *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void walkNote(walk *w, const char *fmt, ...) {
    size_t used = strlen(w->bad);
    if (w->nBad++ < 24 && used + 1 < sizeof w->bad) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->bad + used, sizeof w->bad - used, fmt, ap);
        va_end(ap);
    }
}

/* The directory lock is free, its log empty, the seqlock even. */
static void assertDirQuiet(const dkshm *s, long k) {
    ck_assert_msg(__atomic_load_n(&s->hdr->dirLock.word, __ATOMIC_ACQUIRE) == 0,
                  "k=%ld: directory lock still held", k);
    ck_assert_msg(__atomic_load_n(&dirUndo(s)->count, __ATOMIC_ACQUIRE) == 0,
                  "k=%ld: undo log not empty", k);
    ck_assert_msg((s->hdr->dirSeq & 1) == 0, "k=%ld: dirSeq odd", k);
    ck_assert_msg(dirUndo(s)->overflow == 0, "k=%ld: undo log overflowed", k);
}

/* Directory count, listing and entries agree. */
static void assertDirCounts(dkshm *s, long k) {
    static dkshmObjectInfo o[DKSHM_DEFAULT_OBJECTS];
    size_t listed = objList(s, o, DKSHM_DEFAULT_OBJECTS);
    uint32_t live = 0;
    for (uint32_t i = 0; i < s->hdr->maxObjects; i++)
        live += dirEntry(s, i)->type != 0;
    ck_assert_msg(listed == live && infoObjects(s) == live,
                  "k=%ld: %zu listed, %u live entries, objects says %u", k,
                  listed, live, infoObjects(s));
}

/* -- create -- */

static int walkCreateOp(void *arg) {
    walk *w = arg;
    char nm[32];
    walkName(nm, sizeof nm, "obj", w->iter);
    return dkshmObjectCreate(w->s, nm, T_OBJ, walkRoot(w, w->iter, 0)) ==
                   DKSHM_OK
               ? 0
               : 1;
}

static void walkCreateAfter(void *arg, long k) {
    walk *w = arg;
    dkshm *s = w->s;
    char nm[32], probe[32];
    walkName(nm, sizeof nm, "obj", w->iter);
    walkName(probe, sizeof probe, "probe", w->iter);
    dkoff want = walkRoot(w, w->iter, 0);

    /* A lock-free lookup right after the death sees all or nothing. */
    uint32_t type = 0;
    dkoff root = 0;
    int first = dkshmObjectFind(s, nm, &type, &root);
    ck_assert_msg(first == DKSHM_NOTFOUND ||
                      (first == DKSHM_OK && type == T_OBJ && root == want),
                  "k=%ld: find before recovery: %s type %u root %" PRIu64, k,
                  dkshmErrName(first), type, root);

    /* Another change takes the lock, which recovers the dead child's. */
    ck_assert_msg(dkshmObjectCreate(s, probe, T_OTHER,
                                    walkRoot(w, w->iter, 1)) == DKSHM_OK,
                  "k=%ld: create after the crash failed", k);
    assertDirQuiet(s, k);

    int rc = dkshmObjectFind(s, nm, &type, &root);
    ck_assert_msg(rc == DKSHM_NOTFOUND ||
                      (rc == DKSHM_OK && type == T_OBJ && root == want),
                  "k=%ld: find after recovery: %s type %u root %" PRIu64, k,
                  dkshmErrName(rc), type, root);
    if (rc == DKSHM_OK)
        w->sawPresent++;
    else
        w->sawAbsent++;
    if (rc != first)
        walkNote(w, " k=%ld(find said %s, after recovery %s)", k,
                 dkshmErrName(first), dkshmErrName(rc));
    /* Wholly absent: no entry keeps a trace of it (only creates ran, so
     * every free entry is all zeros). */
    for (uint32_t i = 0; i < s->hdr->maxObjects; i++) {
        const dkDirEntry *e = dirEntry(s, i);
        if (e->type != 0) {
            ck_assert_msg(e->root != 0 && e->createTimeNs != 0 && e->name[0],
                          "k=%ld: entry %u half made", k, i);
            continue;
        }
        static const dkDirEntry zero;
        ck_assert_msg(memcmp(e, &zero, sizeof zero) == 0,
                      "k=%ld: free entry %u not clean (\"%.8s\")", k, i,
                      e->name);
    }
    assertDirCounts(s, k);

    /* The dead child is reaped; it held nothing in flight. */
    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    ck_assert_msg(reaped == 1, "k=%ld: reaped %zu", k, reaped);
    dkshmProcInfo p[4];
    ck_assert_msg(procList(s, p, 4) == 1 && p[0].pid == (uint32_t)getpid(),
                  "k=%ld: process table not clean", k);
    w->iter++;
}

static walk *runCreateWalk(const char *name) {
    static walk w;
    installHooks(false);
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &w.s),
                     DKSHM_OK);
    long points = testCrashWalk(walkCreateOp, walkCreateAfter, &w, 200);
    ck_assert_msg(points >= 14, "only %ld crash points in a create", points);
    ck_assert(w.sawPresent > 0 && w.sawAbsent > 0);
    /* The last child ran to the end. */
    char nm[32];
    walkName(nm, sizeof nm, "obj", w.iter);
    ck_assert_int_eq(dkshmObjectFind(w.s, nm, NULL, NULL), DKSHM_OK);
    assertDirQuiet(w.s, points + 1);
    assertDirCounts(w.s, points + 1);
    return &w;
}

START_TEST(test_directory_create_crash_walk) {
    const char *name = segName("walkc");
    walk *w = runCreateWalk(name);
    ck_assert_int_eq(dkshmDetach(w->s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* -- remove -- */

static int walkRemoveOp(void *arg) {
    walk *w = arg;
    char nm[32];
    walkName(nm, sizeof nm, "victim", w->iter);
    dkoff root = 0;
    int rc = dkshmObjectRemove(w->s, nm, T_OBJ, &root);
    return rc == DKSHM_OK && root == walkRoot(w, w->iter, 2) ? 0 : 1;
}

static void walkRemoveAfter(void *arg, long k) {
    walk *w = arg;
    dkshm *s = w->s;
    char nm[32], next[32];
    walkName(nm, sizeof nm, "victim", w->iter);
    walkName(next, sizeof next, "victim", w->iter + 1);
    dkoff r = walkRoot(w, w->iter, 2);

    uint32_t type = 0;
    dkoff root = 0;
    int first = dkshmObjectFind(s, nm, &type, &root);
    ck_assert_msg(first == DKSHM_NOTFOUND ||
                      (first == DKSHM_OK && type == T_OBJ && root == r),
                  "k=%ld: find before recovery: %s", k, dkshmErrName(first));
    /* Binding the next victim takes the lock: recovery. */
    ck_assert_msg(dkshmObjectCreate(s, next, T_OBJ,
                                    walkRoot(w, w->iter + 1, 2)) == DKSHM_OK,
                  "k=%ld: create after the crash failed", k);
    assertDirQuiet(s, k);
    int rc = dkshmObjectFind(s, nm, &type, &root);
    if (rc != first)
        walkNote(w, " k=%ld(find said %s, after recovery %s)", k,
                 dkshmErrName(first), dkshmErrName(rc));

    /* The root has exactly one owner: the directory, or the dead child's
     * in-flight list. */
    int inFree = 0;
    uint32_t holder = UINT32_MAX;
    int dir = rootInDirectory(s, r), fl = rootInFlight(s, r, &inFree, &holder);
    ck_assert_msg(inFree == 0, "k=%ld: root in a free slot's in-flight list",
                  k);
    dkshmProcInfo p[8];
    if (rc == DKSHM_OK) {
        w->sawPresent++;
        ck_assert_msg(type == T_OBJ && root == r && dir == 1 && fl == 0,
                      "k=%ld: present, but %d directory and %d in-flight "
                      "owners",
                      k, dir, fl);
    } else {
        w->sawAbsent++;
        ck_assert_msg(rc == DKSHM_NOTFOUND && dir == 0 && fl == 1,
                      "k=%ld: absent (%s), but %d directory and %d in-flight "
                      "owners",
                      k, dkshmErrName(rc), dir, fl);
        ck_assert_msg(holder != s->slot, "k=%ld: the root went to us", k);
        size_t n = procList(s, p, 8);
        const dkshmProcInfo *c = NULL;
        for (size_t i = 0; i < n; i++)
            if (p[i].slot == holder)
                c = &p[i];
        ck_assert_msg(c && !c->alive && c->pid != (uint32_t)getpid() &&
                          c->inflight == 1,
                      "k=%ld: the root is held by a live or unknown slot", k);
    }
    assertDirCounts(s, k);

    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
    size_t n = procList(s, p, 8);
    if (rc == DKSHM_OK || w->hook) {
        ck_assert_msg(reaped == 1, "k=%ld: reaped %zu", k, reaped);
        ck_assert_msg(n == 1 + (size_t)w->deadKept, "k=%ld: %zu slots", k, n);
        ck_assert_msg(timesReclaimed(r) == (rc == DKSHM_OK ? 0 : 1),
                      "k=%ld: root reclaimed %d times", k, timesReclaimed(r));
        if (rc != DKSHM_OK)
            ck_assert_int_eq(rootInFlight(s, r, NULL, NULL), 0);
    } else {
        /* Without an allocator hook the dead slot must wait, DEAD, with
         * its root still recorded. */
        ck_assert_msg(reaped == 0, "k=%ld: reaped %zu", k, reaped);
        w->deadKept++;
        ck_assert_msg(n == 1 + (size_t)w->deadKept, "k=%ld: %zu slots", k, n);
        const dkshmProcInfo *c = NULL;
        for (size_t i = 0; i < n; i++)
            if (p[i].slot == holder)
                c = &p[i];
        ck_assert_msg(c && c->state == DKSHM_PROC_DEAD && !c->alive &&
                          c->inflight == 1,
                      "k=%ld: dead holder not kept", k);
        ck_assert_int_eq(rootInFlight(s, r, NULL, NULL), 1);
    }
    w->iter++;
}

static walk *runRemoveWalk(const char *name, bool hook) {
    static walk w;
    installHooks(hook);
    w.hook = hook;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &w.s),
                     DKSHM_OK);
    ck_assert_int_eq(
        dkshmObjectCreate(w.s, "victim-0", T_OBJ, walkRoot(&w, 0, 2)),
        DKSHM_OK);
    long points = testCrashWalk(walkRemoveOp, walkRemoveAfter, &w, 200);
    ck_assert_msg(points >= 6, "only %ld crash points in a remove", points);
    ck_assert(w.sawPresent > 0 && w.sawAbsent > 0);
    /* The last child removed its victim and exited without freeing it. */
    char nm[32];
    walkName(nm, sizeof nm, "victim", w.iter);
    ck_assert_int_eq(dkshmObjectFind(w.s, nm, NULL, NULL), DKSHM_NOTFOUND);
    dkoff r = walkRoot(&w, w.iter, 2);
    ck_assert_int_eq(rootInFlight(w.s, r, NULL, NULL), 1);
    size_t reaped = 0;
    ck_assert_int_eq(dkshmReap(w.s, &reaped), DKSHM_OK);
    ck_assert_uint_eq(reaped, hook ? 1 : 0);
    ck_assert_int_eq(rootInFlight(w.s, r, NULL, NULL), hook ? 0 : 1);
    ck_assert_int_eq(timesReclaimed(r), hook ? 1 : 0);
    assertDirQuiet(w.s, points + 1);
    assertDirCounts(w.s, points + 1);
    return &w;
}

START_TEST(test_directory_remove_crash_walk_no_allocator) {
    const char *name = segName("walkr");
    walk *w = runRemoveWalk(name, false);
    ck_assert_int_eq(dkshmDetach(w->s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_directory_remove_crash_walk_with_reclaim) {
    const char *name = segName("walkh");
    walk *w = runRemoveWalk(name, true);
    ck_assert_int_eq(dkshmDetach(w->s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ======================================================================== */
/* errors and version                                                       */
/* ======================================================================== */

START_TEST(test_error_names_and_messages) {
    static const struct {
        int code;
        const char *name, *msg;
    } table[] = {{DKSHM_OK, "OK", NULL},
                 {DKSHM_RECOVERED, "RECOVERED", NULL},
#define DK_T_ROW(n, v, m) {DKSHM_##n, #n, m},
                 DKSHM_ERRORS(DK_T_ROW)
#undef DK_T_ROW
    };
    size_t rows = sizeof table / sizeof *table;
    ck_assert_uint_eq(rows, 16);
    ck_assert_int_eq(DKSHM_OK, 0);
    ck_assert_int_gt(DKSHM_RECOVERED, 0);
    for (size_t i = 0; i < rows; i++) {
        const char *n = dkshmErrName(table[i].code);
        const char *m = dkshmStrerror(table[i].code);
        ck_assert_ptr_nonnull(n);
        ck_assert_ptr_nonnull(m);
        ck_assert_str_eq(n, table[i].name);
        ck_assert_uint_gt(strlen(m), 0);
        ck_assert_str_ne(n, "UNKNOWN");
        ck_assert_str_ne(m, "unknown error");
        if (table[i].msg)
            ck_assert_str_eq(m, table[i].msg);
        if (i >= 2)
            ck_assert_int_lt(table[i].code, 0);
        for (size_t j = 0; j < i; j++) {
            ck_assert_int_ne(table[i].code, table[j].code);
            ck_assert_str_ne(n, dkshmErrName(table[j].code));
            ck_assert_str_ne(m, dkshmStrerror(table[j].code));
        }
    }
    const int unknown[] = {2, 3, -15, -100, 1000, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof *unknown; i++) {
        ck_assert_str_eq(dkshmErrName(unknown[i]), "UNKNOWN");
        ck_assert_str_eq(dkshmStrerror(unknown[i]), "unknown error");
    }
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", DKSHM_VERSION_MAJOR,
             DKSHM_VERSION_MINOR, DKSHM_VERSION_PATCH);
    ck_assert_str_eq(dkshmVersion(), want);
}
END_TEST

/* ======================================================================== */
/* regressions: properties shm/ once missed                                 */
/* ======================================================================== */

/* An optimistic reader must never report a change that recovery then rolls
 * back: at every crash point, a lock-free find right after the death agrees
 * with the state after recovery. (The directory once closed its seqlock
 * with a logged store before the commit: a writer killed in between left
 * the new entry readable under an even sequence, and the next locker rolled
 * it back, after a reader could have taken its root, which then went back
 * to the dead writer's in-flight list to be freed.) */
START_TEST(test_lookup_agrees_with_recovery_create) {
    const char *name = segName("dirtyc");
    walk *w = runCreateWalk(name);
    ck_assert_msg(w->nBad == 0,
                  "a lock-free find disagreed with the state after recovery "
                  "at %d crash point(s):%s",
                  w->nBad, w->bad);
    ck_assert_int_eq(dkshmDetach(w->s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

START_TEST(test_lookup_agrees_with_recovery_remove) {
    const char *name = segName("dirtyr");
    walk *w = runRemoveWalk(name, true);
    ck_assert_msg(w->nBad == 0,
                  "a lock-free find disagreed with the state after recovery "
                  "at %d crash point(s):%s",
                  w->nBad, w->bad);
    ck_assert_int_eq(dkshmDetach(w->s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* Reaping a dead process before the lock it held is recovered must keep
 * every block with exactly one owner. A process arriving after a crash
 * attaches, and attaching reaps; only its first directory call would
 * recover the dead process's directory lock. (This once went wrong both
 * ways: a process killed inside dkshmObjectRemove, root already in its
 * in-flight list, had the root freed by the reclaim hook, then the rollback
 * put the entry back: the directory pointed at freed memory; one killed
 * inside dkshmObjectCreate, root already out of its list, had its slot
 * freed at once, then the rollback wrote the root into the in-flight list
 * of a FREE slot: leaked.) Each round: remove "a-i" (root R), then bind R
 * as "b-i", killed at crash point k; the reclaim hook is the test's. */
static int walkMoveOp(void *arg) {
    walk *w = arg;
    char a[32], b[32];
    walkName(a, sizeof a, "a", w->iter);
    walkName(b, sizeof b, "b", w->iter);
    dkoff root = 0;
    if (dkshmObjectRemove(w->s, a, T_OBJ, &root) != DKSHM_OK ||
        root != walkRoot(w, w->iter, 2))
        return 1;
    return dkshmObjectCreate(w->s, b, T_OBJ, root) == DKSHM_OK ? 0 : 2;
}

static void walkMoveAfter(void *arg, long k) {
    walk *w = arg;
    dkshm *s = w->s, *late;
    char next[32];
    walkName(next, sizeof next, "a", w->iter + 1);
    dkoff r = walkRoot(w, w->iter, 2);
    /* A process arrives: attaching reaps the dead child. */
    ck_assert_int_eq(dkshmAttach(dkshmName(s), 0, &late), DKSHM_OK);
    /* Then a directory call recovers the lock. */
    ck_assert_int_eq(
        dkshmObjectCreate(s, next, T_OBJ, walkRoot(w, w->iter + 1, 2)),
        DKSHM_OK);
    assertDirQuiet(s, k);
    int inFree = 0;
    int dir = rootInDirectory(s, r), fl = rootInFlight(s, r, &inFree, NULL),
        freed = timesReclaimed(r);
    if (dir + fl + freed != 1 || inFree != 0)
        walkNote(w, " k=%ld(dir %d, in flight %d, reclaimed %d, free slot %d)",
                 k, dir, fl, freed, inFree);
    ck_assert_int_eq(dkshmDetach(late), DKSHM_OK);
    /* Clear what a lost root left behind so the next round starts clean. */
    for (uint32_t i = 0; i < s->hdr->maxProcs; i++) {
        dkProcSlot *p = dkSlotAt(s, i);
        if (__atomic_load_n(&p->word, __ATOMIC_ACQUIRE) == 0)
            memset(p->inflight, 0, sizeof p->inflight);
    }
    w->iter++;
}

START_TEST(test_reap_before_lock_recovery_keeps_one_owner) {
    const char *name = segName("reapfirst");
    static walk w;
    installHooks(true);
    w.hook = true;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &w.s),
                     DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(w.s, "a-0", T_OBJ, walkRoot(&w, 0, 2)),
                     DKSHM_OK);
    long points = testCrashWalk(walkMoveOp, walkMoveAfter, &w, 400);
    ck_assert_int_ge(points, 20);
    ck_assert_msg(w.nBad == 0,
                  "a block lost its single owner at %d of %ld crash "
                  "point(s):%s",
                  w.nBad, points, w.bad);
    ck_assert_int_eq(dkshmDetach(w.s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* A creator slow between creating the file and locking it: an opener that
 * finds the file empty for 200 ms takes the creation over. The creator must
 * then not initialise the file again. (It once did: both reported
 * "created" and everything the opener had stored was wiped out.) The
 * creator is stopped with ptrace at the fcntl that takes the lock, which is
 * where any preemption could leave it. */
START_TEST(test_open_takeover_vs_slow_creator) {
#if defined(__x86_64__)
    const char *name = segName("slowc");
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0)
            _exit(90);
        raise(SIGSTOP);
        dkshm *s;
        int rc = dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s);
        _exit(helperExit(rc));
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 90) {
        printf("checkShm: ptrace not permitted: slow-creator race test "
               "skipped\n");
        return;
    }
    ck_assert_msg(WIFSTOPPED(st), "child did not stop (status %#x)", st);
    ck_assert_int_eq(
        ptrace(PTRACE_SETOPTIONS, pid, NULL,
               (void *)(long)(PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)),
        0);
    /* Run it to the entry of fcntl(F_OFD_SETLKW). */
    bool atLock = false;
    int sig = 0;
    for (int steps = 0; steps < 100000 && !atLock; steps++) {
        ck_assert_int_eq(ptrace(PTRACE_SYSCALL, pid, NULL, (void *)(long)sig),
                         0);
        sig = 0;
        ck_assert_int_eq(waitpid(pid, &st, 0), pid);
        ck_assert_msg(WIFSTOPPED(st), "child ended before locking (%#x)", st);
        if (WSTOPSIG(st) != (SIGTRAP | 0x80)) {
            sig = WSTOPSIG(st) == SIGSTOP ? 0 : WSTOPSIG(st);
            continue;
        }
        struct user_regs_struct regs;
        ck_assert_int_eq(ptrace(PTRACE_GETREGS, pid, NULL, &regs), 0);
        atLock = regs.rax == (unsigned long long)-ENOSYS &&
                 regs.orig_rax == SYS_fcntl && regs.rsi == F_OFD_SETLKW;
    }
    ck_assert_msg(atLock, "never saw the creator's lock call");
    ck_assert(shmExists(name));
    ck_assert_uint_eq(snapFile(name).size, 0);

    dkshm *s;
    bool created = false;
    ck_assert_int_eq(dkshmOpen(name, DKSHM_MIN_CAPACITY, NULL, &s, &created),
                     DKSHM_OK);
    ck_assert(created);
    ck_assert_int_eq(dkshmObjectCreate(s, "mine", T_OBJ, scratchOff(s)),
                     DKSHM_OK);
    ck_assert_int_eq(ptrace(PTRACE_DETACH, pid, NULL, NULL), 0);
    int childRc = testWait(pid);
    ck_assert_msg(childRc == 0 || childRc == helperExit(DKSHM_EXISTS),
                  "the slow creator exited %d", childRc);
    int found = dkshmObjectFind(s, "mine", NULL, NULL);
    dkshmInfo in;
    ck_assert_int_eq(dkshmGetInfo(s, &in), DKSHM_OK);
    ck_assert_msg(!(childRc == 0 && created) && found == DKSHM_OK,
                  "both the slow creator (exit %d) and dkshmOpen (created=%d) "
                  "created the segment; the opener's object: %s; creator pid "
                  "now %u (opener %d, slow creator %d)",
                  childRc, created, dkshmErrName(found), in.creatorPid,
                  (int)getpid(), (int)pid);
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
#else
    printf("checkShm: slow-creator race test needs x86_64 ptrace; skipped\n");
#endif
}
END_TEST

/* Anything read from the segment is untrusted and no loop may be endless.
 * With a damaged directory sequence word (odd, no writer anywhere) a
 * read-write find or list must return. (It once took the free lock,
 * released it and spun again, for ever.) */
static int findWithinTwoSeconds(void *arg) {
    signal(SIGALRM, SIG_DFL); /* see attachFifoReadOnly */
    alarm(2);
    dkshm *s = arg;
    int rc = dkshmObjectFind(s, "x", NULL, NULL);
    size_t n;
    int lrc = dkshmObjectList(s, NULL, 0, &n);
    return (rc == DKSHM_OK || rc < 0) && lrc <= 0 ? 0 : 1;
}

START_TEST(test_find_returns_on_odd_sequence) {
    const char *name = segName("oddseq");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    ck_assert_int_eq(dkshmObjectCreate(s, "x", T_OBJ, s->hdr->heap), DKSHM_OK);
    __atomic_fetch_add(&s->hdr->dirSeq, 1, __ATOMIC_RELEASE);
    int st = testInChild(findWithinTwoSeconds, s);
    ck_assert_msg(st == 0, "find with an odd sequence word and no writer: %s",
                  st == 128 + SIGALRM ? "still looping after 2 s"
                                      : "bad result");
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* A read-only attach (what dkshm-tool does) of a name that is a FIFO must
 * fail, not block. Anyone may plant one in /dev/shm under the name a tool
 * will inspect. (shm_open(O_RDONLY) without O_NONBLOCK once waited for a
 * writer for ever.) */
static int attachFifoReadOnly(void *arg) {
    /* Check's runner SIGALRM handler (inherited) would kill the whole
     * test's process group: die of the alarm instead. */
    signal(SIGALRM, SIG_DFL);
    alarm(2);
    dkshm *s;
    int rc = dkshmAttach(arg, DKSHM_RDONLY, &s);
    return rc == DKSHM_OK ? 1 : 0;
}

START_TEST(test_read_only_attach_of_fifo_fails) {
    const char *name = segName("fifo");
    char p[128];
    shmPath(p, sizeof p, name);
    ck_assert_int_eq(mkfifo(p, 0666), 0);
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    ck_assert_msg(rc < 0, "read-write attach of a FIFO: %s", dkshmErrName(rc));
    int st = testInChild(attachFifoReadOnly, (void *)name);
    ck_assert_msg(st == 0, "read-only attach of a FIFO: %s",
                  st == 128 + SIGALRM ? "still blocked after 2 s" : "attached");
}
END_TEST

/* ======================================================================== */
/* defects: properties shm/ does not meet yet (fail until fixed)            */
/* ======================================================================== */

/* The threads of a forked child share the handle it inherited; the first
 * lock any of them takes registers the child. dkSelf() reads s->lockId and
 * s->forkGen with plain loads while the registering thread writes them
 * (dkSelfId: forkGen is stored before lockId, neither with ordering the
 * reader respects), so another thread can pair the parent's lockId with
 * the child's forkGen and lock under the parent's identity; its unlock
 * then fails (INVALID) and the lock stays held by a live owner. The window
 * is a few instructions: ThreadSanitizer reports it every time (exit 66),
 * the plain build only rarely. */
#define REG_THREADS 6
#define REG_FORKS 12

typedef struct regThread {
    dkshm *s;
    fastMutex *m;
    volatile int *go;
    int errors;
} regThread;

static void *regWorker(void *arg) {
    regThread *t = arg;
    while (!__atomic_load_n(t->go, __ATOMIC_ACQUIRE))
        ;
    for (int i = 0; i < 50; i++) {
        int rc = fastMutexLock(t->s, t->m);
        if (rc < 0) {
            t->errors++;
            continue;
        }
        if (fastMutexUnlock(t->s, t->m) != DKSHM_OK)
            t->errors++;
    }
    return NULL;
}

static int threadsRegisterInChild(void *arg) {
    dkshm *s = arg;
    pthread_t th[REG_THREADS];
    regThread t[REG_THREADS];
    volatile int go = 0;
    for (int i = 0; i < REG_THREADS; i++) {
        t[i] = (regThread){.s = s, .m = dkshmPtr(s, scratchOff(s)), .go = &go};
        if (pthread_create(&th[i], NULL, regWorker, &t[i]) != 0)
            return 1;
    }
    __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    int errors = 0;
    for (int i = 0; i < REG_THREADS; i++) {
        pthread_join(th[i], NULL);
        errors += t[i].errors;
    }
    size_t n = 0;
    dkshmProcInfo p[8];
    if (dkshmProcList(s, p, 8, &n) != DKSHM_OK || n != 2 ||
        !procOf(p, n, (uint32_t)getpid()))
        return 2;
    return errors ? 3 : 0;
}

START_TEST(test_defect_forked_threads_register_race) {
    const char *name = segName("regthr");
    dkshm *s;
    ck_assert_int_eq(dkshmCreate(name, DKSHM_MIN_CAPACITY, NULL, &s), DKSHM_OK);
    ck_assert_int_eq(fastMutexInit(s, dkshmPtr(s, scratchOff(s)), 0), DKSHM_OK);
    for (int i = 0; i < REG_FORKS; i++) {
        int st = testInChild(threadsRegisterInChild, s);
        ck_assert_msg(st == 0,
                      "fork %d: threads registering the inherited handle: "
                      "%s (exit %d)",
                      i,
                      st == 66  ? "ThreadSanitizer reported a race"
                      : st == 3 ? "a lock or unlock failed"
                      : st == 2 ? "wrong process table"
                                : "child failed",
                      st);
        size_t reaped = 0;
        ck_assert_int_eq(dkshmReap(s, &reaped), DKSHM_OK);
        ck_assert_uint_eq(reaped, 1);
    }
    ck_assert_int_eq(dkshmDetach(s), DKSHM_OK);
    ck_assert_int_eq(dkshmUnlink(name), DKSHM_OK);
}
END_TEST

/* ======================================================================== */

static TCase *newCase(Suite *su, const char *name, int timeout) {
    TCase *tc = testAddCase(su, name, setupNames, teardownNames, timeout);
    tcase_add_unchecked_fixture(tc, NULL, sweepDeadNames);
    return tc;
}

static Suite *shmSuite(void) {
    Suite *su = suite_create("shm");
    TCase *tc = newCase(su, "names", 10);
    tcase_add_test(tc, test_segment_name_rules);
    tcase_add_test(tc, test_longest_name_works_end_to_end);
    tcase_add_test(tc, test_object_name_rules);

    tc = newCase(su, "lifecycle", 20);
    tcase_add_test(tc, test_create_attach_detach_unlink);
    tcase_add_test(tc, test_open_creates_then_attaches);
    tcase_add_test(tc, test_open_race_has_one_creator);
    tcase_add_test(tc, test_anonymous_segment_shared_with_child);
    tcase_add_test(tc, test_file_mode_ignores_umask);
    tcase_add_test(tc, test_bad_create_arguments_leave_no_file);
    tcase_add_test(tc, test_failed_creation_leaves_no_file);

    tc = newCase(su, "sparse", 20);
    tcase_add_test(tc, test_large_segment_is_sparse);

    tc = newCase(su, "offsets", 10);
    tcase_add_test(tc, test_offsets_and_pointers);

    tc = newCase(su, "damaged", 20);
    tcase_add_loop_test(tc, test_damaged_segment, 0, D_COUNT);
    tcase_add_test(tc, test_foreign_objects_at_the_name);

    tc = newCase(su, "permissions", 20);
    tcase_add_test(tc, test_nobody_cannot_attach_0600);
    tcase_add_test(tc, test_nobody_reads_0644_and_writes_0666);
    tcase_add_test(tc, test_read_only_handle);

    tc = newCase(su, "proctable", 20);
    tcase_add_test(tc, test_proc_table_records_self);
    tcase_add_test(tc, test_proc_table_forked_child);
    tcase_add_test(tc, test_proc_table_pid_reuse_guard);
    tcase_add_test(tc, test_proc_table_full);

    tc = newCase(su, "unrelated", 20);
    tcase_add_test(tc, test_unrelated_process_writes_object);
    tcase_add_test(tc, test_unrelated_process_reads_info);
    tcase_add_test(tc, test_unrelated_process_dies_holding_lock);

    tc = newCase(su, "directory", 20);
    tcase_add_test(tc, test_directory_create_find_list_remove);
    tcase_add_test(tc, test_directory_bad_arguments);
    tcase_add_test(tc, test_directory_full_and_partial_list);
    tcase_add_test(tc, test_directory_remove_with_inflight_full);
    tcase_add_test(tc, test_directory_shared_by_threads);

    tc = newCase(su, "crashwalk", 30);
    tcase_add_test(tc, test_directory_create_crash_walk);
    tcase_add_test(tc, test_directory_remove_crash_walk_no_allocator);
    tcase_add_test(tc, test_directory_remove_crash_walk_with_reclaim);

    tc = newCase(su, "errors", 10);
    tcase_add_test(tc, test_error_names_and_messages);

    tc = newCase(su, "regressions", 30);
    tcase_add_test(tc, test_lookup_agrees_with_recovery_create);
    tcase_add_test(tc, test_lookup_agrees_with_recovery_remove);
    tcase_add_test(tc, test_reap_before_lock_recovery_keeps_one_owner);
    tcase_add_test(tc, test_open_takeover_vs_slow_creator);
    tcase_add_test(tc, test_read_only_attach_of_fifo_fails);
    tcase_add_test(tc, test_find_returns_on_odd_sequence);

    /* Failing until shm/ is fixed; CK_EXCLUDE_TAGS=defects skips them. */
    tc = newCase(su, "defects", 30);
    tcase_set_tags(tc, "defects");
    tcase_add_test(tc, test_defect_forked_threads_register_race);
    return su;
}

int main(void) {
    int rc = testRunSuite(shmSuite());
    sweepDeadNames();
    return rc;
}
