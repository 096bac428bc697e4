/* toolHelper.c — what tests/checkTool.sh needs to set segments up and to
 * damage them in known ways for dkshm-tool.
 *
 *   toolHelper offsets NAME
 *       attach read-only and print the layout, one key=value per line:
 *       dirLock, dirSeq, objects, allocRoot, dirUndo, procTable, directory,
 * heap, heapSize, slotSize, entrySize, entryType, entryRoot toolHelper put NAME
 * OBJ TYPE HEXBYTES allocate a block of the bytes' length, copy them in, bind
 * it to OBJ with TYPE; print "root=OFF" toolHelper bind NAME OBJ TYPE ROOT bind
 * OBJ to ROOT (any heap offset) with TYPE toolHelper hold-inflight NAME
 *       allocate a block into this process's in-flight list, print
 *       "ready pid=PID" and wait to be killed
 *   toolHelper hold-permits NAME OBJ COUNT
 *       acquire COUNT permits of OSRegulate OBJ, print "ready pid=PID"
 *       and wait to be killed (so that they are held by a dead process)
 *   toolHelper churn NAME MILLISECONDS
 *       for that long, allocate and free blocks and bind and unbind
 *       objects, as a busy writer would, while the tool reads
 *   toolHelper xor FILE OFFSET MASK
 *       xor the byte at OFFSET of FILE with MASK (no attach)
 *   toolHelper poke FILE OFFSET WIDTH VALUE
 *       write VALUE (1, 4 or 8 bytes, little-endian) at OFFSET of FILE
 *   toolHelper reheader FILE FIELD VALUE
 *       set the header field FIELD (capacity, layoutVersion or maxProcs)
 *       and recompute the checksum, so that only the field is wrong
 *   toolHelper populate NAME
 *       one container of each type with known contents: multidict "dict",
 *       multimaps "map" (bytes keys) and "imap" (int64 keys), multilist
 *       "list", multiarray "arr" (4-byte elements), OSRegulate "limit";
 *       print "root.OBJ=OFF" for each
 *   toolHelper leak NAME SIZE
 *       allocate SIZE bytes that nothing owns (a leak); print "leak=OFF"
 *   toolHelper blocks NAME OBJ
 *       print the blocks of container OBJ, "OFF BYTES KIND" per line
 *   toolHelper work NAME MILLISECONDS
 *       for that long, push and pop on multilist "wq", append to and read
 *       multiarray "wa", allocate and free: a worker for `top` to watch;
 *       print "ready pid=PID" first
 *
 * Exit status: 0 on success, 100 - rc for a dkshm error rc, 2 for bad
 * usage, 3 for anything else. Numbers are decimal or 0x-hex.
 */
#include "config.h"

#include "OSRegulate.h"
#include "membound.h"
#include "memboundInternal.h"
#include "multiarray.h"
#include "multiarrayInternal.h"
#include "multidict.h"
#include "multidictInternal.h"
#include "multilist.h"
#include "multilistInternal.h"
#include "multimap.h"
#include "multimapInternal.h"
#include "segmentInternal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define EXIT_USAGE 2
#define EXIT_OTHER 3

static int exitFor(int rc) {
    return rc == DKSHM_OK ? 0 : 100 - rc;
}

static int parseNum(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

static int cmdOffsets(const char *name) {
    dkshm *s;
    int rc = dkshmAttach(name, DKSHM_RDONLY, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    const dkHeader *h = s->hdr;
    printf("dirLock=%zu\n", offsetof(dkHeader, dirLock));
    printf("dirSeq=%zu\n", offsetof(dkHeader, dirSeq));
    printf("objects=%zu\n", offsetof(dkHeader, objects));
    printf("allocRoot=%zu\n", offsetof(dkHeader, allocRoot));
    printf("dirUndo=%zu\n", offsetof(dkHeader, dirUndo));
    printf("procTable=%" PRIu64 "\n", h->procTable);
    printf("directory=%" PRIu64 "\n", h->directory);
    printf("heap=%" PRIu64 "\n", h->heap);
    printf("heapSize=%" PRIu64 "\n", h->heapSize);
    printf("slotSize=%zu\n", sizeof(dkProcSlot));
    printf("entrySize=%zu\n", sizeof(dkDirEntry));
    printf("entryType=%zu\n", offsetof(dkDirEntry, type));
    printf("entryRoot=%zu\n", offsetof(dkDirEntry, root));
    dkshmDetach(s);
    return 0;
}

static int hexDecode(const char *hex, uint8_t **out, size_t *len) {
    size_t n = strlen(hex);
    if (n % 2)
        return -1;
    uint8_t *b = malloc(n / 2 + 1);
    if (!b)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            free(b);
            return -1;
        }
        b[i] = (uint8_t)v;
    }
    *out = b;
    *len = n / 2;
    return 0;
}

static int cmdPut(const char *name, int argc, char **argv) {
    uint64_t type;
    uint8_t *bytes;
    size_t len;
    if (argc != 3 || parseNum(argv[1], &type) || type > UINT32_MAX ||
        hexDecode(argv[2], &bytes, &len) || len == 0)
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    membound *m = memboundForSegment(s);
    dkoff off = 0;
    rc = m ? memboundAllocInflight(m, len, &off) : DKSHM_CORRUPT;
    if (rc == DKSHM_OK) {
        memcpy(dkshmPtr(s, off), bytes, len);
        rc = dkshmObjectCreate(s, argv[0], (uint32_t)type, off);
        if (rc != DKSHM_OK)
            memboundFreeInflight(m, off);
    }
    if (rc == DKSHM_OK)
        printf("root=%" PRIu64 "\n", off);
    free(bytes);
    dkshmDetach(s);
    return exitFor(rc);
}

static int cmdBind(const char *name, int argc, char **argv) {
    uint64_t type, root;
    if (argc != 3 || parseNum(argv[1], &type) || type > UINT32_MAX ||
        parseNum(argv[2], &root))
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    rc = dkshmObjectCreate(s, argv[0], (uint32_t)type, root);
    dkshmDetach(s);
    return exitFor(rc);
}

static int cmdHoldInflight(const char *name) {
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    membound *m = memboundForSegment(s);
    dkoff off;
    rc = m ? memboundAllocInflight(m, 100, &off) : DKSHM_CORRUPT;
    if (rc != DKSHM_OK)
        return exitFor(rc);
    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    for (;;)
        pause();
}

static int cmdHoldPermits(const char *name, int argc, char **argv) {
    uint64_t n;
    if (argc != 2 || parseNum(argv[1], &n) || n == 0)
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    OSRegulate *r;
    rc = OSRegulateOpen(s, argv[0], NULL, 0, &r);
    for (uint64_t i = 0; rc == DKSHM_OK && i < n; i++)
        rc = OSRegulateTryAcquire(r);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    for (;;)
        pause();
}

static int cmdChurn(const char *name, int argc, char **argv) {
    uint64_t ms;
    if (argc != 1 || parseNum(argv[0], &ms))
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    membound *m = memboundForSegment(s);
    if (!m) {
        dkshmDetach(s);
        return exitFor(DKSHM_CORRUPT);
    }
    uint64_t end = dkNowNs() + ms * 1000000ull;
    dkoff held[32] = {0};
    char obj[32];
    for (uint64_t i = 0; dkNowNs() < end; i++) {
        size_t k = i % 32;
        if (held[k])
            memboundFreeOff(m, held[k]);
        held[k] = 0;
        memboundAllocOff(m, 16 + (i * 37) % 5000, &held[k]);
        snprintf(obj, sizeof obj, "churn%zu", k % 4);
        dkoff root;
        if (dkshmObjectRemove(s, obj, 0, &root) == DKSHM_OK)
            memboundFreeInflight(m, root);
        else if (memboundAllocInflight(m, 64, &root) == DKSHM_OK &&
                 dkshmObjectCreate(s, obj, DKSHM_TYPE_USER + 1, root) !=
                     DKSHM_OK)
            memboundFreeInflight(m, root);
    }
    for (size_t k = 0; k < 32; k++)
        if (held[k])
            memboundFreeOff(m, held[k]);
    dkshmDetach(s);
    return 0;
}

static void printRoot(dkshm *s, const char *obj) {
    dkoff root = 0;
    if (dkshmObjectFind(s, obj, NULL, &root) == DKSHM_OK)
        printf("root.%s=%" PRIu64 "\n", obj, root);
}

static int cmdPopulate(const char *name) {
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    multidict *d = NULL;
    multimap *m = NULL, *mi = NULL;
    multilist *l = NULL;
    multiarray *a = NULL;
    OSRegulate *r = NULL;
    multimapOptions io = {.keyMode = MULTIMAP_KEYS_INT64};
    multiarrayOptions ao = {.elemSize = 4};
    OSRegulateOptions ro = {.maxHolders = 3, .ratePerSec = 100, .burst = 10};
    static const uint8_t bin[] = {0, 1, 2, 0xff};
    int64_t n42 = 42;
    if ((rc = multidictOpen(s, "dict", NULL, MULTIDICT_CREATE, &d)) ||
        (rc = multidictSet(d, "alpha", 5, "one", 3)) ||
        (rc = multidictSet(d, "bin\001", 4, bin, sizeof bin)) ||
        (rc = multidictSet(d, "n", 1, &n42, sizeof n42)) ||
        (rc = multimapOpen(s, "map", NULL, MULTIMAP_CREATE, &m)) ||
        (rc = multimapInsert(m, "b", 1, "2", 1, 0)) ||
        (rc = multimapInsert(m, "a", 1, "1", 1, 0)) ||
        (rc = multimapInsert(m, "c", 1, "3\n", 2, 0)) ||
        (rc = multimapOpen(s, "imap", &io, MULTIMAP_CREATE, &mi)) ||
        (rc = multimapInsertInt(mi, 7, "seven", 5, 0)) ||
        (rc = multimapInsertInt(mi, -5, "neg", 3, 0)) ||
        (rc = multilistOpen(s, "list", NULL, MULTILIST_CREATE, &l)) ||
        (rc = multilistPushTail(l, "first", 5)) ||
        (rc = multilistPushTail(l, "second", 6)) ||
        (rc = multilistPushTail(l, "third\t", 6)) ||
        (rc = multiarrayOpen(s, "arr", &ao, MULTIARRAY_CREATE, &a)) ||
        (rc = multiarrayAppend(a, "AAAA", NULL)) ||
        (rc = multiarrayAppend(a, "BBBB", NULL)) ||
        (rc = multiarrayAppend(a, "C\001\002D", NULL)) ||
        (rc = OSRegulateOpen(s, "limit", &ro, OSREGULATE_CREATE, &r)))
        fprintf(stderr, "populate: %s\n", dkshmStrerror(rc));
    multidictClose(d);
    multimapClose(m);
    multimapClose(mi);
    multilistClose(l);
    multiarrayClose(a);
    OSRegulateClose(r);
    if (rc == DKSHM_OK) {
        static const char *objs[] = {"dict", "map",  "imap",
                                     "list", "arr", "limit"};
        for (size_t i = 0; i < sizeof objs / sizeof objs[0]; i++)
            printRoot(s, objs[i]);
    }
    dkshmDetach(s);
    return exitFor(rc);
}

static int cmdLeak(const char *name, int argc, char **argv) {
    uint64_t size;
    if (argc != 1 || parseNum(argv[0], &size) || size == 0)
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    membound *m = memboundForSegment(s);
    dkoff off = 0;
    rc = m ? memboundAllocOff(m, size, &off) : DKSHM_CORRUPT;
    if (rc == DKSHM_OK)
        printf("leak=%" PRIu64 "\n", off);
    dkshmDetach(s);
    return exitFor(rc);
}

static int printBlock(void *ctx, dkoff off, uint64_t bytes, int kind) {
    (void)ctx;
    printf("%" PRIu64 " %" PRIu64 " %d\n", off, bytes, kind);
    return 0;
}

static int cmdBlocks(const char *name, int argc, char **argv) {
    if (argc != 1)
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    uint32_t type = 0;
    rc = dkshmObjectFind(s, argv[0], &type, NULL);
    if (rc == DKSHM_OK) {
        multiarrayOptions ao = {0};
        switch (type) {
        case MULTIDICT_TYPE: {
            multidict *d;
            if ((rc = multidictOpen(s, argv[0], NULL, 0, &d)) == DKSHM_OK) {
                rc = multidictForEachBlock(d, printBlock, NULL);
                multidictClose(d);
            }
            break;
        }
        case MULTIMAP_TYPE: {
            multimap *m;
            if ((rc = multimapOpen(s, argv[0], NULL, 0, &m)) == DKSHM_OK) {
                rc = multimapForEachBlock(m, printBlock, NULL);
                multimapClose(m);
            }
            break;
        }
        case MULTILIST_TYPE: {
            multilist *l;
            if ((rc = multilistOpen(s, argv[0], NULL, 0, &l)) == DKSHM_OK) {
                rc = multilistForEachBlock(l, printBlock, NULL);
                multilistClose(l);
            }
            break;
        }
        case MULTIARRAY_TYPE: {
            multiarray *a;
            if ((rc = multiarrayOpen(s, argv[0], &ao, 0, &a)) == DKSHM_OK) {
                rc = multiarrayForEachBlock(a, printBlock, NULL);
                multiarrayClose(a);
            }
            break;
        }
        default:
            rc = DKSHM_TYPE;
        }
    }
    dkshmDetach(s);
    return exitFor(rc);
}

static int cmdWork(const char *name, int argc, char **argv) {
    uint64_t ms;
    if (argc != 1 || parseNum(argv[0], &ms))
        return EXIT_USAGE;
    dkshm *s;
    int rc = dkshmAttach(name, 0, &s);
    if (rc != DKSHM_OK)
        return exitFor(rc);
    membound *mb = memboundForSegment(s);
    multilist *l = NULL;
    multiarray *a = NULL;
    multiarrayOptions ao = {.elemSize = 8};
    if (!mb ||
        (rc = multilistOpen(s, "wq", NULL, MULTILIST_CREATE, &l)) != 0 ||
        (rc = multiarrayOpen(s, "wa", &ao, MULTIARRAY_CREATE, &a)) != 0) {
        dkshmDetach(s);
        return exitFor(rc ? rc : DKSHM_CORRUPT);
    }
    printf("ready pid=%d\n", (int)getpid());
    fflush(stdout);
    uint64_t end = dkNowNs() + ms * 1000000ull;
    for (uint64_t i = 0; dkNowNs() < end; i++) {
        char item[64], buf[64];
        size_t len;
        int n = snprintf(item, sizeof item, "job %" PRIu64, i);
        multilistPushTail(l, item, (size_t)n);
        multilistPopHead(l, buf, sizeof buf, &len);
        uint64_t count = 0, v;
        multiarrayCount(a, &count);
        if (count < 256)
            multiarrayAppend(a, &i, NULL);
        else
            multiarraySet(a, i % count, &i);
        multiarrayGet(a, i % (count ? count : 1), &v);
        dkoff off;
        if (memboundAllocOff(mb, 100 + i % 300, &off) == DKSHM_OK)
            memboundFreeOff(mb, off);
        if (i % 64 == 0)
            usleep(100);
    }
    multilistClose(l);
    multiarrayClose(a);
    dkshmDetach(s);
    return 0;
}

static int withFile(const char *path, int (*fn)(int fd, void *), void *ctx) {
    int fd = open(path, O_RDWR);
    if (fd < 0) {
        perror(path);
        return EXIT_OTHER;
    }
    int rc = fn(fd, ctx);
    close(fd);
    return rc;
}

typedef struct pokeArgs {
    uint64_t off, width, value;
} pokeArgs;

static int xorFn(int fd, void *ctx) {
    pokeArgs *a = ctx;
    uint8_t b;
    if (pread(fd, &b, 1, (off_t)a->off) != 1)
        return EXIT_OTHER;
    b ^= (uint8_t)a->value;
    return pwrite(fd, &b, 1, (off_t)a->off) == 1 ? 0 : EXIT_OTHER;
}

static int pokeFn(int fd, void *ctx) {
    pokeArgs *a = ctx;
    uint8_t b[8];
    for (unsigned i = 0; i < 8; i++)
        b[i] = (uint8_t)(a->value >> (8 * i));
    return pwrite(fd, b, a->width, (off_t)a->off) == (ssize_t)a->width
               ? 0
               : EXIT_OTHER;
}

typedef struct reheaderArgs {
    const char *field;
    uint64_t value;
} reheaderArgs;

static int reheaderFn(int fd, void *ctx) {
    reheaderArgs *a = ctx;
    dkHeader h;
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h)
        return EXIT_OTHER;
    if (strcmp(a->field, "capacity") == 0)
        h.capacity = a->value;
    else if (strcmp(a->field, "layoutVersion") == 0)
        h.layoutVersion = (uint32_t)a->value;
    else if (strcmp(a->field, "maxProcs") == 0)
        h.maxProcs = (uint32_t)a->value;
    else
        return EXIT_USAGE;
    h.checksum = XXH3_64bits(&h, offsetof(dkHeader, checksum));
    return pwrite(fd, &h, sizeof h, 0) == (ssize_t)sizeof h ? 0 : EXIT_OTHER;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr,
                "usage: %s offsets|put|bind|hold-inflight|hold-permits|churn|"
                "populate|leak|blocks|work NAME ... | "
                "xor|poke|reheader FILE ...\n",
                argv[0]);
        return EXIT_USAGE;
    }
    const char *verb = argv[1], *target = argv[2];
    int rest = argc - 3;
    char **args = argv + 3;
    int rc;
    if (strcmp(verb, "offsets") == 0 && rest == 0)
        rc = cmdOffsets(target);
    else if (strcmp(verb, "put") == 0)
        rc = cmdPut(target, rest, args);
    else if (strcmp(verb, "bind") == 0)
        rc = cmdBind(target, rest, args);
    else if (strcmp(verb, "churn") == 0)
        rc = cmdChurn(target, rest, args);
    else if (strcmp(verb, "hold-inflight") == 0 && rest == 0)
        rc = cmdHoldInflight(target);
    else if (strcmp(verb, "hold-permits") == 0)
        rc = cmdHoldPermits(target, rest, args);
    else if (strcmp(verb, "populate") == 0 && rest == 0)
        rc = cmdPopulate(target);
    else if (strcmp(verb, "leak") == 0)
        rc = cmdLeak(target, rest, args);
    else if (strcmp(verb, "blocks") == 0)
        rc = cmdBlocks(target, rest, args);
    else if (strcmp(verb, "work") == 0)
        rc = cmdWork(target, rest, args);
    else if (strcmp(verb, "xor") == 0 && rest == 2) {
        pokeArgs a;
        if (parseNum(args[0], &a.off) || parseNum(args[1], &a.value))
            return EXIT_USAGE;
        rc = withFile(target, xorFn, &a);
    } else if (strcmp(verb, "poke") == 0 && rest == 3) {
        pokeArgs a;
        if (parseNum(args[0], &a.off) || parseNum(args[1], &a.width) ||
            parseNum(args[2], &a.value) ||
            (a.width != 1 && a.width != 4 && a.width != 8))
            return EXIT_USAGE;
        rc = withFile(target, pokeFn, &a);
    } else if (strcmp(verb, "reheader") == 0 && rest == 2) {
        reheaderArgs a = {.field = args[0]};
        if (parseNum(args[1], &a.value))
            return EXIT_USAGE;
        rc = withFile(target, reheaderFn, &a);
    } else
        rc = EXIT_USAGE;
    if (fflush(stdout) != 0)
        rc = EXIT_OTHER;
    return rc;
}
