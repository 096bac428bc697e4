/* fuzzSegment.c — damage a real segment and check that nothing crashes,
 * reads outside the mapping or hangs.
 *
 * The promise under test (DESIGN.md, "Offsets, never pointers"): on a
 * damaged, truncated or foreign segment the library and dkshm-tool give a
 * clear error, never a crash, an out-of-bounds access or a hang. No
 * libFuzzer: a seeded mutation loop in plain C.
 *
 * A template segment with real content is built in a forked child (so no
 * live process is left in its tables): two multidicts (one with TTLs, one
 * in cache mode), a multimap tall enough for several B+tree levels, a
 * multilist with items and cached free nodes, a multiarray, an OSRegulate
 * and raw allocator blocks bound to names. The builder records where the
 * interesting bytes are (header, process table, directory, allocator root
 * and per-page tables, slab headers, and every container block from the
 * ...ForEachBlock walks). Every iteration copies the template to a fresh
 * segment, damages one region chosen by the target through a mapping of
 * its own (bit flips, random bytes and words, boundary values, zeroed
 * ranges, a block copied over another, header fields with the checksum
 * recomputed, a truncated or extended file), then runs, each in a forked
 * child under alarm(): a read-only attach with every read, `dkshm-tool
 * check --json` and `dump`, and a read-write attach with the reads, the
 * Checks and writes. A signal, a sanitizer report, an unknown return code
 * or a hang is a failure, reported with the seed and iteration to replay.
 *
 * Guard pages: the program is linked with -Wl,--wrap=mmap,--wrap=munmap,
 * so the library's shared mapping of a segment (made by mmap(NULL, ...) in
 * segment.c) is placed, in the fuzzer's children, between two PROT_NONE
 * megabytes: an access just outside the mapping faults, even under ASan,
 * which does not see accesses to memory it did not allocate. dkshm-tool
 * is a separate program and runs without them.
 *
 * Usage: fuzzSegment [--seconds S] [--iterations N] [--seed X] [--start I]
 *                    [--target NAME] [--skip NAME]... [--keep-going]
 *                    [--tool PATH] [--list] [--verbose]
 * Without --seconds or --iterations it runs for 10 seconds. Replay a
 * failure with the printed --seed X --start I --iterations 1 --target T.
 * The tool is --tool, else $DKSHM_TOOL, else skipped with a notice.
 * Exit status: 0 all passed, 1 a failure, 2 usage, 99 set-up error.
 */
#include "config.h"

#include "OSRegulate.h"
#include "databox.h"
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
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define FZ_CAPACITY (8ull << 20)
#define FZ_CHILD_SECONDS 10
#define FZ_TEMPLATE_EVERY 16 /* iterations per template */
#define FZ_MAX_BLOCKS 8192
#define FZ_GUARD (1ull << 20)
#define FZ_EXIT_EXPECT 42 /* a child's failed expectation */
#define FZ_TOOL_ASAN_EXIT 86
#define FZ_TTL_MS 100 /* TTL of the template's expiring entries */

/* ---- guard pages around the library's segment mapping ------------------- */

void *__real_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t off);
int __real_munmap(void *addr, size_t len);
void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t off);
int __wrap_munmap(void *addr, size_t len);

static bool fzGuardOn;
static struct {
    uint8_t *p;
    size_t len;
} fzGuarded[8];
static unsigned fzGuardCount;

static size_t fzPageRound(size_t n) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) & ~(pg - 1);
}

void *__wrap_mmap(void *addr, size_t len, int prot, int flags, int fd,
                  off_t off) {
    if (!fzGuardOn || addr || fd < 0 || !(flags & MAP_SHARED) ||
        (flags & MAP_FIXED) || len == 0)
        return __real_mmap(addr, len, prot, flags, fd, off);
    size_t body = fzPageRound(len);
    uint8_t *r = __real_mmap(NULL, body + 2 * FZ_GUARD, PROT_NONE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                             0);
    if (r == MAP_FAILED)
        return __real_mmap(addr, len, prot, flags, fd, off);
    void *p = __real_mmap(r + FZ_GUARD, len, prot, flags | MAP_FIXED, fd, off);
    if (p == MAP_FAILED) {
        int e = errno;
        __real_munmap(r, body + 2 * FZ_GUARD);
        errno = e;
        return MAP_FAILED;
    }
    for (unsigned i = 0; i < sizeof fzGuarded / sizeof fzGuarded[0]; i++) {
        if (!fzGuarded[i].p) {
            fzGuarded[i].p = p;
            fzGuarded[i].len = body;
            break;
        }
    }
    fzGuardCount++;
    return p;
}

int __wrap_munmap(void *addr, size_t len) {
    for (unsigned i = 0; i < sizeof fzGuarded / sizeof fzGuarded[0]; i++) {
        if (fzGuarded[i].p && fzGuarded[i].p == addr) {
            size_t body = fzGuarded[i].len;
            fzGuarded[i].p = NULL;
            return __real_munmap((uint8_t *)addr - FZ_GUARD,
                                 body + 2 * FZ_GUARD);
        }
    }
    return __real_munmap(addr, len);
}

/* ---- random numbers ------------------------------------------------------ */

static uint64_t fzRng(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static uint64_t fzMix(uint64_t a, uint64_t b) { /* splitmix64 of a and b */
    uint64_t z = a + 0x9e3779b97f4a7c15ull * (b + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 1;
}

static uint64_t fzBelow(uint64_t *s, uint64_t n) {
    return n ? fzRng(s) % n : 0;
}

/* ---- what the builder records -------------------------------------------- */

enum { /* regions: what a recorded block is */
    R_HEADER = 1,
    R_PROCS,
    R_DIR,
    R_AROOT,
    R_ATABLES,
    R_SLAB,
    R_RAW,
    R_DICT_ROOT,
    R_DICT_TABLE,
    R_DICT_ENTRY,
    R_MAP_HEADER,
    R_MAP_NODE,
    R_MAP_ENTRY,
    R_LIST_ROOT,
    R_LIST_NODE,
    R_ARR_ROOT,
    R_ARR_DATA,
    R_REG_ROOT,
    R_COUNT
};

typedef struct fzBlock { /* per process (shared with the builder) */
    uint64_t off, len;
    uint32_t region;
} fzBlock;

typedef struct fzLayout { /* per process, in a shared anonymous mapping */
    int ok;
    uint64_t capacity;
    uint32_t pageSize;
    uint32_t dictKeys, cacheKeys, mapKeys, mapHeight, listItems, arrItems;
    uint32_t nBlocks;
    fzBlock b[FZ_MAX_BLOCKS];
} fzLayout;

typedef struct fzTarget {
    const char *name;
    int region; /* R_..., or 0 for a special target */
    const char *what;
} fzTarget;

static const fzTarget fzTargets[] = {
    {"header", R_HEADER, "the header, fixed and mutable parts"},
    {"hdrfield", 0, "header fields at boundary values, checksum recomputed"},
    {"file", 0, "the backing file truncated or extended"},
    {"procs", R_PROCS, "the process table"},
    {"directory", R_DIR, "the named-object directory"},
    {"allocroot", R_AROOT, "the allocator's root and undo log"},
    {"alloctables", R_ATABLES, "the allocator's per-page ctrl and links"},
    {"slab", R_SLAB, "slab headers and bitmaps"},
    {"raw", R_RAW, "raw allocator blocks bound to names"},
    {"dictroot", R_DICT_ROOT, "multidict roots"},
    {"dicttable", R_DICT_TABLE, "multidict shard tables"},
    {"dictentry", R_DICT_ENTRY, "multidict entries"},
    {"mapheader", R_MAP_HEADER, "the multimap header block"},
    {"mapnode", R_MAP_NODE, "multimap B+tree nodes"},
    {"mapentry", R_MAP_ENTRY, "multimap entry and key blocks"},
    {"listroot", R_LIST_ROOT, "the multilist root"},
    {"listnode", R_LIST_NODE, "multilist nodes and cached nodes"},
    {"arrroot", R_ARR_ROOT, "the multiarray root"},
    {"arrdata", R_ARR_DATA, "the multiarray element block"},
    {"regulate", R_REG_ROOT, "the OSRegulate root"},
    {"any", 0, "anywhere in the metadata and the recorded blocks"},
    {"databox", 0, "databoxDecode on random and mutated encodings"},
    {"none", 0, "no damage: every check must pass (harness control)"},
};
#define FZ_NTARGETS (sizeof fzTargets / sizeof fzTargets[0])

static void addBlock(fzLayout *L, int region, uint64_t off, uint64_t len) {
    if (L->nBlocks < FZ_MAX_BLOCKS && len > 0 && off + len <= L->capacity)
        L->b[L->nBlocks++] = (fzBlock){off, len, (uint32_t)region};
}

/* ---- keys and values ------------------------------------------------------- */

static size_t dictKey(char *buf, uint32_t i) {
    return (size_t)sprintf(buf, "dk%05u", i);
}
static size_t cacheKey(char *buf, uint32_t i) {
    return (size_t)sprintf(buf, "ck%05u", i);
}
static size_t mapKey(char *buf, uint32_t i) {
    /* Every 97th key is long enough to need a separator block. */
    if (i % 97 == 0)
        return (size_t)sprintf(buf, "mk%08u-%0200u", i, i);
    return (size_t)sprintf(buf, "mk%08u-%u", i, i * 7919u);
}
static size_t fillValue(uint8_t *buf, uint64_t *rng, size_t max) {
    size_t n = (size_t)fzBelow(rng, max + 1);
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)fzRng(rng);
    return n;
}

/* ---- the builder (a forked child) ------------------------------------------ */

static const char *fzSegName; /* "/dkfz-<pid>" */
static const char *fzTplName; /* "/dkfz-<pid>-t" */

static int blockCb(void *ctx, dkoff off, uint64_t bytes, int kind, int base) {
    fzLayout *L = ctx;
    addBlock(L, base + kind - 1, off, bytes);
    return 0;
}
static int dictBlockCb(void *ctx, dkoff off, uint64_t bytes, int kind) {
    return blockCb(ctx, off, bytes, kind, R_DICT_ROOT);
}
static int mapBlockCb(void *ctx, dkoff off, uint64_t bytes, int kind) {
    static uint32_t entries;
    if (kind == MULTIMAP_BLOCK_KEY)
        kind = MULTIMAP_BLOCK_ENTRY;
    /* Thousands of entries: keep every 16th, so the blocks after them fit. */
    if (kind == MULTIMAP_BLOCK_ENTRY && entries++ % 16 != 0)
        return 0;
    return blockCb(ctx, off, bytes, kind, R_MAP_HEADER);
}
static int listBlockCb(void *ctx, dkoff off, uint64_t bytes, int kind) {
    if (kind == MULTILIST_BLOCK_FREE)
        kind = MULTILIST_BLOCK_NODE;
    return blockCb(ctx, off, bytes, kind, R_LIST_ROOT);
}
static int arrBlockCb(void *ctx, dkoff off, uint64_t bytes, int kind) {
    return blockCb(ctx, off, bytes, kind, R_ARR_ROOT);
}

#define BUILD(call)                                                            \
    do {                                                                       \
        int rc_ = (call);                                                      \
        if (rc_ != DKSHM_OK && rc_ != DKSHM_RECOVERED) {                       \
            fprintf(stderr, "fuzzSegment: build: %s: %s\n", #call,             \
                    dkshmErrName(rc_));                                        \
            return 3;                                                          \
        }                                                                      \
    } while (0)

static int buildTemplate(fzLayout *L, uint64_t seed) {
    uint64_t rng = seed;
    dkshmUnlink(fzTplName);
    dkshmOptions so = {.maxProcs = 16, .maxObjects = 64};
    dkshm *s;
    BUILD(dkshmCreate(fzTplName, FZ_CAPACITY, &so, &s));
    membound *mb = memboundForSegment(s);
    uint8_t val[4096];
    char key[512];

    multidictOptions dopt = {.shards = 4};
    multidict *d;
    BUILD(multidictOpen(s, "fz.dict", &dopt, MULTIDICT_CREATE, &d));
    L->dictKeys = 100 + (uint32_t)fzBelow(&rng, 300);
    /* Every fifth key expires FZ_TTL_MS after the dict is filled: none
     * expires while the build writes (so the template does not depend on
     * timing, and a replay rebuilds it byte for byte), all have expired,
     * still in their slots, when the template is used. */
    struct timespec dictStart;
    clock_gettime(CLOCK_MONOTONIC, &dictStart);
    for (uint32_t i = 0; i < L->dictKeys; i++) {
        size_t kl = dictKey(key, i), vl = fillValue(val, &rng, 200);
        uint64_t ttl = i % 5 == 1 ? FZ_TTL_MS : i % 5 == 2 ? 3600000 : 0;
        if (i % 11 == 3) {
            BUILD(multidictIncr(d, key, kl, (int64_t)i, NULL));
            continue;
        }
        BUILD(multidictSetTTL(d, key, kl, val, vl, ttl));
    }
    for (uint32_t i = 0; i < L->dictKeys; i += 7) {
        size_t kl = dictKey(key, i);
        int rc = multidictDelete(d, key, kl);
        if (rc != DKSHM_OK && rc != DKSHM_NOTFOUND)
            BUILD(rc);
    }
    /* Entries that expire: written last, so that no later write of the
     * build reclaims them (the template must not depend on timing). */
    for (uint32_t i = L->dictKeys; i < L->dictKeys + 20; i++) {
        size_t kl = dictKey(key, i), vl = fillValue(val, &rng, 100);
        BUILD(multidictSetTTL(d, key, kl, val, vl, 1));
    }
    dopt = (multidictOptions){.shards = 2, .maxBytes = 16384};
    multidict *c;
    BUILD(multidictOpen(s, "fz.cache", &dopt, MULTIDICT_CREATE, &c));
    L->cacheKeys = 200 + (uint32_t)fzBelow(&rng, 200);
    for (uint32_t i = 0; i < L->cacheKeys; i++) {
        size_t kl = cacheKey(key, i), vl = fillValue(val, &rng, 300);
        BUILD(multidictSetTTL(c, key, kl, val, vl, i % 3 ? 0 : 3600000));
    }

    multimap *m;
    BUILD(multimapOpen(s, "fz.map", NULL, MULTIMAP_CREATE, &m));
    multimapStats ms = {0};
    uint32_t n = 0;
    uint32_t want = 2 + (uint32_t)fzBelow(&rng, 2) / 2;
    while (n < 60000) {
        size_t kl = mapKey(key, n), vl = fillValue(val, &rng, 24);
        BUILD(multimapInsert(m, key, kl, val, vl, MULTIMAP_UPSERT));
        n++;
        if (n % 512 == 0) {
            BUILD(multimapGetStats(m, &ms));
            if (ms.height >= want)
                break;
        }
    }
    for (uint32_t i = 5; i < n; i += 13) {
        size_t kl = mapKey(key, i);
        BUILD(multimapDelete(m, key, kl));
    }
    BUILD(multimapGetStats(m, &ms));
    L->mapKeys = n;
    L->mapHeight = ms.height;
    multimapOptions io = {.keyMode = MULTIMAP_KEYS_INT64};
    multimap *im;
    BUILD(multimapOpen(s, "fz.imap", &io, MULTIMAP_CREATE, &im));
    for (int64_t i = 0; i < 300; i++)
        BUILD(multimapInsertInt(im, i * 3 - 400, &i, sizeof i, 0));

    multilistOptions lo = {.maxItems = 5000};
    multilist *l;
    BUILD(multilistOpen(s, "fz.list", &lo, MULTILIST_CREATE, &l));
    L->listItems = 50 + (uint32_t)fzBelow(&rng, 250);
    for (uint32_t i = 0; i < L->listItems; i++) {
        size_t vl = fillValue(val, &rng, i % 17 == 0 ? 3000 : 100);
        BUILD(multilistPush(l, i % 3 ? MULTILIST_TAIL : MULTILIST_HEAD, val,
                            vl, MULTILIST_NOWAIT));
    }
    for (uint32_t i = 0; i < L->listItems / 4; i++) {
        size_t len;
        BUILD(multilistPopHead(l, val, sizeof val, &len));
    }

    multiarrayOptions ao = {.elemSize = 12};
    multiarray *a;
    BUILD(multiarrayOpen(s, "fz.arr", &ao, MULTIARRAY_CREATE, &a));
    L->arrItems = 100 + (uint32_t)fzBelow(&rng, 600);
    for (uint32_t i = 0; i < L->arrItems; i++) {
        uint8_t e[12];
        memset(e, (int)i, sizeof e);
        BUILD(multiarrayAppend(a, e, NULL));
    }

    OSRegulateOptions ro = {.maxHolders = 4, .burst = 10, .ratePerSec = 1000};
    OSRegulate *r;
    BUILD(OSRegulateOpen(s, "fz.reg", &ro, OSREGULATE_CREATE, &r));
    BUILD(OSRegulateTryAcquire(r));
    BUILD(OSRegulateRelease(r));
    BUILD(OSRegulateTryRate(r, 3));

    /* Raw blocks, each bound to a name so that none is a leak. */
    for (int i = 0; i < 24; i++) {
        dkoff off;
        size_t sz = i % 4 == 3 ? 4096 + (size_t)fzBelow(&rng, 20000)
                               : 1 + (size_t)fzBelow(&rng, 1500);
        BUILD(memboundAllocOff(mb, sz, &off));
        memset(dkshmPtr(s, off), 0x5a, sz);
        char nm[32];
        snprintf(nm, sizeof nm, "fz.raw.%d", i);
        BUILD(dkshmObjectCreate(s, nm, DKSHM_TYPE_USER + 1, off));
        size_t us = 0;
        BUILD(memboundUsableSize(mb, off, &us));
        addBlock(L, R_RAW, off, us);
        if (us <= MEMBOUND_SLAB_MAX)
            addBlock(L, R_SLAB, off & ~(uint64_t)(s->hdr->pageSize - 1), 64);
    }

    /* Where things are. */
    L->capacity = s->size;
    L->pageSize = s->hdr->pageSize;
    addBlock(L, R_HEADER, 0, sizeof(dkHeader));
    addBlock(L, R_PROCS, s->procTable, 4 * sizeof(dkProcSlot));
    addBlock(L, R_PROCS, s->procTable, (uint64_t)s->maxProcs *
                                           sizeof(dkProcSlot));
    addBlock(L, R_DIR, s->directory,
             (uint64_t)(s->hdr->objects + 1) * sizeof(dkDirEntry));
    /* The allocator's root (alloc/membound.c, mbRoot): the lock on its own
     * line, then magic, eight 32-bit geometry words, and the offsets of the
     * undo log, ctrl, links and the pages. Mirrored here, checked by the
     * magic. */
    dkoff ar = s->hdr->allocRoot;
    addBlock(L, R_AROOT, ar, 1280);
    if (ar && *(uint64_t *)dkshmPtr(s, ar + 64) == 0x31444e424d454d44ull) {
        uint32_t nPages = *(uint32_t *)dkshmPtr(s, ar + 84);
        dkoff undo = *(dkoff *)dkshmPtr(s, ar + 104);
        dkoff ctrl = *(dkoff *)dkshmPtr(s, ar + 112);
        dkoff links = *(dkoff *)dkshmPtr(s, ar + 120);
        addBlock(L, R_AROOT, undo, 256);
        addBlock(L, R_ATABLES, ctrl, nPages);
        addBlock(L, R_ATABLES, ctrl, nPages < 64 ? nPages : 64);
        addBlock(L, R_ATABLES, links, 8ull * nPages);
        addBlock(L, R_ATABLES, links, 8ull * (nPages < 64 ? nPages : 64));
    }
    dkoff root;
    if (dkshmObjectFind(s, "fz.reg", NULL, &root) == DKSHM_OK) {
        size_t us = 256;
        memboundUsableSize(mb, root, &us);
        addBlock(L, R_REG_ROOT, root, us);
    }
    /* Wait for the FZ_TTL_MS entries to expire. */
    for (;;) {
        struct timespec now, ms1 = {0, 1000000};
        clock_gettime(CLOCK_MONOTONIC, &now);
        if ((now.tv_sec - dictStart.tv_sec) * 1000 +
                (now.tv_nsec - dictStart.tv_nsec) / 1000000 >
            FZ_TTL_MS + 2)
            break;
        nanosleep(&ms1, NULL);
    }
    L->dictKeys += 20;
    BUILD(multidictForEachBlock(d, dictBlockCb, L));
    BUILD(multidictForEachBlock(c, dictBlockCb, L));
    BUILD(multimapForEachBlock(m, mapBlockCb, L));
    BUILD(multimapForEachBlock(im, mapBlockCb, L));
    BUILD(multilistForEachBlock(l, listBlockCb, L));
    BUILD(multiarrayForEachBlock(a, arrBlockCb, L));
    /* Slab headers of the small entries too. */
    for (uint32_t i = 0, nb = L->nBlocks; i < nb; i++)
        if ((L->b[i].region == R_DICT_ENTRY ||
             L->b[i].region == R_MAP_ENTRY) &&
            L->b[i].len <= 256 && i % 5 == 0)
            addBlock(L, R_SLAB, L->b[i].off & ~(uint64_t)(L->pageSize - 1),
                     64);
    multidictClose(d);
    multidictClose(c);
    multimapClose(m);
    multimapClose(im);
    multilistClose(l);
    multiarrayClose(a);
    OSRegulateClose(r);
    BUILD(dkshmDetach(s));
    L->ok = 1;
    return 0;
}

/* ---- reporting from children ------------------------------------------------ */

static bool fzStrict;      /* "none": every Check must pass */
static const char *fzStage; /* what the child is doing, for messages */

static void fzFail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fuzzSegment: expectation failed during %s: ", fzStage);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    _exit(FZ_EXIT_EXPECT);
}

/* RC must be a code of the table (or RECOVERED); with STRICT, OK. */
static int fzRc(int rc, const char *what, bool strict) {
    if (rc != DKSHM_OK && rc != DKSHM_RECOVERED &&
        strcmp(dkshmErrName(rc), "UNKNOWN") == 0)
        fzFail("%s returned %d, not a dkshm code", what, rc);
    if (strict && fzStrict && rc != DKSHM_OK && rc != DKSHM_RECOVERED)
        fzFail("%s returned %s on an undamaged segment", what,
               dkshmErrName(rc));
    return rc;
}
#define RC(call) (fzStage = #call, fzRc((call), #call, false))
#define RCS(call) (fzStage = #call, fzRc((call), #call, true))

static void fzCheckRc(int rc, const char *what, const char *why) {
    if (rc != DKSHM_OK && rc != DKSHM_CORRUPT && rc != DKSHM_BUSY &&
        rc != DKSHM_INVALID && rc != DKSHM_FULL && rc != DKSHM_READONLY &&
        rc != DKSHM_RECOVERED && rc != DKSHM_TIMEDOUT)
        fzFail("%s returned %s", what, dkshmErrName(rc));
    if (rc == DKSHM_CORRUPT && why[0] == '\0')
        fzFail("%s returned CORRUPT without a reason", what);
    if (fzStrict && rc != DKSHM_OK)
        fzFail("%s on an undamaged segment: %s (%s)", what, dkshmErrName(rc),
               why);
}
#define CHECK(fn, h)                                                           \
    do {                                                                       \
        char why_[256] = "";                                                   \
        fzStage = #fn;                                                         \
        fzCheckRc(fn((h), why_, sizeof why_), #fn, why_);                      \
    } while (0)

/* Touch every byte a read handed out, so a bad length shows. */
static volatile uint8_t fzSink;
static void touch(const void *p, size_t n) {
    const uint8_t *b = p;
    uint8_t x = 0;
    for (size_t i = 0; i < n; i++)
        x ^= b[i];
    fzSink ^= x;
}

static bool iterDict(void *ctx, const void *k, size_t kl, const void *v,
                     size_t vl) {
    touch(k, kl);
    touch(v, vl);
    return ++*(uint64_t *)ctx < 100000;
}
static int countBlock(void *ctx, dkoff off, uint64_t bytes, int kind) {
    (void)off, (void)bytes, (void)kind;
    ++*(uint64_t *)ctx;
    return 0;
}
static int countAlloc(void *ctx, dkoff off, uint64_t size) {
    (void)off, (void)size;
    ++*(uint64_t *)ctx;
    return 0;
}
static int listItem(void *ctx, uint64_t index, const void *item, size_t len) {
    (void)index;
    touch(item, len);
    ++*(uint64_t *)ctx;
    return 0;
}

/* ---- exercising a damaged segment (in a child) ----------------------------- */

static uint8_t fzBuf[1 << 16];

/* GET returned OK: the length must fit the buffer. */
static void lenOk(int rc, size_t len, size_t cap, const char *what) {
    if (rc == DKSHM_OK && len > cap)
        fzFail("%s: OK with length %zu over the %zu-byte buffer", what, len,
               cap);
    if (rc == DKSHM_OK)
        touch(fzBuf, len);
}

static void exerciseDict(dkshm *s, const char *name, uint32_t keys,
                         size_t (*mk)(char *, uint32_t), bool writes,
                         uint64_t *rng) {
    multidict *d = NULL;
    fzStage = "multidictOpen";
    int rc = RCS(multidictOpen(s, name, NULL, 0, &d));
    if (rc != DKSHM_OK)
        return;
    char key[64];
    size_t len;
    fzStage = "multidict reads";
    for (uint32_t i = 0; i < keys + 5; i++) {
        size_t kl = mk(key, i);
        rc = RC(multidictGet(d, key, kl, fzBuf, sizeof fzBuf, &len));
        lenOk(rc, len, sizeof fzBuf, "multidictGet");
        RC(multidictGet(d, key, kl, NULL, 0, &len));
    }
    uint64_t n = 0;
    RC(multidictCount(d, &n));
    n = 0;
    RC(multidictIterate(d, iterDict, &n));
    multidictStats st;
    RC(multidictGetStats(d, &st));
    for (uint32_t i = 0; i < 8; i++) {
        multidictShardStats ss;
        RC(multidictGetShardStats(d, i, &ss));
    }
    n = 0;
    fzStage = "multidictForEachBlock";
    RC(multidictForEachBlock(d, countBlock, &n));
    CHECK(multidictCheck, d);
    if (writes) {
        fzStage = "multidict writes";
        for (int i = 0; i < 40; i++) {
            uint32_t k = (uint32_t)fzBelow(rng, keys + 20);
            size_t kl = mk(key, k);
            size_t vl = fillValue(fzBuf, rng, 300);
            switch (fzBelow(rng, 7)) {
            case 0:
                RC(multidictSet(d, key, kl, fzBuf, vl));
                break;
            case 1:
                RC(multidictSetTTL(d, key, kl, fzBuf, vl, 1 + fzBelow(rng, 3)));
                break;
            case 2:
                RC(multidictDelete(d, key, kl));
                break;
            case 3:
                RC(multidictIncr(d, key, kl, 1, NULL));
                break;
            case 4:
                RC(multidictAdd(d, key, kl, fzBuf, vl));
                break;
            case 5:
                RC(multidictCompareAndSet(d, key, kl, fzBuf, 8, fzBuf, vl));
                break;
            default:
                RC(multidictReplace(d, key, kl, fzBuf, vl));
            }
        }
        if (fzBelow(rng, 8) == 0)
            RC(multidictClear(d));
        CHECK(multidictCheck, d);
    }
    multidictClose(d);
}

typedef struct mapIterCtx {
    uint64_t n;
} mapIterCtx;
static bool iterMap(void *ctx, const void *k, size_t kl, const void *v,
                    size_t vl) {
    touch(k, kl);
    touch(v, vl);
    return ++((mapIterCtx *)ctx)->n < 100000;
}

static void exerciseMap(dkshm *s, const char *name, uint32_t keys, bool ints,
                        bool writes, uint64_t *rng) {
    multimap *m = NULL;
    fzStage = "multimapOpen";
    int rc = RCS(multimapOpen(s, name, NULL, 0, &m));
    if (rc != DKSHM_OK)
        return;
    char key[512], kb[1024];
    size_t len, kl2;
    fzStage = "multimap reads";
    for (int i = 0; i < 200; i++) {
        uint32_t k = (uint32_t)fzBelow(rng, keys + 10);
        if (ints) {
            rc = RC(multimapLookupInt(m, (int64_t)k * 3 - 400, fzBuf,
                                      sizeof fzBuf, &len));
        } else {
            size_t kl = mapKey(key, k);
            rc = RC(multimapLookup(m, key, kl, fzBuf, sizeof fzBuf, &len));
        }
        lenOk(rc, len, sizeof fzBuf, "multimapLookup");
    }
    rc = RC(multimapFirst(m, kb, sizeof kb, &kl2, fzBuf, sizeof fzBuf, &len));
    lenOk(rc, kl2, sizeof kb, "multimapFirst key");
    lenOk(rc, len, sizeof fzBuf, "multimapFirst");
    rc = RC(multimapLast(m, kb, sizeof kb, &kl2, fzBuf, sizeof fzBuf, &len));
    lenOk(rc, len, sizeof fzBuf, "multimapLast");
    for (int how = MULTIMAP_GE; how <= MULTIMAP_LT; how++) {
        size_t kl = mapKey(key, (uint32_t)fzBelow(rng, keys));
        if (ints) {
            int64_t ik = (int64_t)fzBelow(rng, keys);
            memcpy(key, &ik, 8);
            kl = 8;
        }
        rc = RC(multimapSeek(m, (multimapSeekMode)how, key, kl, kb, sizeof kb,
                             &kl2, fzBuf, sizeof fzBuf, &len));
        lenOk(rc, kl2, sizeof kb, "multimapSeek key");
        lenOk(rc, len, sizeof fzBuf, "multimapSeek");
    }
    mapIterCtx it = {0};
    RC(multimapIterate(m, NULL, 0, 0, iterMap, &it));
    it.n = 90000;
    RC(multimapIterate(m, NULL, 0, MULTIMAP_ITER_REVERSE, iterMap, &it));
    if (!ints) {
        size_t kl = mapKey(key, (uint32_t)fzBelow(rng, keys));
        it.n = 99000;
        RC(multimapIterate(m, key, kl, MULTIMAP_ITER_EXCLUSIVE, iterMap, &it));
    }
    uint64_t n;
    RC(multimapCount(m, &n));
    multimapStats st;
    RC(multimapGetStats(m, &st));
    n = 0;
    fzStage = "multimapForEachBlock";
    RC(multimapForEachBlock(m, countBlock, &n));
    CHECK(multimapCheck, m);
    if (writes) {
        fzStage = "multimap writes";
        for (int i = 0; i < 60; i++) {
            uint32_t k = (uint32_t)fzBelow(rng, keys + 50);
            size_t vl = fillValue(fzBuf, rng, 40);
            if (ints) {
                if (fzBelow(rng, 3))
                    RC(multimapInsertInt(m, (int64_t)k * 3 - 400, fzBuf, vl,
                                         0));
                else
                    RC(multimapDeleteInt(m, (int64_t)k * 3 - 400));
                continue;
            }
            size_t kl = mapKey(key, k);
            if (fzBelow(rng, 3))
                RC(multimapInsert(m, key, kl, fzBuf, vl,
                                  (uint32_t)fzBelow(rng, 2)));
            else
                RC(multimapDelete(m, key, kl));
        }
        if (!ints && fzBelow(rng, 6) == 0) {
            multimap *dup = NULL;
            fzStage = "multimapDuplicate";
            if (RC(multimapDuplicate(m, "fz.mapcopy", &dup)) == DKSHM_OK) {
                CHECK(multimapCheck, dup);
                multimapClose(dup);
            }
        }
        CHECK(multimapCheck, m);
    }
    multimapClose(m);
}

static void exerciseList(dkshm *s, bool writes, uint64_t *rng) {
    multilist *l = NULL;
    fzStage = "multilistOpen";
    int rc = RCS(multilistOpen(s, "fz.list", NULL, 0, &l));
    if (rc != DKSHM_OK)
        return;
    size_t len;
    fzStage = "multilist reads";
    rc = RC(multilistPeek(l, MULTILIST_HEAD, fzBuf, sizeof fzBuf, &len));
    lenOk(rc, len, sizeof fzBuf, "multilistPeek");
    rc = RC(multilistPeek(l, MULTILIST_TAIL, fzBuf, sizeof fzBuf, &len));
    lenOk(rc, len, sizeof fzBuf, "multilistPeek");
    uint64_t n;
    RC(multilistCount(l, &n));
    multilistStats st;
    RC(multilistGetStats(l, &st));
    n = 0;
    fzStage = "multilistForEachItem";
    RC(multilistForEachItem(l, listItem, &n, UINT64_MAX));
    n = 0;
    fzStage = "multilistForEachBlock";
    RC(multilistForEachBlock(l, countBlock, &n));
    CHECK(multilistCheck, l);
    /* On a read-only handle these must say READONLY. */
    fzStage = "multilist pops";
    for (int i = 0; i < 20; i++) {
        uint32_t end = (uint32_t)fzBelow(rng, 2);
        rc = RC(multilistPop(l, end, fzBuf, sizeof fzBuf, &len,
                             MULTILIST_NOWAIT));
        lenOk(rc, len, sizeof fzBuf, "multilistPop");
    }
    if (writes) {
        fzStage = "multilist writes";
        for (int i = 0; i < 40; i++) {
            size_t vl = fillValue(fzBuf, rng, 500);
            RC(multilistPush(l, (uint32_t)fzBelow(rng, 2), fzBuf, vl,
                             MULTILIST_NOWAIT));
        }
        size_t lens[16], popped = 0;
        rc = RC(multilistPopMany(l, MULTILIST_HEAD, fzBuf, sizeof fzBuf, lens,
                                 16, &popped, MULTILIST_NOWAIT));
        if (rc == DKSHM_OK && popped > 16)
            fzFail("multilistPopMany: %zu items popped of 16", popped);
        if (fzBelow(rng, 4) == 0)
            RC(multilistTrim(l));
        CHECK(multilistCheck, l);
    }
    multilistClose(l);
}

static void exerciseArray(dkshm *s, uint32_t items, bool writes,
                          uint64_t *rng) {
    multiarray *a = NULL;
    fzStage = "multiarrayOpen";
    int rc = RCS(multiarrayOpen(s, "fz.arr", NULL, 0, &a));
    if (rc != DKSHM_OK)
        return;
    size_t es = 0;
    RC(multiarrayElemSize(a, &es));
    if (es > MULTIARRAY_ELEM_MAX)
        fzFail("multiarrayElemSize: %zu", es);
    fzStage = "multiarray reads";
    uint64_t n = 0;
    RC(multiarrayCount(a, &n));
    for (uint64_t i = 0; i < items + 5; i++)
        RC(multiarrayGet(a, i, fzBuf));
    RC(multiarrayGet(a, UINT64_MAX, fzBuf));
    multiarrayStats st;
    RC(multiarrayGetStats(a, &st));
    n = 0;
    fzStage = "multiarrayForEachBlock";
    RC(multiarrayForEachBlock(a, countBlock, &n));
    CHECK(multiarrayCheck, a);
    if (writes) {
        fzStage = "multiarray writes";
        memset(fzBuf, 0x33, 64);
        for (int i = 0; i < 30; i++) {
            uint64_t at = fzBelow(rng, items + 3);
            switch (fzBelow(rng, 4)) {
            case 0:
                RC(multiarraySet(a, at, fzBuf));
                break;
            case 1:
                RC(multiarrayAppend(a, fzBuf, NULL));
                break;
            case 2:
                RC(multiarrayInsert(a, at, fzBuf));
                break;
            default:
                RC(multiarrayDelete(a, at));
            }
        }
        CHECK(multiarrayCheck, a);
    }
    multiarrayClose(a);
}

static void exerciseRegulate(dkshm *s, bool writes) {
    OSRegulate *r = NULL;
    fzStage = "OSRegulateOpen";
    int rc = RCS(OSRegulateOpen(s, "fz.reg", NULL, 0, &r));
    if (rc != DKSHM_OK)
        return;
    OSRegulateStats st;
    fzStage = "OSRegulate reads";
    RC(OSRegulateGetStats(r, &st));
    CHECK(OSRegulateCheck, r);
    fzStage = "OSRegulate writes";
    if (RC(OSRegulateTryAcquire(r)) == DKSHM_OK)
        RC(OSRegulateRelease(r));
    RC(OSRegulateTryRate(r, 1));
    if (writes) {
        uint32_t got = 0;
        RC(OSRegulateReclaim(r, &got));
        if (RC(OSRegulateAcquire(r, 1000000)) == DKSHM_OK)
            RC(OSRegulateRelease(r));
        CHECK(OSRegulateCheck, r);
    }
    OSRegulateClose(r);
}

static void exerciseSegment(dkshm *s, const fzLayout *L, bool writes,
                            uint64_t *rng) {
    fzStage = "dkshm info";
    dkshmInfo info;
    RCS(dkshmGetInfo(s, &info));
    dkshmProcInfo procs[32];
    size_t count = 0;
    RC(dkshmProcList(s, procs, 32, &count));
    dkshmObjectInfo objs[80];
    RC(dkshmObjectList(s, objs, 80, &count));
    uint32_t type;
    dkoff root;
    RC(dkshmObjectFind(s, "fz.dict", &type, &root));
    RC(dkshmObjectFind(s, "fz.raw.3", &type, &root));
    membound *mb = memboundForSegment(s);
    if (mb) {
        fzStage = "memboundCheck";
        CHECK(memboundCheck, mb);
        memboundStats ms;
        fzStage = "membound stats";
        RC(memboundGetStats(mb, &ms));
        uint64_t n = 0;
        RC(memboundForEachAllocation(mb, countAlloc, &n));
        (void)memboundBytesUsed(mb);
        (void)memboundBytesAvailable(mb);
        (void)memboundCurrentAllocationCount(mb);
    }
    exerciseDict(s, "fz.dict", L->dictKeys, dictKey, writes, rng);
    exerciseDict(s, "fz.cache", L->cacheKeys, cacheKey, writes, rng);
    exerciseMap(s, "fz.map", L->mapKeys, false, writes, rng);
    exerciseMap(s, "fz.imap", 300, true, writes, rng);
    exerciseList(s, writes, rng);
    exerciseArray(s, L->arrItems, writes, rng);
    exerciseRegulate(s, writes);
    if (writes && mb) {
        fzStage = "membound writes";
        void *p[16];
        for (int i = 0; i < 16; i++)
            p[i] = memboundAlloc(mb, 1 + (size_t)fzBelow(rng, 9000));
        for (int i = 0; i < 16; i += 2)
            if (p[i])
                RC(memboundFree(mb, p[i]));
        dkoff off;
        if (RC(dkshmObjectRemove(s, "fz.raw.5", 0, &off)) == DKSHM_OK)
            RC(memboundFreeOff(mb, off));
        /* A block that the damage may have made a free-list member. */
        for (uint32_t i = 0; i < L->nBlocks; i++)
            if (L->b[i].region == R_RAW && fzBelow(rng, 4) == 0)
                RC(memboundFreeOff(mb, L->b[i].off));
        size_t reaped;
        fzStage = "dkshmReap";
        RC(dkshmReap(s, &reaped));
        fzStage = "memboundCheck after writes";
        CHECK(memboundCheck, mb);
    }
}

/* A fatal signal in a child: say where it was, then die of it. Not used
 * under ASan, whose own handler prints the stack. */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
static void onFatal(int sig) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "fuzzSegment: %s during %s\n",
                     strsignal(sig), fzStage ? fzStage : "?");
    if (n > 0)
        (void)!write(2, msg, (size_t)n);
    signal(sig, SIG_DFL);
    raise(sig);
}
#endif

static void catchFatal(void) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return;
#else
    int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGALRM};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        signal(sigs[i], onFatal);
#endif
}

static int childMain(const fzLayout *L, bool readOnly, uint64_t seed) {
    uint64_t rng = seed;
    catchFatal();
    fzGuardOn = true;
    fzStage = readOnly ? "dkshmAttach(RDONLY)" : "dkshmAttach";
    dkshm *s = NULL;
    int rc = RCS(dkshmAttach(fzSegName, readOnly ? DKSHM_RDONLY : 0, &s));
    if (rc != DKSHM_OK) {
        if (s)
            fzFail("attach failed with %s but gave a handle",
                   dkshmErrName(rc));
        return 0;
    }
    bool guarded = false;
    for (unsigned i = 0; i < sizeof fzGuarded / sizeof fzGuarded[0]; i++)
        guarded |= fzGuarded[i].p == s->base;
    if (!guarded)
        fzFail("the segment mapping has no guard pages (mmap not wrapped)");
    exerciseSegment(s, L, !readOnly, &rng);
    fzStage = "dkshmDetach";
    RC(dkshmDetach(s));
    return 0;
}

/* ---- databox ------------------------------------------------------------------ */

static int databoxChild(uint64_t seed) {
    uint64_t rng = seed;
    fzStage = "databoxDecode";
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = (size_t)fzBelow(&rng, 40);
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf)
            return 99;
        if (fzBelow(&rng, 2)) {
            /* A valid encoding, then mutated. */
            uint8_t enc[64], bytes[32];
            databox b;
            for (size_t i = 0; i < sizeof bytes; i++)
                bytes[i] = (uint8_t)fzRng(&rng);
            switch (fzBelow(&rng, 6)) {
            case 0:
                b = databoxNull();
                break;
            case 1:
                b = databoxBool(fzBelow(&rng, 2));
                break;
            case 2:
                b = databoxInt64((int64_t)fzRng(&rng) >> fzBelow(&rng, 64));
                break;
            case 3:
                b = databoxUint64(fzRng(&rng) >> fzBelow(&rng, 64));
                break;
            case 4:
                b = databoxDouble((double)(int64_t)fzRng(&rng) / 7.0);
                break;
            default:
                b = databoxBytes(bytes, (size_t)fzBelow(&rng, 33));
            }
            size_t w = 0;
            if (databoxEncode(&b, enc, sizeof enc, &w) != DKSHM_OK)
                fzFail("databoxEncode of a valid box failed");
            databox back;
            size_t used = 0;
            if (databoxDecode(enc, w, &back, &used) != DKSHM_OK ||
                used != w || !databoxEqual(&b, &back))
                fzFail("a valid encoding does not round-trip");
            len = w;
            free(buf);
            buf = malloc(len ? len : 1);
            if (!buf)
                return 99;
            memcpy(buf, enc, len);
            int muts = (int)fzBelow(&rng, 4);
            for (int k = 0; k < muts && len; k++)
                buf[fzBelow(&rng, len)] ^= (uint8_t)(1u << fzBelow(&rng, 8));
            if (fzBelow(&rng, 4) == 0 && len)
                len = (size_t)fzBelow(&rng, len); /* truncated */
        } else {
            for (size_t i = 0; i < len; i++)
                buf[i] = (uint8_t)fzRng(&rng);
        }
        databox out;
        size_t used = 0;
        int rc = databoxDecode(buf, len, &out, &used);
        if (rc == DKSHM_OK) {
            if (used == 0 || used > len)
                fzFail("databoxDecode: OK with %zu of %zu bytes used", used,
                       len);
            if (databoxValidate(&out) != DKSHM_OK)
                fzFail("databoxDecode: OK with an invalid box");
            if (out.type == DATABOX_BYTES) {
                const uint8_t *p = out.v.bytes.ptr;
                if (out.v.bytes.len &&
                    (p < buf || p + out.v.bytes.len > buf + used))
                    fzFail("databoxDecode: bytes outside the encoding");
                touch(p, out.v.bytes.len);
            }
            /* Canonical: encoding the decoded box gives the same bytes. */
            uint8_t again[64];
            size_t w = 0;
            if (used <= sizeof again &&
                (databoxEncode(&out, again, sizeof again, &w) != DKSHM_OK ||
                 w != used || memcmp(again, buf, used) != 0))
                fzFail("databoxDecode accepted a non-canonical encoding "
                       "(%zu bytes, type %u)", used, out.type);
        } else if (rc != DKSHM_CORRUPT && !(rc == DKSHM_INVALID && len == 0)) {
            fzFail("databoxDecode returned %s", dkshmErrName(rc));
        }
        free(buf);
    }
    return 0;
}

/* ---- the parent: damage, then run the children ------------------------------ */

typedef struct fzRun { /* per process */
    uint64_t seed;
    uint64_t iter;
    const fzTarget *target;
    const char *tool;
    char **toolEnv;
    bool verbose;
    char ops[512]; /* what the damage was */
} fzRun;

static void opsAdd(fzRun *r, const char *fmt, ...) {
    size_t n = strlen(r->ops);
    if (n + 64 >= sizeof r->ops)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->ops + n, sizeof r->ops - n, fmt, ap);
    va_end(ap);
}

static const fzBlock *pickBlock(const fzLayout *L, int region, uint64_t *rng) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < L->nBlocks; i++)
        n += region == 0 || (int)L->b[i].region == region;
    if (n == 0)
        return NULL;
    uint32_t k = (uint32_t)fzBelow(rng, n);
    for (uint32_t i = 0; i < L->nBlocks; i++)
        if ((region == 0 || (int)L->b[i].region == region) && k-- == 0)
            return &L->b[i];
    return NULL;
}

/* A value that code reading this word may find interesting. */
static uint64_t boundaryWord(const fzLayout *L, uint64_t *rng) {
    const fzBlock *b = pickBlock(L, 0, rng);
    uint64_t cap = L->capacity;
    uint64_t v[] = {0,        1,         ~0ull,     cap,
                    cap - 1,  cap - 8,   cap + 8,   1ull << 63,
                    1ull << 32, 0xffffffffull, 0x80000000ull, 4096,
                    b ? b->off : 8, b ? b->off + 1 : 9, b ? b->off + b->len : 16,
                    (uint64_t)L->pageSize - 1};
    return v[fzBelow(rng, sizeof v / sizeof v[0])];
}

/* One mutation inside [off, off+len) of MAP. */
static void mutate(fzRun *r, const fzLayout *L, uint8_t *map, uint64_t off,
                   uint64_t len, uint64_t *rng) {
    if (len == 0)
        return;
    uint64_t at = off + fzBelow(rng, len);
    switch (fzBelow(rng, 7)) {
    case 0: { /* bit flip */
        unsigned bit = (unsigned)fzBelow(rng, 8);
        map[at] ^= (uint8_t)(1u << bit);
        opsAdd(r, " flip@%#" PRIx64 ".%u", at, bit);
        break;
    }
    case 1: { /* random bytes */
        uint64_t n = 1 + fzBelow(rng, 8);
        for (uint64_t i = 0; i < n && at + i < off + len; i++)
            map[at + i] = (uint8_t)fzRng(rng);
        opsAdd(r, " bytes@%#" PRIx64 "x%" PRIu64, at, n);
        break;
    }
    case 2:
    case 3: { /* an aligned word: random or a boundary value */
        uint64_t w = (at & ~7ull);
        if (w < off || w + 8 > off + len)
            w = at;
        uint64_t v = fzBelow(rng, 2) ? fzRng(rng) : boundaryWord(L, rng);
        int width = fzBelow(rng, 2) ? 8 : 4;
        if (w + (uint64_t)width > L->capacity)
            break;
        if (width == 4)
            v &= 0xffffffffull;
        memcpy(map + w, &v, (size_t)width);
        opsAdd(r, " word%d@%#" PRIx64 "=%#" PRIx64, width * 8, w, v);
        break;
    }
    case 4: { /* zero a range */
        uint64_t n = 1 + fzBelow(rng, len - (at - off) < 512 ? len - (at - off)
                                                             : 512);
        memset(map + at, 0, n);
        opsAdd(r, " zero@%#" PRIx64 "x%" PRIu64, at, n);
        break;
    }
    case 5: { /* copy another block of the same kind over this one */
        const fzBlock *src = NULL;
        for (uint32_t i = 0; i < L->nBlocks && !src; i++)
            if (L->b[i].off <= off && off < L->b[i].off + L->b[i].len)
                src = pickBlock(L, (int)L->b[i].region, rng);
        if (!src)
            src = pickBlock(L, 0, rng);
        if (!src || src->off == off)
            break;
        uint64_t n = len < src->len ? len : src->len;
        if (n > 4096)
            n = 4096;
        memmove(map + off, map + src->off, n);
        opsAdd(r, " copy%#" PRIx64 "->%#" PRIx64 "x%" PRIu64, src->off, off,
               n);
        break;
    }
    default: { /* a 32-bit counter or length nudged */
        uint64_t w = at & ~3ull;
        if (w < off || w + 4 > off + len)
            break;
        uint32_t v;
        memcpy(&v, map + w, 4);
        v += (uint32_t)(fzBelow(rng, 2) ? 1 : -1);
        memcpy(map + w, &v, 4);
        opsAdd(r, " nudge@%#" PRIx64, w);
    }
    }
}

static uint64_t hdrChecksum(const dkHeader *h) {
    return XXH3_64bits(h, offsetof(dkHeader, checksum));
}

static void damageHeaderFields(fzRun *r, const fzLayout *L, uint8_t *map,
                               uint64_t *rng) {
    dkHeader *h = (dkHeader *)map;
    int n = 1 + (int)fzBelow(rng, 2);
    for (int i = 0; i < n; i++) {
        uint64_t v = boundaryWord(L, rng);
        switch (fzBelow(rng, 12)) {
        case 0:
            h->capacity = v;
            opsAdd(r, " capacity=%#" PRIx64, v);
            break;
        case 1:
            h->maxProcs = (uint32_t)v;
            opsAdd(r, " maxProcs=%#x", (unsigned)h->maxProcs);
            break;
        case 2:
            h->maxObjects = (uint32_t)v;
            opsAdd(r, " maxObjects=%#x", (unsigned)h->maxObjects);
            break;
        case 3:
            h->procTable = v;
            opsAdd(r, " procTable=%#" PRIx64, v);
            break;
        case 4:
            h->directory = v;
            opsAdd(r, " directory=%#" PRIx64, v);
            break;
        case 5:
            h->heap = v;
            opsAdd(r, " heap=%#" PRIx64, v);
            break;
        case 6:
            h->heapSize = v;
            opsAdd(r, " heapSize=%#" PRIx64, v);
            break;
        case 7:
            h->pageSize = (uint32_t)v;
            opsAdd(r, " pageSize=%#x", (unsigned)h->pageSize);
            break;
        case 8:
            h->format = (uint32_t)v;
            opsAdd(r, " format=%#x", (unsigned)h->format);
            break;
        case 9:
            h->objects = (uint32_t)v;
            opsAdd(r, " objects=%#x", (unsigned)h->objects);
            break;
        case 10:
            h->allocRoot = v;
            opsAdd(r, " allocRoot=%#" PRIx64, v);
            break;
        default:
            h->initState = fzBelow(rng, 2) ? DK_INIT_BUSY : (uint32_t)v;
            opsAdd(r, " initState=%#x", (unsigned)h->initState);
        }
    }
    h->checksum = hdrChecksum(h);
}

/* Copy the template into the fuzz segment and damage it. */
static int prepare(fzRun *r, const fzLayout *L, const uint8_t *tpl,
                   const uint32_t *pages, uint32_t nPages, uint64_t *rng) {
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", fzSegName);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW, 0600);
    if (fd < 0 || ftruncate(fd, 0) != 0 ||
        ftruncate(fd, (off_t)L->capacity) != 0) {
        perror("fuzzSegment: segment file");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    for (uint32_t i = 0; i < nPages; i++) {
        off_t o = (off_t)pages[i] * L->pageSize;
        if (pwrite(fd, tpl + o, L->pageSize, o) != (ssize_t)L->pageSize) {
            perror("fuzzSegment: pwrite");
            close(fd);
            return -1;
        }
    }
    r->ops[0] = '\0';
    const fzTarget *t = r->target;
    uint8_t *map = mmap(NULL, L->capacity, PROT_READ | PROT_WRITE, MAP_SHARED,
                        fd, 0);
    if (map == MAP_FAILED) {
        perror("fuzzSegment: mmap");
        close(fd);
        return -1;
    }
    if (strcmp(t->name, "hdrfield") == 0) {
        damageHeaderFields(r, L, map, rng);
    } else if (strcmp(t->name, "file") == 0) {
        /* Below. */
    } else if (strcmp(t->name, "none") != 0) {
        int hits = 1 + (int)fzBelow(rng, 6);
        for (int h = 0; h < hits; h++) {
            const fzBlock *b = pickBlock(L, t->region, rng);
            if (!b)
                break;
            uint64_t off = b->off, len = b->len;
            /* Most damage near the start of a block, where the headers
             * are. */
            if (fzBelow(rng, 2) && len > 64)
                len = 64;
            /* The fixed header is checksummed: mostly the mutable part. */
            if (t->region == R_HEADER && fzBelow(rng, 4) != 0) {
                off = 128;
                len = sizeof(dkHeader) - 128;
            }
            mutate(r, L, map, off, len, rng);
        }
    }
    munmap(map, L->capacity);
    if (strcmp(t->name, "file") == 0) {
        uint64_t sizes[] = {0,
                            1,
                            100,
                            sizeof(dkHeader),
                            4096,
                            L->capacity / 2,
                            L->capacity - L->pageSize,
                            L->capacity - 1,
                            L->capacity + 1,
                            L->capacity + L->pageSize,
                            2 * L->capacity,
                            fzBelow(rng, 2 * L->capacity)};
        uint64_t sz = sizes[fzBelow(rng, sizeof sizes / sizeof sizes[0])];
        if (ftruncate(fd, (off_t)sz) != 0) {
            perror("fuzzSegment: ftruncate");
            close(fd);
            return -1;
        }
        opsAdd(r, " size=%" PRIu64, sz);
    }
    close(fd);
    return 0;
}

static void report(const fzRun *r, const char *who, int st) {
    fprintf(stderr,
            "FAIL: %s: %s, target %s, seed %#" PRIx64 " iteration %" PRIu64
            "\n      damage:%s\n      replay: fuzzSegment --seed %#" PRIx64
            " --start %" PRIu64 " --iterations 1 --target %s\n",
            who,
            st == 124           ? "hung (killed by the alarm)"
            : st >= 128         ? strsignal(st - 128)
            : st == FZ_EXIT_EXPECT ? "failed an expectation"
                                   : "exited with an unexpected status",
            r->target->name, r->seed, r->iter, r->ops[0] ? r->ops : " none",
            r->seed, r->iter, r->target->name);
    if (st < 128 && st != 124 && st != FZ_EXIT_EXPECT)
        fprintf(stderr, "      (status %d)\n", st);
}

/* Wait for PID, killing it after the alarm: exit status, 128 + signal,
 * or 124 for a hang. */
static int waitChild(pid_t pid, int seconds) {
    int st;
    time_t t0 = time(NULL);
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            return -1;
        if (time(NULL) - t0 > seconds + 2) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return 124;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return WTERMSIG(st) == SIGALRM ? 124 : 128 + WTERMSIG(st);
    return -1;
}

static int runLibChild(const fzLayout *L, bool readOnly, uint64_t seed) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        alarm(FZ_CHILD_SECONDS);
        _exit(childMain(L, readOnly, seed));
    }
    return waitChild(pid, FZ_CHILD_SECONDS);
}

static int runTool(const fzRun *r, const char *cmd, bool json) {
    char errPath[] = "/tmp/fuzzSegment-err-XXXXXX";
    int efd = mkstemp(errPath);
    if (efd < 0)
        return -1;
    unlink(errPath);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0)
            dup2(nul, 1);
        dup2(efd, 2);
        alarm(FZ_CHILD_SECONDS);
        char *argv[] = {(char *)r->tool, (char *)cmd, (char *)fzSegName + 1,
                        json ? "--json" : NULL, NULL};
        execve(r->tool, argv, r->toolEnv);
        _exit(127);
    }
    int st = waitChild(pid, FZ_CHILD_SECONDS);
    bool bad = !(st == 0 || st == 1 || st == 3);
    if (bad || r->verbose) {
        char buf[4096];
        ssize_t n = pread(efd, buf, sizeof buf - 1, 0);
        if (n > 0) {
            buf[n] = '\0';
            fprintf(stderr, "      dkshm-tool %s stderr:\n%s", cmd, buf);
        }
    }
    close(efd);
    return st;
}

/* Build template number TPL into L and TPLBUF; returns the non-zero pages. */
static int makeTemplate(fzLayout *L, uint64_t seed, uint64_t tpl, uint8_t *buf,
                        uint32_t *pages, uint32_t *nPages) {
    memset(L, 0, sizeof *L);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        alarm(60);
        _exit(buildTemplate(L, fzMix(seed, ~tpl)));
    }
    int st = waitChild(pid, 60);
    if (st != 0 || !L->ok) {
        fprintf(stderr, "fuzzSegment: building template %" PRIu64
                        " failed (status %d)\n", tpl, st);
        return -1;
    }
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", fzTplName);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    uint64_t got = 0;
    while (got < L->capacity) {
        ssize_t n = pread(fd, buf + got, L->capacity - got, (off_t)got);
        if (n <= 0)
            break;
        got += (uint64_t)n;
    }
    close(fd);
    dkshmUnlink(fzTplName);
    if (got != L->capacity)
        return -1;
    *nPages = 0;
    for (uint64_t p = 0; p < L->capacity / L->pageSize; p++) {
        const uint8_t *pg = buf + p * L->pageSize;
        bool zero = true;
        for (uint32_t i = 0; i < L->pageSize && zero; i += 8)
            zero = *(const uint64_t *)(pg + i) == 0;
        if (!zero)
            pages[(*nPages)++] = (uint32_t)p;
    }
    return 0;
}

static int runDatabox(fzRun *r, uint64_t seed) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        alarm(FZ_CHILD_SECONDS);
        catchFatal();
        _exit(databoxChild(seed));
    }
    int st = waitChild(pid, FZ_CHILD_SECONDS);
    if (st != 0)
        report(r, "databoxDecode", st);
    return st;
}

static void usage(void) {
    fprintf(stderr,
            "usage: fuzzSegment [--seconds S] [--iterations N] [--seed X] "
            "[--start I]\n"
            "                   [--target NAME] [--skip NAME]... "
            "[--keep-going] [--tool PATH]\n"
            "                   [--list] [--verbose]\n");
}

static const fzTarget *findTarget(const char *name) {
    for (size_t i = 0; i < FZ_NTARGETS; i++)
        if (strcmp(fzTargets[i].name, name) == 0)
            return &fzTargets[i];
    return NULL;
}

/* The environment for dkshm-tool: sanitizers exit with a status the tool
 * never uses, so a report is not mistaken for "check found problems". */
static char **toolEnvironment(void) {
    extern char **environ;
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 3, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    const char *asan = getenv("ASAN_OPTIONS"), *ubsan = getenv("UBSAN_OPTIONS");
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "ASAN_OPTIONS=", 13) != 0 &&
            strncmp(environ[i], "UBSAN_OPTIONS=", 14) != 0)
            env[k++] = environ[i];
    static char a[1024], u[1024];
    snprintf(a, sizeof a, "ASAN_OPTIONS=%s%sexitcode=%d", asan ? asan : "",
             asan && *asan ? ":" : "", FZ_TOOL_ASAN_EXIT);
    snprintf(u, sizeof u, "UBSAN_OPTIONS=%s%sexitcode=%d", ubsan ? ubsan : "",
             ubsan && *ubsan ? ":" : "", FZ_TOOL_ASAN_EXIT);
    env[k++] = a;
    env[k++] = u;
    env[k] = NULL;
    return env;
}

int main(int argc, char **argv) {
    double seconds = -1;
    long long iterations = -1;
    uint64_t seed = 0, start = 0;
    bool haveSeed = false, keepGoing = false;
    const fzTarget *only = NULL;
    bool skip[FZ_NTARGETS] = {false};
    fzRun run = {0};
    run.tool = getenv("DKSHM_TOOL");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--seconds") == 0 && v) {
            seconds = strtod(v, NULL);
            i++;
        } else if (strcmp(a, "--iterations") == 0 && v) {
            iterations = strtoll(v, NULL, 0);
            i++;
        } else if (strcmp(a, "--seed") == 0 && v) {
            seed = strtoull(v, NULL, 0);
            haveSeed = true;
            i++;
        } else if (strcmp(a, "--start") == 0 && v) {
            start = strtoull(v, NULL, 0);
            i++;
        } else if ((strcmp(a, "--target") == 0 || strcmp(a, "--skip") == 0) &&
                   v) {
            const fzTarget *t = strcmp(v, "all") == 0 ? NULL : findTarget(v);
            if (!t && strcmp(v, "all") != 0) {
                fprintf(stderr, "fuzzSegment: no target %s (see --list)\n", v);
                return 2;
            }
            if (a[2] == 't')
                only = t;
            else if (t)
                skip[t - fzTargets] = true;
            i++;
        } else if (strcmp(a, "--tool") == 0 && v) {
            run.tool = v;
            i++;
        } else if (strcmp(a, "--keep-going") == 0) {
            keepGoing = true;
        } else if (strcmp(a, "--verbose") == 0) {
            run.verbose = true;
        } else if (strcmp(a, "--list") == 0) {
            for (size_t t = 0; t < FZ_NTARGETS; t++)
                printf("%-12s %s\n", fzTargets[t].name, fzTargets[t].what);
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    if (seconds < 0 && iterations < 0)
        seconds = 10;
    if (!haveSeed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = fzMix((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20),
                     (uint64_t)getpid());
    }
    if (run.tool && (run.tool[0] == '\0' || access(run.tool, X_OK) != 0)) {
        fprintf(stderr, "fuzzSegment: %s is not executable: tool skipped\n",
                run.tool);
        run.tool = NULL;
    }
    if (!run.tool)
        printf("fuzzSegment: no dkshm-tool (--tool or DKSHM_TOOL): its runs "
               "are skipped\n");
    run.toolEnv = toolEnvironment();

    static char segName[64], tplName[64];
    snprintf(segName, sizeof segName, "/dkfz-%d", (int)getpid());
    snprintf(tplName, sizeof tplName, "/dkfz-%d-t", (int)getpid());
    fzSegName = segName;
    fzTplName = tplName;

    fzLayout *L = mmap(NULL, sizeof *L, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    uint8_t *tpl = malloc(FZ_CAPACITY);
    uint32_t *pages = malloc(sizeof *pages * (FZ_CAPACITY / 4096));
    if (L == MAP_FAILED || !tpl || !pages || !run.toolEnv) {
        perror("fuzzSegment");
        return 99;
    }

    /* The targets this run draws from. */
    const fzTarget *pool[FZ_NTARGETS];
    size_t nPool = 0;
    for (size_t t = 0; t < FZ_NTARGETS; t++) {
        if (only && &fzTargets[t] != only)
            continue;
        if (skip[t]) {
            printf("fuzzSegment: target %s skipped\n", fzTargets[t].name);
            continue;
        }
        pool[nPool++] = &fzTargets[t];
    }
    printf("fuzzSegment: seed %#" PRIx64 ", target %s, %s%g s, %lld "
           "iterations at most\n",
           seed, only ? only->name : "all", seconds < 0 ? "no limit " : "",
           seconds < 0 ? 0 : seconds, iterations);
    fflush(stdout);

    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t curTpl = UINT64_MAX;
    uint32_t nPages = 0;
    uint64_t done = 0, failures = 0;
    uint64_t perTarget[FZ_NTARGETS] = {0};
    int status = 0;
    for (uint64_t it = start; nPool > 0; it++) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        double el = (double)(now.tv_sec - t0.tv_sec) +
                    (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
        if (iterations >= 0 && done >= (uint64_t)iterations)
            break;
        if (seconds >= 0 && el >= seconds)
            break;
        uint64_t rng = fzMix(seed, it);
        run.seed = seed;
        run.iter = it;
        run.target = pool[fzBelow(&rng, nPool)];
        perTarget[run.target - fzTargets]++;
        done++;
        if (strcmp(run.target->name, "databox") == 0) {
            run.ops[0] = '\0';
            if (runDatabox(&run, fzRng(&rng)) != 0) {
                failures++;
                if (!keepGoing)
                    break;
            }
            continue;
        }
        if (curTpl != it / FZ_TEMPLATE_EVERY) {
            curTpl = it / FZ_TEMPLATE_EVERY;
            if (makeTemplate(L, seed, curTpl, tpl, pages, &nPages) != 0) {
                status = 99;
                break;
            }
            if (run.verbose)
                printf("template %" PRIu64 ": dict %u, cache %u, map %u keys "
                       "(height %u), list %u, array %u, %u blocks\n",
                       curTpl, L->dictKeys, L->cacheKeys, L->mapKeys,
                       L->mapHeight, L->listItems, L->arrItems, L->nBlocks);
        }
        if (prepare(&run, L, tpl, pages, nPages, &rng) != 0) {
            status = 99;
            break;
        }
        if (run.verbose)
            printf("iteration %" PRIu64 " %s:%s\n", it, run.target->name,
                   run.ops);
        fzStrict = strcmp(run.target->name, "none") == 0;
        uint64_t childSeed = fzRng(&rng);
        bool failed = false;
        int st = runLibChild(L, true, childSeed);
        if (st != 0) {
            report(&run, "read-only attach and reads", st);
            failed = true;
        }
        if (run.tool) {
            st = runTool(&run, "check", true);
            if (!(st == 0 || st == 1 || st == 3) ||
                (fzStrict && st != 0)) {
                report(&run, "dkshm-tool check --json", st);
                failed = true;
            }
            st = runTool(&run, "dump", false);
            if (!(st == 0 || st == 1 || st == 3) ||
                (fzStrict && st != 0)) {
                report(&run, "dkshm-tool dump", st);
                failed = true;
            }
        }
        st = runLibChild(L, false, childSeed);
        if (st != 0) {
            report(&run, "read-write attach, reads and writes", st);
            failed = true;
        }
        if (failed) {
            failures++;
            if (!keepGoing)
                break;
        }
    }
    dkshmUnlink(fzSegName);
    dkshmUnlink(fzTplName);
    clock_gettime(CLOCK_MONOTONIC, &now);
    printf("fuzzSegment: %" PRIu64 " iterations in %.1f s, %" PRIu64
           " failed (seed %#" PRIx64 ")\n",
           done,
           (double)(now.tv_sec - t0.tv_sec) +
               (double)(now.tv_nsec - t0.tv_nsec) / 1e9,
           failures, seed);
    if (run.verbose)
        for (size_t t = 0; t < FZ_NTARGETS; t++)
            printf("  %-12s %" PRIu64 "\n", fzTargets[t].name, perTarget[t]);
    munmap(L, sizeof *L);
    free(tpl);
    free(pages);
    free(run.toolEnv);
    if (status)
        return status;
    return failures ? 1 : 0;
}
