/* OSRegulate.c — a holder limit and a token bucket shared across processes.
 *
 * LAYOUT. One membound block, bound to a name in the directory:
 *
 *   osrRoot   limits, counters, the lock and its undo log, a fastCond
 *   perProc[] one word per process-table slot: (slot generation << 32) |
 *             permits that incarnation of the slot holds
 *
 * HOLDERS. held is the sum of the counts in perProc[]. A permit is counted
 * under the (slot, generation) of the process that took it, the same pair
 * that names lock owners, so "is that holder alive?" is dkOwnerAlive. An
 * acquirer that finds every permit out first reclaims the permits of dead
 * holders (and a new process in a reused slot drops its predecessor's
 * count the same way); only then does it wait on the fastCond, waking every
 * DKSHM_LOCK_POLL_MS to look for dead holders again, since the dead never
 * signal.
 *
 * RATE. A token bucket in thousandths of a token, refilled from
 * CLOCK_MONOTONIC (one clock for the whole machine) whenever it is used.
 *
 * CRASH RECOVERY. Every change goes through the lock's undo log, so a
 * process killed inside a call leaves the regulator as before the call or
 * after it. A reclaim of many dead holders commits after each one, so it
 * never needs more than a few records. Permits a killed process held are
 * reclaimed as above, or on demand by OSRegulateReclaim (dkshm-tool reap):
 * the regulator needs no reaping of its own, but an operator need not wait
 * for the limit to be reached to see them back.
 */
#include "config.h"

#include "OSRegulate.h"
#include "membound.h"
#include "memboundInternal.h"
#include "segmentInternal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OSR_MAGIC 0x4752534fu /* "OSRG" */
#define OSR_VERSION 1u
#define OSR_UNDO_CAP 16u
#define OSR_POLL_NS ((uint64_t)DKSHM_LOCK_POLL_MS * 1000000ull)
#define OSR_MILLI 1000ull

typedef struct osrRoot { /* in the segment */
    uint32_t magic;
    uint32_t version;
    uint32_t maxHolders;
    uint32_t burst;
    uint64_t ratePerSec;
    uint32_t maxProcs; /* entries in perProc[] */
    uint32_t held;
    uint64_t tokensMilli;
    uint64_t lastRefillNs;
    uint64_t acquired;
    uint64_t reclaimed;
    uint64_t rateDenied;
    fastMutex lock; /* guards everything below magic..maxProcs */
    fastCond freed; /* signalled when a permit comes back */
    uint64_t undo[DK_UNDO_BYTES(OSR_UNDO_CAP) / 8];
    uint64_t perProc[];
} osrRoot;

struct OSRegulate { /* per process */
    dkshm *s;
    osrRoot *r;
    dkUndo *log;
};

static uint64_t rootBytes(uint32_t maxProcs) {
    return sizeof(osrRoot) + 8ull * maxProcs;
}

/* Whether the block at OFF can be a regulator of segment S. */
static int validRoot(dkshm *s, dkoff off) {
    if ((off & 7) || !dkRangeOk(s, off, sizeof(osrRoot)))
        return DKSHM_CORRUPT;
    osrRoot *r = dkPtr(s, off);
    if (r->magic != OSR_MAGIC || r->version != OSR_VERSION ||
        r->maxProcs != s->hdr->maxProcs ||
        !dkRangeOk(s, off, rootBytes(r->maxProcs)) ||
        r->lock.undo != off + offsetof(osrRoot, undo))
        return DKSHM_CORRUPT;
    return DKSHM_OK;
}

static int newRoot(dkshm *s, const OSRegulateOptions *o, dkoff *out) {
    if (!o || (o->maxHolders == 0 && o->ratePerSec == 0))
        return DKSHM_INVALID;
    membound *m = memboundForSegment(s);
    if (!m)
        return DKSHM_FULL;
    uint32_t procs = s->hdr->maxProcs;
    dkoff off;
    int rc = memboundAllocInflight(m, rootBytes(procs), &off);
    if (rc != DKSHM_OK)
        return rc;
    /* Nobody can see the block yet: plain stores. */
    osrRoot *r = dkPtr(s, off);
    memset(r, 0, rootBytes(procs));
    r->magic = OSR_MAGIC;
    r->version = OSR_VERSION;
    r->maxHolders = o->maxHolders;
    r->ratePerSec = o->ratePerSec;
    r->burst = o->ratePerSec ? (o->burst ? o->burst
                                         : (uint32_t)(o->ratePerSec > UINT32_MAX
                                                          ? UINT32_MAX
                                                          : o->ratePerSec))
                             : 0;
    r->maxProcs = procs;
    r->tokensMilli = (uint64_t)r->burst * OSR_MILLI;
    r->lastRefillNs = dkNowNs();
    dkUndoInit((dkUndo *)r->undo, OSR_UNDO_CAP);
    if ((rc = fastMutexInit(s, &r->lock, off + offsetof(osrRoot, undo))) !=
            DKSHM_OK ||
        (rc = fastCondInit(s, &r->freed)) != DKSHM_OK) {
        memboundFreeInflight(m, off);
        return rc;
    }
    *out = off;
    return DKSHM_OK;
}

/* dkshmObjectOpen's root maker and discarder; the open flags are its own. */
_Static_assert(OSREGULATE_CREATE == DKSHM_OBJ_CREATE && OSREGULATE_EXCL == DKSHM_OBJ_EXCL,
               "open flags");
typedef struct osrMakeCtx {
    dkshm *s;
    const OSRegulateOptions *opt;
} osrMakeCtx;

static int osrMake(void *ctx, dkoff *root) {
    osrMakeCtx *c = ctx;
    return newRoot(c->s, c->opt, root);
}

static void osrDiscard(void *ctx, dkoff root) {
    memboundFreeInflight(memboundForSegment(((osrMakeCtx *)ctx)->s), root);
}

DKSHM_API int OSRegulateOpen(dkshm *s, const char *name,
                             const OSRegulateOptions *opt, uint32_t flags,
                             OSRegulate **out) {
    if (!s || !out || (flags & ~(OSREGULATE_CREATE | OSREGULATE_EXCL)) ||
        ((flags & OSREGULATE_EXCL) && !(flags & OSREGULATE_CREATE)))
        return DKSHM_INVALID;
    *out = NULL;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    osrMakeCtx mc = {s, opt};
    dkoff off = 0;
    bool created;
    rc = dkshmObjectOpen(s, name, OSREGULATE_TYPE, flags, osrMake, osrDiscard,
                         &mc, &off, &created);
    if (rc == DKSHM_OK && !created)
        rc = validRoot(s, off);
    if (rc != DKSHM_OK)
        return rc;
    OSRegulate *h = calloc(1, sizeof *h);
    if (!h)
        return DKSHM_FULL;
    h->s = s;
    h->r = dkPtr(s, off);
    h->log = (dkUndo *)h->r->undo;
    *out = h;
    return DKSHM_OK;
}

DKSHM_API int OSRegulateClose(OSRegulate *r) {
    free(r);
    return DKSHM_OK;
}

/* Take the lock; this process's (slot, generation) in *SLOT and *GEN. */
static int lockRoot(OSRegulate *h, uint32_t *slot, uint32_t *gen) {
    uint32_t id;
    int rc = dkSelf(h->s, &id);
    if (rc != DKSHM_OK)
        return rc;
    *slot = id & ((1u << DK_ID_SLOT_BITS) - 1);
    *gen = id >> DK_ID_SLOT_BITS;
    dkCount(h->s, DKSHM_CTR_WRITES, 1);
    rc = fastMutexLock(h->s, &h->r->lock);
    return rc < 0 ? rc : DKSHM_OK;
}

static void unlockRoot(OSRegulate *h) {
    fastMutexUnlock(h->s, &h->r->lock);
}

/* Under the lock: give back the permits of holders that are gone. A slot
 * whose entry names an older generation than its current occupant, or no
 * live process, is gone. Commits after each so the log stays small.
 * Returns how many permits came back. */
static uint32_t reclaimDead(OSRegulate *h) {
    osrRoot *r = h->r;
    uint32_t back = 0;
    for (uint32_t i = 0; i < r->maxProcs; i++) {
        uint64_t e = __atomic_load_n(&r->perProc[i], __ATOMIC_RELAXED);
        uint32_t n = (uint32_t)e;
        if (n == 0 || dkOwnerAlive(h->s, DK_ID_MAKE(i, e >> 32)))
            continue;
        uint32_t take = n < r->held ? n : r->held; /* never below zero */
        dkUndoSet32(h->s, h->log, &r->held, r->held - take);
        dkUndoSet64(h->s, h->log, &r->reclaimed, r->reclaimed + take);
        dkUndoSet64(h->s, h->log, &r->perProc[i], 0);
        dkUndoCommit(h->log);
        back += take;
    }
    return back;
}

/* Under the lock: one permit for (SLOT, GEN) if one is free. */
static bool takePermit(OSRegulate *h, uint32_t slot, uint32_t gen) {
    osrRoot *r = h->r;
    if (r->held >= r->maxHolders)
        return false;
    uint64_t e = __atomic_load_n(&r->perProc[slot], __ATOMIC_RELAXED);
    uint32_t mine = (e >> 32) == gen ? (uint32_t)e : 0;
    if ((e >> 32) != gen && (uint32_t)e != 0)
        return false; /* a predecessor's permits: reclaimDead first */
    dkUndoSet64(h->s, h->log, &r->perProc[slot],
                ((uint64_t)gen << 32) | (mine + 1));
    dkUndoSet32(h->s, h->log, &r->held, r->held + 1);
    dkUndoSet64(h->s, h->log, &r->acquired, r->acquired + 1);
    return true;
}

static int acquire(OSRegulate *h, uint64_t timeoutNs, bool try) {
    if (!h)
        return DKSHM_INVALID;
    if (h->r->maxHolders == 0)
        return DKSHM_INVALID;
    uint64_t deadline = timeoutNs ? dkNowNs() + timeoutNs : 0;
    uint32_t slot, gen;
    int rc = lockRoot(h, &slot, &gen);
    if (rc != DKSHM_OK)
        return rc;
    for (;;) {
        if (takePermit(h, slot, gen))
            break;
        if (reclaimDead(h) > 0) {
            fastCondBroadcast(h->s, &h->r->freed);
            continue;
        }
        if (takePermit(h, slot, gen))
            break;
        uint64_t wait = OSR_POLL_NS;
        if (!try && deadline) {
            uint64_t now = dkNowNs();
            if (now >= deadline) {
                rc = DKSHM_TIMEDOUT;
                break;
            }
            if (deadline - now < wait)
                wait = deadline - now;
        }
        if (try) {
            rc = DKSHM_BUSY;
            break;
        }
        rc = fastCondWait(h->s, &h->r->freed, &h->r->lock, wait);
        if (rc < 0 && rc != DKSHM_TIMEDOUT)
            return rc; /* the lock could not be taken back */
        rc = DKSHM_OK;
    }
    unlockRoot(h);
    return rc;
}

DKSHM_API int OSRegulateTryAcquire(OSRegulate *r) {
    return acquire(r, 0, true);
}

DKSHM_API int OSRegulateAcquire(OSRegulate *r, uint64_t timeoutNs) {
    return acquire(r, timeoutNs, false);
}

DKSHM_API int OSRegulateRelease(OSRegulate *h) {
    if (!h)
        return DKSHM_INVALID;
    uint32_t slot, gen;
    int rc = lockRoot(h, &slot, &gen);
    if (rc != DKSHM_OK)
        return rc;
    osrRoot *r = h->r;
    uint64_t e = __atomic_load_n(&r->perProc[slot], __ATOMIC_RELAXED);
    if ((e >> 32) != gen || (uint32_t)e == 0 || r->held == 0) {
        unlockRoot(h);
        return DKSHM_INVALID;
    }
    dkUndoSet64(h->s, h->log, &r->perProc[slot], e - 1);
    dkUndoSet32(h->s, h->log, &r->held, r->held - 1);
    fastCondSignal(h->s, &r->freed);
    unlockRoot(h);
    return DKSHM_OK;
}

/* Tokens (thousandths) in R's bucket at NOW. */
static uint64_t refilled(const osrRoot *r, uint64_t now) {
    uint64_t cap = (uint64_t)r->burst * OSR_MILLI;
    uint64_t last = __atomic_load_n(&r->lastRefillNs, __ATOMIC_RELAXED);
    uint64_t have = __atomic_load_n(&r->tokensMilli, __ATOMIC_RELAXED);
    if (now <= last || have >= cap)
        return have < cap ? have : cap;
    unsigned __int128 add =
        (unsigned __int128)(now - last) * r->ratePerSec / 1000000u;
    return add >= cap - have ? cap : have + (uint64_t)add;
}

DKSHM_API int OSRegulateTryRate(OSRegulate *h, uint32_t n) {
    if (!h)
        return DKSHM_INVALID;
    osrRoot *r = h->r;
    if (r->ratePerSec == 0 || n == 0 || n > r->burst)
        return DKSHM_INVALID;
    uint32_t slot, gen;
    int rc = lockRoot(h, &slot, &gen);
    if (rc != DKSHM_OK)
        return rc;
    uint64_t now = dkNowNs();
    uint64_t have = refilled(r, now);
    uint64_t need = (uint64_t)n * OSR_MILLI;
    if (have >= need) {
        dkUndoSet64(h->s, h->log, &r->tokensMilli, have - need);
    } else {
        dkUndoSet64(h->s, h->log, &r->tokensMilli, have);
        dkUndoSet64(h->s, h->log, &r->rateDenied, r->rateDenied + 1);
        rc = DKSHM_BUSY;
    }
    dkUndoSet64(h->s, h->log, &r->lastRefillNs, now);
    unlockRoot(h);
    return rc;
}

/* Permits of holders that are dead now, read without the lock (a hint that
 * may be stale by the time it returns); never more than held. */
static uint32_t deadHeld(OSRegulate *h) {
    const osrRoot *r = h->r;
    uint64_t dead = 0;
    for (uint32_t i = 0; i < r->maxProcs; i++) {
        uint64_t e = __atomic_load_n(&r->perProc[i], __ATOMIC_RELAXED);
        if ((uint32_t)e != 0 &&
            !dkOwnerAlive(h->s, DK_ID_MAKE(i, (uint32_t)(e >> 32))))
            dead += (uint32_t)e;
    }
    uint32_t held = __atomic_load_n(&r->held, __ATOMIC_RELAXED);
    return dead < held ? (uint32_t)dead : held;
}

DKSHM_API int OSRegulateReclaim(OSRegulate *h, uint32_t *reclaimed) {
    if (reclaimed)
        *reclaimed = 0;
    if (!h)
        return DKSHM_INVALID;
    if (h->s->readOnly)
        return DKSHM_READONLY;
    uint32_t slot, gen;
    int rc = lockRoot(h, &slot, &gen);
    if (rc != DKSHM_OK)
        return rc;
    uint32_t back = reclaimDead(h);
    if (back > 0)
        fastCondBroadcast(h->s, &h->r->freed);
    unlockRoot(h);
    if (reclaimed)
        *reclaimed = back;
    return DKSHM_OK;
}

DKSHM_API int OSRegulateGetStats(OSRegulate *h, OSRegulateStats *out) {
    if (!h || !out)
        return DKSHM_INVALID;
    const osrRoot *r = h->r;
    *out = (OSRegulateStats){0};
    out->maxHolders = r->maxHolders;
    out->held = __atomic_load_n(&r->held, __ATOMIC_RELAXED);
    out->burst = r->burst;
    out->ratePerSec = r->ratePerSec;
    out->tokens = refilled(r, dkNowNs()) / OSR_MILLI;
    out->acquired = __atomic_load_n(&r->acquired, __ATOMIC_RELAXED);
    out->reclaimed = __atomic_load_n(&r->reclaimed, __ATOMIC_RELAXED);
    out->rateDenied = __atomic_load_n(&r->rateDenied, __ATOMIC_RELAXED);
    out->deadHeld = deadHeld(h);
    uint32_t id;
    if (!h->s->readOnly && dkSelf(h->s, &id) == DKSHM_OK) {
        uint32_t slot = id & ((1u << DK_ID_SLOT_BITS) - 1);
        uint64_t e = __atomic_load_n(&r->perProc[slot], __ATOMIC_RELAXED);
        out->mine = (e >> 32) == id >> DK_ID_SLOT_BITS ? (uint32_t)e : 0;
    }
    return DKSHM_OK;
}

DKSHM_API int OSRegulateCheck(OSRegulate *h, char *why, size_t whyLen) {
    char tmp[1];
    if (!why) {
        why = tmp;
        whyLen = sizeof tmp;
    }
    if (whyLen)
        why[0] = '\0';
    if (!h)
        return DKSHM_INVALID;
    bool locked = false;
    uint32_t slot, gen;
    if (!h->s->readOnly && lockRoot(h, &slot, &gen) == DKSHM_OK)
        locked = true;
    const osrRoot *r = h->r;
    int rc = validRoot(h->s, dkOff(h->s, r));
    uint64_t sum = 0;
    for (uint32_t i = 0; rc == DKSHM_OK && i < r->maxProcs; i++)
        sum += (uint32_t)__atomic_load_n(&r->perProc[i], __ATOMIC_RELAXED);
    uint32_t held = __atomic_load_n(&r->held, __ATOMIC_RELAXED);
    if (rc != DKSHM_OK)
        snprintf(why, whyLen, "regulator header damaged");
    else if (sum != held)
        snprintf(why, whyLen, "per-process permits add up to %llu, held %u",
                 (unsigned long long)sum, held);
    else if (r->maxHolders && held > r->maxHolders)
        snprintf(why, whyLen, "held %u > maxHolders %u", held,
                 r->maxHolders);
    else if (__atomic_load_n(&r->tokensMilli, __ATOMIC_RELAXED) >
             (uint64_t)r->burst * OSR_MILLI)
        snprintf(why, whyLen, "bucket holds more than its burst %u",
                 r->burst);
    if (rc == DKSHM_OK && why[0])
        rc = DKSHM_CORRUPT;
    if (locked)
        unlockRoot(h);
    return rc;
}
