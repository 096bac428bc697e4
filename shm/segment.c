/* segment.c — creating, attaching and leaving segments; the process table.
 *
 * CREATION. The creator makes the file with O_CREAT|O_EXCL (glibc's
 * shm_open adds O_NOFOLLOW|O_CLOEXEC), takes an OFD write lock on its first
 * byte, sizes it (sparse), commits only the metadata pages, writes the
 * header with initState BUSY, lets the allocator lay out the heap (a hook:
 * the allocator is a higher layer), then publishes initState READY and drops
 * the lock. An attacher takes an OFD read lock before it reads the header:
 * while the creator works it cannot get one, and once it has one, a header
 * that is not READY can only mean the creator died (the kernel dropped its
 * lock). dkshmOpen then takes the initialisation over; dkshmAttach reports
 * the segment as damaged.
 *
 * ATTACH reads the header with pread into local memory and validates magic,
 * layout version, format word, checksum, size against the file and every
 * offset of the layout before mapping anything, so a truncated, foreign or
 * damaged file is an error, never a SIGBUS or a wild read. Mapping touches
 * no data page.
 *
 * PROCESS TABLE. Each read-write handle registers a slot: (state, pid) in
 * one 64-bit word claimed by CAS, the pid's start time, uid, attach time and
 * a generation bumped at every registration. Lock words name (slot, gen), so
 * a lock held by a process whose slot was since reaped or reused is known to
 * have a dead owner. A forked child registers its own slot the first time it
 * locks anything (dkForkGeneration, bumped by an atfork handler, tells it).
 *
 * REAPING turns a dead LIVE slot DEAD (one CAS, so one reaper wins), bumps
 * its generation, clears its read holds, asks the allocator to free its
 * in-flight blocks (under the allocator's lock and undo log, checking the
 * slot is still DEAD), and frees the slot. A reaper killed half-way leaves
 * a DEAD slot that the next reaper finishes.
 */
#include "config.h"

#include "segmentInternal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#define ATTACH_WAIT_NS (5ull * 1000000000ull)
#define EMPTY_WAIT_NS (200ull * 1000000ull)

uint64_t dkForkGeneration;
DK_TLS_FAST uint32_t dkTempId;
static pthread_once_t forkOnce = PTHREAD_ONCE_INIT;
/* Serialises registration between threads of this process. */
static pthread_mutex_t registerLock = PTHREAD_MUTEX_INITIALIZER;
static dkLayerHooks layerHooks;

static void resetPendingMarks(void);

static void afterForkChild(void) {
    __atomic_add_fetch(&dkForkGeneration, 1, __ATOMIC_RELAXED);
    resetPendingMarks();
    pthread_mutex_init(&registerLock, NULL);
}

static void installForkHandler(void) {
    pthread_atfork(NULL, NULL, afterForkChild);
}

void dkSetLayerHooks(const dkLayerHooks *h) {
    layerHooks = *h;
}

/* ---- names and layout --------------------------------------------------- */

DKSHM_API int dkshmValidateName(const char *name) {
    if (!name || name[0] != '/')
        return DKSHM_INVALID;
    size_t n = 0;
    bool allDots = true;
    for (const char *p = name + 1; *p; p++, n++) {
        char c = *p;
        if (n >= DKSHM_NAME_MAX - 1)
            return DKSHM_INVALID;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return DKSHM_INVALID;
        if (c != '.')
            allDots = false;
    }
    return (n == 0 || allDots) ? DKSHM_INVALID : DKSHM_OK;
}

typedef struct layout { /* per process: where things go in a new segment */
    uint64_t capacity;
    uint32_t maxProcs, maxObjects, pageSize, mode, flags;
    dkoff procTable, directory, heap;
    uint64_t heapSize;
} layout;

static uint64_t roundUp(uint64_t v, uint64_t to) {
    return (v + to - 1) / to * to;
}

static int planLayout(uint64_t capacity, const dkshmOptions *opt, layout *l) {
    dkshmOptions o = opt ? *opt : (dkshmOptions){0};
    if (o.flags & ~DKSHM_EPHEMERAL)
        return DKSHM_INVALID;
    if (o.mode & ~0777u)
        return DKSHM_INVALID;
    l->mode = o.mode ? o.mode : 0600;
    l->flags = o.flags;
    l->maxProcs = o.maxProcs ? o.maxProcs : DKSHM_DEFAULT_PROCS;
    l->maxObjects = o.maxObjects ? o.maxObjects : DKSHM_DEFAULT_OBJECTS;
    if (l->maxProcs > DKSHM_MAX_PROCS || l->maxObjects > DKSHM_MAX_OBJECTS)
        return DKSHM_INVALID;
    if (capacity < DKSHM_MIN_CAPACITY || capacity > DKSHM_MAX_CAPACITY)
        return DKSHM_INVALID;
    long ps = sysconf(_SC_PAGESIZE);
    l->pageSize = ps > 0 ? (uint32_t)ps : 4096;
    if (sizeof(dkHeader) > l->pageSize)
        return DKSHM_INVALID;
    l->capacity = roundUp(capacity, l->pageSize);
    l->procTable = l->pageSize;
    l->directory = roundUp(l->procTable + (uint64_t)l->maxProcs *
                                              sizeof(dkProcSlot),
                           l->pageSize);
    l->heap = roundUp(l->directory + (uint64_t)l->maxObjects *
                                         sizeof(dkDirEntry),
                      l->pageSize);
    /* The heap must leave the allocator room to work with. */
    if (l->heap + 16ull * l->pageSize > l->capacity)
        return DKSHM_INVALID;
    l->heapSize = l->capacity - l->heap;
    return DKSHM_OK;
}

static uint64_t headerChecksum(const dkHeader *h) {
    return XXH3_64bits(h, offsetof(dkHeader, checksum));
}

/* Validate a header copied out of a file of FILESIZE bytes; *OUT (may be
 * NULL) gets the layout it describes. */
static int checkHeader(const dkHeader *h, uint64_t fileSize, layout *out) {
    if (h->magic != DK_MAGIC)
        return DKSHM_CORRUPT;
    if (h->layoutVersion != DK_LAYOUT_VERSION || h->format != DK_FORMAT)
        return DKSHM_VERSION;
    if (h->checksum != headerChecksum(h))
        return DKSHM_CORRUPT;
    if (fileSize && h->capacity != fileSize)
        return DKSHM_CORRUPT;
    layout l;
    dkshmOptions o = {.maxProcs = h->maxProcs, .maxObjects = h->maxObjects,
                      .flags = h->flags, .mode = 0600};
    if (h->maxProcs == 0 || h->maxObjects == 0 ||
        planLayout(h->capacity, &o, &l) != DKSHM_OK ||
        l.pageSize != h->pageSize || l.capacity != h->capacity ||
        l.procTable != h->procTable || l.directory != h->directory ||
        l.heap != h->heap || l.heapSize != h->heapSize)
        return DKSHM_CORRUPT;
    if (out)
        *out = l;
    return DKSHM_OK;
}

/* ---- process table ------------------------------------------------------ */

static inline uint64_t slotWord(uint32_t state, uint32_t pid) {
    return ((uint64_t)state << 32) | pid;
}

/* Finish freeing a DEAD slot: the locks it held (recovered), its read
 * holds, its in-flight blocks, then the slot. WITHHOOK false skips slots
 * that need locks taken (used while registering, when we have no id). */
static bool finishReap(dkshm *s, uint32_t i, bool withHook,
                       bool *corrupt) {
    dkProcSlot *p = dkSlotAt(s, i);
    /* Locks first: rolling back a dead operation can put blocks back in
     * its in-flight list, which must then be freed too. */
    int rc = dkRecoverHeld(s, i, withHook);
    if (rc == DKSHM_CORRUPT)
        *corrupt = true;
    if (rc != DKSHM_OK)
        return false;
    bool inflight = false;
    for (int j = 0; j < DK_INFLIGHT_MAX; j++) {
        uint64_t e = __atomic_load_n(&p->inflight[j], __ATOMIC_RELAXED);
        if (e && !dkInflightIsBlock(e)) /* a claim or held mark: no block */
            __atomic_store_n(&p->inflight[j], 0, __ATOMIC_RELAXED);
        else if (e)
            inflight = true;
    }
    if (inflight) {
        if (!withHook)
            return false;
        if (!layerHooks.reclaim || layerHooks.reclaim(s, i) < 0)
            return false;
    }
    for (int j = 0; j < DKSHM_READ_SLOTS; j++)
        __atomic_store_n(&p->rdHold[j], 0, __ATOMIC_RELAXED);
    dkCondWaitRelease(s, p);
    uint64_t w = __atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
    return (w >> 32) == DKSHM_PROC_DEAD &&
           __atomic_compare_exchange_n(&p->word, &w, 0, false,
                                       __ATOMIC_RELEASE, __ATOMIC_RELAXED);
}

/* Mark slot I DEAD if its process is gone; true if it is (now) DEAD. */
static bool markDead(dkshm *s, uint32_t i) {
    dkProcSlot *p = dkSlotAt(s, i);
    uint64_t w = __atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
    uint32_t state = (uint32_t)(w >> 32), pid = (uint32_t)w;
    if (state == DKSHM_PROC_DEAD)
        return true;
    if (state != DKSHM_PROC_LIVE && state != DKSHM_PROC_CLAIMING)
        return false;
    uint64_t start = state == DKSHM_PROC_LIVE
                         ? __atomic_load_n(&p->startTime, __ATOMIC_RELAXED)
                         : 0;
    if (dkProcAlive(pid, start))
        return false;
    if (!__atomic_compare_exchange_n(&p->word, &w,
                                     slotWord(DKSHM_PROC_DEAD, pid), false,
                                     __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
        return false;
    /* Lock words naming (slot, old gen) now name a dead owner for sure. */
    __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
    return true;
}

/* Passes until one frees nothing more: freeing a slot can unblock one
 * met earlier in the pass (a lock that the later one held). */
static size_t reapAll(dkshm *s, bool withHook, bool *corrupt) {
    size_t n = 0;
    for (;;) {
        size_t freed = 0;
        bool left = false;
        for (uint32_t i = 0; i < s->maxProcs; i++) {
            if (!markDead(s, i))
                continue;
            if (finishReap(s, i, withHook, corrupt))
                freed++;
            else
                left = true;
        }
        n += freed;
        if (!left || freed == 0)
            return n;
    }
}

static int claimSlot(dkshm *s, uint32_t pid, uint32_t *out) {
    for (int round = 0; round < 2; round++) {
        for (uint32_t i = 0; i < s->maxProcs; i++) {
            dkProcSlot *p = dkSlotAt(s, i);
            uint64_t w = __atomic_load_n(&p->word, __ATOMIC_RELAXED);
            if (w == 0 &&
                __atomic_compare_exchange_n(
                    &p->word, &w, slotWord(DKSHM_PROC_CLAIMING, pid), false,
                    __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
                *out = i;
                return DKSHM_OK;
            }
        }
        bool corrupt = false;
        if (reapAll(s, false, &corrupt) > 0)
            continue;
        /* Every slot is live, or dead with locks or in-flight blocks that
         * only a locker can release: be that locker, without a slot, or a
         * pool that nobody reaps would run out of slots. */
        dkTempId = DK_ID_RAWPID | pid;
        size_t freed = reapAll(s, true, &corrupt);
        dkTempId = 0;
        if (freed == 0)
            break;
    }
    return DKSHM_FULL;
}

int dkSelfId(dkshm *s, uint32_t *id) {
    if (s->readOnly)
        return DKSHM_READONLY;
    if (dkTempId) { /* claimSlot's reap, below, holds registerLock */
        *id = dkTempId;
        return DKSHM_OK;
    }
    pthread_once(&forkOnce, installForkHandler);
    pthread_mutex_lock(&registerLock);
    uint64_t fg = __atomic_load_n(&dkForkGeneration, __ATOMIC_RELAXED);
    if (s->lockId != 0 && s->forkGen == fg) {
        *id = s->lockId; /* another thread registered while we waited */
        pthread_mutex_unlock(&registerLock);
        return DKSHM_OK;
    }
    uint32_t pid = (uint32_t)getpid(), slot;
    int rc = claimSlot(s, pid, &slot);
    if (rc != DKSHM_OK) {
        pthread_mutex_unlock(&registerLock);
        return rc;
    }
    dkProcSlot *p = dkSlotAt(s, slot);
    p->uid = (uint32_t)getuid();
    __atomic_store_n(&p->startTime, dkProcStartTime(pid), __ATOMIC_RELAXED);
    p->attachTimeNs = dkRealNs();
    for (int j = 0; j < DK_INFLIGHT_MAX; j++)
        __atomic_store_n(&p->inflight[j], 0, __ATOMIC_RELAXED);
    for (int j = 0; j < DKSHM_READ_SLOTS; j++)
        __atomic_store_n(&p->rdHold[j], 0, __ATOMIC_RELAXED);
    for (int j = 0; j < DK_HELD_MAX; j++)
        __atomic_store_n(&p->held[j], 0, __ATOMIC_RELAXED);
    for (int j = 0; j < DK_CONDWAIT_MAX; j++)
        __atomic_store_n(&p->condWait[j], 0, __ATOMIC_RELAXED);
    for (int j = 0; j < DKSHM_COUNTERS; j++)
        __atomic_store_n(&p->counters[j], 0, __ATOMIC_RELAXED);
    uint32_t gen = __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELAXED);
    if ((gen & DK_ID_GEN_MASK) == 0) /* id 0 means "unlocked" */
        gen = __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&p->word, slotWord(DKSHM_PROC_LIVE, pid),
                     __ATOMIC_RELEASE);
    /* Other threads read these without registerLock (dkSelf): make
     * forkGen stale first, so none of them pairs the old id with the new
     * slot while we write. */
    __atomic_store_n(&s->forkGen, fg - 1, __ATOMIC_RELEASE);
    __atomic_store_n(&s->slot, slot, __ATOMIC_RELAXED);
    __atomic_store_n(&s->counters, p->counters, __ATOMIC_RELAXED);
    s->pid = (pid_t)pid;
    __atomic_store_n(&s->lockId, DK_ID_MAKE(slot, gen), __ATOMIC_RELEASE);
    __atomic_store_n(&s->forkGen, fg, __ATOMIC_RELEASE);
    *id = DK_ID_MAKE(slot, gen);
    pthread_mutex_unlock(&registerLock);
    return DKSHM_OK;
}

/* In-flight entries this thread emptied under an undo log that has not
 * committed yet. Rolling that log back would put the old block back in the
 * entry, so no other log may fill it meanwhile: two threads (or one thread
 * nesting two locks) that each logged a change to one entry would, once
 * both were rolled back, lose a block. So dkInflightRemove does not empty
 * the entry: it logs DK_INFLIGHT_HELD into it, which nobody claims, and
 * records it here; the commit of that log empties it (a plain store: only
 * this thread writes a held entry), a rollback forgets the record (the log
 * put the block back). No atomic instruction is added to an operation. A
 * thread that dies between its commit and the store leaves HELD, which
 * reap drops like a claim mark. */
#define DK_PENDING_MAX 64
typedef struct pendingMark { /* per thread */
    uint64_t *entry;
    const dkUndo *log;
} pendingMark;
static __thread pendingMark pendingTab[DK_PENDING_MAX];
DK_TLS_FAST uint32_t dkPendingN; /* read on every commit */

/* After fork() only the forking thread is left, outside any operation. */
static void resetPendingMarks(void) {
    dkPendingN = 0;
}

void dkInflightSettleSome(const dkUndo *log, bool committed) {
    for (uint32_t i = 0; i < dkPendingN;) {
        if (pendingTab[i].log != log) {
            i++;
            continue;
        }
        if (committed &&
            __atomic_load_n(pendingTab[i].entry, __ATOMIC_RELAXED) ==
                DK_INFLIGHT_HELD)
            __atomic_store_n(pendingTab[i].entry, 0, __ATOMIC_RELEASE);
        pendingTab[i] = pendingTab[--dkPendingN];
    }
}

int dkInflightAdd(dkshm *s, dkUndo *log, dkoff off) {
    dkProcSlot *p = dkSelfSlot(s);
    for (int j = 0; j < DK_INFLIGHT_MAX; j++) {
        /* Threads of this process add under different locks: claim the
         * entry with a CAS first, then log and fill it. The log says the
         * entry was empty, so a rollback (a reaper's, or a live abort's)
         * frees it; a death between claim and log leaves the claim mark,
         * which reap drops (it is never a block). */
        uint64_t *e = &p->inflight[j];
        uint64_t zero = 0;
        if (__atomic_load_n(e, __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(e, &zero, DK_INFLIGHT_CLAIMED, false,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            dkUndoSet64Was(s, log, e, 0, off);
            return DKSHM_OK;
        }
    }
    /* None free: an entry this operation itself emptied may be filled
     * again (its own log restores it in order). */
    for (uint32_t i = 0; i < dkPendingN; i++)
        if (pendingTab[i].log == log &&
            pendingTab[i].entry >= p->inflight &&
            pendingTab[i].entry < p->inflight + DK_INFLIGHT_MAX) {
            dkUndoSet64(s, log, pendingTab[i].entry, off);
            pendingTab[i] = pendingTab[--dkPendingN];
            return DKSHM_OK;
        }
    return DKSHM_FULL;
}

int dkInflightRemove(dkshm *s, dkUndo *log, dkoff off) {
    dkProcSlot *p = dkSelfSlot(s);
    for (int j = 0; j < DK_INFLIGHT_MAX; j++) {
        uint64_t *e = &p->inflight[j];
        if (__atomic_load_n(e, __ATOMIC_RELAXED) == off) {
            if (dkPendingN == DK_PENDING_MAX)
                return DKSHM_FULL;
            dkUndoSet64(s, log, e, DK_INFLIGHT_HELD);
            pendingTab[dkPendingN++] = (pendingMark){e, log};
            return DKSHM_OK;
        }
    }
    return DKSHM_NOTFOUND;
}

DKSHM_API int dkshmReap(dkshm *s, size_t *reaped) {
    if (!s)
        return DKSHM_INVALID;
    if (s->readOnly)
        return DKSHM_READONLY;
    uint32_t id;
    int rc = dkSelf(s, &id); /* the reclaim hook takes locks */
    if (rc != DKSHM_OK)
        return rc;
    bool corrupt = false;
    size_t n = reapAll(s, true, &corrupt);
    if (reaped)
        *reaped = n;
    return corrupt ? DKSHM_CORRUPT : DKSHM_OK;
}

DKSHM_API int dkshmProcList(dkshm *s, dkshmProcInfo *out, size_t max,
                            size_t *count) {
    if (!s || (!out && max))
        return DKSHM_INVALID;
    size_t n = 0;
    for (uint32_t i = 0; i < s->maxProcs; i++) {
        dkProcSlot *p = dkSlotAt(s, i);
        uint64_t w = __atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
        if (w == 0)
            continue;
        if (n < max) {
            dkshmProcInfo *o = &out[n];
            o->slot = i;
            o->state = (uint32_t)(w >> 32);
            o->pid = (uint32_t)w;
            o->uid = p->uid;
            o->startTime = __atomic_load_n(&p->startTime, __ATOMIC_RELAXED);
            o->attachTimeNs = p->attachTimeNs;
            o->alive = o->state == DKSHM_PROC_LIVE &&
                       dkProcAlive(o->pid, o->startTime);
            o->inflight = 0;
            for (int j = 0; j < DK_INFLIGHT_MAX; j++)
                if (dkInflightIsBlock(
                        __atomic_load_n(&p->inflight[j], __ATOMIC_RELAXED)))
                    o->inflight++;
            o->readLocks = 0;
            for (int j = 0; j < DKSHM_READ_SLOTS; j++)
                if (__atomic_load_n(&p->rdHold[j], __ATOMIC_RELAXED) &
                    0xfffff)
                    o->readLocks++;
            for (int j = 0; j < DKSHM_COUNTERS; j++)
                o->counters[j] =
                    __atomic_load_n(&p->counters[j], __ATOMIC_RELAXED);
        }
        n++;
    }
    if (count)
        *count = n;
    return DKSHM_OK;
}

/* ---- creating and attaching -------------------------------------------- */

static int sysErr(int e) {
    switch (e) {
    case ENOENT:
        return DKSHM_NOTFOUND;
    case EEXIST:
        return DKSHM_EXISTS;
    case EACCES:
    case EPERM:
        return DKSHM_PERM;
    case ENAMETOOLONG:
    case EINVAL:
        return DKSHM_INVALID;
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
        return DKSHM_FULL;
    case ELOOP:
        return DKSHM_PERM;
    default:
        errno = e;
        return DKSHM_SYSTEM;
    }
}

static int ofdLock(int fd, short type, bool wait) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0,
                       .l_len = 1};
    int r;
    do {
        r = fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl);
    } while (r != 0 && errno == EINTR);
    return r;
}

static dkshm *newHandle(int fd, bool anonymous, const char *name) {
    dkshm *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->fd = fd;
    s->anonymous = anonymous;
    if (name)
        strcpy(s->name, name); /* validated: shorter than name[] */
    return s;
}

static void freeHandle(dkshm *s) {
    if (s->base)
        munmap(s->base, s->size);
    if (s->fd >= 0)
        close(s->fd);
    free(s);
}

/* Map the file; L is the validated layout the handle will trust. */
static int mapSegment(dkshm *s, const layout *l, bool readOnly) {
    void *p = mmap(NULL, l->capacity,
                   readOnly ? PROT_READ : PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_NORESERVE, s->fd, 0);
    if (p == MAP_FAILED)
        return sysErr(errno);
    s->base = p;
    s->size = l->capacity;
    s->hdr = p;
    s->readOnly = readOnly;
    s->maxProcs = l->maxProcs;
    s->maxObjects = l->maxObjects;
    s->procTable = l->procTable;
    s->directory = l->directory;
    s->heap = l->heap;
    s->heapSize = l->heapSize;
    return DKSHM_OK;
}

/* Lay out a new segment on S->fd (sized already) and publish it READY. */
static int initSegment(dkshm *s, const layout *l) {
    int rc = mapSegment(s, l, false);
    if (rc != DKSHM_OK)
        return rc;
    /* Pages the layer writes from now on must never SIGBUS. */
    rc = dkCommit(s, 0, l->heap);
    if (rc != DKSHM_OK)
        return rc;
    dkHeader *h = s->hdr;
    memset(h, 0, sizeof *h);
    uint32_t pid = (uint32_t)getpid();
    __atomic_store_n(&h->initState, DK_INIT_BUSY, __ATOMIC_RELAXED);
    h->initPid = pid;
    h->magic = DK_MAGIC;
    h->layoutVersion = DK_LAYOUT_VERSION;
    h->format = DK_FORMAT;
    h->capacity = l->capacity;
    h->creatorUid = (uint32_t)getuid();
    h->creatorPid = pid;
    h->creatorStart = dkProcStartTime(pid);
    h->createTimeNs = dkRealNs();
    h->flags = l->flags;
    h->maxProcs = l->maxProcs;
    h->maxObjects = l->maxObjects;
    h->pageSize = l->pageSize;
    h->procTable = l->procTable;
    h->directory = l->directory;
    h->heap = l->heap;
    h->heapSize = l->heapSize;
    h->checksum = headerChecksum(h);
    /* A taken-over creation may find old bytes: start from zeros. */
    memset(s->base + l->procTable, 0, l->heap - l->procTable);
    dkUndoInit((dkUndo *)h->dirUndo, DK_DIR_UNDO_RECS);
    h->dirLock.undo = dkOff(s, h->dirUndo);
    __atomic_store_n(&h->initState, DK_INIT_READY, __ATOMIC_RELEASE);
    return DKSHM_OK;
}

/* Size a fresh (or taken-over) file and initialise it; FD holds the OFD
 * write lock. */
static int createOn(dkshm *s, const layout *l) {
    if (s->fd >= 0 && !s->anonymous && fchmod(s->fd, l->mode) != 0)
        return sysErr(errno);
    if (ftruncate(s->fd, 0) != 0 ||
        ftruncate(s->fd, (off_t)l->capacity) != 0)
        return sysErr(errno);
    return initSegment(s, l);
}

static int createNamed(const char *name, const layout *l, dkshm **out) {
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return sysErr(errno);
    dkshm *s = newHandle(fd, false, name);
    int rc = s ? DKSHM_OK : DKSHM_FULL;
    /* Blocks only while an attacher looks at the file. */
    if (rc == DKSHM_OK && ofdLock(fd, F_WRLCK, true) != 0)
        rc = sysErr(errno);
    struct stat st;
    if (rc == DKSHM_OK && fstat(fd, &st) == 0 && st.st_size != 0) {
        /* We were so slow between O_CREAT and the lock that an opener
         * thought us dead and created the segment itself: it is its. */
        freeHandle(s);
        return DKSHM_EXISTS;
    }
    if (rc == DKSHM_OK)
        rc = createOn(s, l);
    if (rc != DKSHM_OK) {
        shm_unlink(name);
        if (s)
            freeHandle(s);
        else
            close(fd);
        return rc;
    }
    ofdLock(fd, F_UNLCK, false);
    *out = s;
    return DKSHM_OK;
}

/* Attach to the file open on S->fd. With TAKEOVER (non-NULL), a segment
 * whose creator died during initialisation is initialised anew with it. */
static int attachOn(dkshm *s, bool readOnly, const layout *takeover,
                    bool *tookOver) {
    uint64_t deadline = dkNowNs() + ATTACH_WAIT_NS;
    /* An empty file is a creator between O_CREAT and its lock for a few
     * microseconds, or a creator that died there, or not ours at all. */
    uint64_t emptyDeadline = dkNowNs() + EMPTY_WAIT_NS;
    for (;;) {
        if (ofdLock(s->fd, F_RDLCK, false) != 0) {
            if (errno != EAGAIN && errno != EACCES)
                return sysErr(errno);
            goto wait; /* the creator is at work */
        }
        struct stat st;
        if (fstat(s->fd, &st) != 0) {
            int e = errno;
            ofdLock(s->fd, F_UNLCK, false);
            return sysErr(e);
        }
        dkHeader h;
        memset(&h, 0, sizeof h);
        ssize_t got = 0;
        if (st.st_size > 0)
            got = pread(s->fd, &h, sizeof h, 0);
        bool ready = got == (ssize_t)sizeof h &&
                     __atomic_load_n(&h.initState, __ATOMIC_RELAXED) ==
                         DK_INIT_READY;
        if (ready) {
            ofdLock(s->fd, F_UNLCK, false);
            layout l;
            int rc = checkHeader(&h, (uint64_t)st.st_size, &l);
            if (rc != DKSHM_OK)
                return rc;
            return mapSegment(s, &l, readOnly);
        }
        /* Not ready while we hold a read lock: the creator is not working
         * on it. Either it died half-way, or it has not locked yet (an
         * empty file in the instant after O_CREAT), or this is not ours. */
        bool empty = st.st_size == 0;
        bool halfMade = got == (ssize_t)sizeof h &&
                        (h.magic == DK_MAGIC || h.magic == 0) &&
                        h.initState == DK_INIT_BUSY;
        ofdLock(s->fd, F_UNLCK, false);
        if (!empty && !halfMade) {
            int rc = got == (ssize_t)sizeof h ? checkHeader(&h, 0, NULL)
                                               : DKSHM_CORRUPT;
            return rc != DKSHM_OK ? rc : DKSHM_CORRUPT;
        }
        if (halfMade || dkNowNs() >= emptyDeadline) {
            if (!takeover || readOnly)
                return DKSHM_CORRUPT;
            if (ofdLock(s->fd, F_WRLCK, false) != 0)
                goto wait; /* someone else looks or takes over */
            if (pread(s->fd, &h, sizeof h, 0) == (ssize_t)sizeof h &&
                h.initState == DK_INIT_READY) {
                ofdLock(s->fd, F_UNLCK, false);
                continue; /* another process finished it meanwhile */
            }
            int rc = createOn(s, takeover);
            ofdLock(s->fd, F_UNLCK, false);
            if (rc == DKSHM_OK && tookOver)
                *tookOver = true;
            return rc;
        }
    wait:
        if (dkNowNs() >= deadline)
            return DKSHM_BUSY;
        usleep(1000);
    }
}

static int attachNamed(const char *name, uint32_t flags, const layout *take,
                       dkshm **out, bool *tookOver) {
    int rc = dkshmValidateName(name);
    if (rc != DKSHM_OK)
        return rc;
    bool ro = (flags & DKSHM_RDONLY) != 0;
    /* O_NONBLOCK: opening a FIFO planted under the name must not hang. */
    int fd = shm_open(name, (ro ? O_RDONLY : O_RDWR) | O_NONBLOCK, 0);
    if (fd < 0)
        return sysErr(errno);
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return DKSHM_CORRUPT;
    }
    dkshm *s = newHandle(fd, false, name);
    if (!s) {
        close(fd);
        return DKSHM_FULL;
    }
    rc = attachOn(s, ro, take, tookOver);
    if (rc == DKSHM_OK && !ro) {
        uint32_t id;
        rc = dkSelfId(s, &id);
        if (rc == DKSHM_OK)
            dkshmReap(s, NULL);
    }
    if (rc != DKSHM_OK) {
        freeHandle(s);
        return rc;
    }
    *out = s;
    return DKSHM_OK;
}

DKSHM_API int dkshmAttach(const char *name, uint32_t flags, dkshm **out) {
    if (!out || (flags & ~DKSHM_RDONLY))
        return DKSHM_INVALID;
    *out = NULL;
    return attachNamed(name, flags, NULL, out, NULL);
}

DKSHM_API int dkshmCreate(const char *name, uint64_t capacity,
                          const dkshmOptions *opt, dkshm **out) {
    if (!out)
        return DKSHM_INVALID;
    *out = NULL;
    layout l;
    int rc = dkshmValidateName(name);
    if (rc == DKSHM_OK)
        rc = planLayout(capacity, opt, &l);
    if (rc == DKSHM_OK)
        rc = createNamed(name, &l, out);
    if (rc == DKSHM_OK) {
        uint32_t id;
        rc = dkSelfId(*out, &id);
        if (rc != DKSHM_OK) {
            freeHandle(*out);
            *out = NULL;
            shm_unlink(name);
        }
    }
    return rc;
}

DKSHM_API int dkshmOpen(const char *name, uint64_t capacity,
                        const dkshmOptions *opt, dkshm **out, bool *created) {
    if (!out)
        return DKSHM_INVALID;
    *out = NULL;
    layout l;
    int rc = dkshmValidateName(name);
    if (rc == DKSHM_OK)
        rc = planLayout(capacity, opt, &l);
    if (rc != DKSHM_OK)
        return rc;
    for (int tries = 0; tries < 100; tries++) {
        bool tookOver = false;
        rc = attachNamed(name, 0, &l, out, &tookOver);
        if (rc != DKSHM_NOTFOUND) {
            if (created)
                *created = rc == DKSHM_OK && tookOver;
            return rc;
        }
        rc = dkshmCreate(name, capacity, opt, out);
        if (rc != DKSHM_EXISTS) {
            if (created)
                *created = rc == DKSHM_OK;
            return rc;
        }
    }
    return DKSHM_BUSY;
}

DKSHM_API int dkshmCreateAnonymous(uint64_t capacity, const dkshmOptions *opt,
                                   dkshm **out) {
    if (!out)
        return DKSHM_INVALID;
    *out = NULL;
    layout l;
    int rc = planLayout(capacity, opt, &l);
    if (rc != DKSHM_OK)
        return rc;
    /* A memfd rather than MAP_ANONYMOUS: the same fallocate commit and
     * punch-hole paths then work for both kinds. */
    int fd = memfd_create("dkshm-anon", MFD_CLOEXEC);
    if (fd < 0)
        return sysErr(errno);
    dkshm *s = newHandle(fd, true, NULL);
    if (!s) {
        close(fd);
        return DKSHM_FULL;
    }
    rc = createOn(s, &l);
    uint32_t id;
    if (rc == DKSHM_OK)
        rc = dkSelfId(s, &id);
    if (rc != DKSHM_OK) {
        freeHandle(s);
        return rc;
    }
    *out = s;
    return DKSHM_OK;
}

DKSHM_API int dkshmDetach(dkshm *s) {
    if (!s)
        return DKSHM_OK;
    if (layerHooks.detach)
        layerHooks.detach(s);
    pthread_mutex_lock(&registerLock);
    bool ours = s->lockId != 0 &&
                s->forkGen ==
                    __atomic_load_n(&dkForkGeneration, __ATOMIC_RELAXED);
    if (ours) {
        dkProcSlot *p = dkSlotAt(s, s->slot);
        bool inflight = false;
        for (int j = 0; j < DK_INFLIGHT_MAX; j++)
            if (dkInflightIsBlock(
                        __atomic_load_n(&p->inflight[j], __ATOMIC_RELAXED)))
                inflight = true;
        uint64_t w = __atomic_load_n(&p->word, __ATOMIC_RELAXED);
        /* Blocks still in flight (a caller bug or an interrupted call)
         * must reach the allocator: leave the slot to be reaped. */
        if (inflight) {
            if (__atomic_compare_exchange_n(
                    &p->word, &w, slotWord(DKSHM_PROC_DEAD, (uint32_t)w),
                    false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
                __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
        } else {
            for (int j = 0; j < DKSHM_READ_SLOTS; j++)
                __atomic_store_n(&p->rdHold[j], 0, __ATOMIC_RELAXED);
            __atomic_add_fetch(&p->gen, 1, __ATOMIC_RELEASE);
            __atomic_store_n(&p->word, 0, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&registerLock);
    freeHandle(s);
    return DKSHM_OK;
}

DKSHM_API int dkshmUnlink(const char *name) {
    int rc = dkshmValidateName(name);
    if (rc != DKSHM_OK)
        return rc;
    return shm_unlink(name) == 0 ? DKSHM_OK : sysErr(errno);
}

/* ---- accessors ---------------------------------------------------------- */

DKSHM_API void *dkshmPtr(const dkshm *s, dkoff off) {
    if (!s || off == 0 || off >= s->size)
        return NULL;
    return s->base + off;
}

DKSHM_API dkoff dkshmOff(const dkshm *s, const void *p) {
    if (!s || !p)
        return 0;
    const uint8_t *b = p;
    if (b < s->base || b >= s->base + s->size)
        return 0;
    return (dkoff)(b - s->base);
}

DKSHM_API uint64_t dkshmCapacity(const dkshm *s) {
    return s ? s->size : 0;
}

DKSHM_API bool dkshmReadOnly(const dkshm *s) {
    return s ? s->readOnly : false;
}

DKSHM_API const char *dkshmName(const dkshm *s) {
    return s ? s->name : "";
}

DKSHM_API int dkshmGetInfo(dkshm *s, dkshmInfo *out) {
    if (!s || !out)
        return DKSHM_INVALID;
    const dkHeader *h = s->hdr;
    *out = (dkshmInfo){0};
    out->layoutVersion = h->layoutVersion;
    out->format = h->format;
    out->capacity = h->capacity;
    out->creatorUid = h->creatorUid;
    out->creatorPid = h->creatorPid;
    out->createTimeNs = h->createTimeNs;
    out->flags = h->flags;
    out->maxProcs = h->maxProcs;
    out->maxObjects = h->maxObjects;
    out->heapOffset = h->heap;
    out->heapSize = h->heapSize;
    out->objects = __atomic_load_n(&h->objects, __ATOMIC_RELAXED);
    for (uint32_t i = 0; i < s->maxProcs; i++) {
        dkProcSlot *p = dkSlotAt(s, i);
        uint64_t w = __atomic_load_n(&p->word, __ATOMIC_ACQUIRE);
        if (w == 0)
            continue;
        if ((w >> 32) == DKSHM_PROC_LIVE &&
            dkProcAlive((uint32_t)w,
                        __atomic_load_n(&p->startTime, __ATOMIC_RELAXED)))
            out->liveProcs++;
        else
            out->deadProcs++;
    }
    struct stat st;
    if (s->fd >= 0 && fstat(s->fd, &st) == 0) {
        /* tmpfs allocates a block per resident page: the sparse file's
         * blocks are its memory use. */
        out->residentBytes = (uint64_t)st.st_blocks * 512u;
        out->fileMode = s->anonymous ? 0 : (uint32_t)(st.st_mode & 07777);
        out->fileUid = (uint32_t)st.st_uid;
    }
    return DKSHM_OK;
}
