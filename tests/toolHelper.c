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
 *
 * Exit status: 0 on success, 100 - rc for a dkshm error rc, 2 for bad
 * usage, 3 for anything else. Numbers are decimal or 0x-hex.
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
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
                "usage: %s offsets|put|bind|hold-inflight NAME ... | "
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
