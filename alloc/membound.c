/* membound.c — the bounded allocator that carves a dkshm segment's heap.
 *
 * ALGORITHM. Two levels, both in the segment and both addressed by offsets.
 *
 *   Buddy pages (after SQLite's mem5). The heap's usable part is N pages of
 *   the segment's page size. A block is 2^k pages (k = its order) starting
 *   at a page index that is a multiple of 2^k; its buddy is index ^ 2^k.
 *   Allocation takes the smallest free block of order >= k and splits it,
 *   pushing the upper halves onto the lower free lists; free merges a block
 *   with its buddy for as long as the buddy is free with the same order.
 *   When N is not a power of two the pages start as the maximal aligned
 *   blocks that cover [0, N); a buddy at or past N simply never merges.
 *   Robson's bound applies as in mem5: if no request is more than n times
 *   the smallest and at most M bytes are live, a heap of
 *   M * (1 + log2(n) / 2) - n + 1 bytes never fails for fragmentation.
 *
 *   Slabs for requests of at most MEMBOUND_SLAB_MAX bytes. 24 size classes
 *   (16..128 by 16, then four steps per doubling up to 2048). A slab is a
 *   buddy block of 1, 2, 4 or 8 pages: the smallest whose unusable tail is
 *   at most 1/16 of it. The slab starts with a small header (class, used
 *   count, a bitmap with a set bit per slot in use, bits past the last slot
 *   set) and then the slots; with 4 KiB pages an 80-byte slot costs 80.3
 *   bytes. Each class keeps a list of its slabs that have a free slot; a
 *   slab that becomes empty goes back to the buddy level unless it is the
 *   only slab on that list (one empty slab per class absorbs alloc/free
 *   ping-pong). Empty slabs are given back anyway when the buddy level runs
 *   out of room.
 *
 * LAYOUT, at the start of the heap [hdr->heap, + hdr->heapSize):
 *
 *   mbRoot      lock, geometry, statistics, free-list heads per order and
 *               per-class slab lists; hdr->allocRoot holds its offset
 *   dkUndo      the lock's undo log, MB_UNDO_CAP records
 *   ctrl[N]     one byte per page: kind (free head, allocated head, slab
 *               page, or none = inside a block), order, and for a free
 *               head whether all its pages are committed
 *   links[2N]   next/prev page indices per page (free lists, slab lists)
 *   pages       N pages, page aligned
 *
 *   All metadata is out of band: a free block holds nothing the allocator
 *   needs, so its pages can be returned to the kernel, and the metadata is
 *   committed once at creation, so writing it never faults.
 *
 * INVARIANTS (memboundCheck verifies them all):
 *   - walking the ctrl bytes block by block covers every page exactly once;
 *     pages inside a free or allocated buddy block are NONE, every page of a
 *     slab says SLAB with the slab's order;
 *   - each free head of order k is on free list k exactly once, the lists
 *     hold nothing else, and no two free buddies of the same order exist;
 *   - a slab is on its class's list iff it has a free slot; its bitmap's
 *     population is its used count;
 *   - the counters (bytes used, live allocations, free pages, per-class
 *     slabs and slots) equal what the walk finds.
 *
 * COMMIT AND DECOMMIT. A block is committed (fallocate, dkCommit) before it
 * is handed out, so a full /dev/shm is a clean DKSHM_FULL, never SIGBUS.
 * Every free block is wholly committed or wholly not (the ctrl bit says
 * which), and the root counts the committed free pages (committedFree).
 * Freed memory stays committed while that count is within a retention
 * budget (retainPages: an eighth of the heap, 1 to 64 MiB), and takes
 * prefer committed blocks: a program that frees and allocates large blocks
 * in turn reuses the same pages instead of punching them out and faulting
 * them in again each time (80 us per 64 KiB pair before). Past the budget,
 * a free block of at least 64 KiB is punched out (dkDecommit), and a merge
 * that would mix committed and uncommitted halves punches the committed
 * one; within it, such buddies stay unmerged (the one exception to "free
 * buddies are merged"), and an allocation that finds no block large enough
 * first punches and merges them (mbConsolidate). Punching destroys
 * contents, so it is done only after the operation's undo log has been
 * committed: a rollback can never need bytes that are gone.
 *
 * PROCESS SAFETY. One fastMutex in the root serialises every change, between
 * threads and between processes. Statistics getters read counters with
 * relaxed atomic loads and take no lock. Handles are per process and cached
 * per dkshm handle (memboundForSegment); nothing in the segment is a pointer.
 * Hot paths trust the segment (the invariants above); frees are validated,
 * and the check and the handle setup bound every index and every loop.
 *
 * CRASH RECOVERY. Every word changed under the lock goes through the lock's
 * undo log (mbSet*), including the statistics, so a process killed at any
 * point leaves an operation that the next locker rolls back completely
 * before it gets the lock (fastMutexLock returns DKSHM_RECOVERED). The few
 * unlogged writes are to memory nobody owns until the operation commits
 * (a new slab's header). An operation that fails half-way (no room to
 * commit pages, in-flight list full) rolls back its own records the same
 * way. Blocks given out through memboundAllocInflight sit in the caller's
 * in-flight list until a container links them; the reclaim hook frees what
 * a dead process still holds there, one logged step (free + clear entry,
 * then commit) per block. memboundReset is the one operation too large for
 * the log: it is a redo operation instead, flagged by resetPending, which
 * every locker finishes if its resetter died. Reset is meant for pools
 * (memboundCreate): it also empties every process's in-flight list, and
 * containers that still point into the heap are left dangling.
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
#include "segmentInternal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MB_MAGIC 0x31444e424d454d44ull /* "DMEMBND1" */
#define MB_VERSION 3u /* 2: committedFree; 3: slots aligned by size */
/* Largest critical section: a split or merge chain over 31 orders (about
 * five records per order) plus slab work is under 200 records; reclaim
 * commits after each block. 1024 leaves a wide margin (16 KiB). */
#define MB_UNDO_CAP 1024u
#define MB_ORDERS 32u
#define MB_NIL UINT32_MAX
/* Page indices are 32-bit: 2^31 pages (8 TiB with 4 KiB pages) at most;
 * any heap beyond that is left unused. */
#define MB_MAX_PAGES (1u << 31)
#define MB_NCLASSES 24
#define MB_SLAB_MAX_ORDER 3u
#define MB_SLAB_MAX_SLOTS 4096u
#define MB_DECOMMIT_BYTES (64u * 1024u)
/* Committed free memory kept for reuse rather than punched: an eighth of
 * the heap, at least 1 MiB and at most 64 MiB. */
#define MB_RETAIN_MIN (1ull << 20)
#define MB_RETAIN_MAX (64ull << 20)
#define MB_PUNCH_MAX 64
#define MB_HUGE ((uint64_t)DKSHM_MAX_CAPACITY)

/* ctrl byte: order in bits 0-4, kind in bits 5-6, committed in bit 7. */
#define MB_ORDER 0x1fu
#define MB_KIND 0x60u
#define MB_NONE 0x00u  /* inside a block (or, at a block start, damage) */
#define MB_FREE 0x20u  /* first page of a free block */
#define MB_BUDDY 0x40u /* first page of an allocated buddy block */
#define MB_SLAB 0x60u  /* any page of a slab */
#define MB_COMMITTED 0x80u

/* What the lock holder is doing, in the undo log's op word. */
enum { MB_OP_ALLOC = 1, MB_OP_FREE, MB_OP_RECLAIM, MB_OP_RESET, MB_OP_READ };

_Static_assert(MB_NCLASSES <= MEMBOUND_CLASSES, "class table too small");

static const uint32_t mbClassSizes[MB_NCLASSES] = {
    16,  32,  48,  64,  80,  96,  112, 128,  160,  192,  224,  256,
    320, 384, 448, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048};
_Static_assert(2048 == MEMBOUND_SLAB_MAX, "last class must be SLAB_MAX");

typedef struct mbClass { /* in the segment: one size class */
    uint32_t size;       /* slot size (geometry: fixed at creation) */
    uint32_t nSlots;     /* slots per slab */
    uint32_t slotOff;    /* offset of slot 0 in the slab */
    uint32_t order;      /* a slab is 2^order pages */
    uint32_t words;      /* bitmap words */
    uint32_t partial;    /* first slab with a free slot, MB_NIL (logged) */
    uint64_t slabs;      /* slabs of the class (logged) */
    uint64_t used;       /* slots in use (logged) */
} mbClass;

typedef struct mbRoot { /* in the segment, at hdr->allocRoot */
    fastMutex lock;     /* guards everything below; undo log = undo */
    uint8_t pad0[64 - sizeof(fastMutex)];
    /* Geometry, fixed at creation. */
    uint64_t magic;
    uint32_t version;
    uint32_t pageSize;
    uint32_t pageShift;
    uint32_t nPages;
    uint32_t maxOrder; /* largest order a block can have */
    uint32_t nClasses;
    uint32_t undoCap;
    uint32_t resetPending; /* 1 while a reset runs (atomic, not logged) */
    dkoff undo;            /* the lock's dkUndo */
    dkoff ctrl;            /* uint8_t[nPages] */
    dkoff links;           /* uint32_t[2 * nPages]: next, prev */
    dkoff pages;           /* page 0, page aligned */
    /* Changed under the lock, always through the undo log. */
    uint64_t usedBytes;           /* slot or block size of live allocations */
    uint64_t allocations;         /* live allocations */
    uint64_t freePages;           /* pages in free buddy blocks */
    uint64_t committedFree;       /* of those, pages still committed */
    uint32_t freeHead[MB_ORDERS]; /* first free block per order, MB_NIL */
    /* Event counters: relaxed atomics, outside the log on purpose. */
    uint64_t badFrees;
    uint64_t fullErrors;
    mbClass cls[MB_NCLASSES];
} mbRoot;

typedef struct mbSlab { /* in the segment: the first bytes of a slab */
    uint32_t cls;
    uint32_t used;   /* slots in use (logged) */
    uint64_t bits[]; /* bit set: slot in use, or past the last slot */
} mbSlab;

typedef struct mbGeo { /* per process: a class's geometry for this page */
    uint32_t size, nSlots, slotOff, order, words;
} mbGeo;

struct membound { /* per process */
    dkshm *s;
    mbRoot *root;
    dkUndo *log;
    uint8_t *ctrl;
    uint32_t *lnk;
    dkoff rootOff;
    dkoff pagesOff;
    uint32_t nPages;
    uint32_t shift;
    uint32_t maxOrder;
    uint32_t decommitOrder; /* free blocks of this order or more: punched */
    uint64_t retainPages;   /* ... once committedFree would pass this */
    mbGeo geo[MB_NCLASSES];
    bool ownsSegment; /* from memboundCreate: Shutdown detaches */
    /* What the handle was built from, to notice a reused dkshm address. */
    const uint8_t *keyBase;
    uint64_t keySize;
    uint64_t keySum;
    bool keyRo;
};

/* One critical section (per call, on the stack). */
typedef struct mbOp {
    membound *m;
    dkUndo *log; /* NULL: unlogged stores (laying out a heap nobody uses) */
    uint32_t nPunch;
    struct {
        uint32_t page, order;
    } punch[MB_PUNCH_MAX]; /* to decommit once the log is committed */
} mbOp;

/* A live allocation found from its offset. */
typedef struct mbBlock {
    uint32_t page; /* buddy block or slab head */
    uint32_t order;
    int cls; /* -1 for a buddy block */
    uint32_t slot;
    uint64_t size;
} mbBlock;

static uint64_t mbRoundUp(uint64_t v, uint64_t to) {
    return (v + to - 1) / to * to;
}

static uint32_t mbLog2(uint64_t v) { /* floor; v > 0 */
    return 63u - (uint32_t)__builtin_clzll(v);
}

/* ---- geometry ----------------------------------------------------------- */

/* Where a slab's slots start: after the header (used count and bitmap),
 * aligned to the largest power of two (16 to 64) that divides the slot
 * size, so that every slot of a class that is a multiple of 32 bytes
 * starts at the same place in its cache lines and none straddles a line
 * more than its size requires: a 96-byte block then spans 2 lines, never
 * 3 (at 16-byte alignment half of them spanned 3), and a reader of the
 * whole block waits for one miss fewer. */
static uint32_t mbSlotOff(uint32_t nSlots, uint32_t size) {
    uint32_t align = size & -size;
    align = align < 16 ? 16 : align > 64 ? 64 : align;
    return (uint32_t)mbRoundUp(8u + 8u * ((nSlots + 63u) / 64u), align);
}

/* Slab shape of every class for page size PS: per class the smallest slab
 * (1..8 pages) that wastes at most 1/16 of itself, else the least wasteful.
 * A pure function, so every process derives the same answer, and check
 * compares it with what the root recorded at creation. */
static void mbGeometry(uint32_t ps, mbGeo geo[MB_NCLASSES]) {
    for (int c = 0; c < MB_NCLASSES; c++) {
        uint32_t size = mbClassSizes[c];
        mbGeo best = {0};
        uint64_t bestWaste = 0, bestBytes = 1;
        for (uint32_t o = 0; o <= MB_SLAB_MAX_ORDER; o++) {
            uint64_t bytes = (uint64_t)ps << o;
            uint64_t n = bytes / size;
            if (n > MB_SLAB_MAX_SLOTS)
                n = MB_SLAB_MAX_SLOTS;
            while (n > 0 && mbSlotOff((uint32_t)n, size) + n * size > bytes)
                n--;
            if (n == 0)
                continue;
            uint32_t off = mbSlotOff((uint32_t)n, size);
            uint64_t waste = bytes - off - n * size;
            mbGeo g = {size, (uint32_t)n, off, o, (uint32_t)((n + 63) / 64)};
            if (best.nSlots == 0 || waste * bestBytes < bestWaste * bytes) {
                best = g;
                bestWaste = waste;
                bestBytes = bytes;
            }
            if (waste * 16 <= bytes) {
                best = g;
                break;
            }
        }
        geo[c] = best;
    }
}

static int mbClassOf(size_t size) { /* 1 <= size <= MEMBOUND_SLAB_MAX */
    if (size <= 128)
        return (int)((size + 15) / 16) - 1;
    int c = 8;
    while (mbClassSizes[c] < size)
        c++;
    return c;
}

static uint32_t mbOrderFor(const membound *m, uint64_t size) {
    uint64_t pages = (size + ((1ull << m->shift) - 1)) >> m->shift;
    return pages <= 1 ? 0 : mbLog2(pages - 1) + 1;
}

static uint64_t mbMaxBlock(const membound *m) {
    return 1ull << (m->maxOrder + m->shift);
}

/* ---- logged stores ------------------------------------------------------ */

/* Change a shared word: through the undo log, and only if it changes (a
 * record saved is a record the log never fills with). */
static void mbSet8(mbOp *op, uint8_t *p, uint8_t v) {
    if (__atomic_load_n(p, __ATOMIC_RELAXED) == v)
        return;
    if (op->log)
        dkUndoSet8(op->m->s, op->log, p, v);
    else
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static void mbSet32(mbOp *op, uint32_t *p, uint32_t v) {
    if (__atomic_load_n(p, __ATOMIC_RELAXED) == v)
        return;
    if (op->log)
        dkUndoSet32(op->m->s, op->log, p, v);
    else
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static void mbSet64(mbOp *op, uint64_t *p, uint64_t v) {
    if (__atomic_load_n(p, __ATOMIC_RELAXED) == v)
        return;
    if (op->log)
        dkUndoSet64(op->m->s, op->log, p, v);
    else
        __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static void mbAdd64(mbOp *op, uint64_t *p, int64_t delta) {
    mbSet64(op, p, __atomic_load_n(p, __ATOMIC_RELAXED) + (uint64_t)delta);
}

static uint64_t mbLoad64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static uint32_t mbLoad32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static uint8_t mbCtrl(const membound *m, uint64_t i) {
    return __atomic_load_n(&m->ctrl[i], __ATOMIC_RELAXED);
}

static uint32_t *mbNext(const membound *m, uint32_t i) {
    return &m->lnk[2 * (uint64_t)i];
}

static uint32_t *mbPrev(const membound *m, uint32_t i) {
    return &m->lnk[2 * (uint64_t)i + 1];
}

static dkoff mbPageOff(const membound *m, uint32_t i) {
    return m->pagesOff + ((uint64_t)i << m->shift);
}

static mbSlab *mbSlabAt(const membound *m, uint32_t i) {
    return dkPtr(m->s, mbPageOff(m, i));
}

/* ---- lists (free blocks per order, slabs per class) --------------------- */

static void mbListPush(mbOp *op, uint32_t *head, uint32_t i) {
    membound *m = op->m;
    uint32_t h = mbLoad32(head);
    mbSet32(op, mbNext(m, i), h);
    mbSet32(op, mbPrev(m, i), MB_NIL);
    if (h != MB_NIL)
        mbSet32(op, mbPrev(m, h), i);
    mbSet32(op, head, i);
}

/* Whether I's links can be followed to unlink it from the list at HEAD:
 * both neighbours are pages (or NIL) that point back at I. The links are
 * in the segment; a damaged table must give CORRUPT, not a stray write. */
static bool mbLinksOk(const membound *m, const uint32_t *head, uint32_t i) {
    if (i >= m->nPages)
        return false;
    uint32_t n = mbLoad32(mbNext(m, i)), p = mbLoad32(mbPrev(m, i));
    if ((n != MB_NIL && n >= m->nPages) || (p != MB_NIL && p >= m->nPages))
        return false;
    if (p == MB_NIL ? mbLoad32(head) != i : mbLoad32(mbNext(m, p)) != i)
        return false;
    return n == MB_NIL || mbLoad32(mbPrev(m, n)) == i;
}

/* Whether I can be pushed on the list at HEAD: I is a page and the old
 * head is NIL or a page at the front of its list. */
static bool mbHeadOk(const membound *m, const uint32_t *head, uint32_t i) {
    uint32_t h = mbLoad32(head);
    return i < m->nPages &&
           (h == MB_NIL ||
            (h < m->nPages && mbLoad32(mbPrev(m, h)) == MB_NIL));
}

static void mbListRemove(mbOp *op, uint32_t *head, uint32_t i) {
    membound *m = op->m;
    uint32_t n = mbLoad32(mbNext(m, i)), p = mbLoad32(mbPrev(m, i));
    if (p != MB_NIL)
        mbSet32(op, mbNext(m, p), n);
    else
        mbSet32(op, head, n);
    if (n != MB_NIL)
        mbSet32(op, mbPrev(m, n), p);
}

/* ---- buddy level -------------------------------------------------------- */

/* Remember to decommit a free block once the log is committed. False if
 * the list is full: the block then simply stays resident. */
static bool mbPunch(mbOp *op, uint32_t page, uint32_t order) {
    if (op->nPunch >= MB_PUNCH_MAX)
        return false;
    op->punch[op->nPunch].page = page;
    op->punch[op->nPunch].order = order;
    op->nPunch++;
    return true;
}

/* Take a block of order K for KIND (MB_BUDDY or MB_SLAB), committed. FULL
 * when no free block is large enough or its pages cannot be committed.
 * The commit comes before any change, so a failure changes nothing. */
static int mbBuddyTake(mbOp *op, uint32_t k, uint8_t kind, uint32_t *out) {
    membound *m = op->m;
    mbRoot *r = m->root;
    uint32_t j = k;
    while (j <= m->maxOrder && mbLoad32(&r->freeHead[j]) == MB_NIL)
        j++;
    if (j > m->maxOrder)
        return DKSHM_FULL;
    uint32_t i = mbLoad32(&r->freeHead[j]);
    /* A committed block near the head saves a commit and its page faults. */
    for (uint32_t c = i, n = 0; n < 8 && c < m->nPages; n++) {
        if (mbCtrl(m, c) & MB_COMMITTED) {
            i = c;
            break;
        }
        c = mbLoad32(mbNext(m, c));
    }
    if (i >= m->nPages || (i & ((1u << j) - 1)) ||
        !mbLinksOk(m, &r->freeHead[j], i))
        return DKSHM_CORRUPT; /* cheap guard; memboundCheck says more */
    /* The lists the split halves go on: their heads are followed. */
    for (uint32_t h = k; h < j; h++)
        if (!mbHeadOk(m, &r->freeHead[h], i + (1u << h)))
            return DKSHM_CORRUPT;
    uint8_t committed = mbCtrl(m, i) & MB_COMMITTED;
    if (!committed) {
        int rc = dkCommit(m->s, mbPageOff(m, i), 1ull << (k + m->shift));
        if (rc != DKSHM_OK)
            return rc;
    }
    mbListRemove(op, &r->freeHead[j], i);
    if (committed) /* the halves split off below are added back */
        mbAdd64(op, &r->committedFree, -(int64_t)(1ull << j));
    while (j > k) { /* split: the upper half stays free */
        j--;
        uint32_t b = i + (1u << j);
        mbListPush(op, &r->freeHead[j], b);
        mbSet8(op, &m->ctrl[b], (uint8_t)(MB_FREE | j | committed));
        if (committed)
            mbAdd64(op, &r->committedFree, (int64_t)(1ull << j));
    }
    mbSet8(op, &m->ctrl[i], (uint8_t)(kind | k | MB_COMMITTED));
    mbAdd64(op, &r->freePages, -(int64_t)(1ull << k));
    *out = i;
    return DKSHM_OK;
}

/* Give the allocated block (I, K) back, merging with free buddies. With
 * RELEASE, keep nothing committed that merging or size would punch (the
 * retention budget counts as spent). */
static void mbBuddyFree(mbOp *op, uint32_t i, uint32_t k, bool release) {
    membound *m = op->m;
    mbRoot *r = m->root;
    uint32_t k0 = k;
    bool committed = true; /* an allocated block always is */
    uint64_t retain = release ? 0 : m->retainPages;
    mbSet8(op, &m->ctrl[i], MB_NONE);
    while (k < m->maxOrder) {
        uint32_t b = i ^ (1u << k);
        if (b >= m->nPages)
            break;
        uint8_t cb = mbCtrl(m, b);
        if ((cb & (MB_KIND | MB_ORDER)) != (MB_FREE | k))
            break;
        /* Damaged links: leave the buddy alone (check reports it) rather
         * than write through them. */
        if (!mbLinksOk(m, &r->freeHead[k], b))
            break;
        bool bc = (cb & MB_COMMITTED) != 0;
        uint64_t kept = mbLoad64(&r->committedFree);
        if (committed != bc) {
            /* Merging would mix the two. Within the budget, leave the
             * committed one committed and the pair unmerged; past it,
             * return the committed half to the kernel and merge. */
            if (committed ? kept + (1ull << k) <= retain : kept <= retain)
                break;
            mbPunch(op, committed ? i : b, k);
            committed = false;
        }
        mbListRemove(op, &r->freeHead[k], b);
        if (bc)
            mbAdd64(op, &r->committedFree, -(int64_t)(1ull << k));
        mbSet8(op, &m->ctrl[b], MB_NONE);
        i &= ~(1u << k);
        k++;
    }
    if (committed && k >= m->decommitOrder &&
        mbLoad64(&r->committedFree) + (1ull << k) > retain &&
        mbPunch(op, i, k))
        committed = false;
    /* A damaged list head: leave the block off the list (check reports
     * the head, and the free block it cannot find) rather than write
     * through the head. */
    if (mbHeadOk(m, &r->freeHead[k], i))
        mbListPush(op, &r->freeHead[k], i);
    mbSet8(op, &m->ctrl[i],
           (uint8_t)(MB_FREE | k | (committed ? MB_COMMITTED : 0)));
    if (committed)
        mbAdd64(op, &r->committedFree, (int64_t)(1ull << k));
    mbAdd64(op, &r->freePages, (int64_t)(1ull << k0));
}

static void mbCheckpoint(mbOp *op);

/* Punch and merge every committed free block that stays apart from its
 * free uncommitted buddy (see COMMIT AND DECOMMIT), for an allocation
 * that found no block large enough. One committed step per block, so the
 * log never holds more than one merge chain. True if any merged. */
static bool mbConsolidate(mbOp *op) {
    membound *m = op->m;
    mbRoot *r = m->root;
    bool merged = false;
    for (uint32_t k = 0; k < m->maxOrder; k++) {
        uint32_t i = mbLoad32(&r->freeHead[k]);
        for (uint64_t steps = 0; i < m->nPages && steps < m->nPages; steps++) {
            uint32_t b = i ^ (1u << k);
            uint8_t ci = mbCtrl(m, i);
            if (!(ci & MB_COMMITTED) || b >= m->nPages ||
                (mbCtrl(m, b) & (MB_KIND | MB_ORDER | MB_COMMITTED)) !=
                    (MB_FREE | k)) {
                i = mbLoad32(mbNext(m, i));
                continue;
            }
            /* Take I off the list as if allocated, then free it releasing:
             * it is punched and merges upward. */
            if (!mbLinksOk(m, &r->freeHead[k], i))
                return merged; /* damage: leave the rest as it is */
            mbListRemove(op, &r->freeHead[k], i);
            mbAdd64(op, &r->committedFree, -(int64_t)(1ull << k));
            mbAdd64(op, &r->freePages, -(int64_t)(1ull << k));
            mbSet8(op, &m->ctrl[i], (uint8_t)(MB_BUDDY | k | MB_COMMITTED));
            mbBuddyFree(op, i, k, true);
            mbCheckpoint(op);
            merged = true;
            i = mbLoad32(&r->freeHead[k]); /* the list changed */
        }
    }
    return merged;
}

/* Commit the log so far (the operation's changes up to here are final),
 * then return the pages queued by mbPunch to the kernel. Punching only
 * after the commit guarantees that no rollback ever writes into them. */
static void mbCheckpoint(mbOp *op) {
    if (op->log)
        dkUndoCommit(op->log);
    if (op->nPunch == 0)
        return;
    DKSHM_CRASHPOINT();
    for (uint32_t n = 0; n < op->nPunch; n++)
        dkDecommit(op->m->s, mbPageOff(op->m, op->punch[n].page),
                   1ull << (op->punch[n].order + op->m->shift));
    op->nPunch = 0;
}

/* ---- slabs -------------------------------------------------------------- */

/* Give the empty slab H of class C back to the buddy level. */
static void mbSlabRelease(mbOp *op, uint32_t h, int c) {
    membound *m = op->m;
    mbClass *cl = &m->root->cls[c];
    uint32_t o = m->geo[c].order;
    mbListRemove(op, &cl->partial, h);
    for (uint32_t t = 1; t < (1u << o); t++)
        mbSet8(op, &m->ctrl[h + t], MB_NONE);
    mbAdd64(op, &cl->slabs, -1);
    mbBuddyFree(op, h, o, false);
}

/* The buddy level is full: give back every empty slab, each as its own
 * committed step (so the log never has to hold them all). Only when the
 * log holds nothing yet, so that the current operation's own records are
 * never committed early. Returns how many were released. */
static int mbReleaseEmptySlabs(mbOp *op) {
    membound *m = op->m;
    if (!op->log || __atomic_load_n(&op->log->count, __ATOMIC_RELAXED) != 0)
        return 0;
    int released = 0;
    for (int c = 0; c < MB_NCLASSES; c++) {
        uint32_t h = mbLoad32(&m->root->cls[c].partial);
        for (uint64_t steps = 0; h != MB_NIL && steps <= m->nPages; steps++) {
            uint32_t next = mbLoad32(mbNext(m, h));
            if (mbLoad32(&mbSlabAt(m, h)->used) == 0) {
                mbSlabRelease(op, h, c);
                mbCheckpoint(op);
                released++;
            }
            h = next;
        }
    }
    return released;
}

static int mbBuddyAlloc(mbOp *op, uint32_t k, uint8_t kind, uint32_t *out) {
    int rc = mbBuddyTake(op, k, kind, out);
    if (rc == DKSHM_FULL && mbReleaseEmptySlabs(op) > 0)
        rc = mbBuddyTake(op, k, kind, out);
    if (rc == DKSHM_FULL && mbConsolidate(op))
        rc = mbBuddyTake(op, k, kind, out);
    return rc;
}

static int mbSlabAlloc(mbOp *op, int c, dkoff *out) {
    membound *m = op->m;
    mbRoot *r = m->root;
    const mbGeo *g = &m->geo[c];
    mbClass *cl = &r->cls[c];
    uint32_t h = mbLoad32(&cl->partial);
    if (h == MB_NIL) {
        int rc = mbBuddyAlloc(op, g->order, MB_SLAB, &h);
        if (rc != DKSHM_OK)
            return rc;
        for (uint32_t t = 1; t < (1u << g->order); t++)
            mbSet8(op, &m->ctrl[h + t],
                   (uint8_t)(MB_SLAB | g->order | MB_COMMITTED));
        /* Unlogged: until this operation commits, the slab's pages are
         * free space in the eyes of any rollback, so their old bytes do
         * not matter. Relaxed atomic stores, not memset: a container's
         * lock-free reader may still be reading these bytes as the table
         * or entry they were before they were freed (its version check
         * throws away what it read), and to ThreadSanitizer a plain write
         * beside that atomic read is a race. */
        mbSlab *fresh = mbSlabAt(m, h);
        __atomic_store_n(&fresh->cls, (uint32_t)c, __ATOMIC_RELAXED);
        __atomic_store_n(&fresh->used, 0, __ATOMIC_RELAXED);
        for (uint32_t w = 0; w < g->words; w++)
            __atomic_store_n(&fresh->bits[w], 0, __ATOMIC_RELAXED);
        if (g->nSlots % 64)
            __atomic_store_n(&fresh->bits[g->words - 1],
                             ~0ull << (g->nSlots % 64), __ATOMIC_RELAXED);
        mbListPush(op, &cl->partial, h);
        mbAdd64(op, &cl->slabs, 1);
    }
    if (h >= m->nPages ||
        (mbCtrl(m, h) & (MB_KIND | MB_ORDER)) != (MB_SLAB | g->order))
        return DKSHM_CORRUPT;
    mbSlab *sl = mbSlabAt(m, h);
    uint32_t w = 0;
    while (w < g->words && mbLoad64(&sl->bits[w]) == ~0ull)
        w++;
    if (w == g->words)
        return DKSHM_CORRUPT; /* a listed slab without a free slot */
    uint64_t word = mbLoad64(&sl->bits[w]);
    uint32_t bit = (uint32_t)__builtin_ctzll(~word);
    uint32_t slot = w * 64 + bit;
    if (slot >= g->nSlots)
        return DKSHM_CORRUPT;
    if (mbLoad32(&sl->used) + 1 >= g->nSlots &&
        !mbLinksOk(m, &cl->partial, h))
        return DKSHM_CORRUPT; /* checked before the first change */
    mbSet64(op, &sl->bits[w], word | (1ull << bit));
    uint32_t used = mbLoad32(&sl->used) + 1;
    mbSet32(op, &sl->used, used);
    if (used >= g->nSlots)
        mbListRemove(op, &cl->partial, h);
    mbAdd64(op, &cl->used, 1);
    mbAdd64(op, &r->usedBytes, g->size);
    mbAdd64(op, &r->allocations, 1);
    *out = mbPageOff(m, h) + g->slotOff + (uint64_t)slot * g->size;
    return DKSHM_OK;
}

static int mbSlabFree(mbOp *op, const mbBlock *b) {
    membound *m = op->m;
    mbRoot *r = m->root;
    const mbGeo *g = &m->geo[b->cls];
    mbClass *cl = &r->cls[b->cls];
    mbSlab *sl = mbSlabAt(m, b->page);
    uint32_t was = mbLoad32(&sl->used);
    /* The list links are in the segment: check them before any change. */
    if (was == 0 || was > g->nSlots ||
        (was == g->nSlots ? !mbHeadOk(m, &cl->partial, b->page)
                          : !mbLinksOk(m, &cl->partial, b->page)))
        return DKSHM_CORRUPT;
    uint64_t *w = &sl->bits[b->slot / 64];
    mbSet64(op, w, mbLoad64(w) & ~(1ull << (b->slot % 64)));
    uint32_t used = mbLoad32(&sl->used) - 1;
    mbSet32(op, &sl->used, used);
    if (used + 1 == g->nSlots) /* was full, so on no list */
        mbListPush(op, &cl->partial, b->page);
    mbAdd64(op, &cl->used, -1);
    mbAdd64(op, &r->usedBytes, -(int64_t)g->size);
    mbAdd64(op, &r->allocations, -1);
    if (used == 0 && (mbLoad32(&cl->partial) != b->page ||
                      mbLoad32(mbNext(m, b->page)) != MB_NIL))
        mbSlabRelease(op, b->page, b->cls);
    return DKSHM_OK;
}

/* ---- allocations -------------------------------------------------------- */

/* The live allocation that starts at OFF, or INVALID. Bounds-checks
 * everything it reads, so any offset (and a damaged slab header) is safe. */
static int mbFind(const membound *m, dkoff off, mbBlock *b) {
    if (off < m->pagesOff)
        return DKSHM_INVALID;
    uint64_t rel = off - m->pagesOff;
    uint64_t idx = rel >> m->shift;
    if (idx >= m->nPages)
        return DKSHM_INVALID;
    uint8_t c = mbCtrl(m, idx);
    uint32_t o = c & MB_ORDER;
    if ((c & MB_KIND) == MB_BUDDY) {
        if (rel & ((1ull << m->shift) - 1))
            return DKSHM_INVALID; /* inside the block's first page */
        *b = (mbBlock){(uint32_t)idx, o, -1, 0, 1ull << (o + m->shift)};
        return DKSHM_OK;
    }
    if ((c & MB_KIND) != MB_SLAB || o > MB_SLAB_MAX_ORDER)
        return DKSHM_INVALID;
    uint32_t h = (uint32_t)idx & ~((1u << o) - 1);
    if (mbCtrl(m, h) != c)
        return DKSHM_INVALID;
    const mbSlab *sl = mbSlabAt(m, h);
    uint32_t cls = mbLoad32(&sl->cls);
    if (cls >= MB_NCLASSES || m->geo[cls].order != o)
        return DKSHM_INVALID;
    const mbGeo *g = &m->geo[cls];
    uint64_t srel = off - mbPageOff(m, h);
    if (srel < g->slotOff || (srel - g->slotOff) % g->size != 0)
        return DKSHM_INVALID;
    uint64_t slot = (srel - g->slotOff) / g->size;
    if (slot >= g->nSlots)
        return DKSHM_INVALID;
    if (!(mbLoad64(&sl->bits[slot / 64]) & (1ull << (slot % 64))))
        return DKSHM_INVALID; /* a free slot: double free */
    *b = (mbBlock){h, o, (int)cls, (uint32_t)slot, g->size};
    return DKSHM_OK;
}

static int mbAllocLocked(mbOp *op, size_t size, dkoff *out) {
    membound *m = op->m;
    if (size <= MEMBOUND_SLAB_MAX)
        return mbSlabAlloc(op, mbClassOf(size), out);
    uint32_t k = mbOrderFor(m, size);
    if (k > m->maxOrder)
        return DKSHM_TOOBIG;
    uint32_t i;
    int rc = mbBuddyAlloc(op, k, MB_BUDDY, &i);
    if (rc != DKSHM_OK)
        return rc;
    mbAdd64(op, &m->root->usedBytes, (int64_t)(1ull << (k + m->shift)));
    mbAdd64(op, &m->root->allocations, 1);
    *out = mbPageOff(m, i);
    return DKSHM_OK;
}

/* Free OFF; INVALID (and nothing changed) unless it is a live allocation. */
static int mbFreeLocked(mbOp *op, dkoff off) {
    mbBlock b;
    int rc = mbFind(op->m, off, &b);
    if (rc != DKSHM_OK)
        return rc;
    if (b.cls >= 0)
        return mbSlabFree(op, &b);
    mbAdd64(op, &op->m->root->usedBytes, -(int64_t)b.size);
    mbAdd64(op, &op->m->root->allocations, -1);
    mbBuddyFree(op, b.page, b.order, false);
    return DKSHM_OK;
}

/* ---- layout and reset --------------------------------------------------- */

/* Every page free, every counter zero: the state of a new heap. Unlogged
 * (OP->log is NULL): the caller makes it crash-safe. */
static void mbLayout(mbOp *op) {
    membound *m = op->m;
    mbRoot *r = m->root;
    memset(m->ctrl, 0, m->nPages);
    for (uint32_t k = 0; k < MB_ORDERS; k++)
        mbSet32(op, &r->freeHead[k], MB_NIL);
    for (int c = 0; c < MB_NCLASSES; c++) {
        mbSet32(op, &r->cls[c].partial, MB_NIL);
        mbSet64(op, &r->cls[c].slabs, 0);
        mbSet64(op, &r->cls[c].used, 0);
    }
    mbSet64(op, &r->usedBytes, 0);
    mbSet64(op, &r->allocations, 0);
    mbSet64(op, &r->freePages, m->nPages);
    mbSet64(op, &r->committedFree, 0);
    /* The largest aligned blocks that tile [0, nPages): one per set bit
     * of nPages, the largest at page 0. */
    for (uint64_t i = 0; i < m->nPages;) {
        uint32_t k = i ? (uint32_t)__builtin_ctzll(i) : 31;
        uint32_t fit = mbLog2(m->nPages - i);
        if (k > fit)
            k = fit;
        mbListPush(op, &r->freeHead[k], (uint32_t)i);
        mbSet8(op, &m->ctrl[i], (uint8_t)(MB_FREE | k));
        i += 1ull << k;
    }
}

/* Free everything. Too big for the undo log, so it is a redo operation:
 * resetPending is raised first (outside the log, so no rollback lowers it)
 * and every locker that finds it raised does the whole reset again; each
 * step below may be repeated any number of times with the same result. */
static void mbResetLocked(mbOp *op) {
    membound *m = op->m;
    mbRoot *r = m->root;
    dkshm *s = m->s;
    dkUndoCommit(op->log);
    __atomic_store_n(&r->resetPending, 1, __ATOMIC_RELAXED);
    atomic_signal_fence(memory_order_seq_cst);
    DKSHM_CRASHPOINT();
    /* In-flight blocks die with the rest: a process holding one between
     * the allocator and a container must not race a reset (documented). */
    uint32_t procs = s->maxProcs;
    if (procs > DKSHM_MAX_PROCS)
        procs = DKSHM_MAX_PROCS;
    dkoff end = mbPageOff(m, m->nPages);
    for (uint32_t p = 0; p < procs; p++) {
        dkProcSlot *ps = dkSlotAt(s, p);
        for (int j = 0; j < DK_INFLIGHT_MAX; j++) {
            dkoff o = __atomic_load_n(&ps->inflight[j], __ATOMIC_RELAXED);
            if (o >= m->pagesOff && o < end)
                __atomic_store_n(&ps->inflight[j], 0, __ATOMIC_RELAXED);
        }
    }
    mbOp plain = {.m = m, .log = NULL};
    mbLayout(&plain);
    DKSHM_CRASHPOINT();
    dkDecommit(s, m->pagesOff, (uint64_t)m->nPages << m->shift);
    atomic_signal_fence(memory_order_seq_cst);
    __atomic_store_n(&r->resetPending, 0, __ATOMIC_RELEASE);
    DKSHM_CRASHPOINT();
}

/* ---- locking ------------------------------------------------------------ */

static int mbLock(membound *m, mbOp *op, uint32_t what) {
    op->m = m;
    op->log = m->log;
    op->nPunch = 0;
    int rc = fastMutexLock(m->s, &m->root->lock);
    if (rc == DKSHM_CORRUPT) {
        /* The log is damaged, so the dead owner's work cannot be undone.
         * Holding the lock forever would stop every process; drop the log
         * and report: memboundCheck tells what is left. */
        fastMutexUnlock(m->s, &m->root->lock);
        return DKSHM_CORRUPT;
    }
    if (rc < 0)
        return rc;
    __atomic_store_n(&m->log->op, what, __ATOMIC_RELAXED);
    if (__atomic_load_n(&m->root->resetPending, __ATOMIC_ACQUIRE))
        mbResetLocked(op); /* its resetter died: finish it */
    return DKSHM_OK;
}

static void mbUnlock(mbOp *op) {
    mbCheckpoint(op);
    fastMutexUnlock(op->m->s, &op->m->root->lock);
}

/* The current operation failed: undo its records, and forget the pages it
 * meant to punch (they may be in use again after the rollback). */
static void mbAbort(mbOp *op) {
    dkUndoRollback(op->m->s, op->log);
    op->nPunch = 0;
}

/* Lock unless the handle is read-only: readers of a read-only attach cannot
 * take locks and read what is there. Returns OK and whether it locked. */
static int mbLockOrPeek(membound *m, mbOp *op, bool *locked) {
    *locked = false;
    if (m->s->readOnly)
        return DKSHM_OK;
    int rc = mbLock(m, op, MB_OP_READ);
    *locked = rc == DKSHM_OK;
    return rc;
}

/* ---- handles ------------------------------------------------------------ */

static bool mbInHeap(const dkHeader *h, dkoff off, uint64_t len) {
    return off >= h->heap && off <= h->heap + h->heapSize &&
           len <= h->heap + h->heapSize - off;
}

/* Build M for segment S from the root at ROOTOFF, trusting nothing: every
 * offset and size the hot paths will use is checked here once. */
static int mbFill(membound *m, dkshm *s, dkoff rootOff) {
    const dkHeader *h = s->hdr;
    if (rootOff == 0)
        return DKSHM_NOTFOUND;
    if (!dkRangeOk(s, h->heap, h->heapSize) || (rootOff & 63) ||
        !mbInHeap(h, rootOff, sizeof(mbRoot)))
        return DKSHM_CORRUPT;
    mbRoot *r = dkPtr(s, rootOff);
    if (r->magic != MB_MAGIC)
        return DKSHM_CORRUPT;
    if (r->version != MB_VERSION || r->nClasses != MB_NCLASSES)
        return DKSHM_VERSION;
    uint32_t ps = r->pageSize, n = r->nPages;
    if (ps != h->pageSize || ps < 4096 || (ps & (ps - 1)) ||
        r->pageShift != (uint32_t)__builtin_ctz(ps) || n == 0 ||
        n > MB_MAX_PAGES || r->maxOrder != mbLog2(n))
        return DKSHM_CORRUPT;
    if (r->undoCap != MB_UNDO_CAP || (r->undo & 7) ||
        !mbInHeap(h, r->undo, DK_UNDO_BYTES((uint64_t)MB_UNDO_CAP)) ||
        __atomic_load_n(&r->lock.undo, __ATOMIC_RELAXED) != r->undo)
        return DKSHM_CORRUPT;
    dkUndo *u = dkPtr(s, r->undo);
    if (u->cap != MB_UNDO_CAP)
        return DKSHM_CORRUPT;
    if (!mbInHeap(h, r->ctrl, n) || (r->links & 3) ||
        !mbInHeap(h, r->links, 8ull * n) || (r->pages & (ps - 1)) ||
        !mbInHeap(h, r->pages, (uint64_t)n << r->pageShift) ||
        r->ctrl < rootOff + sizeof(mbRoot) || r->links < r->ctrl + n ||
        r->pages < r->links + 8ull * n)
        return DKSHM_CORRUPT;
    memset(m, 0, sizeof *m);
    mbGeometry(ps, m->geo);
    for (int c = 0; c < MB_NCLASSES; c++) {
        const mbClass *cl = &r->cls[c];
        const mbGeo *g = &m->geo[c];
        if (cl->size != g->size || cl->nSlots != g->nSlots ||
            cl->slotOff != g->slotOff || cl->order != g->order ||
            cl->words != g->words)
            return DKSHM_VERSION;
    }
    m->s = s;
    m->root = r;
    m->log = u;
    m->ctrl = dkPtr(s, r->ctrl);
    m->lnk = dkPtr(s, r->links);
    m->rootOff = rootOff;
    m->pagesOff = r->pages;
    m->nPages = n;
    m->shift = r->pageShift;
    m->maxOrder = r->maxOrder;
    m->decommitOrder = 0;
    while ((1ull << (m->decommitOrder + m->shift)) < MB_DECOMMIT_BYTES)
        m->decommitOrder++;
    uint64_t retain = ((uint64_t)n << m->shift) / 8;
    retain = retain < MB_RETAIN_MIN ? MB_RETAIN_MIN
             : retain > MB_RETAIN_MAX ? MB_RETAIN_MAX
                                      : retain;
    m->retainPages = retain >> m->shift;
    m->keyBase = s->base;
    m->keySize = s->size;
    m->keySum = h->checksum;
    m->keyRo = s->readOnly;
    return DKSHM_OK;
}

/* The per-process handle cache: one membound per dkshm handle. A dkshm
 * address can be reused after a detach, so an entry also remembers the
 * mapping and the header checksum it was built from and is rebuilt when
 * they differ. */
static pthread_mutex_t mbTableLock = PTHREAD_MUTEX_INITIALIZER;
static membound **mbTable;
static size_t mbTableLen, mbTableCap;

static bool mbKeyMatches(const membound *m, const dkshm *s) {
    return m->keyBase == s->base && m->keySize == s->size &&
           m->keySum == s->hdr->checksum && m->keyRo == s->readOnly &&
           m->rootOff == __atomic_load_n(&s->hdr->allocRoot, __ATOMIC_ACQUIRE);
}

static int mbErrno(int rc) {
    switch (rc) {
    case DKSHM_INVALID:
    case DKSHM_NOTFOUND:
        return EINVAL;
    case DKSHM_FULL:
    case DKSHM_TOOBIG:
        return ENOMEM;
    case DKSHM_READONLY:
        return EROFS;
    case DKSHM_PERM:
        return EACCES;
    case DKSHM_VERSION:
        return EPROTO;
    case DKSHM_SYSTEM:
        return errno ? errno : EIO;
    default:
        return EIO;
    }
}

static void mbTableRemove(membound *m) {
    for (size_t i = 0; i < mbTableLen; i++) {
        if (mbTable[i] == m) {
            mbTable[i] = mbTable[--mbTableLen];
            return;
        }
    }
}

static int mbInitHeap(dkshm *s);

DKSHM_API membound *memboundForSegment(dkshm *s) {
    if (!s || !s->hdr) {
        errno = EINVAL;
        return NULL;
    }
    dkoff rootOff = __atomic_load_n(&s->hdr->allocRoot, __ATOMIC_ACQUIRE);
    if (rootOff == 0) {
        /* First use of the allocator of this segment. */
        if (s->readOnly) {
            errno = ENOENT;
            return NULL;
        }
        int rc = fastMutexLock(s, &s->hdr->initLock);
        if (rc < 0) {
            errno = mbErrno(rc);
            return NULL;
        }
        rootOff = __atomic_load_n(&s->hdr->allocRoot, __ATOMIC_ACQUIRE);
        if (rootOff == 0 && (rc = mbInitHeap(s)) == DKSHM_OK)
            rootOff = __atomic_load_n(&s->hdr->allocRoot, __ATOMIC_ACQUIRE);
        fastMutexUnlock(s, &s->hdr->initLock);
        if (rc != DKSHM_OK) {
            errno = mbErrno(rc);
            return NULL;
        }
    }
    pthread_mutex_lock(&mbTableLock);
    membound *m = NULL;
    for (size_t i = 0; i < mbTableLen; i++) {
        if (mbTable[i]->s == s) {
            m = mbTable[i];
            break;
        }
    }
    if (m && mbKeyMatches(m, s)) {
        pthread_mutex_unlock(&mbTableLock);
        return m;
    }
    int rc;
    if (m) {
        /* S was detached and its address reused: the old handle is dead
         * by contract, so rebuild it in place. */
        membound fresh;
        rc = mbFill(&fresh, s, rootOff);
        if (rc == DKSHM_OK)
            *m = fresh;
        else {
            mbTableRemove(m);
            free(m);
            m = NULL;
        }
    } else {
        m = malloc(sizeof *m);
        rc = m ? mbFill(m, s, rootOff) : DKSHM_SYSTEM;
        if (rc == DKSHM_OK && mbTableLen == mbTableCap) {
            size_t cap = mbTableCap ? 2 * mbTableCap : 8;
            membound **t = realloc(mbTable, cap * sizeof *t);
            if (t) {
                mbTable = t;
                mbTableCap = cap;
            } else
                rc = DKSHM_SYSTEM;
        }
        if (rc == DKSHM_OK)
            mbTable[mbTableLen++] = m;
        else {
            free(m);
            m = NULL;
        }
    }
    pthread_mutex_unlock(&mbTableLock);
    if (!m)
        errno = rc == DKSHM_SYSTEM ? ENOMEM : mbErrno(rc);
    return m;
}

DKSHM_API dkshm *memboundSegment(const membound *m) {
    return m ? m->s : NULL;
}

/* Bytes of segment memboundCreate needs around SIZE usable bytes: the
 * segment's header, process table and directory, the allocator's control
 * block and per-page tables, and some rounding. */
static uint64_t mbOverhead(uint64_t size, uint64_t ps) {
    uint64_t seg = mbRoundUp(sizeof(dkHeader), ps) +
                   mbRoundUp(DKSHM_DEFAULT_PROCS * sizeof(dkProcSlot), ps) +
                   mbRoundUp(DKSHM_DEFAULT_OBJECTS * sizeof(dkDirEntry), ps);
    uint64_t meta = mbRoundUp(sizeof(mbRoot), 64) +
                    mbRoundUp(DK_UNDO_BYTES((uint64_t)MB_UNDO_CAP), 64) +
                    9 * (size / ps + 1);
    return seg + mbRoundUp(meta, ps) + 2 * ps;
}

DKSHM_API membound *memboundCreate(size_t size) {
    if (size == 0 || size > MB_HUGE) {
        errno = EINVAL;
        return NULL;
    }
    long psl = sysconf(_SC_PAGESIZE);
    uint64_t ps = psl > 0 ? (uint64_t)psl : 4096;
    uint64_t want = mbRoundUp(size, ps);
    uint64_t cap = want + mbOverhead(want, ps);
    for (int tries = 0; tries < 4; tries++) {
        if (cap < DKSHM_MIN_CAPACITY)
            cap = DKSHM_MIN_CAPACITY;
        if (cap > DKSHM_MAX_CAPACITY) {
            errno = ENOMEM;
            return NULL;
        }
        dkshm *s;
        int rc = dkshmCreateAnonymous(cap, NULL, &s);
        if (rc != DKSHM_OK) {
            errno = mbErrno(rc);
            return NULL;
        }
        membound *m = memboundForSegment(s);
        if (!m) {
            int e = errno;
            dkshmDetach(s);
            errno = e;
            return NULL;
        }
        uint64_t have = (uint64_t)m->nPages << m->shift;
        if (have >= want) {
            m->ownsSegment = true;
            return m;
        }
        /* The segment layer took more than estimated: grow and retry. */
        pthread_mutex_lock(&mbTableLock);
        mbTableRemove(m);
        pthread_mutex_unlock(&mbTableLock);
        free(m);
        dkshmDetach(s);
        cap += want - have + ps;
    }
    errno = ENOMEM;
    return NULL;
}

DKSHM_API void memboundShutdown(membound *m) {
    if (!m || !m->ownsSegment)
        return;
    pthread_mutex_lock(&mbTableLock);
    mbTableRemove(m);
    pthread_mutex_unlock(&mbTableLock);
    dkshmDetach(m->s);
    free(m);
}

DKSHM_API bool memboundShutdownSafe(membound *m) {
    if (!m || mbLoad64(&m->root->allocations) != 0)
        return false;
    memboundShutdown(m);
    return true;
}

/* ---- allocation API ----------------------------------------------------- */

/* Count a rejected free. Outside the log on purpose (a statistic, not
 * state), and never on a read-only mapping. */
static void mbCountBadFree(membound *m) {
    if (!m->s->readOnly)
        __atomic_fetch_add(&m->root->badFrees, 1, __ATOMIC_RELAXED);
}

static int mbAllocOp(membound *m, size_t size, dkoff *out, bool inflight) {
    if (!m || !out)
        return DKSHM_INVALID;
    *out = 0;
    if (size == 0 || size > MB_HUGE)
        return DKSHM_INVALID;
    if (size > MEMBOUND_SLAB_MAX && size > mbMaxBlock(m))
        return DKSHM_TOOBIG;
    if (m->s->readOnly)
        return DKSHM_READONLY;
    mbOp op;
    int rc = mbLock(m, &op, MB_OP_ALLOC);
    if (rc != DKSHM_OK)
        return rc;
    dkoff off = 0;
    uint64_t used = mbLoad64(&m->root->usedBytes);
    rc = mbAllocLocked(&op, size, &off);
    if (rc == DKSHM_FULL)
        __atomic_fetch_add(&m->root->fullErrors, 1, __ATOMIC_RELAXED);
    if (rc == DKSHM_OK && inflight)
        rc = dkInflightAdd(m->s, op.log, off);
    if (rc == DKSHM_OK) {
        *out = off;
        /* The block's real size: what the used-bytes figure grew by. */
        dkCount(m->s, DKSHM_CTR_ALLOCS, 1);
        dkCount(m->s, DKSHM_CTR_ALLOC_BYTES,
                mbLoad64(&m->root->usedBytes) - used);
    } else
        mbAbort(&op);
    mbUnlock(&op);
    return rc;
}

static int mbFreeOp(membound *m, dkoff off, bool inflight) {
    if (m->s->readOnly)
        return DKSHM_READONLY;
    mbOp op;
    int rc = mbLock(m, &op, MB_OP_FREE);
    if (rc != DKSHM_OK)
        return rc;
    if (inflight)
        rc = dkInflightRemove(m->s, op.log, off);
    uint64_t used = mbLoad64(&m->root->usedBytes);
    if (rc == DKSHM_OK)
        rc = mbFreeLocked(&op, off);
    if (rc == DKSHM_INVALID)
        mbCountBadFree(m);
    if (rc != DKSHM_OK)
        mbAbort(&op);
    else {
        dkCount(m->s, DKSHM_CTR_FREES, 1);
        dkCount(m->s, DKSHM_CTR_FREE_BYTES,
                used - mbLoad64(&m->root->usedBytes));
    }
    mbUnlock(&op);
    return rc;
}

DKSHM_API int memboundAllocOff(membound *m, size_t size, dkoff *out) {
    return mbAllocOp(m, size, out, false);
}

int memboundAllocInflight(membound *m, size_t size, dkoff *out) {
    return mbAllocOp(m, size, out, true);
}

DKSHM_API int memboundFreeOff(membound *m, dkoff off) {
    if (!m)
        return DKSHM_INVALID;
    if (off == 0)
        return DKSHM_OK;
    return mbFreeOp(m, off, false);
}

int memboundFreeInflight(membound *m, dkoff off) {
    if (!m || off == 0)
        return DKSHM_INVALID;
    return mbFreeOp(m, off, true);
}

DKSHM_API void *memboundAlloc(membound *m, size_t size) {
    dkoff off;
    int rc = memboundAllocOff(m, size, &off);
    if (rc != DKSHM_OK) {
        errno = mbErrno(rc);
        return NULL;
    }
    return dkPtr(m->s, off);
}

DKSHM_API void *memboundCalloc(membound *m, size_t count, size_t size) {
    if (!m || count == 0 || size == 0) {
        errno = EINVAL;
        return NULL;
    }
    if (count > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = memboundAlloc(m, count * size);
    if (p)
        memset(p, 0, count * size); /* recycled memory is not zero */
    return p;
}

DKSHM_API int memboundFree(membound *m, void *p) {
    if (!p)
        return DKSHM_OK;
    if (!m)
        return DKSHM_INVALID;
    if (m->s->readOnly)
        return DKSHM_READONLY;
    if (!memboundOwns(m, p)) {
        mbCountBadFree(m);
        return DKSHM_INVALID;
    }
    return memboundFreeOff(m, dkOff(m->s, p));
}

DKSHM_API int memboundUsableSize(membound *m, dkoff off, size_t *out) {
    if (!m || !out)
        return DKSHM_INVALID;
    mbOp op;
    bool locked;
    int rc = mbLockOrPeek(m, &op, &locked);
    if (rc != DKSHM_OK)
        return rc;
    mbBlock b;
    rc = mbFind(m, off, &b);
    if (locked)
        mbUnlock(&op);
    *out = rc == DKSHM_OK ? (size_t)b.size : 0;
    return rc;
}

/* The slot or block size a request of SIZE bytes gets. */
static uint64_t mbUnitFor(const membound *m, size_t size) {
    if (size <= MEMBOUND_SLAB_MAX)
        return mbClassSizes[mbClassOf(size)];
    return 1ull << (mbOrderFor(m, size) + m->shift);
}

DKSHM_API void *memboundRealloc(membound *m, void *p, size_t size) {
    if (!m) {
        errno = EINVAL;
        return NULL;
    }
    if (!p)
        return memboundAlloc(m, size);
    if (size == 0) {
        int rc = memboundFree(m, p);
        errno = rc == DKSHM_OK ? 0 : mbErrno(rc);
        return NULL;
    }
    size_t have;
    int rc = memboundOwns(m, p) ? memboundUsableSize(m, dkOff(m->s, p), &have)
                                : DKSHM_INVALID;
    if (rc == DKSHM_INVALID)
        mbCountBadFree(m);
    if (rc != DKSHM_OK) {
        errno = mbErrno(rc);
        return NULL;
    }
    if (size <= MB_HUGE &&
        (size <= MEMBOUND_SLAB_MAX || size <= mbMaxBlock(m)) &&
        mbUnitFor(m, size) == have)
        return p; /* already the right slot or block */
    void *q = memboundAlloc(m, size);
    if (!q) {
        if (size < have) /* a shrink can always stay where it is */
            return p;
        return NULL;
    }
    memcpy(q, p, size < have ? size : have);
    memboundFree(m, p);
    return q;
}

/* ---- statistics --------------------------------------------------------- */

DKSHM_API size_t memboundCurrentAllocationCount(const membound *m) {
    return m ? (size_t)mbLoad64(&m->root->allocations) : 0;
}

DKSHM_API size_t memboundBytesUsed(const membound *m) {
    return m ? (size_t)mbLoad64(&m->root->usedBytes) : 0;
}

DKSHM_API size_t memboundCapacity(const membound *m) {
    return m ? (size_t)((uint64_t)m->nPages << m->shift) : 0;
}

static uint64_t mbSlabSlack(const membound *m) {
    uint64_t slack = 0;
    for (int c = 0; c < MB_NCLASSES; c++) {
        uint64_t slots = mbLoad64(&m->root->cls[c].slabs) * m->geo[c].nSlots;
        uint64_t used = mbLoad64(&m->root->cls[c].used);
        if (slots > used) /* unlocked reads may be mid-change */
            slack += (slots - used) * m->geo[c].size;
    }
    return slack;
}

/* Free buddy pages plus free slab slots: what can still be allocated
 * (ignoring that one request needs one contiguous block). */
DKSHM_API size_t memboundBytesAvailable(const membound *m) {
    if (!m)
        return 0;
    return (size_t)((mbLoad64(&m->root->freePages) << m->shift) +
                    mbSlabSlack(m));
}

DKSHM_API bool memboundOwns(const membound *m, const void *p) {
    if (!m || !p)
        return false;
    const uint8_t *lo = m->s->base + m->pagesOff;
    const uint8_t *q = p;
    return q >= lo && (uint64_t)(q - lo) < ((uint64_t)m->nPages << m->shift);
}

DKSHM_API int memboundGetStats(membound *m, memboundStats *out) {
    if (!m || !out)
        return DKSHM_INVALID;
    mbOp op;
    bool locked;
    int rc = mbLockOrPeek(m, &op, &locked);
    if (rc != DKSHM_OK)
        return rc;
    mbRoot *r = m->root;
    memset(out, 0, sizeof *out);
    out->capacity = (uint64_t)m->nPages << m->shift;
    out->used = mbLoad64(&r->usedBytes);
    out->allocations = mbLoad64(&r->allocations);
    out->slabSlack = mbSlabSlack(m);
    out->free = out->capacity - out->used - out->slabSlack;
    if (out->used + out->slabSlack > out->capacity)
        out->free = 0;
    out->metadata = m->pagesOff - m->rootOff;
    out->badFrees = mbLoad64(&r->badFrees);
    out->fullErrors = mbLoad64(&r->fullErrors);
    out->pageSize = 1u << m->shift;
    out->classes = MB_NCLASSES;
    uint64_t largest = 0, largestSlot = 0;
    for (uint32_t k = m->maxOrder + 1; k-- > 0;) {
        if (mbLoad32(&r->freeHead[k]) != MB_NIL) {
            largest = 1ull << (k + m->shift);
            break;
        }
    }
    uint64_t freeBuddy = mbLoad64(&r->freePages) << m->shift;
    out->fragmentation =
        freeBuddy ? 1.0 - (double)largest / (double)freeBuddy : 0.0;
    if (out->fragmentation < 0)
        out->fragmentation = 0;
    for (int c = 0; c < MB_NCLASSES; c++) {
        const mbGeo *g = &m->geo[c];
        uint64_t slabs = mbLoad64(&r->cls[c].slabs);
        uint64_t used = mbLoad64(&r->cls[c].used);
        out->cls[c].size = g->size;
        out->cls[c].slabs = slabs << g->order; /* pages, as documented */
        out->cls[c].used = used;
        out->cls[c].free =
            slabs * g->nSlots > used ? slabs * g->nSlots - used : 0;
        if (out->cls[c].free)
            largestSlot = g->size;
    }
    /* With no free page left, the largest free slot is what one call can
     * still get. */
    out->largestFree = largest ? largest : largestSlot;
    if (locked)
        mbUnlock(&op);
    return DKSHM_OK;
}

/* ---- check -------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int
mbFail(char *why, size_t whyLen, const char *fmt, ...) {
    if (why && whyLen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whyLen, fmt, ap);
        va_end(ap);
    }
    return DKSHM_CORRUPT;
}

typedef struct mbTally { /* per process: what a check walk found */
    uint64_t freeHeads, freePages, committedFree, buddyBlocks, buddyBytes;
    uint64_t slabs[MB_NCLASSES], used[MB_NCLASSES], open[MB_NCLASSES];
} mbTally;

/* Does the root still say what the handle was built from? */
static int mbCheckRoot(const membound *m, bool locked, char *why, size_t len) {
    const mbRoot *r = m->root;
    if (r->magic != MB_MAGIC || r->version != MB_VERSION ||
        r->nPages != m->nPages || r->pageShift != m->shift ||
        r->maxOrder != m->maxOrder || r->pages != m->pagesOff ||
        r->nClasses != MB_NCLASSES || r->undoCap != MB_UNDO_CAP ||
        dkPtr(m->s, r->ctrl) != m->ctrl || dkPtr(m->s, r->links) != m->lnk ||
        dkPtr(m->s, r->undo) != (void *)m->log)
        return mbFail(why, len, "allocator root damaged");
    for (int c = 0; c < MB_NCLASSES; c++) {
        const mbClass *cl = &r->cls[c];
        const mbGeo *g = &m->geo[c];
        if (cl->size != g->size || cl->nSlots != g->nSlots ||
            cl->slotOff != g->slotOff || cl->order != g->order ||
            cl->words != g->words)
            return mbFail(why, len, "class %d geometry damaged", c);
    }
    if (m->log->cap != MB_UNDO_CAP)
        return mbFail(why, len, "undo log capacity damaged");
    if (__atomic_load_n(&m->log->overflow, __ATOMIC_RELAXED) != 0)
        return mbFail(why, len, "an operation overflowed the undo log");
    if (locked && __atomic_load_n(&m->log->count, __ATOMIC_RELAXED) != 0)
        return mbFail(why, len, "undo log not empty under a free lock");
    if (__atomic_load_n(&r->resetPending, __ATOMIC_RELAXED))
        return mbFail(why, len, "reset interrupted");
    return DKSHM_OK;
}

static int mbCheckSlab(const membound *m, uint32_t i, uint8_t c, mbTally *t,
                       char *why, size_t len) {
    uint32_t o = c & MB_ORDER;
    if (!(c & MB_COMMITTED) || o > MB_SLAB_MAX_ORDER)
        return mbFail(why, len, "slab at page %u: bad ctrl 0x%02x", i, c);
    for (uint32_t j = 1; j < (1u << o); j++)
        if (mbCtrl(m, i + j) != c)
            return mbFail(why, len, "slab at page %u: page %u not marked", i,
                          i + j);
    const mbSlab *sl = mbSlabAt(m, i);
    uint32_t cls = mbLoad32(&sl->cls);
    if (cls >= MB_NCLASSES || m->geo[cls].order != o)
        return mbFail(why, len, "slab at page %u: bad class %u", i, cls);
    const mbGeo *g = &m->geo[cls];
    uint32_t used = mbLoad32(&sl->used);
    uint64_t pop = 0;
    for (uint32_t w = 0; w < g->words; w++) {
        uint64_t bits = mbLoad64(&sl->bits[w]);
        uint32_t valid =
            w + 1 < g->words || g->nSlots % 64 == 0 ? 64 : g->nSlots % 64;
        if (valid < 64) {
            uint64_t pad = ~0ull << valid;
            if ((bits & pad) != pad)
                return mbFail(why, len, "slab at page %u: padding bits clear",
                              i);
            bits &= ~pad;
        }
        pop += (uint64_t)__builtin_popcountll(bits);
    }
    if (used > g->nSlots || pop != used)
        return mbFail(why, len,
                      "slab at page %u: used %u but %llu bits set of %u", i,
                      used, (unsigned long long)pop, g->nSlots);
    t->slabs[cls]++;
    t->used[cls] += used;
    if (used < g->nSlots)
        t->open[cls]++;
    return DKSHM_OK;
}

/* Walk the ctrl bytes block by block: every page covered exactly once. */
static int mbCheckPages(const membound *m, mbTally *t, char *why, size_t len) {
    for (uint64_t i = 0; i < m->nPages;) {
        uint8_t c = mbCtrl(m, i);
        uint32_t o = c & MB_ORDER;
        uint64_t n = 1ull << o;
        if ((c & MB_KIND) == MB_NONE)
            return mbFail(why, len, "page %llu is in no block",
                          (unsigned long long)i);
        if (o > m->maxOrder || (i & (n - 1)) || i + n > m->nPages)
            return mbFail(why, len, "block at page %llu: bad order %u",
                          (unsigned long long)i, o);
        if ((c & MB_KIND) == MB_SLAB) {
            int rc = mbCheckSlab(m, (uint32_t)i, c, t, why, len);
            if (rc != DKSHM_OK)
                return rc;
        } else {
            for (uint64_t j = 1; j < n; j++)
                if (mbCtrl(m, i + j) != MB_NONE)
                    return mbFail(
                        why, len, "page %llu inside block %llu is marked",
                        (unsigned long long)(i + j), (unsigned long long)i);
            if ((c & MB_KIND) == MB_FREE) {
                t->freeHeads++;
                t->freePages += n;
                if (c & MB_COMMITTED)
                    t->committedFree += n;
            } else {
                if (!(c & MB_COMMITTED))
                    return mbFail(why, len,
                                  "allocated block %llu not committed",
                                  (unsigned long long)i);
                t->buddyBlocks++;
                t->buddyBytes += n << m->shift;
            }
        }
        i += n;
    }
    return DKSHM_OK;
}

static int mbCheckLists(const membound *m, const mbTally *t, char *why,
                        size_t len) {
    const mbRoot *r = m->root;
    uint64_t listed = 0, listedPages = 0;
    for (uint32_t k = 0; k < MB_ORDERS; k++) {
        uint32_t prev = MB_NIL, i = mbLoad32(&r->freeHead[k]);
        if (k > m->maxOrder && i != MB_NIL)
            return mbFail(why, len, "free list %u must be empty", k);
        for (uint64_t steps = 0; i != MB_NIL; steps++) {
            if (steps >= m->nPages)
                return mbFail(why, len, "free list %u has a cycle", k);
            if (i >= m->nPages)
                return mbFail(why, len, "free list %u: page %u out of range", k,
                              i);
            if ((mbCtrl(m, i) & (MB_KIND | MB_ORDER)) != (MB_FREE | k))
                return mbFail(why, len,
                              "free list %u: page %u is not a free block of "
                              "that order",
                              k, i);
            if (mbLoad32(mbPrev(m, i)) != prev)
                return mbFail(why, len, "free list %u: bad back link at %u", k,
                              i);
            /* Free buddies merge unless one is committed and the other
             * not (kept apart within the retention budget). */
            uint32_t b = i ^ (1u << k);
            if (k < m->maxOrder && b < m->nPages &&
                (mbCtrl(m, b) & (MB_KIND | MB_ORDER | MB_COMMITTED)) ==
                    (MB_FREE | k | (mbCtrl(m, i) & MB_COMMITTED)))
                return mbFail(why, len,
                              "free buddies %u and %u of order %u not merged",
                              i, b, k);
            listed++;
            listedPages += 1ull << k;
            prev = i;
            i = mbLoad32(mbNext(m, i));
        }
    }
    if (listed != t->freeHeads)
        return mbFail(why, len, "%llu free blocks but %llu listed",
                      (unsigned long long)t->freeHeads,
                      (unsigned long long)listed);
    if (listedPages != t->freePages || mbLoad64(&r->freePages) != t->freePages)
        return mbFail(why, len, "free pages: counter %llu, found %llu",
                      (unsigned long long)mbLoad64(&r->freePages),
                      (unsigned long long)t->freePages);
    if (mbLoad64(&r->committedFree) != t->committedFree)
        return mbFail(why, len,
                      "committed free pages: counter %llu, found %llu",
                      (unsigned long long)mbLoad64(&r->committedFree),
                      (unsigned long long)t->committedFree);
    for (int c = 0; c < MB_NCLASSES; c++) {
        const mbGeo *g = &m->geo[c];
        uint32_t prev = MB_NIL, i = mbLoad32(&r->cls[c].partial);
        uint64_t n = 0;
        for (; i != MB_NIL; n++) {
            if (n >= m->nPages)
                return mbFail(why, len, "class %d list has a cycle", c);
            if (i >= m->nPages || (i & ((1u << g->order) - 1)) ||
                (mbCtrl(m, i) & (MB_KIND | MB_ORDER)) != (MB_SLAB | g->order))
                return mbFail(why, len, "class %d list: page %u is no slab", c,
                              i);
            const mbSlab *sl = mbSlabAt(m, i);
            if (mbLoad32(&sl->cls) != (uint32_t)c ||
                mbLoad32(&sl->used) >= g->nSlots)
                return mbFail(why, len,
                              "class %d list: slab %u of another class or "
                              "full",
                              c, i);
            if (mbLoad32(mbPrev(m, i)) != prev)
                return mbFail(why, len, "class %d list: bad back link at %u", c,
                              i);
            prev = i;
            i = mbLoad32(mbNext(m, i));
        }
        if (n != t->open[c])
            return mbFail(
                why, len, "class %d: %llu slabs with room, %llu listed", c,
                (unsigned long long)t->open[c], (unsigned long long)n);
    }
    return DKSHM_OK;
}

static int mbCheckTotals(const membound *m, const mbTally *t, char *why,
                         size_t len) {
    const mbRoot *r = m->root;
    uint64_t bytes = t->buddyBytes, count = t->buddyBlocks;
    for (int c = 0; c < MB_NCLASSES; c++) {
        if (mbLoad64(&r->cls[c].slabs) != t->slabs[c] ||
            mbLoad64(&r->cls[c].used) != t->used[c])
            return mbFail(why, len,
                          "class %d: counters %llu slabs %llu used, found "
                          "%llu %llu",
                          c, (unsigned long long)mbLoad64(&r->cls[c].slabs),
                          (unsigned long long)mbLoad64(&r->cls[c].used),
                          (unsigned long long)t->slabs[c],
                          (unsigned long long)t->used[c]);
        bytes += t->used[c] * m->geo[c].size;
        count += t->used[c];
    }
    if (mbLoad64(&r->usedBytes) != bytes)
        return mbFail(why, len, "bytes used: counter %llu, found %llu",
                      (unsigned long long)mbLoad64(&r->usedBytes),
                      (unsigned long long)bytes);
    if (mbLoad64(&r->allocations) != count)
        return mbFail(why, len, "allocations: counter %llu, found %llu",
                      (unsigned long long)mbLoad64(&r->allocations),
                      (unsigned long long)count);
    return DKSHM_OK;
}

DKSHM_API int memboundCheck(membound *m, char *why, size_t whyLen) {
    if (why && whyLen)
        why[0] = '\0';
    if (!m)
        return DKSHM_INVALID;
    mbOp op;
    bool locked;
    int rc = mbLockOrPeek(m, &op, &locked);
    if (rc == DKSHM_CORRUPT)
        return mbFail(why, whyLen, "allocator undo log damaged");
    if (rc != DKSHM_OK)
        return rc;
    mbTally *t = calloc(1, sizeof *t);
    if (!t)
        rc = DKSHM_SYSTEM;
    if (rc == DKSHM_OK)
        rc = mbCheckRoot(m, locked, why, whyLen);
    if (rc == DKSHM_OK)
        rc = mbCheckPages(m, t, why, whyLen);
    if (rc == DKSHM_OK)
        rc = mbCheckLists(m, t, why, whyLen);
    if (rc == DKSHM_OK)
        rc = mbCheckTotals(m, t, why, whyLen);
    free(t);
    if (locked)
        mbUnlock(&op);
    return rc;
}

int memboundForEachAllocation(membound *m, memboundVisitFn fn, void *ctx) {
    if (!m || !fn)
        return DKSHM_INVALID;
    mbOp op;
    bool locked;
    int rc = mbLockOrPeek(m, &op, &locked);
    if (rc != DKSHM_OK)
        return rc;
    for (uint64_t i = 0; i < m->nPages && rc == DKSHM_OK;) {
        uint8_t c = mbCtrl(m, i);
        uint32_t o = c & MB_ORDER;
        if ((c & MB_KIND) == MB_BUDDY) {
            rc = fn(ctx, mbPageOff(m, (uint32_t)i), 1ull << (o + m->shift));
        } else if ((c & MB_KIND) == MB_SLAB && o <= MB_SLAB_MAX_ORDER &&
                   !(i & ((1ull << o) - 1))) {
            const mbSlab *sl = mbSlabAt(m, (uint32_t)i);
            uint32_t cls = mbLoad32(&sl->cls);
            if (cls < MB_NCLASSES && m->geo[cls].order == o) {
                const mbGeo *g = &m->geo[cls];
                for (uint32_t s = 0; s < g->nSlots && rc == DKSHM_OK; s++)
                    if (mbLoad64(&sl->bits[s / 64]) & (1ull << (s % 64)))
                        rc = fn(ctx,
                                mbPageOff(m, (uint32_t)i) + g->slotOff +
                                    (uint64_t)s * g->size,
                                g->size);
            }
        }
        i += (c & MB_KIND) == MB_NONE ? 1 : 1ull << o;
    }
    if (locked)
        mbUnlock(&op);
    return rc;
}

uint32_t *memboundFreeHead(membound *m, unsigned order) {
    return m && order < MB_ORDERS ? &m->root->freeHead[order] : NULL;
}

void memboundSetRetainBytes(membound *m, uint64_t bytes) {
    if (m)
        m->retainPages = bytes >> m->shift;
}

int memboundLockState(membound *m, fastMutexState *out) {
    if (!m || !out)
        return DKSHM_INVALID;
    return fastMutexInspect(m->s, &m->root->lock, out);
}

/* ---- reset -------------------------------------------------------------- */

DKSHM_API int memboundReset(membound *m) {
    if (!m)
        return DKSHM_INVALID;
    if (m->s->readOnly)
        return DKSHM_READONLY;
    mbOp op;
    int rc = mbLock(m, &op, MB_OP_RESET);
    if (rc != DKSHM_OK)
        return rc;
    mbResetLocked(&op);
    mbUnlock(&op);
    return DKSHM_OK;
}

/* ---- hooks called by the segment layer ---------------------------------- */

/* Lay out the heap (nobody uses it yet: hdr->allocRoot is 0, and the
 * caller holds hdr->initLock, so plain stores), commit the metadata, then
 * publish hdr->allocRoot. A process killed half-way leaves allocRoot 0 and
 * the next one lays the heap out again from scratch. */
static int mbInitHeap(dkshm *s) {
    dkHeader *h = s->hdr;
    uint32_t ps = h->pageSize;
    if (ps < 4096 || (ps & (ps - 1)))
        return DKSHM_INVALID;
    uint32_t shift = (uint32_t)__builtin_ctz(ps);
    dkoff heap = h->heap;
    if (!dkRangeOk(s, heap, h->heapSize) || (heap & 63))
        return DKSHM_INVALID;
    uint64_t rootBytes = mbRoundUp(sizeof(mbRoot), 64);
    uint64_t fixed =
        rootBytes + mbRoundUp(DK_UNDO_BYTES((uint64_t)MB_UNDO_CAP), 64);
    if (h->heapSize <= fixed + ps)
        return DKSHM_INVALID;
    uint64_t n = (h->heapSize - fixed) / (ps + 9ull);
    if (n > MB_MAX_PAGES)
        n = MB_MAX_PAGES;
    dkoff ctrlOff = heap + fixed, linksOff, pagesOff;
    for (;; n--) {
        if (n == 0)
            return DKSHM_INVALID;
        linksOff = mbRoundUp(ctrlOff + n, 8);
        pagesOff = mbRoundUp(linksOff + 8 * n, ps);
        if (pagesOff + (n << shift) <= heap + h->heapSize)
            break;
    }
    int rc = dkCommit(s, heap, pagesOff - heap);
    if (rc != DKSHM_OK)
        return rc;
    mbRoot *r = dkPtr(s, heap);
    memset(r, 0, rootBytes);
    r->magic = MB_MAGIC;
    r->version = MB_VERSION;
    r->pageSize = ps;
    r->pageShift = shift;
    r->nPages = (uint32_t)n;
    r->maxOrder = mbLog2(n);
    r->nClasses = MB_NCLASSES;
    r->undoCap = MB_UNDO_CAP;
    r->undo = heap + rootBytes;
    r->ctrl = ctrlOff;
    r->links = linksOff;
    r->pages = pagesOff;
    mbGeo geo[MB_NCLASSES];
    mbGeometry(ps, geo);
    for (int c = 0; c < MB_NCLASSES; c++)
        r->cls[c] = (mbClass){geo[c].size,
                              geo[c].nSlots,
                              geo[c].slotOff,
                              geo[c].order,
                              geo[c].words,
                              MB_NIL,
                              0,
                              0};
    dkUndoInit(dkPtr(s, r->undo), MB_UNDO_CAP);
    rc = fastMutexInit(s, &r->lock, r->undo);
    if (rc != DKSHM_OK)
        return rc;
    membound m;
    rc = mbFill(&m, s, heap);
    if (rc != DKSHM_OK)
        return rc;
    mbOp plain = {.m = &m, .log = NULL};
    mbLayout(&plain);
    __atomic_store_n(&h->allocRoot, heap, __ATOMIC_RELEASE);
    return DKSHM_OK;
}

/* Free what dead process slot SLOT still holds in flight. One committed
 * step per block, so the log never has to hold more than one free, and a
 * reaper killed half-way leaves whole steps that the next reaper skips. */
static int mbReclaim(dkshm *s, uint32_t slot) {
    if (__atomic_load_n(&s->hdr->allocRoot, __ATOMIC_ACQUIRE) == 0)
        return DKSHM_OK; /* no allocator in this segment */
    if (slot >= s->maxProcs)
        return DKSHM_INVALID;
    membound *m = memboundForSegment(s);
    if (!m)
        return DKSHM_CORRUPT;
    mbOp op;
    int rc = mbLock(m, &op, MB_OP_RECLAIM);
    if (rc != DKSHM_OK)
        return rc;
    dkProcSlot *p = dkSlotAt(s, slot);
    /* Another reaper may have finished this slot and a new process taken
     * it while we waited for the lock: its in-flight blocks are live. */
    if ((__atomic_load_n(&p->word, __ATOMIC_ACQUIRE) >> 32) !=
        DKSHM_PROC_DEAD) {
        mbUnlock(&op);
        return DKSHM_OK;
    }
    for (int j = 0; j < DK_INFLIGHT_MAX; j++) {
        dkoff off = __atomic_load_n(&p->inflight[j], __ATOMIC_RELAXED);
        if (!dkInflightIsBlock(off))
            continue;
        /* Not a live allocation (damage): just drop the entry. */
        mbFreeLocked(&op, off);
        mbSet64(&op, &p->inflight[j], 0);
        mbCheckpoint(&op);
    }
    mbUnlock(&op);
    return DKSHM_OK;
}

/* Drop the cached handle of S, which is being detached. */
static void mbDetach(dkshm *s) {
    pthread_mutex_lock(&mbTableLock);
    for (size_t i = 0; i < mbTableLen; i++) {
        if (mbTable[i]->s == s) {
            membound *m = mbTable[i];
            mbTableRemove(m);
            free(m);
            break;
        }
    }
    pthread_mutex_unlock(&mbTableLock);
}

static void mbForkPrepare(void) {
    pthread_mutex_lock(&mbTableLock);
}

static void mbForkParent(void) {
    pthread_mutex_unlock(&mbTableLock);
}

static void mbForkChild(void) {
    pthread_mutex_unlock(&mbTableLock); /* the child's only thread holds it */
}

__attribute__((constructor)) static void mbRegister(void) {
    static const dkLayerHooks hooks = {mbReclaim, mbDetach};
    dkSetLayerHooks(&hooks);
    pthread_atfork(mbForkPrepare, mbForkParent, mbForkChild);
}
