/* directory.c — the named-object directory: names to typed container roots.
 *
 * A fixed array of entries after the process table. Changes happen under
 * the header's dirLock and go through its undo log, bracketed by the dirSeq
 * seqlock (seqlock.h; odd while changing). Lookups and listings take no lock: they copy
 * an entry with atomic word loads and retry when dirSeq moved, so read-only
 * attachments (dkshm-tool) can use them and a dead writer can never block
 * them; a read-write reader that sees dirSeq stuck odd takes the lock once,
 * which rolls the dead writer back.
 *
 * An entry is live when its type is non-zero; the type is written last on
 * create and cleared first on remove, so a reader never sees a live entry
 * with a half-written name.
 *
 * Ownership: dkshmObjectCreate moves the root out of the caller's in-flight
 * list into the directory, and dkshmObjectRemove moves it back, each in the
 * same critical section as the entry change, so a crash cannot leak it.
 */
#include "config.h"

#include "segmentInternal.h"
#include "seqlock.h"

#include <sched.h>
#include <string.h>

#define SEQ_SPINS 4096
#define SEQ_WAIT_NS (2ull * 1000000000ull) /* readers wait for a live writer */
#define DIR_UNDO_NEEDED 16 /* name x8, type, root, time, count, in-flight */

DKSHM_API int dkshmValidateObjectName(const char *name) {
    if (!name)
        return DKSHM_INVALID;
    size_t n = 0;
    for (; name[n]; n++)
        if (n >= DKSHM_OBJNAME_MAX || name[n] < 0x21 || name[n] > 0x7e)
            return DKSHM_INVALID;
    return n ? DKSHM_OK : DKSHM_INVALID;
}

static dkDirEntry *entryAt(dkshm *s, uint32_t i) {
    return (dkDirEntry *)(s->base + s->directory) + i;
}

/* Copy entry I with word loads (it may be changing under us). */
static void copyEntry(dkshm *s, uint32_t i, dkDirEntry *out) {
    const uint64_t *src = (const uint64_t *)entryAt(s, i);
    uint64_t *dst = (uint64_t *)out;
    /* Acquire loads: the dirSeq re-read after them cannot move up. */
    for (size_t w = 0; w < sizeof *out / 8; w++)
        dst[w] = __atomic_load_n(&src[w], __ATOMIC_ACQUIRE);
    out->name[DKSHM_OBJNAME_MAX] = '\0';
}

/* Take the directory lock; DKSHM_RECOVERED counts as success. */
static int lockDir(dkshm *s, dkUndo **log) {
    if (s->readOnly)
        return DKSHM_READONLY;
    int rc = fastMutexLock(s, &s->hdr->dirLock);
    if (rc < 0)
        return rc;
    dkSeqRepair(&s->hdr->dirSeq);
    *log = (dkUndo *)s->hdr->dirUndo;
    return DKSHM_OK;
}

/* Run FN over a consistent snapshot of the directory. FN returns true to
 * stop early. */
typedef bool (*entryFn)(const dkDirEntry *e, void *ctx);

static int snapshot(dkshm *s, entryFn fn, void *ctx, void (*reset)(void *)) {
    dkHeader *h = s->hdr;
    uint64_t deadline = 0;
    for (int spins = 0;; spins++) {
        uint32_t seq = dkSeqReadBegin(&h->dirSeq);
        /* Odd with the lock free: a writer died and a reaper recovered
         * its lock without a change of ours to repair the word; what is
         * there is consistent as long as nobody takes the lock. */
        bool quiet = (seq & 1) &&
                     __atomic_load_n(&h->dirLock.word, __ATOMIC_ACQUIRE) == 0;
        if ((seq & 1) && !quiet) {
            if (spins < SEQ_SPINS)
                continue;
            uint32_t w = __atomic_load_n(&h->dirLock.word, __ATOMIC_RELAXED);
            if (w != 0 && dkOwnerAlive(s, w)) {
                /* A live writer at work: wait, within reason. */
                uint64_t now = dkNowNs();
                if (!deadline)
                    deadline = now + SEQ_WAIT_NS;
                else if (now >= deadline)
                    return DKSHM_BUSY;
                sched_yield();
                continue;
            }
            if (s->readOnly)
                return DKSHM_BUSY; /* dead writer: only a writer recovers */
            dkUndo *log;
            int rc = lockDir(s, &log); /* recovers it and repairs dirSeq */
            if (rc < 0)
                return rc;
            fastMutexUnlock(s, &h->dirLock);
            spins = 0;
            continue;
        }
        reset(ctx);
        for (uint32_t i = 0; i < s->maxObjects; i++) {
            dkDirEntry e;
            copyEntry(s, i, &e);
            if (e.type != 0 && fn(&e, ctx))
                break;
        }
        if (__atomic_load_n(&h->dirSeq, __ATOMIC_ACQUIRE) == seq &&
            (!quiet ||
             __atomic_load_n(&h->dirLock.word, __ATOMIC_ACQUIRE) == 0))
            return DKSHM_OK;
    }
}

typedef struct findCtx {
    const char *name;
    bool found;
    dkDirEntry e;
} findCtx;

static bool findFn(const dkDirEntry *e, void *ctx) {
    findCtx *f = ctx;
    if (strcmp(e->name, f->name) != 0)
        return false;
    f->found = true;
    f->e = *e;
    return true;
}

static void findReset(void *ctx) {
    ((findCtx *)ctx)->found = false;
}

DKSHM_API int dkshmObjectFind(dkshm *s, const char *name, uint32_t *type,
                              dkoff *root) {
    if (!s)
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    findCtx f = {.name = name};
    rc = snapshot(s, findFn, &f, findReset);
    if (rc != DKSHM_OK)
        return rc;
    if (!f.found)
        return DKSHM_NOTFOUND;
    if (type)
        *type = f.e.type;
    if (root)
        *root = f.e.root;
    return DKSHM_OK;
}

typedef struct listCtx {
    dkshmObjectInfo *out;
    size_t max, n;
} listCtx;

static bool listFn(const dkDirEntry *e, void *ctx) {
    listCtx *l = ctx;
    if (l->n < l->max) {
        dkshmObjectInfo *o = &l->out[l->n];
        memcpy(o->name, e->name, sizeof o->name);
        o->type = e->type;
        o->root = e->root;
        o->createTimeNs = e->createTimeNs;
    }
    l->n++;
    return false;
}

static void listReset(void *ctx) {
    ((listCtx *)ctx)->n = 0;
}

DKSHM_API int dkshmObjectList(dkshm *s, dkshmObjectInfo *out, size_t max,
                              size_t *count) {
    if (!s || (!out && max))
        return DKSHM_INVALID;
    listCtx l = {.out = out, .max = max};
    int rc = snapshot(s, listFn, &l, listReset);
    if (rc == DKSHM_OK && count)
        *count = l.n;
    return rc;
}

/* Index of the live entry called NAME, or -1. Caller holds dirLock. */
static long findLocked(dkshm *s, const char *name) {
    for (uint32_t i = 0; i < s->maxObjects; i++) {
        dkDirEntry *e = entryAt(s, i);
        if (e->type != 0 && strncmp(e->name, name, sizeof e->name) == 0)
            return (long)i;
    }
    return -1;
}

DKSHM_API int dkshmObjectCreate(dkshm *s, const char *name, uint32_t type,
                                dkoff root) {
    if (!s || type == 0)
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    if (root < s->heap || !dkRangeOk(s, root, 1))
        return DKSHM_INVALID;
    dkUndo *log;
    if ((rc = lockDir(s, &log)) != DKSHM_OK)
        return rc;
    long i = findLocked(s, name);
    long freeIdx = -1;
    for (uint32_t j = 0; j < s->maxObjects && freeIdx < 0; j++)
        if (entryAt(s, j)->type == 0)
            freeIdx = (long)j;
    if (i >= 0)
        rc = DKSHM_EXISTS;
    else if (freeIdx < 0)
        rc = DKSHM_FULL;
    else if (dkUndoRoom(log) < DIR_UNDO_NEEDED)
        rc = DKSHM_CORRUPT;
    if (rc == DKSHM_OK) {
        dkDirEntry *e = entryAt(s, (uint32_t)freeIdx);
        char nameBuf[sizeof e->name] = {0};
        memcpy(nameBuf, name, strlen(name));
        dkSeqWriteBegin(&s->hdr->dirSeq);
        dkUndoSetBytes(s, log, e->name, nameBuf, sizeof nameBuf);
        dkUndoSet64(s, log, &e->root, root);
        dkUndoSet64(s, log, &e->createTimeNs, dkRealNs());
        dkInflightRemove(s, log, root); /* if it was in flight */
        dkUndoSet32(s, log, &s->hdr->objects, s->hdr->objects + 1);
        dkUndoSet32(s, log, &e->type, type);
        dkSeqWriteEnd(log, &s->hdr->dirSeq);
    }
    fastMutexUnlock(s, &s->hdr->dirLock);
    return rc;
}

DKSHM_API int dkshmObjectRemove(dkshm *s, const char *name,
                                uint32_t expectType, dkoff *root) {
    if (!s)
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    dkUndo *log;
    if ((rc = lockDir(s, &log)) != DKSHM_OK)
        return rc;
    long i = findLocked(s, name);
    dkDirEntry *e = i >= 0 ? entryAt(s, (uint32_t)i) : NULL;
    if (!e)
        rc = DKSHM_NOTFOUND;
    else if (expectType && e->type != expectType)
        rc = DKSHM_TYPE;
    else if (dkUndoRoom(log) < DIR_UNDO_NEEDED)
        rc = DKSHM_CORRUPT;
    if (rc == DKSHM_OK) {
        dkoff r = e->root;
        /* Into our in-flight list first: if it is full, nothing changed. */
        rc = dkInflightAdd(s, log, r);
        if (rc == DKSHM_OK) {
            dkSeqWriteBegin(&s->hdr->dirSeq);
            dkUndoSet32(s, log, &e->type, 0);
            dkUndoSet64(s, log, &e->root, 0);
            dkUndoSet32(s, log, &s->hdr->objects, s->hdr->objects - 1);
            dkSeqWriteEnd(log, &s->hdr->dirSeq);
            if (root)
                *root = r;
        }
    }
    fastMutexUnlock(s, &s->hdr->dirLock);
    return rc;
}

DKSHM_API int dkshmObjectOpen(dkshm *s, const char *name, uint32_t type,
                              uint32_t flags, dkshmRootMakeFn make,
                              dkshmRootDiscardFn discard, void *ctx,
                              dkoff *root, bool *created) {
    if (!s || !root || type == 0 ||
        (flags & ~(DKSHM_OBJ_CREATE | DKSHM_OBJ_EXCL)) ||
        ((flags & DKSHM_OBJ_EXCL) && !(flags & DKSHM_OBJ_CREATE)) ||
        ((flags & DKSHM_OBJ_CREATE) && (!make || !discard)))
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    if (created)
        *created = false;
    /* Each round either finds NAME or loses a creation race to a process
     * that bound it; a name removed again at once can repeat that, so the
     * rounds are bounded. */
    for (int round = 0; round < 16; round++) {
        uint32_t t;
        dkoff r;
        rc = dkshmObjectFind(s, name, &t, &r);
        if (rc == DKSHM_OK) {
            if (flags & DKSHM_OBJ_EXCL)
                return DKSHM_EXISTS;
            if (t != type)
                return DKSHM_TYPE;
            *root = r;
            return DKSHM_OK;
        }
        if (rc != DKSHM_NOTFOUND || !(flags & DKSHM_OBJ_CREATE))
            return rc;
        if (s->readOnly)
            return DKSHM_READONLY;
        if ((rc = make(ctx, &r)) != DKSHM_OK)
            return rc;
        DKSHM_CRASHPOINT(); /* a root made, not bound: reap frees it */
        rc = dkshmObjectCreate(s, name, type, r);
        if (rc == DKSHM_OK) {
            *root = r;
            if (created)
                *created = true;
            return DKSHM_OK;
        }
        discard(ctx, r); /* not bound: still the caller's */
        if (rc != DKSHM_EXISTS || (flags & DKSHM_OBJ_EXCL))
            return rc;
    }
    return DKSHM_BUSY;
}
