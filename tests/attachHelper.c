/* attachHelper.c — an unrelated program for the multi-process tests.
 *
 * tests/checkShm execs it so that a process which shares nothing with the
 * creator but the segment's name (no inherited mapping, no inherited handle,
 * its own copy of the library's globals) attaches and works on the segment.
 * It uses the public API only, as a real user would.
 *
 *   attachHelper NAME attach [rdonly]
 *       attach (read-write, or read-only) and detach again
 *   attachHelper NAME info
 *       attach read-only and print dkshmGetInfo and the directory, one
 *       key=value per line
 *   attachHelper NAME find OBJNAME
 *       attach read-only and print "type=T root=R" of the object
 *   attachHelper NAME write-object OBJNAME TYPE ROOT LOCKOFF VALOFF VALUE
 *       attach read-write; under the fastMutex at LOCKOFF store the 64-bit
 *       VALUE at VALOFF, bind OBJNAME (TYPE, ROOT) in the directory; unlock,
 *       print "slot=N", detach
 *   attachHelper NAME alloc-write OBJNAME SIZE BYTE
 *       attach read-write, allocate SIZE bytes from the segment's allocator,
 *       fill them with BYTE, bind OBJNAME (DKSHM_TYPE_USER) to the block,
 *       print "off=N", detach
 *   attachHelper NAME hold-lock-and-wait LOCKOFF
 *       attach read-write, take the fastMutex at LOCKOFF, print "locked",
 *       then wait until stdin reaches end of file (or the process is killed,
 *       which is what the tests do); unlock and detach on EOF
 *
 * Exit status: 0 on success; 100 - rc for a dkshm error rc (NOTFOUND gives
 * 101, PERM 108, READONLY 114, ...); 2 for bad usage; 3 for anything else.
 * Offsets and numbers are decimal or 0x-hex.
 */
#include "config.h"

#include "fastmutex.h"
#include "membound.h"
#include "segment.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define EXIT_OTHER 3

static int exitFor(int rc) {
    return rc == DKSHM_OK ? 0 : 100 - rc;
}

static int parseU64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

static int cmdAttach(const char *name, int argc, char **argv) {
    uint32_t flags = 0;
    if (argc > 0 && strcmp(argv[0], "rdonly") == 0)
        flags = DKSHM_RDONLY;
    else if (argc > 0)
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, flags, &s);
    if (rc != DKSHM_OK) {
        printf("attach=%s\n", dkshmErrName(rc));
        return exitFor(rc);
    }
    printf("attach=OK readonly=%d\n", dkshmReadOnly(s) ? 1 : 0);
    return exitFor(dkshmDetach(s));
}

static int cmdInfo(const char *name) {
    dkshm *s;
    int rc = dkshmAttach(name, DKSHM_RDONLY, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    dkshmInfo in;
    rc = dkshmGetInfo(s, &in);
    if (rc != DKSHM_OK) {
        dkshmDetach(s);
        return exitFor(rc);
    }
    printf("readonly=%d\n", dkshmReadOnly(s) ? 1 : 0);
    printf("name=%s\n", dkshmName(s));
    printf("layoutVersion=%" PRIu32 "\n", in.layoutVersion);
    printf("format=%" PRIu32 "\n", in.format);
    printf("capacity=%" PRIu64 "\n", in.capacity);
    printf("creatorUid=%" PRIu32 "\n", in.creatorUid);
    printf("creatorPid=%" PRIu32 "\n", in.creatorPid);
    printf("createTimeNs=%" PRIu64 "\n", in.createTimeNs);
    printf("flags=%" PRIu32 "\n", in.flags);
    printf("maxProcs=%" PRIu32 "\n", in.maxProcs);
    printf("maxObjects=%" PRIu32 "\n", in.maxObjects);
    printf("liveProcs=%" PRIu32 "\n", in.liveProcs);
    printf("deadProcs=%" PRIu32 "\n", in.deadProcs);
    printf("objects=%" PRIu32 "\n", in.objects);
    printf("heapOffset=%" PRIu64 "\n", in.heapOffset);
    printf("heapSize=%" PRIu64 "\n", in.heapSize);
    printf("fileMode=%" PRIu32 "\n", in.fileMode);
    printf("fileUid=%" PRIu32 "\n", in.fileUid);
    dkshmObjectInfo objs[16];
    size_t n = 0;
    rc = dkshmObjectList(s, objs, 16, &n);
    if (rc == DKSHM_OK) {
        printf("listed=%zu\n", n);
        for (size_t i = 0; i < n && i < 16; i++)
            printf("object=%s:%" PRIu32 ":%" PRIu64 "\n", objs[i].name,
                   objs[i].type, objs[i].root);
    }
    size_t procs = 0;
    if (rc == DKSHM_OK)
        rc = dkshmProcList(s, NULL, 0, &procs);
    if (rc == DKSHM_OK)
        printf("procs=%zu\n", procs);
    int drc = dkshmDetach(s);
    return exitFor(rc != DKSHM_OK ? rc : drc);
}

static int cmdFind(const char *name, int argc, char **argv) {
    if (argc != 1)
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, DKSHM_RDONLY, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    uint32_t type = 0;
    dkoff root = 0;
    rc = dkshmObjectFind(s, argv[0], &type, &root);
    if (rc == DKSHM_OK)
        printf("type=%" PRIu32 " root=%" PRIu64 "\n", type, root);
    dkshmDetach(s);
    return exitFor(rc);
}

static int cmdWriteObject(const char *name, int argc, char **argv) {
    uint64_t type, root, lockOff, valOff, value;
    if (argc != 6 || parseU64(argv[1], &type) || type > UINT32_MAX ||
        parseU64(argv[2], &root) || parseU64(argv[3], &lockOff) ||
        parseU64(argv[4], &valOff) || parseU64(argv[5], &value))
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    fastMutex *m = dkshmPtr(s, lockOff);
    uint64_t *val = dkshmPtr(s, valOff);
    if (!m || !val || !dkshmPtr(s, valOff + sizeof *val - 1) || (valOff & 7) ||
        (lockOff & 7)) {
        dkshmDetach(s);
        return exitFor(DKSHM_INVALID);
    }
    rc = fastMutexLock(s, m);
    if (rc < 0) {
        dkshmDetach(s);
        return exitFor(rc);
    }
    __atomic_store_n(val, value, __ATOMIC_RELAXED);
    rc = dkshmObjectCreate(s, argv[0], (uint32_t)type, root);
    int urc = fastMutexUnlock(s, m);
    if (rc == DKSHM_OK)
        rc = urc;
    size_t n = 0;
    dkshmProcInfo self[4];
    if (dkshmProcList(s, self, 4, &n) == DKSHM_OK)
        for (size_t i = 0; i < n && i < 4; i++)
            if (self[i].pid == (uint32_t)getpid())
                printf("slot=%" PRIu32 "\n", self[i].slot);
    int drc = dkshmDetach(s);
    return exitFor(rc != DKSHM_OK ? rc : drc);
}

static int cmdAllocWrite(const char *name, int argc, char **argv) {
    uint64_t size, byte;
    if (argc != 3 || parseU64(argv[1], &size) || parseU64(argv[2], &byte) ||
        byte > 255)
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    dkoff off = 0;
    membound *m = memboundForSegment(s);
    rc = m ? memboundAllocOff(m, size, &off) : DKSHM_CORRUPT;
    if (rc == DKSHM_OK) {
        memset(dkshmPtr(s, off), (int)byte, size);
        rc = dkshmObjectCreate(s, argv[0], DKSHM_TYPE_USER, off);
        if (rc == DKSHM_OK)
            printf("off=%" PRIu64 "\n", off);
        else
            memboundFreeOff(m, off);
    }
    int drc = dkshmDetach(s);
    return exitFor(rc != DKSHM_OK ? rc : drc);
}

static int cmdHoldLock(const char *name, int argc, char **argv) {
    uint64_t lockOff;
    if (argc != 1 || parseU64(argv[0], &lockOff))
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    fastMutex *m = dkshmPtr(s, lockOff);
    if (!m || (lockOff & 7)) {
        dkshmDetach(s);
        return exitFor(DKSHM_INVALID);
    }
    rc = fastMutexLock(s, m);
    if (rc < 0) {
        dkshmDetach(s);
        return exitFor(rc);
    }
    printf("locked pid=%d\n", (int)getpid());
    fflush(stdout);
    char buf[64];
    ssize_t r;
    do {
        r = read(STDIN_FILENO, buf, sizeof buf);
    } while (r > 0 || (r < 0 && errno == EINTR));
    rc = fastMutexUnlock(s, m);
    int drc = dkshmDetach(s);
    return exitFor(rc != DKSHM_OK ? rc : drc);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr,
                "usage: %s NAME attach [rdonly] | info | find OBJ | "
                "write-object OBJ TYPE ROOT LOCKOFF VALOFF VALUE | "
                "alloc-write OBJ SIZE BYTE | "
                "hold-lock-and-wait LOCKOFF\n",
                argv[0]);
        return EXIT_USAGE;
    }
    const char *name = argv[1], *verb = argv[2];
    int rest = argc - 3;
    char **args = argv + 3;
    int rc;
    if (strcmp(verb, "attach") == 0)
        rc = cmdAttach(name, rest, args);
    else if (strcmp(verb, "info") == 0)
        rc = rest == 0 ? cmdInfo(name) : EXIT_USAGE;
    else if (strcmp(verb, "find") == 0)
        rc = cmdFind(name, rest, args);
    else if (strcmp(verb, "write-object") == 0)
        rc = cmdWriteObject(name, rest, args);
    else if (strcmp(verb, "alloc-write") == 0)
        rc = cmdAllocWrite(name, rest, args);
    else if (strcmp(verb, "hold-lock-and-wait") == 0)
        rc = cmdHoldLock(name, rest, args);
    else
        rc = EXIT_USAGE;
    if (fflush(stdout) != 0)
        rc = EXIT_OTHER;
    return rc;
}
