/* multilist.c — a queue and deque of byte items in a dkshm segment.
 *
 * ALGORITHM. A doubly linked list of nodes, one node per item: a 32-byte
 * header (next, prev, item length, payload capacity) and the item's bytes
 * inline. The root holds head, tail, count, byte total, the lock and two
 * condition variables (notEmpty for poppers, notFull for pushers of a
 * bounded list). Every push and pop is one critical section under the
 * root's fastMutex that changes a handful of words through its undo log.
 *
 * Nodes of small items come in three size classes (64, 128 and 256 bytes,
 * so 32, 96 and 224 bytes of payload); a pop gives such a node to the
 * list's own free-node cache (up to ML_POOL_MAX per class, singly linked
 * through `next`) instead of the allocator, and a push takes a cached node
 * in the same critical section that links it. A producer and a consumer in
 * steady state therefore never touch the allocator, whose lock would
 * otherwise be taken twice per item by two processes. Larger items get a
 * node of their exact size, allocated before the push takes the lock and
 * freed after the pop released it.
 *
 * LAYOUT in the segment:
 *
 *   root block  mlRoot, four cache lines: the fixed part (magic, version,
 *               bounds, checksum); the lock with head, tail, count, bytes,
 *               pushes and the shutdown word; the node cache; the two
 *               condition variables. Then the lock's undo log
 *               (ML_UNDO_CAP records).
 *   node        mlNode + payload, one block each.
 *
 * PROCESS SAFETY. Every change happens under the root lock; count and the
 * statistics are also read without it (atomic loads). Blocking calls wait
 * on a fastCond with the lock released; before sleeping they spin for a few
 * microseconds (when there is more than one CPU) watching the count, which
 * keeps a fast consumer from sleeping between two items. A waker signals
 * only when the condition's waiter count is non-zero and no wakeup is
 * already on its way (wakeItem / wakeRoom, see mlWake): a sleeper stays
 * counted until it runs again, and signalling it on every push or pop in
 * between cost two futex calls per item inside the critical section, which
 * held 1 producer -> 1 consumer at about 1M items/s (4-5M/s without). Waits
 * sleep in slices of ML_SLICE_NS at most and re-check, so a wakeup lost to
 * a waiter killed between its wakeup and its re-lock delays the others by
 * one slice at most; a push or pop that leaves room or items behind passes
 * a wakeup on.
 *
 * READING WITHOUT THE LOCK. multilistForEachItem (dkshm-tool dump, on a
 * read-only handle) walks head to tail taking no lock, like an optimistic
 * reader: it stamps the lock word, the log's record count, pushes, pops
 * and the lock's recovery count before and after the walk, and believes
 * the view only if nothing moved and no change was uncommitted. Every
 * offset it follows is bounds-checked and the walk is bounded by the
 * count (itself bounded by the heap), with every prev link checked, so a
 * cycle shows as a return to the head.
 *
 * BATCHES. multilistPushMany / multilistPopMany do many items per lock
 * hold, committing every few items (whenever the log has room for less
 * than one more): each item stays atomic, a crash leaves a prefix done. A
 * batch push that needs a new node allocates it under the list lock, after
 * a commit (an in-flight entry cleared by an uncommitted step must not be
 * reused by the allocation, or a rollback would overwrite it).
 *
 * OWNERSHIP (RECOVERY.md §1). A node is owned by the list (reachable from
 * head, or from a cache list), by one process's in-flight list, or by the
 * allocator. Push of a new node: memboundAllocInflight (allocator ->
 * in flight), the payload written with plain stores while nobody else can
 * see the block, then under the list lock the logged link and the logged
 * dkInflightRemove in one critical section. Push of a cached node: the
 * logged removal from the cache and the logged link in one section.
 * Pop: the unlink and either the logged push onto the cache or the logged
 * dkInflightAdd in one section; an in-flight node is freed
 * (memboundFreeInflight) after that section committed.
 *
 * CRASH RECOVERY. A process killed anywhere inside a call leaves the lock
 * held by a dead owner with an undo log of the uncommitted changes; the
 * next locker (any push, pop, a reaper) rolls it back first. The commit is
 * the single store in fastMutexUnlock. A pop copies a cached-class item to
 * the caller BEFORE the commit (the node may be reused right after), as
 * it does any item of up to ML_COPY_LOCKED_MAX bytes, and a larger item
 * AFTER it (the node is then this process's, in flight): either
 * way a pop killed before its commit popped nothing, and one killed after
 * it popped the item, which is the documented at-most-once delivery to a
 * dead consumer. Wakeups are sent before the commit: a waiter woken by an
 * operation that then dies re-checks, finds the rolled-back state and
 * waits again; a committed operation always woke its waiter. Reaping a
 * dead process frees what its in-flight list still holds.
 */
#include "config.h"

#include "memboundInternal.h"
#include "multilist.h"
#include "multilistInternal.h"
#include "segmentInternal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#define ML_MAGIC 0x3154534c544c4d44ull /* "DMLTLST1" little-endian */
#define ML_VERSION 1u
#define ML_ROOT_BYTES 256u
/* Largest critical section between two commits: a push of a new node
 * (link 3, counters 3, in-flight 1) or a pop into the cache (unlink 2,
 * counters 3, cache 3): at most ML_STEP_RECORDS; a trim batch
 * (ML_TRIM_BATCH x 3); the batch calls commit whenever fewer than
 * ML_STEP_RECORDS records are left. */
#define ML_UNDO_CAP 96u
#define ML_STEP_RECORDS 12u /* most records one push or pop logs */
#define ML_MANY_GARBAGE 8   /* large nodes one multilistPopMany frees */
#define ML_NODE_HDR 32u
#define ML_CLASSES 3
#define ML_POOL_MAX 1024u
#define ML_TRIM_BATCH 8
#define ML_COPY_LOCKED_MAX 4096u /* larger items are copied after commit */
#define ML_SPIN_NS 20000ull      /* spin before sleeping */
#define ML_SLICE_NS 50000000ull  /* longest single sleep */
#define ML_CHECK_ROUNDS 64       /* read-only check attempts */
#define ML_ITEM_ROUNDS 64        /* waits for a committed state to walk */
#define ML_ITEM_RECHECK 1024     /* items between two looks for a change */

static const uint32_t mlClassSize[ML_CLASSES] = {64, 128, 256};

/* Undo log op words, for inspection. */
enum {
    ML_OP_PUSH = 1,
    ML_OP_POP,
    ML_OP_PEEK,
    ML_OP_SHUTDOWN,
    ML_OP_TRIM,
    ML_OP_READ
};

typedef struct mlRoot { /* in the segment: the start of the root block */
    /* Fixed at creation, covered by checksum. */
    uint64_t magic;
    uint32_t version;
    uint32_t undoCap;
    uint64_t maxItems; /* 0: unbounded */
    uint64_t maxItemBytes;
    uint64_t createTimeNs;
    uint64_t flags;
    uint64_t checksum; /* XXH3-64 of the fields above */
    uint64_t pad0;
    /* The lock and what every push and pop changes (logged): one line. */
    fastMutex lock; /* its undo log follows this struct */
    dkoff head;
    dkoff tail;
    uint64_t count;
    uint64_t bytes;
    uint64_t pushes;
    uint64_t pops;
    /* The free-node cache, per size class (logged), and the shutdown
     * word. */
    dkoff pool[ML_CLASSES];
    uint64_t poolCount[ML_CLASSES];
    uint32_t shutdown;
    uint32_t pad1;
    uint64_t pad2;
    /* Touched by sleepers and their wakers. wakeItem / wakeRoom: a wakeup
     * was sent on notEmpty / notFull and no waiter has run since (hints,
     * under the lock, not logged: see mlWake). */
    fastCond notEmpty;
    fastCond notFull;
    uint32_t wakeItem;
    uint32_t wakeRoom;
    uint8_t pad3[40];
} mlRoot;
_Static_assert(sizeof(mlRoot) == ML_ROOT_BYTES, "mlRoot size");
_Static_assert(offsetof(mlRoot, lock) == 64, "mlRoot line 1");
_Static_assert(offsetof(mlRoot, pool) == 128, "mlRoot line 2");
_Static_assert(offsetof(mlRoot, notEmpty) == 192, "mlRoot line 3");

typedef struct mlNode { /* in the segment: the head of a node block */
    dkoff next;
    dkoff prev;
    uint64_t len; /* item bytes */
    uint64_t cap; /* payload bytes of the block: fixed at allocation */
    /* payload */
} mlNode;
_Static_assert(sizeof(mlNode) == ML_NODE_HDR, "mlNode size");

struct multilist { /* per process */
    dkshm *s;
    membound *mb; /* NULL on a read-only handle */
    mlRoot *root;
    dkUndo *log;
    dkoff rootOff;
    uint64_t limit;   /* maxItems, UINT64_MAX when unbounded */
    uint64_t maxItem; /* maxItemBytes */
    bool readOnly;
};

/* ---- small helpers ------------------------------------------------------ */

static inline uint64_t mlLoad64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline uint32_t mlLoad32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline mlNode *mlNodeAt(const multilist *l, dkoff off) {
    return dkPtr(l->s, off);
}

static inline void *mlPayload(mlNode *n) {
    return n + 1;
}

static inline void mlRelax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- damage checks -------------------------------------------------------
 *
 * Every offset, length and count read from the segment is checked before
 * it is followed or used as a bound: a damaged list costs CORRUPT, never a
 * fault, an access outside the segment or an unbounded loop. A writer
 * checks what one step (one push, one pop, one trim batch) will follow
 * before that step's first logged change, so CORRUPT leaves the step
 * undone. The checks are compares and the loads the step makes anyway. */

/* Whether a node header can lie at OFF: in the heap, aligned, inside the
 * segment. Loads nothing. */
static inline bool mlOffOk(const multilist *l, dkoff off) {
    const dkshm *s = l->s;
    return off >= s->heap && (off & 7) == 0 && dkRangeOk(s, off, ML_NODE_HDR);
}

/* Whether OFF can be a node: its header and its payload capacity inside
 * the segment. */
static bool mlNodeOk(const multilist *l, dkoff off) {
    if (!mlOffOk(l, off))
        return false;
    const mlNode *n = dkPtr(l->s, off);
    uint64_t cap = __atomic_load_n(&n->cap, __ATOMIC_RELAXED);
    return cap <= MULTILIST_ITEM_MAX && dkRangeOk(l->s, off, ML_NODE_HDR + cap);
}

/* Whether OFF can be a cached node of class C. */
static bool mlClassNodeOk(const multilist *l, dkoff off, int c) {
    return mlNodeOk(l, off) &&
           __atomic_load_n(&((const mlNode *)dkPtr(l->s, off))->cap,
                           __ATOMIC_RELAXED) ==
               (uint64_t)(mlClassSize[c] - ML_NODE_HDR);
}

/* Under the lock: whether the root's count, head and tail agree (all zero
 * or none; one node: head is tail; no more nodes than the capacity or the
 * heap holds) and the ends can be node headers. Loads no node. */
static bool mlEndsOk(const multilist *l) {
    const mlRoot *r = l->root;
    uint64_t count = mlLoad64(&r->count);
    dkoff head = mlLoad64(&r->head), tail = mlLoad64(&r->tail);
    if (count == 0)
        return head == 0 && tail == 0;
    return count <= l->limit && count <= l->s->heapSize / ML_NODE_HDR &&
           mlOffOk(l, head) && mlOffOk(l, tail) &&
           (count == 1) == (head == tail);
}

/* Under the lock: whether the cache of class C can give its first node:
 * the count agrees with the link, the node is of the class, and its link
 * is the end (last node) or can be another node. */
static bool mlPoolHeadOk(const multilist *l, int c) {
    const mlRoot *r = l->root;
    dkoff off = mlLoad64(&r->pool[c]);
    uint64_t want = mlLoad64(&r->poolCount[c]);
    if (off == 0 || want == 0 || want > ML_POOL_MAX ||
        !mlClassNodeOk(l, off, c))
        return false;
    dkoff next = mlLoad64(&((const mlNode *)dkPtr(l->s, off))->next);
    return want == 1 ? next == 0 : next != off && mlOffOk(l, next);
}

/* Under the lock: whether the cache of class C is a chain of exactly its
 * count of class-C nodes ending in 0 (so without a cycle). Bounded by
 * ML_POOL_MAX. */
static bool mlPoolChainOk(const multilist *l, int c) {
    const mlRoot *r = l->root;
    uint64_t want = mlLoad64(&r->poolCount[c]), got = 0;
    if (want > ML_POOL_MAX)
        return false;
    for (dkoff off = mlLoad64(&r->pool[c]); off; got++) {
        if (got >= want || !mlClassNodeOk(l, off, c))
            return false;
        off = mlLoad64(&((const mlNode *)dkPtr(l->s, off))->next);
    }
    return got == want;
}

/* The cache class of a node whose payload holds LEN bytes, -1 if none. */
static int mlClassOf(uint64_t len) {
    for (int c = 0; c < ML_CLASSES; c++)
        if (len <= mlClassSize[c] - ML_NODE_HDR)
            return c;
    return -1;
}

/* The class of a node of payload capacity CAP, -1 if not a class size. */
static int mlClassOfCap(uint64_t cap) {
    for (int c = 0; c < ML_CLASSES; c++)
        if (cap == mlClassSize[c] - ML_NODE_HDR)
            return c;
    return -1;
}

static bool mlMultiCpu(void) {
    static int cpus; /* 0: not asked yet */
    int n = __atomic_load_n(&cpus, __ATOMIC_RELAXED);
    if (n == 0) {
        long v = sysconf(_SC_NPROCESSORS_ONLN);
        n = v > 1 ? 2 : 1;
        __atomic_store_n(&cpus, n, __ATOMIC_RELAXED);
    }
    return n > 1;
}

static int mlFail(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int mlFail(char *why, size_t len, const char *fmt, ...) {
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return DKSHM_CORRUPT;
}

/* ---- in flight ---------------------------------------------------------- */

static int mlAllocInflight(multilist *l, uint64_t size, dkoff *out) {
    int rc = memboundAllocInflight(l->mb, size, out);
    DKSHM_CRASHPOINT();
    return rc;
}

static int mlInflightAdd(multilist *l, dkoff off) {
    int rc = dkInflightAdd(l->s, l->log, off);
    return rc;
}

static void mlFreeInflight(multilist *l, dkoff off) {
    DKSHM_CRASHPOINT();
    memboundFreeInflight(l->mb, off);
}

/* ---- locking ------------------------------------------------------------ */

/* Take the list lock. A dead owner's work is rolled back by the lock; a
 * damaged log cannot be, and holding the lock would stop every caller, so
 * that is reported (multilistCheck says what is left). */
static int mlLock(multilist *l, uint32_t op) {
    dkCount(l->s, op == ML_OP_PEEK ? DKSHM_CTR_READS : DKSHM_CTR_WRITES, 1);
    int rc = fastMutexLock(l->s, &l->root->lock);
    if (rc == DKSHM_CORRUPT) {
        fastMutexUnlock(l->s, &l->root->lock);
        return DKSHM_CORRUPT;
    }
    if (rc < 0)
        return rc;
    __atomic_store_n(&l->log->op, op, __ATOMIC_RELAXED);
    return DKSHM_OK;
}

/* Commit and release. */
static void mlUnlock(multilist *l) {
    fastMutexUnlock(l->s, &l->root->lock);
}

/* Wake one waiter of C if there may be one and none is already on its
 * way. Called under the lock, before the commit (see CRASH RECOVERY). A
 * waiter counts itself before it lets the lock go, so a zero seen under
 * the lock means nobody can be asleep on a state older than ours. A waiter
 * stays counted until it runs again, so without *PENDING every push or
 * pop in that window would make one more futex call (inside the critical
 * section); with it, one wakeup is in flight at a time: the waiter clears
 * *PENDING when it runs and passes the wakeup on if what it waited for is
 * still there for others (mlPushWake, mlPopWake), and a waiter about to
 * sleep clears it too, so that a wakeup marked pending for a waiter that
 * died (or for a waiter count left high by a waiter killed asleep) never
 * keeps a new sleeper from being woken. */
static void mlWake(multilist *l, fastCond *c, uint32_t *pending) {
    if (__atomic_load_n(&c->waiters, __ATOMIC_RELAXED) != 0 &&
        !__atomic_load_n(pending, __ATOMIC_RELAXED)) {
        __atomic_store_n(pending, 1, __ATOMIC_RELAXED);
        fastCondSignal(l->s, c);
    }
}

static void mlWakeItem(multilist *l) {
    mlWake(l, &l->root->notEmpty, &l->root->wakeItem);
}

static void mlWakeRoom(multilist *l) {
    mlWake(l, &l->root->notFull, &l->root->wakeRoom);
}

/* Before the commit of pushes: an item for a popper, and if room is left,
 * a wakeup passed on to another pusher (we may have taken one meant for
 * it). */
static void mlPushWake(multilist *l) {
    mlWakeItem(l);
    if (l->root->count < l->limit)
        mlWakeRoom(l);
}

/* Before the commit of pops: the same the other way round. */
static void mlPopWake(multilist *l) {
    mlWakeRoom(l);
    if (l->root->count != 0)
        mlWakeItem(l);
}

/* ---- waiting ------------------------------------------------------------ */

typedef struct mlWaiter { /* per call */
    uint64_t deadline;    /* dkNowNs; 0: none */
    bool noWait;
    bool spun;
} mlWaiter;

static void mlWaiterInit(mlWaiter *w, uint64_t timeoutMs) {
    *w = (mlWaiter){0};
    if (timeoutMs == MULTILIST_NOWAIT) {
        w->noWait = true;
        return;
    }
    if (timeoutMs >= UINT64_MAX / 1000000ull)
        return; /* forever */
    uint64_t now = dkNowNs();
    uint64_t ns = timeoutMs * 1000000ull;
    w->deadline = ns > UINT64_MAX - now ? 0 : now + ns;
}

enum { ML_WANT_ITEM, ML_WANT_ROOM };

/* Whether what a waiter of kind WANT waits for may have come (or the list
 * was shut down). Lock-free reads: only a hint. */
static bool mlReady(multilist *l, int want) {
    mlRoot *r = l->root;
    if (mlLoad32(&r->shutdown))
        return true;
    uint64_t n = mlLoad64(&r->count);
    return want == ML_WANT_ITEM ? n != 0 : n < l->limit;
}

/* Called with the lock held when the caller must wait. Returns OK with
 * the lock held (look again), TIMEDOUT with the lock held (give up), or
 * another error with the lock NOT held. */
static int mlWait(multilist *l, fastCond *c, mlWaiter *w, int want,
                  uint32_t op) {
    if (w->noWait)
        return DKSHM_TIMEDOUT;
    uint64_t now = dkNowNs();
    if (w->deadline && now >= w->deadline)
        return DKSHM_TIMEDOUT;
    if (!w->spun && mlMultiCpu()) {
        /* The other side is usually a few hundred nanoseconds away: spin
         * a moment with the lock released before paying for a sleep and
         * for the other side's wakeup call. */
        w->spun = true;
        mlUnlock(l);
        uint64_t until = now + ML_SPIN_NS;
        for (unsigned i = 1; !mlReady(l, want); i++) {
            mlRelax();
            if ((i & 31) == 0 && dkNowNs() >= until)
                break;
        }
        return mlLock(l, op);
    }
    uint64_t slice = ML_SLICE_NS;
    if (w->deadline && w->deadline - now < slice)
        slice = w->deadline - now;
    /* A wakeup marked pending may be meant for nobody (its waiter died, or
     * the waiter count is stale): we go to sleep, so the next state change
     * must wake someone. And when we run again, the same. */
    uint32_t *pending =
        want == ML_WANT_ITEM ? &l->root->wakeItem : &l->root->wakeRoom;
    __atomic_store_n(pending, 0, __ATOMIC_RELAXED);
    int rc = fastCondWait(l->s, c, &l->root->lock, slice);
    if (rc == DKSHM_OK || rc == DKSHM_TIMEDOUT || rc == DKSHM_RECOVERED) {
        __atomic_store_n(&l->log->op, op, __ATOMIC_RELAXED);
        __atomic_store_n(pending, 0, __ATOMIC_RELAXED);
        return DKSHM_OK; /* the deadline is looked at on the next call */
    }
    if (rc == DKSHM_CORRUPT) /* the lock is held all the same */
        mlUnlock(l);
    return rc;
}

/* ---- list surgery (under the lock, logged) ------------------------------ */

/* Links: between neighbours both ways; head->prev and tail->next mean
 * nothing (so a pop writes no neighbour, and a push at the tail leaves the
 * node's next as it was: for a cached node, the cache's old link). */
static void mlLink(multilist *l, dkoff off, uint32_t end) {
    dkshm *s = l->s;
    dkUndo *log = l->log;
    mlRoot *r = l->root;
    mlNode *n = mlNodeAt(l, off);
    if (end == MULTILIST_TAIL) {
        dkoff t = r->tail;
        /* prev means nothing while the node is cached or in flight, so it
         * needs no record. */
        __atomic_store_n(&n->prev, t, __ATOMIC_RELAXED);
        if (t)
            dkUndoSet64(s, log, &mlNodeAt(l, t)->next, off);
        else
            dkUndoSet64(s, log, &r->head, off);
        dkUndoSet64(s, log, &r->tail, off);
    } else {
        dkoff h = r->head;
        /* next is the cache's link while the node is cached: logged. */
        dkUndoSet64(s, log, &n->next, h);
        if (h)
            dkUndoSet64(s, log, &mlNodeAt(l, h)->prev, off);
        else
            dkUndoSet64(s, log, &r->tail, off);
        dkUndoSet64(s, log, &r->head, off);
    }
}

/* Before the count drops. */
static void mlUnlink(multilist *l, dkoff off, uint32_t end) {
    dkshm *s = l->s;
    dkUndo *log = l->log;
    mlRoot *r = l->root;
    mlNode *n = mlNodeAt(l, off);
    if (end == MULTILIST_HEAD) {
        dkoff next = r->count > 1 ? n->next : 0;
        dkUndoSet64(s, log, &r->head, next);
        if (!next)
            dkUndoSet64(s, log, &r->tail, 0);
    } else {
        dkoff prev = r->count > 1 ? n->prev : 0;
        dkUndoSet64(s, log, &r->tail, prev);
        if (!prev)
            dkUndoSet64(s, log, &r->head, 0);
    }
}

/* Take a node of class C from the cache (0 if it is empty). The caller
 * checked the cache (mlPoolHeadOk or mlPoolChainOk). */
static dkoff mlPoolTake(multilist *l, int c) {
    mlRoot *r = l->root;
    dkoff off = r->pool[c];
    if (!off)
        return 0;
    dkUndoSet64(l->s, l->log, &r->pool[c], mlNodeAt(l, off)->next);
    dkUndoSet64(l->s, l->log, &r->poolCount[c], r->poolCount[c] - 1);
    return off;
}

static void mlPoolPut(multilist *l, dkoff off, int c) {
    mlRoot *r = l->root;
    dkUndoSet64(l->s, l->log, &mlNodeAt(l, off)->next, r->pool[c]);
    dkUndoSet64(l->s, l->log, &r->pool[c], off);
    dkUndoSet64(l->s, l->log, &r->poolCount[c], r->poolCount[c] + 1);
}

static bool mlPoolEmpty(multilist *l) {
    for (int c = 0; c < ML_CLASSES; c++)
        if (__atomic_load_n(&l->root->pool[c], __ATOMIC_RELAXED))
            return false;
    return true;
}

/* ---- trim --------------------------------------------------------------- */

/* Free every cached node, ML_TRIM_BATCH per critical section. Each
 * section first checks every cache chain whole (at most ML_POOL_MAX nodes
 * a class): a damaged one is CORRUPT before the section changes anything,
 * and a cycle can neither keep the trim here nor free a node twice. The
 * loop ends: every section that frees nothing returns, and every other
 * one lowers a cache count that the check bounds. */
static int mlTrim(multilist *l) {
    for (;;) {
        int rc = mlLock(l, ML_OP_TRIM);
        if (rc != DKSHM_OK)
            return rc;
        for (int c = 0; c < ML_CLASSES; c++) {
            if (!mlPoolChainOk(l, c)) {
                mlUnlock(l);
                return DKSHM_CORRUPT;
            }
        }
        dkoff batch[ML_TRIM_BATCH];
        int n = 0;
        for (int c = 0; c < ML_CLASSES && n < ML_TRIM_BATCH; c++) {
            while (n < ML_TRIM_BATCH && l->root->pool[c]) {
                dkoff off = l->root->pool[c];
                /* Into our in-flight list first: if it is full, nothing
                 * changed for this node. */
                if (mlInflightAdd(l, off) != DKSHM_OK)
                    break;
                mlPoolTake(l, c);
                batch[n++] = off;
            }
        }
        mlUnlock(l);
        for (int i = 0; i < n; i++)
            mlFreeInflight(l, batch[i]);
        if (n == 0)
            return mlPoolEmpty(l) ? DKSHM_OK : DKSHM_FULL;
    }
}

DKSHM_API int multilistTrim(multilist *l) {
    if (!l)
        return DKSHM_INVALID;
    if (l->readOnly)
        return DKSHM_READONLY;
    return mlTrim(l);
}

/* ---- push --------------------------------------------------------------- */

/* Internal: a push needs a node and the cache has none of its class. */
enum { ML_NEEDNODE = 1000 };

/* A node for LEN bytes of ITEM, allocated in flight and filled while
 * nobody else can see it. LOCKED: the caller holds the list lock (then
 * the cache cannot be trimmed to make room). */
static int mlNewNode(multilist *l, const void *item, uint64_t len, bool locked,
                     dkoff *out) {
    int c = mlClassOf(len);
    uint64_t cap = c >= 0 ? mlClassSize[c] - ML_NODE_HDR : len;
    dkoff off;
    int rc = mlAllocInflight(l, ML_NODE_HDR + cap, &off);
    if (rc == DKSHM_FULL && !locked && !mlPoolEmpty(l)) {
        /* The cache holds memory that the item may need. */
        if (mlTrim(l) == DKSHM_OK)
            rc = mlAllocInflight(l, ML_NODE_HDR + cap, &off);
    }
    if (rc != DKSHM_OK)
        return rc;
    mlNode *n = mlNodeAt(l, off);
    n->next = 0;
    n->prev = 0;
    n->len = len;
    n->cap = cap;
    if (len)
        memcpy(mlPayload(n), item, len);
    DKSHM_CRASHPOINT();
    *out = off;
    return DKSHM_OK;
}

/* Under the lock, with room in the list: push LEN bytes of ITEM at END,
 * in FRESH (a filled node of ours in flight) or, when FRESH is 0, in a
 * cached node. ML_NEEDNODE when there is neither, CORRUPT when the root's
 * ends or the cache are damaged (nothing changed either way; FRESH is
 * still the caller's). */
static int mlPushLocked(multilist *l, uint32_t end, const void *item,
                        uint64_t len, dkoff fresh) {
    mlRoot *r = l->root;
    dkoff off = fresh;
    if (!mlEndsOk(l))
        return DKSHM_CORRUPT;
    if (!off) {
        int cls = mlClassOf(len);
        if (cls < 0 || !r->pool[cls])
            return ML_NEEDNODE;
        if (!mlPoolHeadOk(l, cls))
            return DKSHM_CORRUPT;
        off = r->pool[cls];
        /* A node also linked at the end it joins would become its own
         * neighbour. */
        if (off == (end == MULTILIST_TAIL ? r->tail : r->head))
            return DKSHM_CORRUPT;
        mlPoolTake(l, cls);
        mlNode *n = mlNodeAt(l, off);
        __atomic_store_n(&n->len, len, __ATOMIC_RELAXED);
        if (len)
            memcpy(mlPayload(n), item, len);
        DKSHM_CRASHPOINT();
    } else {
        dkInflightRemove(l->s, l->log, off);
    }
    mlLink(l, off, end);
    dkUndoSet64(l->s, l->log, &r->count, r->count + 1);
    dkUndoSet64(l->s, l->log, &r->bytes, r->bytes + len);
    dkUndoSet64(l->s, l->log, &r->pushes, r->pushes + 1);
    return DKSHM_OK;
}

DKSHM_API int multilistPush(multilist *l, uint32_t end, const void *item,
                            size_t len, uint64_t timeoutMs) {
    if (!l || end > MULTILIST_TAIL || (!item && len))
        return DKSHM_INVALID;
    if (l->readOnly)
        return DKSHM_READONLY;
    if (len > l->maxItem)
        return DKSHM_TOOBIG;
    mlRoot *r = l->root;
    int cls = mlClassOf(len);
    dkoff fresh = 0; /* our in-flight node, if we made one */
    int rc;
    if (cls < 0 || __atomic_load_n(&r->pool[cls], __ATOMIC_RELAXED) == 0) {
        if ((rc = mlNewNode(l, item, len, false, &fresh)) != DKSHM_OK)
            return rc;
    }
    mlWaiter w;
    mlWaiterInit(&w, timeoutMs);
    bool locked = false;
    if ((rc = mlLock(l, ML_OP_PUSH)) != DKSHM_OK)
        goto out;
    locked = true;
    for (;;) {
        if (r->shutdown) {
            rc = DKSHM_SHUTDOWN;
            break;
        }
        if (!mlEndsOk(l)) { /* a damaged count must not make us wait */
            rc = DKSHM_CORRUPT;
            break;
        }
        if (r->count >= l->limit) {
            rc = mlWait(l, &r->notFull, &w, ML_WANT_ROOM, ML_OP_PUSH);
            if (rc == DKSHM_OK)
                continue;
            locked = rc == DKSHM_TIMEDOUT; /* other errors let it go */
            if (rc == DKSHM_TIMEDOUT && w.noWait)
                rc = DKSHM_FULL;
            break;
        }
        rc = mlPushLocked(l, end, item, len, fresh);
        if (rc == ML_NEEDNODE) {
            /* The cache emptied since we looked: make a node, look again. */
            mlUnlock(l);
            locked = false;
            if ((rc = mlNewNode(l, item, len, false, &fresh)) != DKSHM_OK)
                break;
            if ((rc = mlLock(l, ML_OP_PUSH)) != DKSHM_OK)
                break;
            locked = true;
            continue;
        }
        if (rc != DKSHM_OK)
            break; /* CORRUPT: nothing changed, FRESH is still ours */
        fresh = 0; /* the list's now */
        mlPushWake(l);
        break;
    }
out:
    if (locked)
        mlUnlock(l);
    if (fresh)
        mlFreeInflight(l, fresh);
    return rc;
}

DKSHM_API int multilistPushHead(multilist *l, const void *item, size_t len) {
    return multilistPush(l, MULTILIST_HEAD, item, len, MULTILIST_NOWAIT);
}

DKSHM_API int multilistPushTail(multilist *l, const void *item, size_t len) {
    return multilistPush(l, MULTILIST_TAIL, item, len, MULTILIST_NOWAIT);
}

DKSHM_API int multilistPushMany(multilist *l, uint32_t end,
                                const void *const *items, const size_t *lens,
                                size_t count, size_t *pushed,
                                uint64_t timeoutMs) {
    if (pushed)
        *pushed = 0;
    if (!l || !pushed || end > MULTILIST_TAIL || (count && (!items || !lens)))
        return DKSHM_INVALID;
    for (size_t i = 0; i < count; i++) {
        if (!items[i] && lens[i])
            return DKSHM_INVALID;
        if (lens[i] > l->maxItem)
            return DKSHM_TOOBIG;
    }
    if (l->readOnly)
        return DKSHM_READONLY;
    if (count == 0)
        return DKSHM_OK;
    mlRoot *r = l->root;
    mlWaiter w;
    mlWaiterInit(&w, timeoutMs);
    int rc = mlLock(l, ML_OP_PUSH);
    if (rc != DKSHM_OK)
        return rc;
    bool locked = true, told = true; /* told: waiters know our pushes */
    size_t i = 0;
    while (i < count) {
        if (r->shutdown) {
            rc = DKSHM_SHUTDOWN;
            break;
        }
        if (!mlEndsOk(l)) { /* a damaged count must not make us wait */
            rc = DKSHM_CORRUPT;
            break;
        }
        if (r->count >= l->limit) {
            if (!told)
                mlPushWake(l); /* the wait commits */
            told = true;
            rc = mlWait(l, &r->notFull, &w, ML_WANT_ROOM, ML_OP_PUSH);
            if (rc == DKSHM_OK)
                continue;
            locked = rc == DKSHM_TIMEDOUT;
            if (rc == DKSHM_TIMEDOUT && w.noWait)
                rc = DKSHM_FULL;
            break;
        }
        if (dkUndoRoom(l->log) < ML_STEP_RECORDS) {
            /* One commit per few items: each item is still whole. */
            if (!told)
                mlPushWake(l);
            told = true;
            dkUndoCommit(l->log);
        }
        rc = mlPushLocked(l, end, items[i], lens[i], 0);
        if (rc == ML_NEEDNODE) {
            /* Allocate under our lock (the allocator takes no other lock),
             * after a commit: an in-flight entry that an uncommitted step
             * cleared must not be reused by this allocation, or rolling
             * that step back would overwrite it. */
            if (!told)
                mlPushWake(l);
            told = true;
            dkUndoCommit(l->log);
            dkoff fresh;
            rc = mlNewNode(l, items[i], lens[i], true, &fresh);
            if (rc != DKSHM_OK)
                break;
            rc = mlPushLocked(l, end, items[i], lens[i], fresh);
            if (rc != DKSHM_OK) /* CORRUPT: the node is still ours */
                mlFreeInflight(l, fresh);
        }
        if (rc != DKSHM_OK)
            break;
        told = false;
        i++;
    }
    if (locked) {
        if (!told)
            mlPushWake(l);
        mlUnlock(l);
    }
    *pushed = i;
    return rc;
}

/* ---- pop ---------------------------------------------------------------- */

/* Under the lock, with an item in the list: pop the item at END into BUF
 * (BUFLEN bytes). OK with *LEN; TOOBIG (*LEN: what it needs; nothing
 * changed); FULL (in-flight list full: nothing changed). *GARBAGE gets 0,
 * or a node now in our in-flight list, to free after the commit; its item
 * is copied into BUF only then if it is longer than ML_COPY_LOCKED_MAX. */
static int mlPopLocked(multilist *l, uint32_t end, uint8_t *buf, size_t bufLen,
                       size_t *len, dkoff *garbage) {
    mlRoot *r = l->root;
    *len = 0;
    *garbage = 0;
    /* Before any change: the ends, the node, its length, and the neighbour
     * that becomes the new end (it must link back to the node, which also
     * keeps a cycle from popping one node twice). */
    if (!mlEndsOk(l) || r->count == 0)
        return DKSHM_CORRUPT;
    dkoff off = end == MULTILIST_HEAD ? r->head : r->tail;
    if (!mlNodeOk(l, off))
        return DKSHM_CORRUPT;
    mlNode *n = mlNodeAt(l, off);
    uint64_t ilen = n->len, cap = n->cap;
    if (ilen > cap || ilen > l->maxItem)
        return DKSHM_CORRUPT;
    if (r->count > 1) {
        dkoff nb = end == MULTILIST_HEAD ? n->next : n->prev;
        if (nb == off || !mlOffOk(l, nb))
            return DKSHM_CORRUPT;
        mlNode *m = mlNodeAt(l, nb);
        if ((end == MULTILIST_HEAD ? m->prev : m->next) != off)
            return DKSHM_CORRUPT;
    }
    *len = (size_t)ilen;
    if (ilen > bufLen)
        return DKSHM_TOOBIG;
    int cls = mlClassOfCap(cap);
    if (cls >= 0 && r->poolCount[cls] >= ML_POOL_MAX)
        cls = -1;
    if (cls < 0) {
        int rc = mlInflightAdd(l, off);
        if (rc != DKSHM_OK)
            return rc; /* in-flight list full: nothing changed */
        *garbage = off;
    }
    if (cls >= 0 || ilen <= ML_COPY_LOCKED_MAX) {
        /* A cached node may carry the next push's item right after our
         * commit: copy out now. Other small items too, so that the
         * caller's buffer holds the item once the pop commits. */
        if (ilen)
            memcpy(buf, mlPayload(n), ilen);
        DKSHM_CRASHPOINT();
    }
    mlUnlink(l, off, end);
    dkUndoSet64(l->s, l->log, &r->count, r->count - 1);
    dkUndoSet64(l->s, l->log, &r->bytes, r->bytes - ilen);
    dkUndoSet64(l->s, l->log, &r->pops, r->pops + 1);
    if (cls >= 0)
        mlPoolPut(l, off, cls);
    return DKSHM_OK;
}

/* After the commit: copy a large item of LEN bytes (checked under the
 * lock) out of its node (ours alone now, in flight) and free the node. */
static void mlPopFinish(multilist *l, dkoff garbage, uint8_t *buf, size_t len) {
    mlNode *n = mlNodeAt(l, garbage);
    if (len > ML_COPY_LOCKED_MAX)
        memcpy(buf, mlPayload(n), len);
    mlFreeInflight(l, garbage);
}

/* Wait, under the lock, until the list holds an item. OK (lock held);
 * NOTFOUND, TIMEDOUT, SHUTDOWN (lock held); other errors (lock not held:
 * *LOCKED false). */
static int mlWaitItem(multilist *l, mlWaiter *w, bool *locked) {
    mlRoot *r = l->root;
    while (r->count == 0) {
        if (!mlEndsOk(l))
            return DKSHM_CORRUPT; /* lock held */
        if (r->shutdown)
            return DKSHM_SHUTDOWN;
        int rc = mlWait(l, &r->notEmpty, w, ML_WANT_ITEM, ML_OP_POP);
        if (rc == DKSHM_OK)
            continue;
        *locked = rc == DKSHM_TIMEDOUT; /* other errors let it go */
        return rc == DKSHM_TIMEDOUT && w->noWait ? DKSHM_NOTFOUND : rc;
    }
    return DKSHM_OK;
}

DKSHM_API int multilistPop(multilist *l, uint32_t end, void *buf, size_t bufLen,
                           size_t *len, uint64_t timeoutMs) {
    if (!l || !len || end > MULTILIST_TAIL || (!buf && bufLen))
        return DKSHM_INVALID;
    if (l->readOnly)
        return DKSHM_READONLY;
    mlWaiter w;
    mlWaiterInit(&w, timeoutMs);
    int rc = mlLock(l, ML_OP_POP);
    if (rc != DKSHM_OK)
        return rc;
    bool locked = true;
    dkoff garbage = 0;
    rc = mlWaitItem(l, &w, &locked);
    if (rc == DKSHM_OK) {
        rc = mlPopLocked(l, end, buf, bufLen, len, &garbage);
        if (rc == DKSHM_OK)
            mlPopWake(l);
    }
    if (locked)
        mlUnlock(l);
    if (garbage)
        mlPopFinish(l, garbage, buf, *len);
    return rc;
}

DKSHM_API int multilistPopHead(multilist *l, void *buf, size_t bufLen,
                               size_t *len) {
    return multilistPop(l, MULTILIST_HEAD, buf, bufLen, len, MULTILIST_NOWAIT);
}

DKSHM_API int multilistPopTail(multilist *l, void *buf, size_t bufLen,
                               size_t *len) {
    return multilistPop(l, MULTILIST_TAIL, buf, bufLen, len, MULTILIST_NOWAIT);
}

DKSHM_API int multilistPopMany(multilist *l, uint32_t end, void *buf,
                               size_t bufLen, size_t *lens, size_t maxItems,
                               size_t *popped, uint64_t timeoutMs) {
    if (popped)
        *popped = 0;
    if (!l || !lens || !popped || maxItems == 0 || end > MULTILIST_TAIL ||
        (!buf && bufLen))
        return DKSHM_INVALID;
    if (l->readOnly)
        return DKSHM_READONLY;
    mlRoot *r = l->root;
    mlWaiter w;
    mlWaiterInit(&w, timeoutMs);
    int rc = mlLock(l, ML_OP_POP);
    if (rc != DKSHM_OK)
        return rc;
    bool locked = true;
    struct {
        dkoff node;
        size_t at, len;
    } garbage[ML_MANY_GARBAGE];
    int ng = 0;
    size_t n = 0, used = 0;
    rc = mlWaitItem(l, &w, &locked);
    while (rc == DKSHM_OK && n < maxItems && r->count > 0 &&
           ng < ML_MANY_GARBAGE) {
        if (dkUndoRoom(l->log) < ML_STEP_RECORDS) {
            /* One commit per few items: each pop is still whole. */
            mlPopWake(l);
            dkUndoCommit(l->log);
        }
        size_t len;
        dkoff g;
        uint8_t *at = buf ? (uint8_t *)buf + used : NULL;
        int prc = mlPopLocked(l, end, at, bufLen - used, &len, &g);
        if (prc != DKSHM_OK) {
            if (n == 0) {
                rc = prc;
                lens[0] = len; /* TOOBIG: what the first item needs */
            }
            break;
        }
        if (g) {
            garbage[ng].node = g;
            garbage[ng].len = len;
            garbage[ng++].at = used;
        }
        lens[n++] = len;
        used += len;
    }
    if (locked) {
        if (n)
            mlPopWake(l);
        mlUnlock(l);
    }
    for (int i = 0; i < ng; i++)
        mlPopFinish(l, garbage[i].node, (uint8_t *)buf + garbage[i].at,
                    garbage[i].len);
    *popped = n;
    return rc;
}

DKSHM_API int multilistPeek(multilist *l, uint32_t end, void *buf,
                            size_t bufLen, size_t *len) {
    if (!l || !len || end > MULTILIST_TAIL || (!buf && bufLen))
        return DKSHM_INVALID;
    if (l->readOnly)
        return DKSHM_READONLY;
    int rc = mlLock(l, ML_OP_PEEK);
    if (rc != DKSHM_OK)
        return rc;
    mlRoot *r = l->root;
    if (r->count == 0) {
        rc = DKSHM_NOTFOUND;
    } else {
        dkoff off = end == MULTILIST_HEAD ? r->head : r->tail;
        mlNode *n = mlEndsOk(l) && mlNodeOk(l, off) ? mlNodeAt(l, off) : NULL;
        uint64_t ilen = n ? n->len : 0;
        if (!n || ilen > n->cap || ilen > l->maxItem) {
            rc = DKSHM_CORRUPT;
        } else {
            *len = (size_t)ilen;
            if (ilen > bufLen)
                rc = DKSHM_TOOBIG;
            else if (ilen)
                memcpy(buf, mlPayload(n), ilen);
        }
    }
    mlUnlock(l);
    return rc;
}

/* ---- count, shutdown, stats --------------------------------------------- */

DKSHM_API int multilistCount(multilist *l, uint64_t *count) {
    if (!l || !count)
        return DKSHM_INVALID;
    *count = mlLoad64(&l->root->count);
    return DKSHM_OK;
}

DKSHM_API int multilistShutdown(multilist *l) {
    if (!l)
        return DKSHM_INVALID;
    if (l->readOnly)
        return DKSHM_READONLY;
    int rc = mlLock(l, ML_OP_SHUTDOWN);
    if (rc != DKSHM_OK)
        return rc;
    mlRoot *r = l->root;
    if (!r->shutdown) {
        dkUndoSet32(l->s, l->log, &r->shutdown, 1);
        /* Before the commit, like every wakeup. */
        fastCondBroadcast(l->s, &r->notEmpty);
        fastCondBroadcast(l->s, &r->notFull);
    }
    mlUnlock(l);
    return DKSHM_OK;
}

DKSHM_API int multilistGetStats(multilist *l, multilistStats *out) {
    if (!l || !out)
        return DKSHM_INVALID;
    mlRoot *r = l->root;
    *out = (multilistStats){0};
    out->count = mlLoad64(&r->count);
    out->bytes = mlLoad64(&r->bytes);
    out->maxItems = r->maxItems;
    out->maxItemBytes = r->maxItemBytes;
    out->pushes = mlLoad64(&r->pushes);
    out->pops = mlLoad64(&r->pops);
    for (int c = 0; c < ML_CLASSES; c++) {
        uint64_t n = mlLoad64(&r->poolCount[c]);
        out->cachedNodes += n;
        out->cachedBytes += n * mlClassSize[c];
    }
    out->popWaiters = mlLoad32(&r->notEmpty.waiters);
    out->pushWaiters = mlLoad32(&r->notFull.waiters);
    out->recoveries = mlLoad32(&r->lock.recoveries);
    out->shutdown = mlLoad32(&r->shutdown) != 0;
    return DKSHM_OK;
}

/* ---- open and close ----------------------------------------------------- */

static uint64_t mlRootSum(const mlRoot *r) {
    return XXH3_64bits(r, offsetof(mlRoot, checksum));
}

static uint64_t mlRootBytes(void) {
    return ML_ROOT_BYTES + DK_UNDO_BYTES(ML_UNDO_CAP);
}

/* Validate the root at OFF and fill the handle. */
static int mlAdopt(multilist *l, dkshm *s, dkoff off) {
    if (off < s->hdr->heap || !dkRangeOk(s, off, mlRootBytes()) || (off & 7))
        return DKSHM_CORRUPT;
    mlRoot *r = dkPtr(s, off);
    mlRoot copy;
    memcpy(&copy, r, offsetof(mlRoot, pad0)); /* fixed since creation */
    if (copy.magic != ML_MAGIC || copy.checksum != mlRootSum(&copy))
        return DKSHM_CORRUPT;
    if (copy.version != ML_VERSION)
        return DKSHM_VERSION;
    if (copy.undoCap != ML_UNDO_CAP || copy.maxItemBytes == 0 ||
        copy.maxItemBytes > MULTILIST_ITEM_MAX ||
        r->lock.undo != off + ML_ROOT_BYTES)
        return DKSHM_CORRUPT;
    l->s = s;
    l->root = r;
    l->log = dkPtr(s, off + ML_ROOT_BYTES);
    l->rootOff = off;
    l->limit = copy.maxItems ? copy.maxItems : UINT64_MAX;
    l->maxItem = copy.maxItemBytes;
    l->readOnly = dkshmReadOnly(s);
    return DKSHM_OK;
}

/* Allocate (in flight) and initialise a root for OPT. */
static int mlMakeRoot(multilist *l, dkshm *s, const multilistOptions *opt,
                      dkoff *out) {
    dkoff off;
    int rc;
    rc = memboundAllocInflight(l->mb, mlRootBytes(), &off);
    if (rc != DKSHM_OK)
        return rc;
    uint8_t *p = dkPtr(s, off);
    memset(p, 0, mlRootBytes()); /* nobody can see it yet */
    mlRoot *r = (mlRoot *)p;
    r->magic = ML_MAGIC;
    r->version = ML_VERSION;
    r->undoCap = ML_UNDO_CAP;
    r->maxItems = opt ? opt->maxItems : 0;
    r->maxItemBytes =
        opt && opt->maxItemBytes ? opt->maxItemBytes : MULTILIST_ITEM_MAX;
    r->createTimeNs = dkRealNs();
    r->checksum = mlRootSum(r);
    dkUndo *log = (dkUndo *)(p + ML_ROOT_BYTES);
    dkUndoInit(log, ML_UNDO_CAP);
    if ((rc = fastMutexInit(s, &r->lock, dkOff(s, log))) != DKSHM_OK ||
        (rc = fastCondInit(s, &r->notEmpty)) != DKSHM_OK ||
        (rc = fastCondInit(s, &r->notFull)) != DKSHM_OK) {
        memboundFreeInflight(l->mb, off);
        return rc;
    }
    *out = off;
    return DKSHM_OK;
}

/* dkshmObjectOpen's root maker and discarder; the open flags are its own. */
_Static_assert(MULTILIST_CREATE == DKSHM_OBJ_CREATE && MULTILIST_EXCL == DKSHM_OBJ_EXCL,
               "open flags");
typedef struct mlMakeCtx {
    multilist *l;
    dkshm *s;
    const multilistOptions *opt;
} mlMakeCtx;

static int mlMake(void *ctx, dkoff *root) {
    mlMakeCtx *c = ctx;
    return mlMakeRoot(c->l, c->s, c->opt, root);
}

static void mlDiscard(void *ctx, dkoff root) {
    memboundFreeInflight(((mlMakeCtx *)ctx)->l->mb, root);
}

DKSHM_API int multilistOpen(dkshm *s, const char *name,
                            const multilistOptions *opt, uint32_t flags,
                            multilist **out) {
    if (out)
        *out = NULL;
    if (!s || !out || (flags & ~(MULTILIST_CREATE | MULTILIST_EXCL)) ||
        ((flags & MULTILIST_EXCL) && !(flags & MULTILIST_CREATE)))
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    if (opt && (opt->flags != 0 || opt->pad != 0 ||
                opt->maxItemBytes > MULTILIST_ITEM_MAX))
        return DKSHM_INVALID;
    multilist *l = calloc(1, sizeof *l);
    if (!l)
        return DKSHM_SYSTEM;
    if (!dkshmReadOnly(s) && !(l->mb = memboundForSegment(s))) {
        free(l);
        return DKSHM_FULL;
    }
    mlMakeCtx mc = {l, s, opt};
    dkoff root;
    rc = dkshmObjectOpen(s, name, MULTILIST_TYPE, flags, mlMake, mlDiscard,
                         &mc, &root, NULL);
    if (rc == DKSHM_OK)
        rc = mlAdopt(l, s, root);
    if (rc != DKSHM_OK) {
        free(l);
        return rc;
    }
    *out = l;
    return DKSHM_OK;
}

DKSHM_API int multilistClose(multilist *l) {
    free(l);
    return DKSHM_OK;
}

dkoff multilistRootOff(const multilist *l) {
    return l ? l->rootOff : 0;
}

/* ---- check and block walk ----------------------------------------------- */

typedef struct mlWalk { /* per call */
    multilist *l;
    dkoff *offs; /* every block seen, for the duplicate test */
    size_t n, cap;
    char *why;
    size_t whyLen;
} mlWalk;

static bool mlWalkAdd(mlWalk *w, dkoff off) {
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 256;
        dkoff *p = realloc(w->offs, cap * sizeof *p);
        if (!p)
            return false;
        w->offs = p;
        w->cap = cap;
    }
    w->offs[w->n++] = off;
    return true;
}

static int mlCmpOff(const void *a, const void *b) {
    dkoff x = *(const dkoff *)a, y = *(const dkoff *)b;
    return x < y ? -1 : x > y;
}

/* The whole check, on a list that does not change meanwhile (lock held),
 * or that may (read-only: then a failure may be a torn view). */
static int mlCheckBody(mlWalk *w) {
    multilist *l = w->l;
    mlRoot *r = l->root;
    char *why = w->why;
    size_t wl = w->whyLen;
    w->n = 0;
    if (!mlWalkAdd(w, l->rootOff))
        return DKSHM_FULL;
    uint64_t count = mlLoad64(&r->count);
    dkoff head = mlLoad64(&r->head), tail = mlLoad64(&r->tail);
    if ((count == 0) != (head == 0) || (head == 0) != (tail == 0))
        return mlFail(why, wl, "count %llu with head %#llx tail %#llx",
                      (unsigned long long)count, (unsigned long long)head,
                      (unsigned long long)tail);
    if (r->maxItems && count > r->maxItems)
        return mlFail(why, wl, "%llu items over the capacity %llu",
                      (unsigned long long)count,
                      (unsigned long long)r->maxItems);
    if (count > l->s->heapSize / ML_NODE_HDR)
        return mlFail(why, wl, "%llu items, more than the heap holds",
                      (unsigned long long)count);
    /* Forwards, bounded by the count: no cycle can keep us here (and a
     * node met twice is caught below). head->prev and tail->next mean
     * nothing. */
    uint64_t bytes = 0;
    dkoff prev = 0, off = head;
    for (uint64_t i = 0; i < count; i++) {
        if (!mlNodeOk(l, off))
            return mlFail(why, wl, "node %llu: bad offset %#llx",
                          (unsigned long long)i, (unsigned long long)off);
        mlNode *n = mlNodeAt(l, off);
        uint64_t len = mlLoad64(&n->len);
        if (i > 0 && mlLoad64(&n->prev) != prev)
            return mlFail(why, wl, "node %#llx: prev %#llx, expected %#llx",
                          (unsigned long long)off,
                          (unsigned long long)mlLoad64(&n->prev),
                          (unsigned long long)prev);
        if (len > mlLoad64(&n->cap) || len > r->maxItemBytes)
            return mlFail(why, wl, "node %#llx: length %llu, capacity %llu",
                          (unsigned long long)off, (unsigned long long)len,
                          (unsigned long long)mlLoad64(&n->cap));
        if (!mlWalkAdd(w, off))
            return DKSHM_FULL;
        bytes += len;
        prev = off;
        if (i + 1 < count)
            off = mlLoad64(&n->next);
    }
    if (prev != tail)
        return mlFail(why, wl,
                      "node %llu from head is %#llx, not the tail "
                      "%#llx",
                      (unsigned long long)count, (unsigned long long)prev,
                      (unsigned long long)tail);
    if (bytes != mlLoad64(&r->bytes))
        return mlFail(why, wl, "items hold %llu bytes, root says %llu",
                      (unsigned long long)bytes,
                      (unsigned long long)mlLoad64(&r->bytes));
    /* Backwards: the same chain, by the prev links. */
    dkoff next = 0;
    off = tail;
    for (uint64_t i = 0; i < count; i++) {
        if (!mlNodeOk(l, off))
            return mlFail(why, wl, "backward walk broken at %#llx",
                          (unsigned long long)off);
        mlNode *n = mlNodeAt(l, off);
        if (i > 0 && mlLoad64(&n->next) != next)
            return mlFail(why, wl, "node %#llx: next %#llx, expected %#llx",
                          (unsigned long long)off,
                          (unsigned long long)mlLoad64(&n->next),
                          (unsigned long long)next);
        next = off;
        if (i + 1 < count)
            off = mlLoad64(&n->prev);
    }
    if (next != head)
        return mlFail(why, wl,
                      "backward walk ends at %#llx, not the head "
                      "%#llx",
                      (unsigned long long)next, (unsigned long long)head);
    if (r->pushes < r->pops || r->pushes - r->pops != count)
        return mlFail(why, wl, "%llu pushes, %llu pops, %llu items",
                      (unsigned long long)r->pushes,
                      (unsigned long long)r->pops, (unsigned long long)count);
    /* The node cache. */
    for (int c = 0; c < ML_CLASSES; c++) {
        uint64_t want = mlLoad64(&r->poolCount[c]), got = 0;
        if (want > ML_POOL_MAX)
            return mlFail(why, wl, "cache %d: %llu nodes", c,
                          (unsigned long long)want);
        for (off = mlLoad64(&r->pool[c]); off; got++) {
            if (got >= want || !mlNodeOk(l, off))
                return mlFail(why, wl, "cache %d: bad node %#llx after %llu", c,
                              (unsigned long long)off, (unsigned long long)got);
            mlNode *n = mlNodeAt(l, off);
            if (mlLoad64(&n->cap) != mlClassSize[c] - ML_NODE_HDR)
                return mlFail(why, wl, "cache %d: node %#llx of capacity %llu",
                              c, (unsigned long long)off,
                              (unsigned long long)mlLoad64(&n->cap));
            if (!mlWalkAdd(w, off))
                return DKSHM_FULL;
            off = mlLoad64(&n->next);
        }
        if (got != want)
            return mlFail(why, wl, "cache %d: %llu nodes, count %llu", c,
                          (unsigned long long)got, (unsigned long long)want);
    }
    /* No block twice, no two blocks overlapping. */
    qsort(w->offs, w->n, sizeof *w->offs, mlCmpOff);
    for (size_t i = 1; i < w->n; i++) {
        dkoff a = w->offs[i - 1], b = w->offs[i];
        uint64_t size = a == l->rootOff
                            ? mlRootBytes()
                            : ML_NODE_HDR + mlLoad64(&mlNodeAt(l, a)->cap);
        if (a == b)
            return mlFail(why, wl, "node %#llx reachable twice",
                          (unsigned long long)a);
        if (b - a < size)
            return mlFail(why, wl, "blocks %#llx and %#llx overlap",
                          (unsigned long long)a, (unsigned long long)b);
    }
    return DKSHM_OK;
}

static int mlCheckRoot(multilist *l, char *why, size_t whyLen) {
    mlRoot copy;
    memcpy(&copy, l->root, offsetof(mlRoot, pad0));
    if (copy.magic != ML_MAGIC || copy.checksum != mlRootSum(&copy))
        return mlFail(why, whyLen, "root: bad magic or checksum");
    if (l->root->lock.undo != l->rootOff + ML_ROOT_BYTES ||
        l->log->cap != ML_UNDO_CAP)
        return mlFail(why, whyLen, "root: foreign undo log");
    return DKSHM_OK;
}

DKSHM_API int multilistCheck(multilist *l, char *why, size_t whyLen) {
    if (!l)
        return DKSHM_INVALID;
    if (why && whyLen)
        why[0] = '\0';
    int rc = mlCheckRoot(l, why, whyLen);
    if (rc != DKSHM_OK)
        return rc;
    mlWalk w = {.l = l, .why = why, .whyLen = whyLen};
    if (!l->readOnly) {
        rc = mlLock(l, ML_OP_READ);
        if (rc == DKSHM_CORRUPT)
            return mlFail(why, whyLen, "undo log cannot be applied");
        if (rc != DKSHM_OK)
            return rc;
        if (__atomic_load_n(&l->log->count, __ATOMIC_RELAXED) != 0)
            rc = mlFail(why, whyLen, "undo log not empty under the lock");
        else
            rc = mlCheckBody(&w);
        mlUnlock(l);
    } else {
        /* No lock: accept a verdict only if the list did not move while we
         * looked (lock free before and after, same pushes and pops). */
        rc = DKSHM_BUSY;
        for (int i = 0; i < ML_CHECK_ROUNDS && rc == DKSHM_BUSY; i++) {
            mlRoot *r = l->root;
            uint32_t lw = __atomic_load_n(&r->lock.word, __ATOMIC_ACQUIRE);
            uint64_t pu = mlLoad64(&r->pushes), po = mlLoad64(&r->pops);
            if (lw != 0) {
                usleep(1000);
                continue;
            }
            int v = mlCheckBody(&w);
            if (__atomic_load_n(&r->lock.word, __ATOMIC_ACQUIRE) == 0 &&
                mlLoad64(&r->pushes) == pu && mlLoad64(&r->pops) == po &&
                __atomic_load_n(&l->log->count, __ATOMIC_ACQUIRE) == 0)
                rc = v;
        }
    }
    free(w.offs);
    return rc;
}

int multilistForEachBlock(multilist *l, multilistBlockFn fn, void *ctx) {
    if (!l || !fn)
        return DKSHM_INVALID;
    bool locked = false;
    if (!l->readOnly) {
        int rc = mlLock(l, ML_OP_READ);
        if (rc != DKSHM_OK)
            return rc;
        locked = true;
    }
    mlRoot *r = l->root;
    int rc = fn(ctx, l->rootOff, mlRootBytes(), MULTILIST_BLOCK_ROOT);
    uint64_t count = mlLoad64(&r->count), seen;
    dkoff head = mlLoad64(&r->head), off = head, prev = 0;
    /* Bounded by the count, itself bounded by the heap; with every prev
     * link checked, a node met twice can only be the head: a cycle. */
    if (rc == 0 && count > l->s->heapSize / ML_NODE_HDR)
        rc = DKSHM_CORRUPT;
    for (uint64_t i = 0; i < count && rc == 0; i++) {
        if ((i > 0 && off == head) || !mlNodeOk(l, off)) {
            rc = DKSHM_CORRUPT;
            break;
        }
        mlNode *n = mlNodeAt(l, off);
        if (i > 0 && mlLoad64(&n->prev) != prev) {
            rc = DKSHM_CORRUPT;
            break;
        }
        rc =
            fn(ctx, off, ML_NODE_HDR + mlLoad64(&n->cap), MULTILIST_BLOCK_NODE);
        prev = off;
        off = mlLoad64(&n->next);
    }
    for (int c = 0; c < ML_CLASSES && rc == 0; c++) {
        uint64_t want = mlLoad64(&r->poolCount[c]);
        seen = 0;
        if (want > ML_POOL_MAX) {
            rc = DKSHM_CORRUPT;
            break;
        }
        for (off = mlLoad64(&r->pool[c]); off && rc == 0; seen++) {
            if (seen >= want || !mlNodeOk(l, off)) {
                rc = DKSHM_CORRUPT;
                break;
            }
            mlNode *n = mlNodeAt(l, off);
            rc = fn(ctx, off, ML_NODE_HDR + mlLoad64(&n->cap),
                    MULTILIST_BLOCK_FREE);
            off = mlLoad64(&n->next);
        }
    }
    if (locked)
        mlUnlock(l);
    return rc;
}

/* ---- lock-free item walk ------------------------------------------------- */

/* The walk's loads of links and lengths are acquire loads; what FN reads
 * of the items is then ordered before the closing stamp by a fence, which
 * ThreadSanitizer does not model (and needs not: it runs on x86). */
#if defined(__SANITIZE_THREAD__)
#define ML_NO_FENCE 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ML_NO_FENCE 1
#endif
#endif

static inline uint64_t mlLoadAcq(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

/* What a reader without the lock compares before and after its walk. Every
 * committed change to the chain of items moves pushes or pops; a rollback
 * of a dead owner's change moves recoveries; a change in progress has
 * records in the log. The lock word itself may stay held (by a dead owner
 * that changed nothing, or a live one between commits): that alone does
 * not make the view torn. */
typedef struct mlStamp { /* per call */
    uint32_t word, recoveries, logCount;
    uint64_t pushes, pops;
} mlStamp;

static void mlStampRead(const multilist *l, mlStamp *st) {
    const mlRoot *r = l->root;
    /* Whatever the walk read before this is ordered before these loads: a
     * change it saw has its log record (published first) seen here. */
#ifndef ML_NO_FENCE
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
#endif
    st->word = __atomic_load_n(&r->lock.word, __ATOMIC_ACQUIRE);
    st->logCount = __atomic_load_n(&l->log->count, __ATOMIC_ACQUIRE);
    st->recoveries = __atomic_load_n(&r->lock.recoveries, __ATOMIC_ACQUIRE);
    st->pushes = __atomic_load_n(&r->pushes, __ATOMIC_ACQUIRE);
    st->pops = __atomic_load_n(&r->pops, __ATOMIC_ACQUIRE);
}

static bool mlStampSame(const mlStamp *a, const mlStamp *b) {
    return a->word == b->word && a->recoveries == b->recoveries &&
           a->logCount == b->logCount && a->pushes == b->pushes &&
           a->pops == b->pops;
}

/* One walk from a committed state stamped in *A: the verdict of the walk
 * (OK, CORRUPT, or BUSY if a look in between saw a change) and FN's
 * value in *FNRC. */
static int mlWalkItems(multilist *l, const mlStamp *a, multilistItemFn fn,
                       void *ctx, uint64_t limit, int *fnRc) {
    dkshm *s = l->s;
    mlRoot *r = l->root;
    uint64_t count = mlLoadAcq(&r->count);
    dkoff head = mlLoadAcq(&r->head), tail = mlLoadAcq(&r->tail);
    /* No more nodes than fit in the heap: a bound on the walk even when
     * the links are torn. */
    if ((count == 0) != (head == 0) || (head == 0) != (tail == 0) ||
        count > s->heapSize / ML_NODE_HDR)
        return DKSHM_CORRUPT;
    dkoff prev = 0, off = head;
    for (uint64_t i = 0; i < count && i < limit; i++) {
        /* With every prev link checked, the first node met twice can only
         * be the head (its prev means nothing): that is the cycle test. */
        if ((i > 0 && off == head) || off < s->heap || (off & 7) ||
            !dkRangeOk(s, off, ML_NODE_HDR))
            return DKSHM_CORRUPT;
        mlNode *n = mlNodeAt(l, off);
        uint64_t cap = mlLoadAcq(&n->cap), len = mlLoadAcq(&n->len);
        if (cap > MULTILIST_ITEM_MAX || !dkRangeOk(s, off, ML_NODE_HDR + cap) ||
            len > cap || len > l->maxItem)
            return DKSHM_CORRUPT;
        if (i > 0 && mlLoadAcq(&n->prev) != prev)
            return DKSHM_CORRUPT;
        if (i + 1 == count && off != tail)
            return DKSHM_CORRUPT;
        *fnRc = fn(ctx, i, mlPayload(n), (size_t)len);
        if (*fnRc != 0)
            return DKSHM_OK;
        prev = off;
        off = mlLoadAcq(&n->next);
        if ((i + 1) % ML_ITEM_RECHECK == 0) {
            mlStamp b;
            mlStampRead(l, &b);
            if (!mlStampSame(a, &b))
                return DKSHM_BUSY; /* give up early on a moving list */
        }
    }
    return DKSHM_OK;
}

int multilistForEachItem(multilist *l, multilistItemFn fn, void *ctx,
                         uint64_t limit) {
    if (!l || !fn)
        return DKSHM_INVALID;
    mlStamp a, b;
    for (int round = 0;; round++) {
        mlStampRead(l, &a);
        if (a.logCount == 0)
            break;
        /* Mid-change: a live owner commits in a moment; a dead one's log
         * waits for a read-write locker. */
        if (round + 1 >= ML_ITEM_ROUNDS)
            return DKSHM_BUSY;
        usleep(round < 8 ? 100 : 1000);
    }
    int fnRc = 0;
    int rc = mlWalkItems(l, &a, fn, ctx, limit, &fnRc);
    mlStampRead(l, &b);
    if (!mlStampSame(&a, &b))
        return DKSHM_BUSY;
    if (rc != DKSHM_OK)
        return rc;
    return fnRc;
}
