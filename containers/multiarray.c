/* multiarray.c — a growable array of fixed-size elements in a dkshm
 * segment.
 *
 * ALGORITHM. The elements sit back to back in one block (capacity x
 * elemSize bytes, rounded up to 8). The root holds the block's offset, the
 * count and the capacity. Append writes the new element into the free slot
 * past the end and then makes the count cover it; set, insert and delete
 * rewrite the bytes they change in place when those fit in the undo log
 * (MA_INPLACE_WORDS 8-byte words: a set of an element of up to about 1 KiB,
 * an insert or a delete with up to about 1 KiB of elements after it);
 * otherwise, and to grow (double) or shrink (halve, when the array is down
 * to a quarter of its room), they build the whole new content in a new
 * block and swap it in with one logged root word. Every operation is thus
 * one critical section with one commit, whatever its size.
 *
 * LAYOUT in the segment:
 *
 *   root block  maRoot, two cache lines: the fixed part (magic, version,
 *               element size, checksum); the seqlock word, the lock, the
 *               block offset, count, capacity. Then the lock's undo log
 *               (MA_UNDO_CAP records).
 *   elements    one block, capacity x elemSize bytes rounded up to 8.
 *
 * READS take no lock (seqlock.h): a reader reads the seq word, the block
 * offset and the count, copies the element with acquire loads, and accepts
 * only if seq has not moved. It may see a block that is being replaced or
 * was just freed (freed blocks stay mapped) before its validation fails,
 * so the offsets it follows are bounds-checked. When seq is odd and the
 * lock is free, a writer died and was rolled back by a reaper that does not
 * know the seq word: the data is consistent and the odd value is a valid
 * version. When seq stays odd with the lock held, a read-write reader takes
 * the lock once (waiting for a live writer, or recovering a dead one); a
 * read-only reader waits for a live writer and returns BUSY for a dead one.
 *
 * WRITES take the lock, make seq odd before the first change, change shared
 * words only through the undo log, commit, and make seq even again. Element
 * bytes that no reader may look at (the slot past the count, a new block
 * not yet swapped in) are written with plain stores. All element stores are
 * relaxed atomics, word or byte, so that an optimistic reader's loads never
 * race a plain store (the thread sanitizer checks this).
 *
 * OWNERSHIP (RECOVERY.md §1). The root belongs to the directory, the block
 * to the root. A rebuild allocates the new block into this process's
 * in-flight list (memboundAllocInflight) and fills it; then, in the critical
 * section that swaps the root word, logs dkInflightRemove of the new block
 * and dkInflightAdd of the old one; after the commit it frees the old block
 * (memboundFreeInflight). A process killed before the commit leaves the new
 * block in its in-flight list, after it the old one: reaping frees it.
 *
 * CRASH RECOVERY. The next locker of a dead writer's lock rolls its log
 * back and repairs the seq word (dkSeqRepair); the reaper frees what the
 * dead process held in flight.
 */
#include "config.h"

#include "memboundInternal.h"
#include "multiarray.h"
#include "multiarrayInternal.h"
#include "segmentInternal.h"
#include "seqlock.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define MA_MAGIC 0x3159524141544c4dull /* "MLTAARY1" little-endian */
#define MA_VERSION 1u
#define MA_ROOT_BYTES 128u
/* Words rewritten in place at most; a rebuild beyond. The log holds them
 * plus the count and the swap records. */
#define MA_INPLACE_WORDS 128u
#define MA_UNDO_CAP 144u
#define MA_MIN_BLOCK 64u /* smallest element block, in bytes */
#define MA_SPINS 2000    /* odd-seq spins before looking at the lock */
#define MA_RETRIES 64    /* failed validations before reading locked */
#define MA_RO_WAIT_NS (5ull * 1000000000ull)

enum { MA_OP_APPEND = 1, MA_OP_SET, MA_OP_INSERT, MA_OP_DELETE, MA_OP_READ };

typedef struct maRoot { /* in the segment: the start of the root block */
    /* Fixed at creation, covered by checksum. */
    uint64_t magic;
    uint32_t version;
    uint32_t elemSize;
    uint32_t undoCap;
    uint32_t flags;
    uint64_t createTimeNs;
    uint64_t checksum; /* XXH3-64 of the fields above */
    uint64_t pad0[3];
    /* What readers read, and the lock. */
    uint32_t seq; /* seqlock: odd while a writer changes the array */
    uint32_t pad1;
    fastMutex lock;    /* its undo log follows this struct */
    dkoff data;        /* the element block, 0: none yet (logged) */
    uint64_t count;    /* elements (logged) */
    uint64_t cap;      /* elements the block holds (logged) */
    uint64_t rebuilds; /* (logged) */
    uint64_t pad2;
} maRoot;
_Static_assert(sizeof(maRoot) == MA_ROOT_BYTES, "maRoot size");
_Static_assert(offsetof(maRoot, seq) == 64, "maRoot line 1");

struct multiarray { /* per process */
    dkshm *s;
    membound *mb; /* NULL on a read-only handle */
    maRoot *root;
    dkUndo *log;
    dkoff rootOff;
    uint64_t es;       /* element size */
    uint64_t maxElems; /* no block can hold more */
    bool readOnly;
};

/* ---- small helpers ------------------------------------------------------ */

static inline uint64_t maLoad64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint64_t maR8(uint64_t n) {
    return (n + 7) & ~7ull;
}

static inline uint64_t maBlockBytes(const multiarray *a, uint64_t cap) {
    uint64_t b = maR8(cap * a->es);
    return b < 8 ? 8 : b;
}

/* Store N bytes of SRC at DST with relaxed atomic stores: bytes up to an
 * 8-byte boundary, then words, then bytes. Only [DST, DST+N) is written. */
static void maStoreBytes(uint8_t *dst, const uint8_t *src, uint64_t n) {
    while (n && ((uintptr_t)dst & 7)) {
        __atomic_store_n(dst++, *src++, __ATOMIC_RELAXED);
        n--;
    }
    for (; n >= 8; n -= 8, dst += 8, src += 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        __atomic_store_n((uint64_t *)dst, w, __ATOMIC_RELAXED);
    }
    while (n--)
        __atomic_store_n(dst++, *src++, __ATOMIC_RELAXED);
}

/* Load N bytes at SRC into DST with acquire loads (so that the seq word
 * read after them cannot be read before them). */
static void maLoadBytes(uint8_t *dst, const uint8_t *src, uint64_t n) {
    while (n && ((uintptr_t)src & 7)) {
        *dst++ = __atomic_load_n(src++, __ATOMIC_ACQUIRE);
        n--;
    }
    for (; n >= 8; n -= 8, dst += 8, src += 8) {
        uint64_t w = __atomic_load_n((const uint64_t *)src, __ATOMIC_ACQUIRE);
        memcpy(dst, &w, 8);
    }
    while (n--)
        *dst++ = __atomic_load_n(src++, __ATOMIC_ACQUIRE);
}

/* 8-byte words covering [OFF, OFF+LEN). */
static inline uint64_t maWords(dkoff off, uint64_t len) {
    return len ? (maR8(off + len) - (off & ~7ull)) / 8 : 0;
}

static int maFail(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int maFail(char *why, size_t len, const char *fmt, ...) {
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return DKSHM_CORRUPT;
}

/* ---- writers ------------------------------------------------------------ */

typedef struct maOp { /* per call: one locked operation */
    multiarray *a;
    bool writing;  /* seq made odd */
    dkoff garbage; /* old block to free after the commit */
} maOp;

static int maLock(multiarray *a, maOp *op, uint32_t what) {
    *op = (maOp){.a = a};
    if (a->readOnly)
        return DKSHM_READONLY;
    dkCount(a->s, DKSHM_CTR_WRITES, 1);
    int rc = fastMutexLock(a->s, &a->root->lock);
    if (rc == DKSHM_CORRUPT) {
        fastMutexUnlock(a->s, &a->root->lock);
        return DKSHM_CORRUPT;
    }
    if (rc < 0)
        return rc;
    __atomic_store_n(&a->log->op, what, __ATOMIC_RELAXED);
    dkSeqRepair(&a->root->seq);
    return DKSHM_OK;
}

/* Whether the root's block, capacity and count (read under the lock) can
 * be followed: a damaged root must give CORRUPT, not a stray access. The
 * same bounds as multiarrayGet's and maCheckBody's, without the
 * allocator's word on the block. */
static bool maShapeOk(const multiarray *a) {
    const maRoot *r = a->root;
    dkoff data = maLoad64(&r->data);
    uint64_t count = maLoad64(&r->count), cap = maLoad64(&r->cap);
    if (count > cap || cap > a->maxElems)
        return false;
    if (!data)
        return cap == 0;
    uint64_t bytes = maBlockBytes(a, cap);
    return data >= a->s->hdr->heap && !(data & 7) &&
           dkRangeOk(a->s, data, bytes) &&
           (data >= a->rootOff + MA_ROOT_BYTES + DK_UNDO_BYTES(MA_UNDO_CAP) ||
            data + bytes <= a->rootOff);
}

static void maUnlock(maOp *op);

/* maLock for the operations that follow the root's block: CORRUPT, with
 * the lock released and nothing changed, if the root cannot be trusted. */
static int maLockShape(multiarray *a, maOp *op, uint32_t what) {
    int rc = maLock(a, op, what);
    if (rc == DKSHM_OK && !maShapeOk(a)) {
        maUnlock(op);
        return DKSHM_CORRUPT;
    }
    return rc;
}

static void maBegin(maOp *op) {
    if (!op->writing) {
        dkSeqWriteBegin(&op->a->root->seq);
        op->writing = true;
    }
}

/* Commit, make seq even, unlock, then free what was replaced. */
static void maUnlock(maOp *op) {
    multiarray *a = op->a;
    if (op->writing)
        dkSeqWriteEnd(a->log, &a->root->seq);
    fastMutexUnlock(a->s, &a->root->lock);
    if (op->garbage) {
        DKSHM_CRASHPOINT();
        memboundFreeInflight(a->mb, op->garbage);
    }
}

/* Write LEN bytes of SRC at segment offset OFF through the undo log, a
 * word at a time (the words covering the range must lie in the block). */
static void maWriteLogged(maOp *op, dkoff off, const uint8_t *src,
                          uint64_t len) {
    multiarray *a = op->a;
    dkoff end = off + len;
    for (dkoff w = off & ~7ull; w < end; w += 8) {
        uint64_t *p = dkPtr(a->s, w);
        uint64_t old = __atomic_load_n(p, __ATOMIC_RELAXED), nv = old;
        dkoff from = w > off ? w : off, to = w + 8 < end ? w + 8 : end;
        memcpy((uint8_t *)&nv + (from - w), src + (from - off), to - from);
        if (nv != old)
            dkUndoSet64(a->s, a->log, p, nv);
    }
}

/* What a rebuild puts where: the new content is old[0, cut) + ELEM (if
 * any) + old[skip, count). */
typedef struct maEdit { /* per call */
    uint64_t cut;       /* elements kept before the change */
    const void *elem;   /* the new element, or NULL */
    uint64_t skip;      /* first old element kept after it */
    uint64_t newCount;
} maEdit;

/* Build the content of E in a new block of NEWCAP elements (in flight),
 * then swap it in (logged) and schedule the old block for freeing. */
static int maRebuild(maOp *op, uint64_t newCap, const maEdit *e) {
    multiarray *a = op->a;
    maRoot *r = a->root;
    uint64_t es = a->es;
    dkoff nb;
    int rc = memboundAllocInflight(a->mb, maBlockBytes(a, newCap), &nb);
    if (rc == DKSHM_TOOBIG)
        rc = DKSHM_FULL;
    if (rc != DKSHM_OK)
        return rc;
    DKSHM_CRASHPOINT();
    uint8_t *dst = dkPtr(a->s, nb);
    const uint8_t *src = r->data ? dkPtr(a->s, r->data) : NULL;
    /* Nobody can see the new block yet; relaxed stores all the same, as
     * a reader may still hold this memory's last life. */
    if (e->cut)
        maStoreBytes(dst, src, e->cut * es);
    uint64_t at = e->cut;
    if (e->elem)
        maStoreBytes(dst + at++ * es, e->elem, es);
    if (e->skip < r->count)
        maStoreBytes(dst + at * es, src + e->skip * es,
                     (r->count - e->skip) * es);
    DKSHM_CRASHPOINT();
    dkoff old = r->data;
    if (old) {
        /* Into our in-flight list first: if it is full, nothing changed. */
        rc = dkInflightAdd(a->s, a->log, old);
        if (rc != DKSHM_OK) {
            memboundFreeInflight(a->mb, nb);
            return rc;
        }
    }
    maBegin(op);
    dkInflightRemove(a->s, a->log, nb);
    dkUndoSet64(a->s, a->log, &r->data, nb);
    dkUndoSet64(a->s, a->log, &r->cap, newCap);
    dkUndoSet64(a->s, a->log, &r->count, e->newCount);
    dkUndoSet64(a->s, a->log, &r->rebuilds, r->rebuilds + 1);
    op->garbage = old;
    return DKSHM_OK;
}

/* The capacity to grow to from CAP, 0 if none can be held. */
static uint64_t maGrowCap(const multiarray *a, uint64_t cap) {
    uint64_t min = MA_MIN_BLOCK / a->es ? MA_MIN_BLOCK / a->es : 1;
    uint64_t want = cap < min ? min : cap * 2;
    if (want > a->maxElems)
        want = a->maxElems;
    return want > cap ? want : 0;
}

static int maInsertLocked(maOp *op, uint64_t index, const void *elem) {
    multiarray *a = op->a;
    maRoot *r = a->root;
    uint64_t count = r->count, cap = r->cap, es = a->es;
    if (index > count)
        return DKSHM_NOTFOUND;
    maEdit e = {
        .cut = index, .elem = elem, .skip = index, .newCount = count + 1};
    if (count == cap) {
        uint64_t nc = maGrowCap(a, cap);
        if (!nc)
            return DKSHM_FULL;
        int rc = maRebuild(op, nc, &e);
        if (rc == DKSHM_FULL && nc > cap + 1) /* try a smaller step */
            rc = maRebuild(op, cap + 1 + (nc - cap) / 8, &e);
        return rc;
    }
    dkoff at = r->data + index * es;
    if (index == count) {
        /* The free slot past the end: nobody reads it before the count
         * covers it. */
        maStoreBytes(dkPtr(a->s, at), elem, es);
        DKSHM_CRASHPOINT();
        maBegin(op);
        dkUndoSet64(a->s, a->log, &r->count, count + 1);
        return DKSHM_OK;
    }
    uint64_t len = (count + 1 - index) * es;
    if (maWords(at, len) > MA_INPLACE_WORDS)
        return maRebuild(op, cap, &e);
    uint8_t buf[MA_INPLACE_WORDS * 8];
    memcpy(buf, elem, es);
    memcpy(buf + es, dkPtr(a->s, at), len - es);
    maBegin(op);
    maWriteLogged(op, at, buf, len);
    dkUndoSet64(a->s, a->log, &r->count, count + 1);
    return DKSHM_OK;
}

/* ---- public writers ----------------------------------------------------- */

DKSHM_API int multiarrayInsert(multiarray *a, uint64_t index,
                               const void *elem) {
    if (!a || !elem)
        return DKSHM_INVALID;
    maOp op;
    int rc = maLockShape(a, &op, MA_OP_INSERT);
    if (rc != DKSHM_OK)
        return rc;
    rc = maInsertLocked(&op, index, elem);
    maUnlock(&op);
    return rc;
}

DKSHM_API int multiarrayAppend(multiarray *a, const void *elem,
                               uint64_t *index) {
    if (!a || !elem)
        return DKSHM_INVALID;
    maOp op;
    int rc = maLockShape(a, &op, MA_OP_APPEND);
    if (rc != DKSHM_OK)
        return rc;
    uint64_t at = a->root->count;
    rc = maInsertLocked(&op, at, elem);
    maUnlock(&op);
    if (rc == DKSHM_OK && index)
        *index = at;
    return rc;
}

DKSHM_API int multiarraySet(multiarray *a, uint64_t index, const void *elem) {
    if (!a || !elem)
        return DKSHM_INVALID;
    maOp op;
    int rc = maLockShape(a, &op, MA_OP_SET);
    if (rc != DKSHM_OK)
        return rc;
    maRoot *r = a->root;
    if (index >= r->count) {
        rc = DKSHM_NOTFOUND;
    } else {
        dkoff at = r->data + index * a->es;
        if (maWords(at, a->es) <= MA_INPLACE_WORDS) {
            maBegin(&op);
            maWriteLogged(&op, at, elem, a->es);
        } else {
            maEdit e = {.cut = index,
                        .elem = elem,
                        .skip = index + 1,
                        .newCount = r->count};
            rc = maRebuild(&op, r->cap, &e);
        }
    }
    maUnlock(&op);
    return rc;
}

DKSHM_API int multiarrayDelete(multiarray *a, uint64_t index) {
    if (!a)
        return DKSHM_INVALID;
    maOp op;
    int rc = maLockShape(a, &op, MA_OP_DELETE);
    if (rc != DKSHM_OK)
        return rc;
    maRoot *r = a->root;
    uint64_t count = r->count, cap = r->cap, es = a->es;
    if (index >= count) {
        rc = DKSHM_NOTFOUND;
        goto out;
    }
    maEdit e = {.cut = index, .skip = index + 1, .newCount = count - 1};
    uint64_t min = MA_MIN_BLOCK / es ? MA_MIN_BLOCK / es : 1;
    if (cap > min && count - 1 <= cap / 4) {
        /* Down to a quarter: give half the room back. A failure to get
         * the smaller block is no reason to fail the delete. */
        uint64_t nc = cap / 2 < min ? min : cap / 2;
        rc = maRebuild(&op, nc, &e);
        if (rc == DKSHM_OK)
            goto out;
    }
    dkoff at = r->data + index * es;
    uint64_t len = (count - 1 - index) * es;
    if (maWords(at, len) > MA_INPLACE_WORDS) {
        rc = maRebuild(&op, cap, &e);
        goto out;
    }
    maBegin(&op);
    if (len)
        maWriteLogged(&op, at, dkPtr(a->s, at + es), len);
    dkUndoSet64(a->s, a->log, &r->count, count - 1);
    rc = DKSHM_OK;
out:
    maUnlock(&op);
    return rc;
}

/* ---- readers ------------------------------------------------------------ */

DKSHM_API int multiarrayCount(multiarray *a, uint64_t *count) {
    if (!a || !count)
        return DKSHM_INVALID;
    *count = maLoad64(&a->root->count);
    return DKSHM_OK;
}

DKSHM_API int multiarrayElemSize(multiarray *a, size_t *size) {
    if (!a || !size)
        return DKSHM_INVALID;
    *size = (size_t)a->es;
    return DKSHM_OK;
}

/* Read under the lock (read-write handles): after a dead writer, or when
 * writers keep making us retry. */
static int maGetLocked(multiarray *a, uint64_t index, void *elem) {
    maOp op;
    int rc = maLockShape(a, &op, MA_OP_READ);
    if (rc != DKSHM_OK)
        return rc;
    maRoot *r = a->root;
    if (index >= r->count)
        rc = DKSHM_NOTFOUND;
    else
        maLoadBytes(elem, dkPtr(a->s, r->data + index * a->es), a->es);
    maUnlock(&op);
    return rc;
}

/* Wait while seq stays odd with the lock held. OK: look again; BUSY:
 * read-only and the writer is dead (or slow for MA_RO_WAIT_NS); USELOCK:
 * read under the lock. */
enum { MA_USELOCK = 1000 };

static int maWaitWriter(multiarray *a, uint64_t *since) {
    maRoot *r = a->root;
    uint32_t w = __atomic_load_n(&r->lock.word, __ATOMIC_ACQUIRE);
    if (w == 0)
        return DKSHM_OK;
    if (!a->readOnly)
        return MA_USELOCK;
    if (!dkOwnerAlive(a->s, w))
        return DKSHM_BUSY;
    uint64_t now = dkNowNs();
    if (!*since)
        *since = now;
    else if (now - *since > MA_RO_WAIT_NS)
        return DKSHM_BUSY;
    usleep(100);
    return DKSHM_OK;
}

DKSHM_API int multiarrayGet(multiarray *a, uint64_t index, void *elem) {
    if (!a || !elem)
        return DKSHM_INVALID;
    maRoot *r = a->root;
    dkshm *s = a->s;
    dkCount(s, DKSHM_CTR_READS, 1);
    uint64_t waitSince = 0;
    int spins = 0;
    for (int tries = 0;;) {
        uint32_t seq = __atomic_load_n(&r->seq, __ATOMIC_ACQUIRE);
        if (seq & 1) {
            /* A writer is inside, or died and was rolled back by someone
             * who left the lock free: then the data is whole. */
            if (__atomic_load_n(&r->lock.word, __ATOMIC_ACQUIRE) != 0) {
                if (++spins < MA_SPINS)
                    continue;
                spins = 0;
                int rc = maWaitWriter(a, &waitSince);
                if (rc == MA_USELOCK)
                    return maGetLocked(a, index, elem);
                if (rc != DKSHM_OK)
                    return rc;
                continue;
            }
        }
        dkoff data = maLoad64(&r->data);
        uint64_t count = maLoad64(&r->count);
        uint64_t cap = maLoad64(&r->cap);
        int rc = DKSHM_OK;
        if (index >= count) {
            rc = DKSHM_NOTFOUND;
        } else if (count > cap || cap > a->maxElems || data < s->hdr->heap ||
                   !dkRangeOk(s, data, maBlockBytes(a, cap))) {
            rc = MA_USELOCK; /* torn: only a retry can tell */
        } else {
            maLoadBytes(elem, dkPtr(s, data + index * a->es), a->es);
        }
        if (__atomic_load_n(&r->seq, __ATOMIC_ACQUIRE) == seq &&
            rc != MA_USELOCK)
            return rc;
        if (++tries >= MA_RETRIES && !a->readOnly)
            return maGetLocked(a, index, elem);
        if (tries >= MA_RETRIES * 64) /* read-only, writers never rest */
            return DKSHM_BUSY;
    }
}

DKSHM_API int multiarrayGetStats(multiarray *a, multiarrayStats *out) {
    if (!a || !out)
        return DKSHM_INVALID;
    maRoot *r = a->root;
    *out = (multiarrayStats){0};
    out->count = maLoad64(&r->count);
    out->capacity = maLoad64(&r->cap);
    out->elemSize = a->es;
    out->blockBytes = maLoad64(&r->data) ? maBlockBytes(a, out->capacity) : 0;
    out->rebuilds = maLoad64(&r->rebuilds);
    out->recoveries = __atomic_load_n(&r->lock.recoveries, __ATOMIC_RELAXED);
    return DKSHM_OK;
}

/* ---- open and close ----------------------------------------------------- */

static uint64_t maRootSum(const maRoot *r) {
    return XXH3_64bits(r, offsetof(maRoot, checksum));
}

static uint64_t maRootBytes(void) {
    return MA_ROOT_BYTES + DK_UNDO_BYTES(MA_UNDO_CAP);
}

static int maAdopt(multiarray *a, dkshm *s, dkoff off) {
    if (off < s->hdr->heap || !dkRangeOk(s, off, maRootBytes()) || (off & 7))
        return DKSHM_CORRUPT;
    maRoot *r = dkPtr(s, off);
    maRoot copy;
    memcpy(&copy, r, offsetof(maRoot, pad0));
    if (copy.magic != MA_MAGIC || copy.checksum != maRootSum(&copy))
        return DKSHM_CORRUPT;
    if (copy.version != MA_VERSION)
        return DKSHM_VERSION;
    if (copy.undoCap != MA_UNDO_CAP || copy.elemSize == 0 ||
        copy.elemSize > MULTIARRAY_ELEM_MAX ||
        r->lock.undo != off + MA_ROOT_BYTES)
        return DKSHM_CORRUPT;
    a->s = s;
    a->root = r;
    a->log = dkPtr(s, off + MA_ROOT_BYTES);
    a->rootOff = off;
    a->es = copy.elemSize;
    a->maxElems = dkshmCapacity(s) / a->es;
    a->readOnly = dkshmReadOnly(s);
    return DKSHM_OK;
}

static int maMakeRoot(multiarray *a, dkshm *s, const multiarrayOptions *opt,
                      dkoff *out) {
    dkoff off;
    int rc = memboundAllocInflight(a->mb, maRootBytes(), &off);
    if (rc != DKSHM_OK)
        return rc;
    uint8_t *p = dkPtr(s, off);
    memset(p, 0, maRootBytes()); /* nobody can see it yet */
    maRoot *r = (maRoot *)p;
    r->magic = MA_MAGIC;
    r->version = MA_VERSION;
    r->elemSize = opt->elemSize;
    r->undoCap = MA_UNDO_CAP;
    r->createTimeNs = dkRealNs();
    r->checksum = maRootSum(r);
    dkUndo *log = (dkUndo *)(p + MA_ROOT_BYTES);
    dkUndoInit(log, MA_UNDO_CAP);
    rc = fastMutexInit(s, &r->lock, dkOff(s, log));
    if (rc != DKSHM_OK) {
        memboundFreeInflight(a->mb, off);
        return rc;
    }
    *out = off;
    return DKSHM_OK;
}

/* Make room for CAP elements in a new, empty array: an ordinary rebuild
 * once the root is bound (so that each block always has one owner). A
 * failure leaves the array empty, without a block: the capacity is a
 * hint. */
static void maReserve(multiarray *a, uint64_t cap) {
    if (cap > a->maxElems)
        return;
    maOp op;
    if (maLockShape(a, &op, MA_OP_APPEND) != DKSHM_OK)
        return;
    if (a->root->data == 0) {
        maEdit e = {0};
        maRebuild(&op, cap, &e);
    }
    maUnlock(&op);
}

/* dkshmObjectOpen's root maker and discarder; the open flags are its own. */
_Static_assert(MULTIARRAY_CREATE == DKSHM_OBJ_CREATE && MULTIARRAY_EXCL == DKSHM_OBJ_EXCL,
               "open flags");
typedef struct maMakeCtx {
    multiarray *a;
    dkshm *s;
    const multiarrayOptions *opt;
} maMakeCtx;

static int maMake(void *ctx, dkoff *root) {
    maMakeCtx *c = ctx;
    if (!c->opt || c->opt->elemSize == 0)
        return DKSHM_INVALID; /* creating needs the element size */
    return maMakeRoot(c->a, c->s, c->opt, root);
}

static void maDiscard(void *ctx, dkoff root) {
    memboundFreeInflight(((maMakeCtx *)ctx)->a->mb, root);
}

DKSHM_API int multiarrayOpen(dkshm *s, const char *name,
                             const multiarrayOptions *opt, uint32_t flags,
                             multiarray **out) {
    if (out)
        *out = NULL;
    if (!s || !out || (flags & ~(MULTIARRAY_CREATE | MULTIARRAY_EXCL)) ||
        ((flags & MULTIARRAY_EXCL) && !(flags & MULTIARRAY_CREATE)))
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    if (opt && (opt->flags != 0 || opt->elemSize > MULTIARRAY_ELEM_MAX))
        return DKSHM_INVALID;
    multiarray *a = calloc(1, sizeof *a);
    if (!a)
        return DKSHM_SYSTEM;
    if (!dkshmReadOnly(s) && !(a->mb = memboundForSegment(s))) {
        free(a);
        return DKSHM_FULL;
    }
    maMakeCtx mc = {a, s, opt};
    dkoff root;
    bool created;
    rc = dkshmObjectOpen(s, name, MULTIARRAY_TYPE, flags, maMake, maDiscard,
                         &mc, &root, &created);
    if (rc == DKSHM_OK)
        rc = maAdopt(a, s, root);
    if (rc == DKSHM_OK && created && opt->initialCapacity)
        maReserve(a, opt->initialCapacity);
    else if (rc == DKSHM_OK && !created && opt && opt->elemSize &&
             opt->elemSize != a->es)
        rc = DKSHM_INVALID; /* an existing array of another element size */
    if (rc != DKSHM_OK) {
        free(a);
        return rc;
    }
    *out = a;
    return DKSHM_OK;
}

DKSHM_API int multiarrayClose(multiarray *a) {
    free(a);
    return DKSHM_OK;
}

dkoff multiarrayRootOff(const multiarray *a) {
    return a ? a->rootOff : 0;
}

/* ---- check and block walk ----------------------------------------------- */

static int maCheckBody(multiarray *a, char *why, size_t wl) {
    maRoot *r = a->root;
    dkshm *s = a->s;
    dkoff data = maLoad64(&r->data);
    uint64_t count = maLoad64(&r->count), cap = maLoad64(&r->cap);
    if ((data == 0) != (cap == 0))
        return maFail(why, wl, "block %#llx with capacity %llu",
                      (unsigned long long)data, (unsigned long long)cap);
    if (count > cap)
        return maFail(why, wl, "%llu elements in room for %llu",
                      (unsigned long long)count, (unsigned long long)cap);
    if (cap > a->maxElems)
        return maFail(why, wl, "capacity %llu past the segment",
                      (unsigned long long)cap);
    if (data && (data < s->hdr->heap || (data & 7) ||
                 !dkRangeOk(s, data, maBlockBytes(a, cap))))
        return maFail(why, wl, "block %#llx of %llu bytes outside the heap",
                      (unsigned long long)data,
                      (unsigned long long)maBlockBytes(a, cap));
    if (data && (data < a->rootOff + maRootBytes()) &&
        (data + maBlockBytes(a, cap) > a->rootOff))
        return maFail(why, wl, "block overlaps the root");
    if (data && a->mb) {
        size_t usable = 0;
        if (memboundUsableSize(a->mb, data, &usable) != DKSHM_OK ||
            usable < maBlockBytes(a, cap))
            return maFail(why, wl,
                          "block %#llx is not a live allocation of "
                          "%llu bytes",
                          (unsigned long long)data,
                          (unsigned long long)maBlockBytes(a, cap));
    }
    return DKSHM_OK;
}

DKSHM_API int multiarrayCheck(multiarray *a, char *why, size_t whyLen) {
    if (!a)
        return DKSHM_INVALID;
    if (why && whyLen)
        why[0] = '\0';
    maRoot copy;
    memcpy(&copy, a->root, offsetof(maRoot, pad0));
    if (copy.magic != MA_MAGIC || copy.checksum != maRootSum(&copy))
        return maFail(why, whyLen, "root: bad magic or checksum");
    if (a->root->lock.undo != a->rootOff + MA_ROOT_BYTES ||
        a->log->cap != MA_UNDO_CAP)
        return maFail(why, whyLen, "root: foreign undo log");
    if (!a->readOnly) {
        maOp op;
        int rc = maLock(a, &op, MA_OP_READ);
        if (rc == DKSHM_CORRUPT)
            return maFail(why, whyLen, "undo log cannot be applied");
        if (rc != DKSHM_OK)
            return rc;
        if (__atomic_load_n(&a->log->count, __ATOMIC_RELAXED) != 0)
            rc = maFail(why, whyLen, "undo log not empty under the lock");
        else if (__atomic_load_n(&a->root->seq, __ATOMIC_RELAXED) & 1)
            rc = maFail(why, whyLen, "version word odd under the lock");
        else
            rc = maCheckBody(a, why, whyLen);
        maUnlock(&op);
        return rc;
    }
    for (int i = 0; i < 1000; i++) {
        uint32_t seq = __atomic_load_n(&a->root->seq, __ATOMIC_ACQUIRE);
        if ((seq & 1) &&
            __atomic_load_n(&a->root->lock.word, __ATOMIC_ACQUIRE) != 0) {
            usleep(1000);
            continue;
        }
        int rc = maCheckBody(a, why, whyLen);
        if (__atomic_load_n(&a->root->seq, __ATOMIC_ACQUIRE) == seq)
            return rc;
    }
    return DKSHM_BUSY;
}

int multiarrayForEachBlock(multiarray *a, multiarrayBlockFn fn, void *ctx) {
    if (!a || !fn)
        return DKSHM_INVALID;
    maOp op = {.a = a};
    bool locked = false;
    if (!a->readOnly) {
        int rc = maLock(a, &op, MA_OP_READ);
        if (rc != DKSHM_OK)
            return rc;
        locked = true;
    }
    int rc = fn(ctx, a->rootOff, maRootBytes(), MULTIARRAY_BLOCK_ROOT);
    dkoff data = maLoad64(&a->root->data);
    if (rc == 0 && data)
        rc = fn(ctx, data, maBlockBytes(a, maLoad64(&a->root->cap)),
                MULTIARRAY_BLOCK_DATA);
    if (locked)
        maUnlock(&op);
    return rc;
}
