/* dkshmBench.c — dkshm-bench: throughput, latency and crash-consistency
 * runs of dkshm's containers from forked processes (man/dkshm-bench.1).
 *
 *   dkshm-bench [--workload W] [--procs N] [--seconds T] [--keys K] ...
 *
 * WHAT IT DOES. The parent makes (or attaches) a segment, opens the
 * container the workload needs and preloads K keys, then forks N workers
 * that wait at a start flag, run the workload for T seconds and stop at a
 * stop flag. Each worker counts its operations in a shared anonymous
 * mapping and times one operation in SAMPLE_EVERY with CLOCK_MONOTONIC,
 * keeping a reservoir sample per process in the same mapping; the parent
 * merges the reservoirs for the percentiles. The mapping is not the
 * segment: what the benchmark keeps for itself must not show up in the
 * allocator's figures or in the ownership check.
 *
 * THE BASELINE. --engine inproc runs the same key choice and value
 * handling against an unshared, unlocked open-addressing hash table in each
 * worker's own memory (preloaded by the worker itself, so no page is
 * shared copy-on-write): the difference is what sharing costs.
 *
 * VERIFY. With --verify a value carries the hash of its key, a version and
 * a checksum over both and a payload derived from them, so a reader knows
 * whether what it got is whole and belongs to the key it asked for. Writes
 * need versions that only grow per key: with several writers of one key
 * the order of "take a version" and "store it" could invert, so each key is
 * written only by one worker (key index modulo N) and versions come from a
 * per-worker counter in the shared mapping, which a worker's restarted
 * successor continues. Reads still go to every key. At the end the parent
 * reads every key back, runs the allocator's and every container's own
 * check, and matches the allocator's live blocks against the blocks the
 * containers own (the leak check of RECOVERY.md §1).
 *
 * TORTURE. With --torture the parent SIGKILLs a random worker every few
 * milliseconds and forks a successor into its place. A worker reports
 * every acknowledged write (a record of at most PIPE_BUF bytes, written
 * only after the call returned OK, so a write(2) to the pipe is atomic and
 * a record is either whole or absent) on a pipe that the parent holds
 * open, so the records outlive their writer. At the end the parent reaps
 * the dead (dkshmReap) and checks that every acknowledged write is there:
 * stored versions at least the acknowledged ones, every incr counted, every
 * acknowledged push popped or still queued, none delivered twice, and a
 * loss only where multilist.h allows one (a consumer killed after its pop
 * committed: at most one item per killed consumer).
 *
 * EXIT STATUS: 0 success; 1 verification or a check failed, a worker failed
 * or an operation returned an unexpected error; 2 usage error (nothing is
 * created); 3 the segment cannot be created or opened, or setting it up
 * (containers, preload) failed.
 *
 * The program links the library's internal build, like dkshm-tool: the
 * checks and block walks of the *Internal.h headers are not exported.
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
#include "toolUtil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
    EXIT_OPEN = 3,
};

#define PROG "dkshm-bench"
#define MAX_PROCS 64
#define MAX_KEYS 1000000000ull
#define MAX_VALUE (1u << 20)
#define MAX_SECONDS 86400.0
/* keyHash, version, checksum at the start of a verified value. */
#define HDR_BYTES 24
#define SAMPLE_EVERY 64
#define SAMPLE_CAP 16384
/* A bounded queue: producers faster than consumers wait instead of
 * filling the segment. */
#define QUEUE_CAP 4096
/* ... and no more bytes than this in it, nor in one process's live alloc
 * blocks: 1 MiB items must not make a run take gigabytes. */
#define QUEUE_BYTES (256ull << 20)
#define ALLOC_BYTES (32ull << 20)
#define QUEUE_WAIT_MS 20
#define ALLOC_RING 128
/* Messages per worker slot and from the parent before they are only
 * counted. */
#define WORKER_REPORTS 5
#define MAX_PROBLEMS 20
/* Torture: gaps between kills, and the bound on kills per second. */
#define KILL_GAP_MIN_US 2000
#define KILL_GAP_MAX_US 30000
#define KILLS_PER_SECOND 100
#define REAP_EVERY_NS (200ull * 1000000ull)

#define OBJ_DICT "dkshm-bench.dict"
#define OBJ_MAP "dkshm-bench.map"
#define OBJ_LIST "dkshm-bench.list"

/* ---- workloads ---------------------------------------------------------- */

enum { K_DICT, K_LIST, K_ALLOC, K_MAP };
enum { ENGINE_DKSHM, ENGINE_INPROC };

typedef struct workload {
    const char *name;
    int kind;     /* K_...: what it drives */
    int setPct;   /* dict and map: percent of writes */
    bool incr;    /* dict: incr of int64 counters */
    bool inproc;  /* --engine inproc supports it */
    bool torture; /* --torture supports it */
    bool preload; /* K keys are loaded first */
    const char *summary;
} workload;

static const workload workloads[] = {
    {"get", K_DICT, 0, false, true, false, true, "multidict get"},
    {"set", K_DICT, 100, false, true, true, true,
     "multidict set of existing keys"},
    {"mix95", K_DICT, 5, false, true, true, true, "95% get, 5% set"},
    {"mix50", K_DICT, 50, false, true, true, true, "50% get, 50% set"},
    {"incr", K_DICT, 0, true, true, true, true, "multidict incr of counters"},
    {"queue", K_LIST, 0, false, false, true, false, "multilist push and pop"},
    {"alloc", K_ALLOC, 0, false, false, false, false,
     "membound alloc and free"},
    {"ordered", K_MAP, 10, false, false, true, true,
     "multimap lookups, 10% upserts"},
};
#define NWORKLOADS (sizeof workloads / sizeof workloads[0])

typedef struct benchOpts { /* per process */
    char segment[DKSHM_NAME_MAX + 1];
    bool haveSegment;
    uint64_t size;
    bool haveSize;
    int procs;
    double seconds;
    uint64_t keys;
    size_t keySize;
    size_t valueSize;
    const workload *w;
    double zipf;
    bool verify, keep, json, torture;
    int engine;
} benchOpts;

/* ---- shared between the parent and the workers (anonymous mapping) ------ */

typedef struct slotShared { /* shared mapping; one per worker slot */
    uint64_t ops;           /* acknowledged operations, flushed every batch */
    uint64_t version;       /* last version handed out (survives its worker) */
    uint64_t seq;           /* queue producer: sequence numbers handed out */
    uint64_t pushed;        /* queue producer: acknowledged pushes */
    uint64_t errors;        /* verification failures and unexpected errors */
    uint64_t seen;          /* operations sampled, for the reservoir */
    uint64_t pad[2];        /* a cache line per slot: no false sharing */
} slotShared;

typedef struct tally { /* what one consumer saw of one producer */
    uint64_t count, sum, hash;
} tally;

typedef struct shared { /* shared mapping */
    uint32_t ready;     /* workers set up and waiting */
    uint32_t start;
    uint32_t stop;
    uint32_t pad[13];
    slotShared slot[MAX_PROCS];
    tally tallies[MAX_PROCS][MAX_PROCS]; /* [consumer][producer] */
    uint32_t samples[MAX_PROCS][SAMPLE_CAP];
} shared;

/* A torture record: what one worker had acknowledged. 24 bytes, far below
 * PIPE_BUF, so one write(2) puts it in the pipe whole or not at all. */
enum { REC_SET = 1, REC_INCR, REC_PUSH, REC_POP };
typedef struct record {
    uint32_t kind;
    uint32_t slot;  /* REC_PUSH, REC_POP: the producer */
    uint64_t key;   /* key index, or the producer's sequence number */
    uint64_t value; /* version (REC_SET) */
} record;

/* ---- zipf (Gray et al., "Quickly generating billion-record synthetic
 * databases", SIGMOD 1994) ------------------------------------------------ */

typedef struct zipfGen {
    uint64_t n;
    double theta, alpha, zetan, eta, halfPow;
} zipfGen;

/* zeta(n, theta) = sum 1/i^theta for i in 1..n: the first ten million
 * terms summed, the rest by the integral with its end correction (exact to
 * far better than the generator needs, and bounded in time for any n). */
static double zeta(uint64_t n, double theta) {
    uint64_t exact = n < 10000000u ? n : 10000000u;
    double s = 0;
    for (uint64_t i = 1; i <= exact; i++)
        s += pow((double)i, -theta);
    if (n > exact) {
        double a = (double)exact, b = (double)n;
        s += (pow(b, 1 - theta) - pow(a, 1 - theta)) / (1 - theta) +
             0.5 * (pow(b, -theta) - pow(a, -theta));
    }
    return s;
}

static void zipfInit(zipfGen *z, uint64_t n, double theta) {
    memset(z, 0, sizeof *z);
    z->n = n;
    z->theta = theta;
    if (theta <= 0 || n < 2)
        return;
    z->zetan = zeta(n, theta);
    double zeta2 = zeta(2, theta);
    z->alpha = 1.0 / (1.0 - theta);
    z->eta =
        (1.0 - pow(2.0 / (double)n, 1.0 - theta)) / (1.0 - zeta2 / z->zetan);
    z->halfPow = 1.0 + pow(0.5, theta);
}

/* ---- small helpers ------------------------------------------------------ */

static uint64_t nowNs(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64's finaliser: a bijection, so distinct indices give distinct
 * key prefixes. */
static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static inline uint64_t rngNext(uint64_t *s) { /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static inline uint64_t rngBelow(uint64_t *s, uint64_t n) {
    return (uint64_t)(((unsigned __int128)rngNext(s) * n) >> 64);
}

static inline double rngUnit(uint64_t *s) {
    return (double)(rngNext(s) >> 11) * 0x1.0p-53;
}

static uint64_t zipfNext(const zipfGen *z, uint64_t *rng) {
    if (z->zetan == 0)
        return rngBelow(rng, z->n);
    double u = rngUnit(rng), uz = u * z->zetan;
    if (uz < 1.0)
        return 0;
    if (uz < z->halfPow)
        return 1;
    uint64_t v =
        (uint64_t)((double)z->n * pow(z->eta * u - z->eta + 1.0, z->alpha));
    return v < z->n ? v : z->n - 1;
}

/* A key of KS bytes for index I: the first 8 bytes vary, the rest is a
 * fixed filler written once, so long keys cost hashing, not generating. */
static inline void keyFor(uint8_t *k, uint64_t i) {
    uint64_t w = mix64(i + 0x243f6a8885a308d3ull);
    memcpy(k, &w, 8);
}

static void keyFiller(uint8_t *k, size_t ks) {
    for (size_t j = 8; j < ks; j++)
        k[j] = (uint8_t)(0x5a + j * 7);
}

/* The checksum of a verified value: over its key hash and version and the
 * payload after the header. */
static uint64_t valueSum(const uint8_t *v, size_t vs) {
    return XXH3_64bits_withSeed(v + HDR_BYTES, vs - HDR_BYTES,
                                XXH3_64bits(v, 16));
}

static void fillValue(uint8_t *v, size_t vs, uint64_t keyHash,
                      uint64_t version) {
    memcpy(v, &keyHash, 8);
    memcpy(v + 8, &version, 8);
    uint64_t x = keyHash ^ (version * 0x9e3779b97f4a7c15ull);
    for (size_t o = HDR_BYTES; o < vs; o += 8) {
        uint64_t w = mix64(x + o);
        memcpy(v + o, &w, vs - o < 8 ? vs - o : 8);
    }
    uint64_t sum = valueSum(v, vs);
    memcpy(v + 16, &sum, 8);
}

/* NULL if V (LEN bytes) is a whole value of the key hashed to KEYHASH,
 * with its version in *VERSION; otherwise what is wrong with it. */
static const char *checkValue(const uint8_t *v, size_t len, size_t vs,
                              uint64_t keyHash, uint64_t *version) {
    if (len != vs)
        return "value of the wrong length";
    uint64_t kh, ver, sum;
    memcpy(&kh, v, 8);
    memcpy(&ver, v + 8, 8);
    memcpy(&sum, v + 16, 8);
    if (valueSum(v, vs) != sum)
        return "checksum mismatch (torn or damaged value)";
    if (kh != keyHash)
        return "value belongs to another key";
    *version = ver;
    return NULL;
}

/* Queue items carry their producer in place of a key hash. */
static inline uint64_t itemTag(uint32_t producer) {
    return 0x51554555ull << 32 | producer;
}

/* Items the queue holds at most, for items of VS bytes. */
static uint64_t queueCap(size_t vs) {
    uint64_t n = QUEUE_BYTES / (vs + 64);
    return n < 16 ? 16 : n > QUEUE_CAP ? QUEUE_CAP : n;
}

/* Blocks each alloc worker keeps live, for blocks of VS bytes. */
static int ringSize(size_t vs) {
    uint64_t n = ALLOC_BYTES / (vs ? vs : 1);
    return n < 4 ? 4 : n > ALLOC_RING ? ALLOC_RING : (int)n;
}

/* ---- the in-process baseline: an unshared, unlocked hash table ---------- */

typedef struct ipEntry { /* per process */
    uint32_t klen;
    uint32_t vlen;
    uint8_t bytes[]; /* key, then value */
} ipEntry;

typedef struct ipSlot {
    uint64_t hash;
    ipEntry *e;
} ipSlot;

typedef struct ipTable { /* per process: open addressing, linear probing */
    ipSlot *slots;
    uint64_t mask;
} ipTable;

static int ipInit(ipTable *t, uint64_t keys) {
    uint64_t n = 16;
    while (n < keys * 2)
        n *= 2;
    t->slots = calloc(n, sizeof *t->slots);
    t->mask = n - 1;
    return t->slots ? 0 : -1;
}

static ipEntry *ipFind(ipTable *t, const void *key, uint32_t klen, uint64_t h,
                       uint64_t *at) {
    for (uint64_t i = h & t->mask;; i = (i + 1) & t->mask) {
        ipSlot *s = &t->slots[i];
        if (!s->e) {
            *at = i;
            return NULL;
        }
        if (s->hash == h && s->e->klen == klen &&
            memcmp(s->e->bytes, key, klen) == 0) {
            *at = i;
            return s->e;
        }
    }
}

static int ipSet(ipTable *t, const void *key, uint32_t klen, const void *val,
                 uint32_t vlen) {
    uint64_t h = XXH3_64bits(key, klen), at;
    ipEntry *e = ipFind(t, key, klen, h, &at);
    if (e && e->vlen == vlen) {
        memcpy(e->bytes + klen, val, vlen);
        return DKSHM_OK;
    }
    ipEntry *n = malloc(sizeof *n + klen + vlen);
    if (!n)
        return DKSHM_FULL;
    n->klen = klen;
    n->vlen = vlen;
    memcpy(n->bytes, key, klen);
    memcpy(n->bytes + klen, val, vlen);
    free(e);
    t->slots[at] = (ipSlot){h, n};
    return DKSHM_OK;
}

static int ipGet(ipTable *t, const void *key, uint32_t klen, void *buf,
                 size_t cap, size_t *vlen) {
    uint64_t h = XXH3_64bits(key, klen), at;
    ipEntry *e = ipFind(t, key, klen, h, &at);
    if (!e)
        return DKSHM_NOTFOUND;
    *vlen = e->vlen;
    if (e->vlen > cap)
        return DKSHM_TOOBIG;
    memcpy(buf, e->bytes + klen, e->vlen);
    return DKSHM_OK;
}

static int ipIncr(ipTable *t, const void *key, uint32_t klen, int64_t delta) {
    uint64_t h = XXH3_64bits(key, klen), at;
    ipEntry *e = ipFind(t, key, klen, h, &at);
    if (!e)
        return ipSet(t, key, klen, &delta, 8);
    if (e->vlen != 8)
        return DKSHM_TYPE;
    int64_t v;
    memcpy(&v, e->bytes + klen, 8);
    v += delta;
    memcpy(e->bytes + klen, &v, 8);
    return DKSHM_OK;
}

/* ---- the run: what the parent sets up and the workers inherit ----------- */

typedef struct run { /* per process; workers inherit it through fork */
    benchOpts o;
    shared *sh;
    uint64_t *ack; /* shared: last acknowledged version per key (verify,
                      no torture) */
    int recordFd;  /* torture: the pipe's write end; -1 otherwise */
    int readFd;    /* torture: the parent's read end */
    pid_t parent;
    dkshm *s;
    zipfGen zipf;
    int producers;   /* queue: slots below this push, the others pop */
    bool own;        /* writes go to owned keys only (verify on dkshm) */
    bool created;    /* the segment is ours (made by this run) */
    bool createdMap; /* the multimap was made by this run */
} run;

typedef struct worker { /* per process: one worker */
    run *r;
    int slot;
    slotShared *me;
    uint64_t rng;
    uint8_t *key, *val, *buf;
    size_t bufCap;
    multidict *d;
    multimap *m;
    multilist *l;
    membound *mb;
    ipTable t;
    bool haveTable;
    uint64_t *myVersion; /* verify: last version written per owned key */
    uint64_t *localAck;  /* inproc verify: last version per key */
    bool pending;        /* queue producer: a sequence number to retry */
    uint64_t pendingSeq;
    int64_t lastSeq[MAX_PROCS]; /* queue consumer: FIFO per producer */
    dkoff ring[ALLOC_RING];
    uint64_t ringStamp[ALLOC_RING];
    uint64_t stamps;
} worker;

static volatile sig_atomic_t interrupted;

static void onInterrupt(int sig) {
    (void)sig;
    interrupted = 1;
}

static void workerProblem(worker *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void workerProblem(worker *w, const char *fmt, ...) {
    uint64_t before = __atomic_fetch_add(&w->me->errors, 1, __ATOMIC_RELAXED);
    if (before >= WORKER_REPORTS)
        return;
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": worker %d (pid %d): %s\n", w->slot, (int)getpid(),
            msg);
    if (before + 1 == WORKER_REPORTS)
        fprintf(stderr, PROG ": worker %d: further problems only counted\n",
                w->slot);
}

/* An operation failed with an error the workload never expects. */
static int opFailed(worker *w, const char *what, uint64_t k, int rc) {
    workerProblem(w, "%s of key %" PRIu64 ": %s", what, k, dkshmErrName(rc));
    return -1;
}

static void ackWrite(worker *w, uint32_t kind, uint32_t slot, uint64_t key,
                     uint64_t value) {
    if (w->r->recordFd < 0)
        return;
    record rec = {kind, slot, key, value};
    ssize_t n;
    while ((n = write(w->r->recordFd, &rec, sizeof rec)) < 0 &&
           errno == EINTR) {
    }
    if (n != (ssize_t)sizeof rec)
        _exit(EXIT_FAILED); /* the parent is gone: nobody to report to */
}

static void sample(worker *w, uint64_t ns) {
    uint64_t seen = __atomic_fetch_add(&w->me->seen, 1, __ATOMIC_RELAXED);
    uint32_t v = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
    uint32_t *s = w->r->sh->samples[w->slot];
    if (seen < SAMPLE_CAP)
        s[seen] = v;
    else {
        uint64_t j = rngBelow(&w->rng, seen + 1);
        if (j < SAMPLE_CAP)
            s[j] = v;
    }
}

static inline uint64_t pickKey(worker *w) {
    return zipfNext(&w->r->zipf, &w->rng);
}

/* Move K to a key this worker owns (the same residue modulo N); false when
 * it owns none (more workers than keys). */
static bool ownKey(worker *w, uint64_t *k) {
    const run *r = w->r;
    if (!r->own)
        return true;
    uint64_t p = (uint64_t)r->o.procs, slot = (uint64_t)w->slot;
    if (slot >= r->o.keys)
        return false;
    uint64_t base = *k - *k % p + slot;
    if (base >= r->o.keys)
        base -= p;
    *k = base;
    return true;
}

/* ---- operations: each returns 1 when it did one, 0 when it only waited,
 * -1 on a failure the worker cannot go on from ----------------------------- */

static int doGet(worker *w, uint64_t k) {
    const benchOpts *o = &w->r->o;
    keyFor(w->key, k);
    size_t len = 0;
    int rc;
    if (o->engine == ENGINE_INPROC)
        rc =
            ipGet(&w->t, w->key, (uint32_t)o->keySize, w->buf, w->bufCap, &len);
    else if (o->w->kind == K_MAP)
        rc = multimapLookup(w->m, w->key, o->keySize, w->buf, w->bufCap, &len);
    else
        rc = multidictGet(w->d, w->key, o->keySize, w->buf, w->bufCap, &len);
    if (rc != DKSHM_OK)
        return opFailed(w, "get", k, rc);
    if (o->verify) {
        uint64_t ver = 0;
        const char *why = checkValue(w->buf, len, o->valueSize,
                                     XXH3_64bits(w->key, o->keySize), &ver);
        if (why)
            workerProblem(w, "get of key %" PRIu64 ": %s", k, why);
        else if (w->myVersion && k % (uint64_t)o->procs == (uint64_t)w->slot &&
                 ver < w->myVersion[k / (uint64_t)o->procs])
            workerProblem(w,
                          "get of key %" PRIu64 ": version %" PRIu64
                          ", but this process wrote %" PRIu64,
                          k, ver, w->myVersion[k / (uint64_t)o->procs]);
    }
    return 1;
}

static int doSet(worker *w, uint64_t k) {
    const benchOpts *o = &w->r->o;
    if (!ownKey(w, &k))
        return doGet(w, k);
    keyFor(w->key, k);
    uint64_t ver = __atomic_add_fetch(&w->me->version, 1, __ATOMIC_RELAXED);
    if (o->verify)
        fillValue(w->val, o->valueSize, XXH3_64bits(w->key, o->keySize), ver);
    else if (o->valueSize >= 8)
        memcpy(w->val, &ver, 8); /* a new value each time */
    int rc;
    if (o->engine == ENGINE_INPROC)
        rc = ipSet(&w->t, w->key, (uint32_t)o->keySize, w->val,
                   (uint32_t)o->valueSize);
    else if (o->w->kind == K_MAP)
        rc = multimapInsert(w->m, w->key, o->keySize, w->val, o->valueSize,
                            MULTIMAP_UPSERT);
    else
        rc = multidictSet(w->d, w->key, o->keySize, w->val, o->valueSize);
    if (rc != DKSHM_OK)
        return opFailed(w, "set", k, rc);
    ackWrite(w, REC_SET, 0, k, ver);
    if (w->r->ack)
        w->r->ack[k] = ver; /* only the owner writes this key */
    if (w->localAck)
        w->localAck[k] = ver;
    if (w->myVersion)
        w->myVersion[k / (uint64_t)o->procs] = ver;
    return 1;
}

static int doIncr(worker *w, uint64_t k) {
    const benchOpts *o = &w->r->o;
    keyFor(w->key, k);
    int rc;
    if (o->engine == ENGINE_INPROC)
        rc = ipIncr(&w->t, w->key, (uint32_t)o->keySize, 1);
    else
        rc = multidictIncr(w->d, w->key, o->keySize, 1, NULL);
    if (rc != DKSHM_OK)
        return opFailed(w, "incr", k, rc);
    ackWrite(w, REC_INCR, 0, k, 1);
    return 1;
}

static int opDict(worker *w) {
    const workload *wl = w->r->o.w;
    uint64_t k = pickKey(w);
    if (wl->incr)
        return doIncr(w, k);
    if (wl->setPct == 100 ||
        (wl->setPct > 0 && rngBelow(&w->rng, 100) < (uint64_t)wl->setPct))
        return doSet(w, k);
    return doGet(w, k);
}

static int queuePush(worker *w, uint64_t timeoutMs) {
    const benchOpts *o = &w->r->o;
    if (!w->pending) {
        /* Taken before the push: a successor never reuses a number that a
         * killed worker may have pushed. */
        w->pendingSeq = __atomic_fetch_add(&w->me->seq, 1, __ATOMIC_RELAXED);
        w->pending = true;
        uint64_t tag = itemTag((uint32_t)w->slot);
        if (o->verify)
            fillValue(w->val, o->valueSize, tag, w->pendingSeq);
        else {
            memcpy(w->val, &tag, 8);
            memcpy(w->val + 8, &w->pendingSeq, 8);
        }
    }
    int rc =
        multilistPush(w->l, MULTILIST_TAIL, w->val, o->valueSize, timeoutMs);
    if (rc == DKSHM_TIMEDOUT || (rc == DKSHM_FULL && timeoutMs == 0))
        return 0; /* no room yet: the same item again next time */
    if (rc != DKSHM_OK)
        return opFailed(w, "push", w->pendingSeq, rc);
    w->pending = false;
    __atomic_add_fetch(&w->me->pushed, 1, __ATOMIC_RELAXED);
    ackWrite(w, REC_PUSH, (uint32_t)w->slot, w->pendingSeq, 0);
    return 1;
}

static int queuePop(worker *w, uint64_t timeoutMs) {
    const run *r = w->r;
    const benchOpts *o = &r->o;
    size_t len = 0;
    int rc =
        multilistPop(w->l, MULTILIST_HEAD, w->buf, w->bufCap, &len, timeoutMs);
    if (rc == DKSHM_TIMEDOUT || rc == DKSHM_NOTFOUND)
        return 0;
    if (rc != DKSHM_OK)
        return opFailed(w, "pop", 0, rc);
    uint64_t tag, seq;
    if (len < 16) {
        workerProblem(w, "popped an item of %zu bytes", len);
        return 1;
    }
    memcpy(&tag, w->buf, 8);
    memcpy(&seq, w->buf + 8, 8);
    uint32_t p = (uint32_t)tag;
    int producers = r->producers ? r->producers : 1;
    if (tag >> 32 != itemTag(0) >> 32 || p >= (uint32_t)producers) {
        workerProblem(w, "popped an item with a bad producer tag 0x%" PRIx64,
                      tag);
        return 1;
    }
    if (o->verify) {
        uint64_t ver;
        const char *why = checkValue(w->buf, len, o->valueSize, tag, &ver);
        if (why) {
            workerProblem(w, "item %" PRIu64 " of producer %" PRIu32 ": %s",
                          seq, p, why);
            return 1;
        }
    }
    if (w->lastSeq[p] >= 0 && (int64_t)seq <= w->lastSeq[p])
        workerProblem(w,
                      "item %" PRIu64 " of producer %" PRIu32
                      " after item %" PRId64 ": not FIFO",
                      seq, p, w->lastSeq[p]);
    w->lastSeq[p] = (int64_t)seq;
    if (r->recordFd < 0) {
        tally *t = &r->sh->tallies[w->slot][p];
        t->count++;
        t->sum += seq;
        t->hash ^= mix64(seq);
    }
    ackWrite(w, REC_POP, p, seq, 0);
    return 1;
}

static int opQueue(worker *w) {
    const run *r = w->r;
    if (r->producers == 0) {
        /* One process: each operation is one item's round trip. */
        int rc = queuePush(w, MULTILIST_NOWAIT);
        if (rc <= 0)
            return rc;
        return queuePop(w, MULTILIST_NOWAIT);
    }
    if (w->slot < r->producers)
        return queuePush(w, QUEUE_WAIT_MS);
    return queuePop(w, QUEUE_WAIT_MS);
}

static void stampBlock(worker *w, int i) {
    const benchOpts *o = &w->r->o;
    uint8_t *p = dkshmPtr(w->r->s, w->ring[i]);
    uint64_t base = mix64(w->ring[i] ^ ((uint64_t)w->slot << 56) ^ ++w->stamps);
    w->ringStamp[i] = base;
    if (!o->verify) {
        memcpy(p, &base, o->valueSize < 8 ? o->valueSize : 8);
        return;
    }
    for (size_t off = 0; off < o->valueSize; off += 8) {
        uint64_t v = base + off;
        memcpy(p + off, &v, o->valueSize - off < 8 ? o->valueSize - off : 8);
    }
}

/* With --verify a block must still hold what this worker wrote into it:
 * anything else means another process was handed the same memory. */
static void checkBlock(worker *w, int i) {
    const benchOpts *o = &w->r->o;
    if (!o->verify)
        return;
    const uint8_t *p = dkshmPtr(w->r->s, w->ring[i]);
    for (size_t off = 0; off < o->valueSize; off += 8) {
        uint64_t v = w->ringStamp[i] + off, got = 0;
        size_t n = o->valueSize - off < 8 ? o->valueSize - off : 8;
        memcpy(&got, p + off, n);
        if (memcmp(&got, &v, n) != 0) {
            workerProblem(w,
                          "block 0x%" PRIx64 " changed at byte %zu while "
                          "allocated to this process",
                          w->ring[i], off);
            return;
        }
    }
}

static int opAlloc(worker *w) {
    int i = (int)rngBelow(&w->rng, (uint64_t)ringSize(w->r->o.valueSize));
    if (w->ring[i]) {
        checkBlock(w, i);
        int rc = memboundFreeOff(w->mb, w->ring[i]);
        if (rc != DKSHM_OK)
            return opFailed(w, "free", w->ring[i], rc);
        w->ring[i] = 0;
    }
    int rc = memboundAllocOff(w->mb, w->r->o.valueSize, &w->ring[i]);
    if (rc != DKSHM_OK) {
        w->ring[i] = 0;
        return opFailed(w, "alloc", i, rc);
    }
    stampBlock(w, i);
    return 1;
}

/* ---- the worker --------------------------------------------------------- */

/* Preload of the in-process table, as the parent preloads the segment. */
static int preloadInproc(worker *w) {
    const benchOpts *o = &w->r->o;
    if (ipInit(&w->t, o->keys) != 0)
        return -1;
    w->haveTable = true;
    for (uint64_t k = 0; k < o->keys; k++) {
        keyFor(w->key, k);
        int rc;
        if (o->w->incr) {
            int64_t zero = 0;
            rc = ipSet(&w->t, w->key, (uint32_t)o->keySize, &zero, 8);
        } else {
            if (o->verify)
                fillValue(w->val, o->valueSize, XXH3_64bits(w->key, o->keySize),
                          1);
            rc = ipSet(&w->t, w->key, (uint32_t)o->keySize, w->val,
                       (uint32_t)o->valueSize);
        }
        if (rc != DKSHM_OK)
            return -1;
    }
    return 0;
}

/* Inproc verification: each worker checks its own table. */
static void verifyInproc(worker *w, uint64_t ops) {
    const benchOpts *o = &w->r->o;
    int64_t sum = 0;
    for (uint64_t k = 0; k < o->keys; k++) {
        keyFor(w->key, k);
        size_t len = 0;
        int rc =
            ipGet(&w->t, w->key, (uint32_t)o->keySize, w->buf, w->bufCap, &len);
        if (rc != DKSHM_OK) {
            workerProblem(w, "read back key %" PRIu64 ": %s", k,
                          dkshmErrName(rc));
            continue;
        }
        if (o->w->incr) {
            int64_t v;
            memcpy(&v, w->buf, 8);
            sum += v;
            continue;
        }
        uint64_t ver = 0;
        const char *why = checkValue(w->buf, len, o->valueSize,
                                     XXH3_64bits(w->key, o->keySize), &ver);
        if (why)
            workerProblem(w, "read back key %" PRIu64 ": %s", k, why);
        else if (ver != w->localAck[k])
            workerProblem(w,
                          "read back key %" PRIu64 ": version %" PRIu64
                          ", last written %" PRIu64,
                          k, ver, w->localAck[k]);
    }
    if (o->w->incr && (uint64_t)sum != ops)
        workerProblem(w,
                      "counters sum to %" PRId64 ", %" PRIu64
                      " increments were acknowledged",
                      sum, ops);
}

static int openWorker(worker *w) {
    run *r = w->r;
    const benchOpts *o = &r->o;
    int rc = DKSHM_OK;
    if (o->engine == ENGINE_INPROC) {
        if (preloadInproc(w) != 0) {
            workerProblem(w, "out of memory for the in-process table");
            return -1;
        }
        return 0;
    }
    switch (o->w->kind) {
    case K_DICT:
        rc = multidictOpen(r->s, OBJ_DICT, NULL, 0, &w->d);
        break;
    case K_MAP:
        rc = multimapOpen(r->s, OBJ_MAP, NULL, 0, &w->m);
        break;
    case K_LIST:
        rc = multilistOpen(r->s, OBJ_LIST, NULL, 0, &w->l);
        break;
    case K_ALLOC:
        w->mb = memboundForSegment(r->s);
        rc = w->mb ? DKSHM_OK : DKSHM_INVALID;
        break;
    }
    if (rc != DKSHM_OK) {
        workerProblem(w, "cannot open the container: %s", dkshmStrerror(rc));
        return -1;
    }
    return 0;
}

static void closeWorker(worker *w) {
    if (w->mb) {
        for (int i = 0; i < ALLOC_RING; i++)
            if (w->ring[i]) {
                checkBlock(w, i);
                memboundFreeOff(w->mb, w->ring[i]);
            }
    }
    multidictClose(w->d);
    multimapClose(w->m);
    multilistClose(w->l);
    if (w->r->s)
        dkshmDetach(w->r->s);
}

static int workerMain(run *r, int slot, bool restarted) {
    /* The parent coordinates stops: a ^C reaches the whole process group,
     * and a worker that dies on it would look like a failure. A parent
     * that dies takes its workers with it. */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != r->parent)
        return EXIT_FAILED;
    const benchOpts *o = &r->o;
    worker w;
    memset(&w, 0, sizeof w);
    w.r = r;
    w.slot = slot;
    w.me = &r->sh->slot[slot];
    w.rng = mix64((uint64_t)getpid() * 0x100000001b3ull ^ nowNs() ^
                  ((uint64_t)slot << 40)) |
            1;
    for (int i = 0; i < MAX_PROCS; i++)
        w.lastSeq[i] = -1;
    w.bufCap = o->valueSize + 64;
    w.key = calloc(1, o->keySize);
    w.val = calloc(1, o->valueSize + 8);
    w.buf = calloc(1, w.bufCap);
    if (!w.key || !w.val || !w.buf) {
        workerProblem(&w, "out of memory");
        return EXIT_FAILED;
    }
    keyFiller(w.key, o->keySize);
    for (size_t i = 0; i < o->valueSize; i++)
        w.val[i] = (uint8_t)(i * 13 + 1);
    if (o->verify && o->w->kind != K_LIST && o->w->kind != K_ALLOC &&
        !o->w->incr) {
        if (o->engine == ENGINE_INPROC) {
            w.localAck = malloc(o->keys * sizeof *w.localAck);
            if (w.localAck)
                for (uint64_t k = 0; k < o->keys; k++)
                    w.localAck[k] = 1;
        } else {
            w.myVersion =
                calloc(o->keys / (uint64_t)o->procs + 1, sizeof *w.myVersion);
        }
        if (!w.localAck && !w.myVersion) {
            workerProblem(&w, "out of memory");
            return EXIT_FAILED;
        }
    }
    int status = EXIT_OK;
    if (openWorker(&w) != 0)
        return EXIT_FAILED;
    if (!restarted) {
        __atomic_add_fetch(&r->sh->ready, 1, __ATOMIC_RELEASE);
        while (!__atomic_load_n(&r->sh->start, __ATOMIC_ACQUIRE) &&
               !__atomic_load_n(&r->sh->stop, __ATOMIC_RELAXED))
            usleep(200);
    }
    int (*op)(worker *) = o->w->kind == K_DICT   ? opDict
                          : o->w->kind == K_MAP  ? opDict
                          : o->w->kind == K_LIST ? opQueue
                                                 : opAlloc;
    uint64_t ops = 0;
    for (;;) {
        uint64_t batch = 0;
        for (int b = 0; b < SAMPLE_EVERY; b++) {
            int rc;
            if (b == 0) {
                uint64_t t0 = nowNs();
                rc = op(&w);
                uint64_t t1 = nowNs();
                if (rc > 0)
                    sample(&w, t1 - t0);
            } else {
                rc = op(&w);
            }
            if (rc < 0) {
                status = EXIT_FAILED;
                break;
            }
            batch += (uint64_t)rc;
        }
        ops += batch;
        __atomic_add_fetch(&w.me->ops, batch, __ATOMIC_RELAXED);
        if (status != EXIT_OK ||
            __atomic_load_n(&r->sh->stop, __ATOMIC_RELAXED))
            break;
    }
    if (w.haveTable && o->verify && status == EXIT_OK)
        verifyInproc(&w, ops);
    closeWorker(&w);
    /* No frees: the worker leaves with _exit, and its table may be large. */
    return status;
}

/* ---- the parent: options ------------------------------------------------ */

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: " PROG " [--segment NAME] [--size SIZE] [--procs N] "
        "[--seconds T]\n"
        "                   [--keys K] [--key-size B] [--value-size B]\n"
        "                   [--workload get|set|mix95|mix50|incr|queue|alloc|"
        "ordered]\n"
        "                   [--zipf THETA] [--verify] [--keep] [--json]\n"
        "                   [--engine dkshm|inproc] [--torture]\n"
        "\n"
        "Runs a workload against dkshm's containers from N forked "
        "processes for T\nseconds and prints operations per second and "
        "latency percentiles.\n"
        "\n"
        "  --segment NAME   attach the existing segment NAME (default: "
        "create a\n"
        "                   private one, removed at the end)\n"
        "  --size SIZE      capacity of the segment created (e.g. 256M; "
        "default: from\n"
        "                   the keys and sizes, at least 64M)\n"
        "  --procs N        worker processes, 1..%d (default 2)\n"
        "  --seconds T      length of the run, e.g. 0.5 (default 1)\n"
        "  --keys K         keys preloaded (default 100000)\n"
        "  --key-size B     bytes per key, 8..%u (default 16)\n"
        "  --value-size B   bytes per value, queue item or block, up to %u "
        "(default 64)\n"
        "  --workload W     get, set, mix95, mix50, incr, queue, alloc, "
        "ordered\n"
        "                   (default get)\n"
        "  --zipf THETA     zipfian key choice, 0 <= THETA < 1 (0: uniform)\n"
        "  --verify         check every value read, and everything at the "
        "end\n"
        "  --keep           do not remove the segment created\n"
        "  --json           print one JSON document\n"
        "  --engine E       dkshm (default) or inproc: an unshared "
        "in-process hash\n"
        "                   table in each process (get, set, mix*, incr "
        "only)\n"
        "  --torture        SIGKILL and restart workers at random during "
        "the run,\n"
        "                   then verify every acknowledged write (set, "
        "mix*, incr,\n"
        "                   queue, ordered)\n"
        "  --version        print the version\n"
        "\n"
        "Exit status: 0 ok, 1 verification or a check failed, 2 usage, 3 "
        "the segment\ncannot be created, opened or set up.\n",
        MAX_PROCS, MULTIDICT_KEY_MAX, MAX_VALUE);
}

static int usageError(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static int usageError(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs(PROG ": ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fputs("Try '" PROG " --help'.\n", stderr);
    return EXIT_USAGE;
}

/* A finite decimal number, the whole string. */
static int parseDouble(const char *s, double *out) {
    if (!s || !*s || *s == ' ' || *s == '\t')
        return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !end || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

typedef struct optDef {
    const char *name;
    bool hasArg;
} optDef;

static const optDef optDefs[] = {
    {"segment", true},    {"size", true},     {"procs", true},
    {"seconds", true},    {"keys", true},     {"key-size", true},
    {"value-size", true}, {"workload", true}, {"zipf", true},
    {"verify", false},    {"keep", false},    {"json", false},
    {"engine", true},     {"torture", false}, {"help", false},
    {"version", false},
};
#define NOPTS (sizeof optDefs / sizeof optDefs[0])

/* Fill O from ARGV. Returns -1 to run, or an exit status (after --help,
 * --version or a usage error). Nothing is created here. */
static int parseOptions(int argc, char **argv, benchOpts *o) {
    memset(o, 0, sizeof *o);
    o->procs = 2;
    o->seconds = 1.0;
    o->keys = 100000;
    o->keySize = 16;
    o->valueSize = 64;
    o->w = &workloads[0];
    o->engine = ENGINE_DKSHM;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0) {
            usage(stdout);
            return EXIT_OK;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0')
            return usageError("unexpected argument '%s'", a);
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        size_t k = 0;
        for (; k < NOPTS; k++)
            if (strlen(optDefs[k].name) == len &&
                strncmp(optDefs[k].name, name, len) == 0)
                break;
        if (k == NOPTS)
            return usageError("unknown option '--%.*s'", (int)len, name);
        const char *v = NULL;
        if (optDefs[k].hasArg) {
            if (eq)
                v = eq + 1;
            else if (i + 1 < argc)
                v = argv[++i];
            else
                return usageError("option '--%s' needs a value",
                                  optDefs[k].name);
        } else if (eq) {
            return usageError("option '--%s' takes no value", optDefs[k].name);
        }
        const char *opt = optDefs[k].name;
        uint64_t u;
        double d;
        if (!strcmp(opt, "help")) {
            usage(stdout);
            return EXIT_OK;
        } else if (!strcmp(opt, "version")) {
            printf(PROG " (dkshm) %s\n", dkshmVersion());
            return EXIT_OK;
        } else if (!strcmp(opt, "segment")) {
            size_t n = strlen(v);
            if (n == 0 || n + 2 > sizeof o->segment)
                return usageError("--segment: invalid segment name (empty or "
                                  "longer than %d characters)",
                                  DKSHM_NAME_MAX - 1);
            snprintf(o->segment, sizeof o->segment, "%s%s",
                     v[0] == '/' ? "" : "/", v);
            if (dkshmValidateName(o->segment) != DKSHM_OK) {
                char esc[96];
                escapeBytes(v, n, esc, sizeof esc);
                return usageError("--segment: invalid segment name \"%s\" "
                                  "(want [A-Za-z0-9._-])",
                                  esc);
            }
            o->haveSegment = true;
        } else if (!strcmp(opt, "size")) {
            if (parseSize(v, &o->size) != 0 || o->size < DKSHM_MIN_CAPACITY ||
                o->size > DKSHM_MAX_CAPACITY)
                return usageError("--size: '%s' is not a size from 256K to "
                                  "64T (e.g. 512M, 2G)",
                                  v);
            o->haveSize = true;
        } else if (!strcmp(opt, "procs")) {
            if (parseU64(v, &u) != 0 || u < 1 || u > MAX_PROCS)
                return usageError("--procs: '%s' is not a number from 1 to %d",
                                  v, MAX_PROCS);
            o->procs = (int)u;
        } else if (!strcmp(opt, "seconds")) {
            if (parseDouble(v, &d) != 0 || !(d > 0) || d > MAX_SECONDS)
                return usageError("--seconds: '%s' is not a duration in "
                                  "seconds above 0 and at most %.0f",
                                  v, MAX_SECONDS);
            o->seconds = d;
        } else if (!strcmp(opt, "keys")) {
            if (parseU64(v, &u) != 0 || u < 1 || u > MAX_KEYS)
                return usageError("--keys: '%s' is not a number from 1 to "
                                  "%llu",
                                  v, (unsigned long long)MAX_KEYS);
            o->keys = u;
        } else if (!strcmp(opt, "key-size")) {
            if (parseU64(v, &u) != 0 || u < 8 || u > MULTIDICT_KEY_MAX ||
                u > MULTIMAP_KEY_MAX)
                return usageError("--key-size: '%s' is not a number of bytes "
                                  "from 8 to %u",
                                  v, MULTIDICT_KEY_MAX);
            o->keySize = (size_t)u;
        } else if (!strcmp(opt, "value-size")) {
            if (parseU64(v, &u) != 0 || u > MAX_VALUE)
                return usageError("--value-size: '%s' is not a number of "
                                  "bytes from 0 to %u",
                                  v, MAX_VALUE);
            o->valueSize = (size_t)u;
        } else if (!strcmp(opt, "workload")) {
            o->w = NULL;
            for (size_t j = 0; j < NWORKLOADS; j++)
                if (!strcmp(v, workloads[j].name))
                    o->w = &workloads[j];
            if (!o->w) {
                char esc[64];
                escapeBytes(v, strlen(v), esc, sizeof esc);
                return usageError("--workload: unknown workload \"%s\" (get, "
                                  "set, mix95, mix50, incr, queue, alloc, "
                                  "ordered)",
                                  esc);
            }
        } else if (!strcmp(opt, "zipf")) {
            if (parseDouble(v, &d) != 0 || d < 0 || d >= 1)
                return usageError("--zipf: '%s' is not a number from 0 to "
                                  "below 1",
                                  v);
            o->zipf = d;
        } else if (!strcmp(opt, "engine")) {
            if (!strcmp(v, "dkshm"))
                o->engine = ENGINE_DKSHM;
            else if (!strcmp(v, "inproc"))
                o->engine = ENGINE_INPROC;
            else {
                char esc[64];
                escapeBytes(v, strlen(v), esc, sizeof esc);
                return usageError("--engine: unknown engine \"%s\" (dkshm, "
                                  "inproc)",
                                  esc);
            }
        } else if (!strcmp(opt, "verify")) {
            o->verify = true;
        } else if (!strcmp(opt, "keep")) {
            o->keep = true;
        } else if (!strcmp(opt, "json")) {
            o->json = true;
        } else if (!strcmp(opt, "torture")) {
            o->torture = true;
        }
    }
    const workload *w = o->w;
    if (o->engine == ENGINE_INPROC) {
        if (!w->inproc)
            return usageError("--engine inproc runs get, set, mix95, mix50 "
                              "and incr, not %s",
                              w->name);
        if (o->torture)
            return usageError("--torture needs --engine dkshm");
        if (o->haveSegment || o->haveSize || o->keep)
            return usageError("--segment, --size and --keep need --engine "
                              "dkshm");
    }
    if (o->haveSegment && o->haveSize)
        return usageError("--size sets the capacity of a segment " PROG
                          " creates: not with --segment");
    if (o->torture) {
        if (!w->torture)
            return usageError("--torture runs set, mix95, mix50, incr, queue "
                              "and ordered, not %s",
                              w->name);
        o->verify = true; /* what torture checks is what verify checks */
    }
    if (w->incr) {
        o->valueSize = 8; /* counters are int64: --value-size does not apply */
    } else if (w->kind == K_LIST) {
        if (o->valueSize < HDR_BYTES)
            return usageError("--value-size: queue items carry a %d-byte "
                              "header: at least %d",
                              HDR_BYTES, HDR_BYTES);
    } else if (w->kind == K_ALLOC) {
        if (o->valueSize == 0)
            return usageError("--value-size: alloc needs blocks of at least "
                              "1 byte");
    } else if (o->verify && o->valueSize < HDR_BYTES) {
        return usageError("--value-size: verified values carry a %d-byte "
                          "header: at least %d",
                          HDR_BYTES, HDR_BYTES);
    }
    return -1;
}

/* ---- the parent: the segment -------------------------------------------- */

static uint64_t roundUp8(uint64_t v) {
    return (v + 7) & ~7ull;
}

/* A generous capacity for the workload: the segment is sparse, so room
 * that is never used costs nothing, while too little fails the run. */
static uint64_t defaultSize(const benchOpts *o) {
    const workload *w = o->w;
    double need = 0;
    double ks = (double)roundUp8(o->keySize),
           vs = (double)roundUp8(o->valueSize);
    switch (w->kind) {
    case K_DICT:
        /* Entry header 32 + key + value, slab rounding, the slot tables,
         * and a replaced entry in flight per key at worst. */
        need = (double)o->keys * (2.0 * (32 + ks + vs) + 64);
        break;
    case K_MAP:
        need = (double)o->keys * (2.0 * (16 + ks + vs) + 128 + ks);
        break;
    case K_LIST:
        need = (double)(queueCap(o->valueSize) + 2048) * (vs + 64) * 2.0;
        break;
    case K_ALLOC: {
        double b = 16;
        while (b < (double)o->valueSize)
            b *= 2;
        need = (double)o->procs * ringSize(o->valueSize) * b * 2.0;
        break;
    }
    }
    need += 64.0 * 1024 * 1024;
    if (need > (double)DKSHM_MAX_CAPACITY)
        return DKSHM_MAX_CAPACITY;
    uint64_t size = (uint64_t)need;
    return (size + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
}

typedef struct results { /* per process: the parent's findings */
    double elapsed;
    uint64_t preloadNs;
    uint64_t ops[MAX_PROCS];
    uint64_t opsTotal; /* pops for the queue */
    uint64_t samples;
    double p50, p99, p999;
    bool verified; /* a verification ran */
    uint64_t problems;
    char *problem[MAX_PROBLEMS];
    uint64_t checked; /* keys or items verified at the end */
    bool ownershipChecked;
    char ownershipNote[160];
    uint64_t workerErrors;
    uint64_t workerFailures;
    uint64_t kills, restarts, consumerKills;
    uint64_t ackedWrites, ackedPops, lost, reaped, reapedDuring;
    uint64_t badRecords;
    bool runFailed; /* setup, fork or a worker failed */
} results;

static void problem(results *res, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void problem(results *res, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    if (res->problems < MAX_PROBLEMS) {
        res->problem[res->problems] = msg;
        fprintf(stderr, PROG ": verify: %s\n", msg);
    } else {
        free(msg);
    }
    res->problems++;
}

static void setupError(const benchOpts *o, const char *what, int rc,
                       const char *detail) {
    fprintf(stderr, PROG ": %s%s%s: %s%s%s\n", what, o->segment[0] ? " " : "",
            o->segment, dkshmStrerror(rc), detail && *detail ? ": " : "",
            detail ? detail : "");
    if (o->json) {
        jsonOut j;
        jsonInit(&j, stdout);
        jsonObjOpen(&j, NULL);
        jsonStr(&j, "segment", o->segment);
        jsonStr(&j, "error", dkshmErrName(rc));
        jsonStr(&j, "message", dkshmStrerror(rc));
        char msg[256];
        snprintf(msg, sizeof msg, "%s%s%s", what, detail && *detail ? ": " : "",
                 detail ? detail : "");
        jsonStr(&j, "detail", msg);
        jsonU64(&j, "exitStatus", EXIT_OPEN);
        jsonObjClose(&j);
        jsonEnd(&j);
    }
}

typedef struct handles { /* per process: the parent's container handles */
    multidict *d;
    multimap *m;
    multilist *l;
} handles;

static int openSegment(run *r) {
    benchOpts *o = &r->o;
    int rc;
    if (o->haveSegment) {
        rc = dkshmAttach(o->segment, 0, &r->s);
        if (rc != DKSHM_OK) {
            setupError(o, "cannot open segment", rc,
                       rc == DKSHM_NOTFOUND ? "no such segment" : NULL);
            return EXIT_OPEN;
        }
        return -1;
    }
    snprintf(o->segment, sizeof o->segment, "/dkshm-bench-%d", (int)getpid());
    if (!o->haveSize)
        o->size = defaultSize(o);
    /* Every restarted torture worker takes a table slot until it is
     * reaped: the largest table. EPHEMERAL: if this run dies, `dkshm-tool
     * reap --orphans` may remove the segment. */
    dkshmOptions so = {
        .mode = 0600, .maxProcs = DKSHM_MAX_PROCS, .flags = DKSHM_EPHEMERAL};
    rc = dkshmCreate(o->segment, o->size, &so, &r->s);
    if (rc != DKSHM_OK) {
        setupError(o, "cannot create segment", rc,
                   rc == DKSHM_SYSTEM ? strerror(errno) : NULL);
        return EXIT_OPEN;
    }
    r->created = true;
    return -1;
}

static int preloadDkshm(run *r, handles *h, results *res) {
    const benchOpts *o = &r->o;
    const workload *w = o->w;
    int rc = DKSHM_OK;
    uint32_t flags = MULTIDICT_CREATE;
    switch (w->kind) {
    case K_DICT:
        rc = multidictOpen(r->s, OBJ_DICT, NULL, flags, &h->d);
        if (rc == DKSHM_OK && !r->created)
            rc = multidictClear(h->d); /* a dict left by an earlier run */
        break;
    case K_MAP: {
        bool existed = dkshmObjectFind(r->s, OBJ_MAP, NULL, NULL) == DKSHM_OK;
        rc = multimapOpen(r->s, OBJ_MAP, NULL, MULTIMAP_CREATE, &h->m);
        r->createdMap = !existed;
        uint32_t mode = 0;
        if (rc == DKSHM_OK && multimapKeyMode(h->m, &mode) == DKSHM_OK &&
            mode != MULTIMAP_KEYS_BYTES)
            rc = DKSHM_TYPE;
        break;
    }
    case K_LIST: {
        multilistOptions lo = {.maxItems = queueCap(o->valueSize)};
        rc = multilistOpen(r->s, OBJ_LIST, &lo, MULTILIST_CREATE, &h->l);
        /* Items an earlier run left behind would fail the sequence checks. */
        size_t len;
        uint8_t *tmp = rc == DKSHM_OK ? malloc(MAX_VALUE + 64) : NULL;
        while (tmp && multilistPop(h->l, MULTILIST_HEAD, tmp, MAX_VALUE + 64,
                                   &len, MULTILIST_NOWAIT) == DKSHM_OK) {
        }
        free(tmp);
        uint64_t cap = 0;
        multilistStats ls;
        if (rc == DKSHM_OK && multilistGetStats(h->l, &ls) == DKSHM_OK)
            cap = ls.maxItemBytes;
        if (rc == DKSHM_OK && cap && cap < o->valueSize)
            rc = DKSHM_TOOBIG;
        break;
    }
    case K_ALLOC:
        break;
    }
    if (rc != DKSHM_OK) {
        setupError(o, "cannot open the container in", rc, NULL);
        return EXIT_OPEN;
    }
    if (!w->preload)
        return -1;
    uint8_t *key = xcalloc(1, o->keySize), *val = xcalloc(1, o->valueSize + 8);
    keyFiller(key, o->keySize);
    for (size_t i = 0; i < o->valueSize; i++)
        val[i] = (uint8_t)(i * 13 + 1);
    uint64_t t0 = nowNs();
    uint64_t k = 0;
    for (; k < o->keys && !interrupted; k++) {
        keyFor(key, k);
        if (w->incr) {
            int64_t zero = 0;
            rc = multidictSet(h->d, key, o->keySize, &zero, 8);
        } else {
            if (o->verify)
                fillValue(val, o->valueSize, XXH3_64bits(key, o->keySize), 1);
            if (w->kind == K_MAP)
                rc = multimapInsert(h->m, key, o->keySize, val, o->valueSize,
                                    MULTIMAP_UPSERT);
            else
                rc = multidictSet(h->d, key, o->keySize, val, o->valueSize);
        }
        if (rc != DKSHM_OK)
            break;
        if (r->ack)
            r->ack[k] = 1;
    }
    res->preloadNs = nowNs() - t0;
    free(key);
    free(val);
    if (rc != DKSHM_OK || k < o->keys) {
        char detail[128];
        snprintf(detail, sizeof detail,
                 "after %" PRIu64 " of %" PRIu64 " keys%s", k, o->keys,
                 rc == DKSHM_FULL && r->created ? " (try a larger --size)"
                 : interrupted                  ? " (interrupted)"
                                                : "");
        setupError(o, "preload failed in", rc == DKSHM_OK ? DKSHM_SHUTDOWN : rc,
                   detail);
        return EXIT_OPEN;
    }
    return -1;
}

/* ---- the parent: workers ------------------------------------------------ */

typedef struct fleet { /* per process: the parent's view of its workers */
    pid_t pid[MAX_PROCS];
    bool alive[MAX_PROCS];
    bool isConsumer[MAX_PROCS];
} fleet;

static pid_t spawn(run *r, int slot, bool restarted) {
    fflush(NULL);
    pid_t p = fork();
    if (p == 0)
        _exit(workerMain(r, slot, restarted));
    return p;
}

/* A worker's end that nobody asked for. */
static void noteExit(results *res, int slot, pid_t pid, int st) {
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return;
    res->workerFailures++;
    if (WIFEXITED(st))
        fprintf(stderr, PROG ": worker %d (pid %d) failed (exit status %d)\n",
                slot, (int)pid, WEXITSTATUS(st));
    else
        fprintf(stderr, PROG ": worker %d (pid %d) killed by signal %d\n", slot,
                (int)pid, WTERMSIG(st));
}

/* Collect workers that ended by themselves; RESTART forks successors. */
static int reapExited(run *r, fleet *f, results *res, bool restart) {
    int ended = 0;
    for (int i = 0; i < r->o.procs; i++) {
        if (!f->alive[i])
            continue;
        int st;
        pid_t p = waitpid(f->pid[i], &st, WNOHANG);
        if (p != f->pid[i])
            continue;
        f->alive[i] = false;
        ended++;
        noteExit(res, i, p, st);
        if (restart) {
            pid_t np = spawn(r, i, true);
            if (np > 0) {
                f->pid[i] = np;
                f->alive[i] = true;
                res->restarts++;
            }
        }
    }
    return ended;
}

/* ---- the parent: torture records ---------------------------------------- */

typedef struct seqState { /* per process: one item of one producer */
    uint8_t pushAck;
    uint8_t pops;    /* acknowledged pops */
    uint8_t drained; /* found in the queue at the end */
} seqState;

typedef struct ledger { /* per process: what the records say */
    uint64_t *ackMax;   /* set/ordered: highest acknowledged version */
    uint64_t *ackCount; /* incr: acknowledged increments per key */
    seqState *q[MAX_PROCS];
    uint64_t qCap[MAX_PROCS];
    uint8_t carry[sizeof(record)];
    size_t carryLen;
} ledger;

static seqState *seqAt(ledger *l, uint32_t p, uint64_t seq) {
    if (seq >= l->qCap[p]) {
        uint64_t cap = l->qCap[p] ? l->qCap[p] : 4096;
        while (cap <= seq)
            cap *= 2;
        seqState *v = realloc(l->q[p], cap * sizeof *v);
        if (!v) {
            fputs(PROG ": out of memory\n", stderr);
            exit(EXIT_FAILED);
        }
        memset(v + l->qCap[p], 0, (cap - l->qCap[p]) * sizeof *v);
        l->q[p] = v;
        l->qCap[p] = cap;
    }
    return &l->q[p][seq];
}

static void applyRecord(run *r, ledger *l, results *res, const record *rec) {
    const benchOpts *o = &r->o;
    int producers = r->producers ? r->producers : 1;
    switch (rec->kind) {
    case REC_SET:
        if (rec->key >= o->keys || !l->ackMax)
            break;
        if (rec->value > l->ackMax[rec->key])
            l->ackMax[rec->key] = rec->value;
        res->ackedWrites++;
        return;
    case REC_INCR:
        if (rec->key >= o->keys || !l->ackCount)
            break;
        l->ackCount[rec->key]++;
        res->ackedWrites++;
        return;
    case REC_PUSH:
    case REC_POP:
        if (rec->slot >= (uint32_t)producers || rec->key > (1ull << 40))
            break;
        seqState *s = seqAt(l, rec->slot, rec->key);
        if (rec->kind == REC_PUSH) {
            s->pushAck = 1;
            res->ackedWrites++;
        } else {
            if (s->pops < 255)
                s->pops++;
            res->ackedPops++;
        }
        return;
    }
    res->badRecords++;
}

/* Read what the pipe holds now (the read end is non-blocking). */
static void drainRecords(run *r, ledger *l, results *res) {
    if (r->readFd < 0)
        return;
    uint8_t buf[sizeof(record) * 256];
    for (;;) {
        memcpy(buf, l->carry, l->carryLen);
        ssize_t n =
            read(r->readFd, buf + l->carryLen, sizeof buf - l->carryLen);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        size_t have = l->carryLen + (size_t)n, used = 0;
        for (; used + sizeof(record) <= have; used += sizeof(record)) {
            record rec;
            memcpy(&rec, buf + used, sizeof rec);
            applyRecord(r, l, res, &rec);
        }
        l->carryLen = have - used;
        memcpy(l->carry, buf + used, l->carryLen);
    }
}

/* ---- the parent: running ------------------------------------------------ */

static void sleepNs(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000u), (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL); /* an interrupt ends it early: the loop looks */
}

/* Stop the workers and wait for all of them, draining records meanwhile
 * (a worker blocked on a full pipe would never see the stop flag). */
static void stopWorkers(run *r, fleet *f, ledger *l, results *res) {
    __atomic_store_n(&r->sh->stop, 1, __ATOMIC_RELEASE);
    uint64_t deadline = nowNs() + 60ull * 1000000000ull;
    for (;;) {
        drainRecords(r, l, res);
        reapExited(r, f, res, false);
        bool any = false;
        for (int i = 0; i < r->o.procs; i++)
            any |= f->alive[i];
        if (!any)
            break;
        if (nowNs() > deadline) {
            for (int i = 0; i < r->o.procs; i++)
                if (f->alive[i]) {
                    fprintf(stderr,
                            PROG ": worker %d (pid %d) did not stop: killed\n",
                            i, (int)f->pid[i]);
                    kill(f->pid[i], SIGKILL);
                    waitpid(f->pid[i], NULL, 0);
                    f->alive[i] = false;
                    res->workerFailures++;
                }
            break;
        }
        sleepNs(1000000);
    }
    drainRecords(r, l, res);
}

static uint64_t killGap(uint64_t *rng) {
    return (KILL_GAP_MIN_US +
            rngBelow(rng, KILL_GAP_MAX_US - KILL_GAP_MIN_US + 1)) *
           1000ull;
}

/* The measured part of the run: start, T seconds (killing and restarting
 * workers under torture), stop. */
static void runWorkers(run *r, fleet *f, ledger *l, results *res) {
    const benchOpts *o = &r->o;
    for (int i = 0; i < o->procs; i++) {
        pid_t p = spawn(r, i, false);
        if (p < 0) {
            fprintf(stderr, PROG ": fork: %s\n", strerror(errno));
            res->runFailed = true;
            stopWorkers(r, f, l, res);
            return;
        }
        f->pid[i] = p;
        f->alive[i] = true;
        f->isConsumer[i] = r->producers == 0 || i >= r->producers;
    }
    /* Set-up (the inproc preload) may take a while: wait, but notice a
     * worker that died on the way. */
    while (__atomic_load_n(&r->sh->ready, __ATOMIC_ACQUIRE) <
           (uint32_t)o->procs) {
        if (reapExited(r, f, res, false) > 0 || interrupted) {
            res->runFailed = true;
            stopWorkers(r, f, l, res);
            return;
        }
        sleepNs(200000);
    }
    uint64_t t0 = nowNs();
    __atomic_store_n(&r->sh->start, 1, __ATOMIC_RELEASE);
    uint64_t end = t0 + (uint64_t)(o->seconds * 1e9);
    uint64_t rng = mix64(t0 ^ (uint64_t)getpid()) | 1;
    uint64_t maxKills = (uint64_t)(o->seconds * KILLS_PER_SECOND) + 1;
    uint64_t nextKill = t0 + killGap(&rng), nextReap = t0 + REAP_EVERY_NS;
    uint64_t now;
    while ((now = nowNs()) < end && !interrupted) {
        if (!o->torture) {
            reapExited(r, f, res, false);
            uint64_t left = end - now;
            sleepNs(left < 10000000u ? left : 10000000u);
            continue;
        }
        uint64_t until = nextKill < end ? nextKill : end;
        if (nextReap < until)
            until = nextReap;
        int ms = until > now ? (int)((until - now + 999999) / 1000000) : 0;
        struct pollfd pfd = {.fd = r->readFd, .events = POLLIN};
        poll(&pfd, 1, ms);
        drainRecords(r, l, res);
        reapExited(r, f, res, true);
        now = nowNs();
        if (now >= nextKill && res->kills < maxKills) {
            int i = (int)rngBelow(&rng, (uint64_t)o->procs);
            if (f->alive[i]) {
                kill(f->pid[i], SIGKILL);
                int st;
                pid_t p;
                while ((p = waitpid(f->pid[i], &st, 0)) < 0 && errno == EINTR) {
                }
                f->alive[i] = false;
                if (p == f->pid[i] && WIFSIGNALED(st) &&
                    WTERMSIG(st) == SIGKILL) {
                    res->kills++;
                    if (f->isConsumer[i])
                        res->consumerKills++;
                } else if (p == f->pid[i]) {
                    noteExit(res, i, p, st); /* it ended before the kill */
                }
                pid_t np = spawn(r, i, true);
                if (np > 0) {
                    f->pid[i] = np;
                    f->alive[i] = true;
                    res->restarts++;
                } else {
                    fprintf(stderr, PROG ": fork: %s\n", strerror(errno));
                    res->runFailed = true;
                }
            }
            nextKill = now + killGap(&rng);
        }
        if (now >= nextReap) {
            /* Dead workers keep their table slots (and what they held)
             * until someone reaps them; an operator's reaper runs while
             * the pool works, and so does this one. */
            size_t n = 0;
            int rc = dkshmReap(r->s, &n);
            if (rc != DKSHM_OK)
                problem(res, "dkshmReap during the run: %s", dkshmErrName(rc));
            res->reapedDuring += n;
            nextReap = now + REAP_EVERY_NS;
        }
    }
    now = nowNs();
    stopWorkers(r, f, l, res);
    res->elapsed = (double)(now - t0) / 1e9;
}

/* ---- the parent: checks ------------------------------------------------- */

typedef struct block { /* per process */
    dkoff off;
    uint64_t bytes;
} block;

typedef struct blockList { /* per process */
    block *v;
    size_t n, cap;
} blockList;

static int blockAdd(blockList *b, dkoff off, uint64_t bytes) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 1024;
        block *v = realloc(b->v, cap * sizeof *v);
        if (!v)
            return DKSHM_SYSTEM;
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n++] = (block){off, bytes};
    return 0;
}

static int collectOwned(void *ctx, dkoff off, uint64_t bytes, int kind) {
    (void)kind;
    return blockAdd(ctx, off, bytes);
}

static int collectLive(void *ctx, dkoff off, uint64_t size) {
    return blockAdd(ctx, off, size);
}

static int compareBlocks(const void *a, const void *b) {
    dkoff x = ((const block *)a)->off, y = ((const block *)b)->off;
    return x < y ? -1 : x > y;
}

static void blockSort(blockList *b) {
    if (b->n > 1)
        qsort(b->v, b->n, sizeof *b->v, compareBlocks);
}

static void blockFree(blockList *b) {
    free(b->v);
    memset(b, 0, sizeof *b);
}

/* The containers' and the allocator's own checks on everything in the
 * directory, and the ownership check: every live allocation belongs to
 * exactly one container (or one process's in-flight list), and every block
 * a container owns is a live allocation large enough. */
static void checkSegment(run *r, results *res) {
    dkshm *s = r->s;
    membound *mb = memboundForSegment(s);
    char why[256] = "";
    int rc = memboundCheck(mb, why, sizeof why);
    if (rc != DKSHM_OK)
        problem(res, "allocator check: %s", *why ? why : dkshmErrName(rc));

    size_t count = 0;
    rc = dkshmObjectList(s, NULL, 0, &count);
    dkshmObjectInfo *objs = xcalloc(count + 1, sizeof *objs);
    if (rc == DKSHM_OK)
        rc = dkshmObjectList(s, objs, count, &count);
    if (rc != DKSHM_OK) {
        problem(res, "directory: %s", dkshmErrName(rc));
        free(objs);
        return;
    }
    blockList want = {0}, have = {0};
    bool walkable = true;
    for (size_t i = 0; i < count; i++) {
        const dkshmObjectInfo *e = &objs[i];
        why[0] = '\0';
        int crc = DKSHM_OK, wrc = DKSHM_OK;
        switch (e->type) {
        case MULTIDICT_TYPE: {
            multidict *d;
            if ((crc = multidictOpen(s, e->name, NULL, 0, &d)) != DKSHM_OK)
                break;
            crc = multidictCheck(d, why, sizeof why);
            wrc = multidictForEachBlock(d, collectOwned, &want);
            multidictClose(d);
            break;
        }
        case MULTIMAP_TYPE: {
            multimap *m;
            if ((crc = multimapOpen(s, e->name, NULL, 0, &m)) != DKSHM_OK)
                break;
            crc = multimapCheck(m, why, sizeof why);
            wrc = multimapForEachBlock(m, collectOwned, &want);
            multimapClose(m);
            break;
        }
        case MULTILIST_TYPE: {
            multilist *l;
            if ((crc = multilistOpen(s, e->name, NULL, 0, &l)) != DKSHM_OK)
                break;
            crc = multilistCheck(l, why, sizeof why);
            wrc = multilistForEachBlock(l, collectOwned, &want);
            multilistClose(l);
            break;
        }
        case MULTIARRAY_TYPE: {
            multiarray *a;
            multiarrayOptions ao = {0};
            if ((crc = multiarrayOpen(s, e->name, &ao, 0, &a)) != DKSHM_OK)
                break;
            crc = multiarrayCheck(a, why, sizeof why);
            wrc = multiarrayForEachBlock(a, collectOwned, &want);
            multiarrayClose(a);
            break;
        }
        case OSREGULATE_TYPE: {
            OSRegulate *g;
            if ((crc = OSRegulateOpen(s, e->name, NULL, 0, &g)) != DKSHM_OK)
                break;
            crc = OSRegulateCheck(g, why, sizeof why);
            wrc = blockAdd(&want, e->root, 1); /* its root is all it has */
            OSRegulateClose(g);
            break;
        }
        default:
            if (walkable)
                snprintf(res->ownershipNote, sizeof res->ownershipNote,
                         "skipped: object \"%s\" is of type %" PRIu32
                         ", not a dkshm container",
                         e->name, e->type);
            walkable = false;
            continue;
        }
        if (crc != DKSHM_OK)
            problem(res, "check of \"%s\": %s", e->name,
                    *why ? why : dkshmErrName(crc));
        if (wrc != DKSHM_OK) {
            problem(res, "block walk of \"%s\": %s", e->name,
                    dkshmErrName(wrc));
            walkable = false;
        }
    }
    free(objs);
    if (!walkable)
        goto out;
    /* Blocks in flight between the allocator and a container belong to
     * their process (after reaping, only to live ones). */
    for (uint32_t p = 0; p < s->maxProcs; p++)
        for (int j = 0; j < DK_INFLIGHT_MAX; j++) {
            dkoff off =
                __atomic_load_n(&dkSlotAt(s, p)->inflight[j], __ATOMIC_ACQUIRE);
            if (dkInflightIsBlock(off))
                blockAdd(&want, off, 1);
        }
    rc = memboundForEachAllocation(mb, collectLive, &have);
    if (rc != DKSHM_OK) {
        problem(res, "allocator walk: %s", dkshmErrName(rc));
        goto out;
    }
    res->ownershipChecked = true;
    blockSort(&want);
    blockSort(&have);
    size_t i = 0, j = 0;
    uint64_t leaked = 0, dangling = 0, twice = 0, small = 0;
    while (i < want.n || j < have.n) {
        if (i + 1 < want.n && want.v[i].off == want.v[i + 1].off) {
            if (twice++ < 3)
                problem(res, "block 0x%" PRIx64 " is owned twice",
                        want.v[i].off);
            i++;
            continue;
        }
        if (i < want.n && j < have.n && want.v[i].off == have.v[j].off) {
            if (have.v[j].bytes < want.v[i].bytes && small++ < 3)
                problem(res,
                        "block 0x%" PRIx64 ": %" PRIu64
                        " bytes used in a %" PRIu64 "-byte allocation",
                        want.v[i].off, want.v[i].bytes, have.v[j].bytes);
            i++;
            j++;
        } else if (j < have.n &&
                   (i >= want.n || have.v[j].off < want.v[i].off)) {
            if (leaked++ < 3)
                problem(res,
                        "leak: allocation 0x%" PRIx64 " (%" PRIu64
                        " bytes) is owned by no container",
                        have.v[j].off, have.v[j].bytes);
            j++;
        } else {
            if (dangling++ < 3)
                problem(res,
                        "block 0x%" PRIx64 " of a container is not a live "
                        "allocation",
                        want.v[i].off);
            i++;
        }
    }
    if (leaked > 3 || dangling > 3 || twice > 3 || small > 3)
        problem(res,
                "ownership: %" PRIu64 " leaked, %" PRIu64 " dangling, %" PRIu64
                " owned twice, %" PRIu64 " too small in all",
                leaked, dangling, twice, small);
    snprintf(res->ownershipNote, sizeof res->ownershipNote,
             "%zu allocations, %zu owned blocks", have.n, want.n);
out:
    blockFree(&want);
    blockFree(&have);
}

/* Every key read back: whole, its own, and at least as new as the last
 * acknowledged write (exactly it without torture). */
static void verifyKeys(run *r, handles *h, ledger *l, results *res) {
    const benchOpts *o = &r->o;
    uint8_t *key = xcalloc(1, o->keySize), *buf = xcalloc(1, o->valueSize + 64);
    keyFiller(key, o->keySize);
    uint64_t bad = 0;
    for (uint64_t k = 0; k < o->keys; k++) {
        keyFor(key, k);
        size_t len = 0;
        int rc = o->w->kind == K_MAP
                     ? multimapLookup(h->m, key, o->keySize, buf,
                                      o->valueSize + 64, &len)
                     : multidictGet(h->d, key, o->keySize, buf,
                                    o->valueSize + 64, &len);
        res->checked++;
        if (rc != DKSHM_OK) {
            if (bad++ < 5)
                problem(res, "key %" PRIu64 ": %s", k, dkshmErrName(rc));
            continue;
        }
        uint64_t ver = 0;
        const char *why = checkValue(buf, len, o->valueSize,
                                     XXH3_64bits(key, o->keySize), &ver);
        uint64_t want =
            o->torture ? (l->ackMax[k] ? l->ackMax[k] : 1) : r->ack[k];
        uint64_t owner = k % (uint64_t)o->procs;
        uint64_t bound = r->sh->slot[owner].version;
        if (why) {
            if (bad++ < 5)
                problem(res, "key %" PRIu64 ": %s", k, why);
        } else if (ver < want || (!o->torture && ver != want)) {
            if (bad++ < 5)
                problem(res,
                        "key %" PRIu64 ": version %" PRIu64
                        ", but version %" PRIu64 " was acknowledged",
                        k, ver, want);
        } else if (ver != 1 && ver > bound) {
            if (bad++ < 5)
                problem(res,
                        "key %" PRIu64 ": version %" PRIu64
                        " was never handed out (its writer stopped at %" PRIu64
                        ")",
                        k, ver, bound);
        }
    }
    if (bad > 5)
        problem(res, "%" PRIu64 " of %" PRIu64 " keys were wrong", bad,
                o->keys);
    uint64_t count = 0;
    int rc = o->w->kind == K_MAP ? multimapCount(h->m, &count)
                                 : multidictCount(h->d, &count);
    bool exact = o->w->kind != K_MAP || r->createdMap;
    if (rc == DKSHM_OK && exact && count != o->keys)
        problem(res, "%" PRIu64 " entries, %" PRIu64 " keys were loaded", count,
                o->keys);
    free(key);
    free(buf);
}

static void verifyCounters(run *r, handles *h, ledger *l, results *res) {
    const benchOpts *o = &r->o;
    uint8_t *key = xcalloc(1, o->keySize);
    keyFiller(key, o->keySize);
    int64_t sum = 0;
    uint64_t acked = 0, bad = 0;
    for (uint64_t k = 0; k < o->keys; k++) {
        keyFor(key, k);
        int64_t v = 0;
        size_t len = 0;
        int rc = multidictGet(h->d, key, o->keySize, &v, sizeof v, &len);
        res->checked++;
        if (rc != DKSHM_OK || len != 8) {
            if (bad++ < 5)
                problem(res, "counter %" PRIu64 ": %s", k,
                        rc != DKSHM_OK ? dkshmErrName(rc) : "not 8 bytes");
            continue;
        }
        sum += v;
        if (l->ackCount) {
            acked += l->ackCount[k];
            if (v < 0 || (uint64_t)v < l->ackCount[k]) {
                if (bad++ < 5)
                    problem(res,
                            "counter %" PRIu64 " is %" PRId64 ", %" PRIu64
                            " increments were acknowledged",
                            k, v, l->ackCount[k]);
            }
        }
    }
    if (!o->torture) {
        for (int i = 0; i < o->procs; i++)
            acked += r->sh->slot[i].ops;
        if ((uint64_t)sum != acked)
            problem(res,
                    "counters sum to %" PRId64 ", %" PRIu64
                    " increments were acknowledged",
                    sum, acked);
    } else if (sum < 0 || (uint64_t)sum < acked ||
               (uint64_t)sum - acked > res->kills) {
        /* A worker killed between its incr and its record leaves one
         * increment done but not acknowledged: at most one per kill. */
        problem(res,
                "counters sum to %" PRId64 ", %" PRIu64
                " increments acknowledged and %" PRIu64
                " workers killed (allowed: acknowledged .. + kills)",
                sum, acked, res->kills);
    }
    free(key);
}

/* What is left in the queue at the end, popped by the parent. */
static void drainQueue(run *r, handles *h, ledger *l, results *res,
                       tally *drained) {
    const benchOpts *o = &r->o;
    int producers = r->producers ? r->producers : 1;
    uint8_t *buf = xcalloc(1, o->valueSize + 64);
    size_t len;
    int rc;
    while ((rc = multilistPop(h->l, MULTILIST_HEAD, buf, o->valueSize + 64,
                              &len, MULTILIST_NOWAIT)) == DKSHM_OK) {
        uint64_t tag = 0, seq = 0, ver;
        if (len >= 16) {
            memcpy(&tag, buf, 8);
            memcpy(&seq, buf + 8, 8);
        }
        uint32_t p = (uint32_t)tag;
        res->checked++;
        if (len < 16 || tag >> 32 != itemTag(0) >> 32 ||
            p >= (uint32_t)producers) {
            problem(res,
                    "queue: an item of %zu bytes without a valid "
                    "producer tag",
                    len);
            continue;
        }
        const char *why = checkValue(buf, len, o->valueSize, tag, &ver);
        if (why) {
            problem(res, "queue: item %" PRIu64 " of producer %" PRIu32 ": %s",
                    seq, p, why);
            continue;
        }
        if (o->torture) {
            if (seq > (1ull << 40)) {
                problem(res, "queue: item %" PRIu64 " out of range", seq);
                continue;
            }
            seqState *st = seqAt(l, p, seq);
            if (st->drained < 255)
                st->drained++;
        } else {
            drained[p].count++;
            drained[p].sum += seq;
            drained[p].hash ^= mix64(seq);
        }
    }
    if (rc != DKSHM_NOTFOUND)
        problem(res, "queue: draining: %s", dkshmErrName(rc));
    free(buf);
}

static void verifyQueue(run *r, handles *h, ledger *l, results *res) {
    int producers = r->producers ? r->producers : 1;
    tally drained[MAX_PROCS];
    memset(drained, 0, sizeof drained);
    drainQueue(r, h, l, res, drained);
    for (int p = 0; p < producers; p++) {
        uint64_t handed = r->sh->slot[p].seq;
        if (!r->o.torture) {
            /* Retries reuse their number, so what was pushed is 0..n-1. */
            uint64_t n = r->sh->slot[p].pushed, sum = 0, hash = 0;
            for (uint64_t s = 0; s < n; s++)
                hash ^= mix64(s);
            sum = n ? n * (n - 1) / 2 : 0;
            tally got = drained[p];
            for (int c = 0; c < MAX_PROCS; c++) {
                const tally *t = &r->sh->tallies[c][p];
                got.count += t->count;
                got.sum += t->sum;
                got.hash ^= t->hash;
            }
            if (got.count != n || got.sum != sum || got.hash != hash)
                problem(res,
                        "queue: producer %d pushed %" PRIu64 " items; %" PRIu64
                        " were popped or left, and their "
                        "sequence numbers do not match exactly once each",
                        p, n, got.count);
            continue;
        }
        uint64_t lostHere = 0, dups = 0, ghosts = 0;
        for (uint64_t s = 0; s < l->qCap[p]; s++) {
            const seqState *st = &l->q[p][s];
            unsigned delivered = (unsigned)st->pops + st->drained;
            if (s >= handed && (delivered || st->pushAck)) {
                if (ghosts++ < 3)
                    problem(res,
                            "queue: item %" PRIu64 " of producer %d was "
                            "never pushed",
                            s, p);
                continue;
            }
            if (delivered > 1 && dups++ < 3)
                problem(res,
                        "queue: item %" PRIu64 " of producer %d delivered "
                        "%u times",
                        s, p, delivered);
            if (st->pushAck && delivered == 0)
                lostHere++;
        }
        res->lost += lostHere;
    }
    if (r->o.torture && res->lost > res->consumerKills)
        problem(res,
                "queue: %" PRIu64 " acknowledged pushes neither popped nor "
                "queued, but only %" PRIu64
                " consumers were killed (at most one each)",
                res->lost, res->consumerKills);
}

static void verifyAll(run *r, handles *h, ledger *l, results *res) {
    const benchOpts *o = &r->o;
    res->verified = true;
    if (o->torture) {
        size_t n = 0;
        int rc = dkshmReap(r->s, &n);
        res->reaped = n;
        if (rc != DKSHM_OK)
            problem(res, "dkshmReap: %s", dkshmErrName(rc));
        size_t nprocs = 0;
        dkshmProcInfo pi[64];
        if (dkshmProcList(r->s, pi, 64, &nprocs) == DKSHM_OK)
            for (size_t i = 0; i < nprocs && i < 64; i++)
                if (!pi[i].alive)
                    problem(res,
                            "process %" PRIu32 " is still in the table "
                            "after reaping",
                            pi[i].pid);
        if (res->badRecords)
            problem(res, "%" PRIu64 " records from the workers made no sense",
                    res->badRecords);
    }
    switch (o->w->kind) {
    case K_DICT:
        if (o->w->incr)
            verifyCounters(r, h, l, res);
        else
            verifyKeys(r, h, l, res);
        break;
    case K_MAP:
        verifyKeys(r, h, l, res);
        break;
    case K_LIST:
        verifyQueue(r, h, l, res);
        break;
    case K_ALLOC:
        break;
    }
    checkSegment(r, res);
}

/* ---- the parent: report ------------------------------------------------- */

static int compareU32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void percentiles(run *r, results *res) {
    size_t n = 0;
    for (int i = 0; i < r->o.procs; i++) {
        uint64_t seen = r->sh->slot[i].seen;
        n += seen < SAMPLE_CAP ? seen : SAMPLE_CAP;
    }
    res->samples = n;
    if (n == 0)
        return;
    uint32_t *v = xcalloc(n, sizeof *v);
    size_t m = 0;
    for (int i = 0; i < r->o.procs; i++) {
        uint64_t seen = r->sh->slot[i].seen;
        size_t c = seen < SAMPLE_CAP ? seen : SAMPLE_CAP;
        memcpy(v + m, r->sh->samples[i], c * sizeof *v);
        m += c;
    }
    qsort(v, n, sizeof *v, compareU32);
    double q[3] = {0.50, 0.99, 0.999},
           *out[3] = {&res->p50, &res->p99, &res->p999};
    for (int i = 0; i < 3; i++) {
        size_t rank = (size_t)ceil(q[i] * (double)n);
        *out[i] = v[rank ? rank - 1 : 0];
    }
    free(v);
}

static const char *fmtNs(double ns, char *buf) {
    if (ns < 1000)
        snprintf(buf, 32, "%.0f ns", ns);
    else if (ns < 1e6)
        snprintf(buf, 32, "%.2f us", ns / 1e3);
    else
        snprintf(buf, 32, "%.2f ms", ns / 1e6);
    return buf;
}

static bool verifyOk(const results *res) {
    return res->problems == 0 && res->workerErrors == 0 &&
           res->workerFailures == 0;
}

static const char *roleOf(const run *r, int i) {
    if (r->o.w->kind != K_LIST)
        return "";
    if (r->producers == 0)
        return " (push+pop)";
    return i < r->producers ? " (push)" : " (pop)";
}

static void reportText(const run *r, const results *res, bool ok) {
    const benchOpts *o = &r->o;
    char b1[32], b2[32], b3[32];
    printf(PROG ": %s on %s, %d process%s, %.2f s\n", o->w->name,
           o->engine == ENGINE_DKSHM ? "dkshm" : "inproc", o->procs,
           o->procs == 1 ? "" : "es", o->seconds);
    table t;
    tableInit(&t, 2, "<- <-");
    if (o->engine == ENGINE_DKSHM) {
        tableCell(&t, "segment");
        if (r->created)
            tableCell(&t, "%s (created, %s; %s)", o->segment,
                      fmtBytes(o->size, b1),
                      o->keep ? "kept" : "removed at exit");
        else
            tableCell(&t, "%s (attached)", o->segment);
    }
    tableCell(&t, "workload");
    if (o->engine == ENGINE_INPROC)
        tableCell(&t, "%s, each process on its own unshared hash table",
                  o->w->name);
    else
        tableCell(&t, "%s", o->w->summary);
    if (o->w->kind == K_DICT || o->w->kind == K_MAP) {
        tableCell(&t, "keys");
        if (o->zipf > 0)
            tableCell(&t,
                      "%" PRIu64 " (%zu-byte keys, %zu-byte values, zipf "
                      "%.2f)",
                      o->keys, o->keySize, o->valueSize, o->zipf);
        else
            tableCell(&t,
                      "%" PRIu64 " (%zu-byte keys, %zu-byte values, "
                      "uniform)",
                      o->keys, o->keySize, o->valueSize);
        if (o->engine == ENGINE_DKSHM && res->preloadNs) {
            double s = (double)res->preloadNs / 1e9;
            tableCell(&t, "preload");
            tableCell(&t, "%.3f s (%.0f inserts/s)", s,
                      s > 0 ? (double)o->keys / s : 0.0);
        } else if (o->engine == ENGINE_INPROC) {
            tableCell(&t, "preload");
            tableCell(&t, "by each process into its own table");
        }
    } else {
        tableCell(&t, "%s", o->w->kind == K_LIST ? "item size" : "block size");
        tableCell(&t, "%zu bytes", o->valueSize);
    }
    tableCell(&t, "%s", o->w->kind == K_LIST ? "items" : "operations");
    tableCell(&t, "%" PRIu64 " in %.3f s", res->opsTotal, res->elapsed);
    tableCell(&t, "%s", o->w->kind == K_LIST ? "items/s" : "ops/s");
    tableCell(&t, "%.0f",
              res->elapsed > 0 ? (double)res->opsTotal / res->elapsed : 0.0);
    for (int i = 0; i < o->procs; i++) {
        tableCell(&t, "  process %d", i);
        tableCell(&t, "%.0f ops/s%s",
                  res->elapsed > 0 ? (double)res->ops[i] / res->elapsed : 0.0,
                  roleOf(r, i));
    }
    tableCell(&t, "latency");
    if (res->samples)
        tableCell(&t,
                  "p50 %s, p99 %s, p99.9 %s (%" PRIu64 " samples, 1 op in %d)",
                  fmtNs(res->p50, b1), fmtNs(res->p99, b2),
                  fmtNs(res->p999, b3), res->samples, SAMPLE_EVERY);
    else
        tableCell(&t, "no samples");
    if (o->torture) {
        tableCell(&t, "torture");
        tableCell(&t,
                  "%" PRIu64 " kills, %" PRIu64 " restarts, %" PRIu64
                  " dead processes reaped during the run and %" PRIu64
                  " at the end",
                  res->kills, res->restarts, res->reapedDuring, res->reaped);
        tableCell(&t, "acknowledged");
        if (o->w->kind == K_LIST)
            tableCell(&t,
                      "%" PRIu64 " pushes, %" PRIu64 " pops; %" PRIu64
                      " lost with killed consumers (at most %" PRIu64 ")",
                      res->ackedWrites, res->ackedPops, res->lost,
                      res->consumerKills);
        else
            tableCell(&t, "%" PRIu64 " writes", res->ackedWrites);
    }
    if (o->verify) {
        tableCell(&t, "verify");
        char detail[256] = "";
        if (res->checked)
            snprintf(detail, sizeof detail, "%" PRIu64 " %s checked at the end",
                     res->checked,
                     o->w->kind == K_LIST ? "queued items" : "keys");
        if (o->engine == ENGINE_INPROC)
            snprintf(detail, sizeof detail,
                     "each process checked every key of its table");
        if (res->ownershipChecked || res->ownershipNote[0]) {
            size_t len = strlen(detail);
            snprintf(detail + len, sizeof detail - len,
                     "%scontainer and allocator checks; ownership %s",
                     len ? "; " : "", res->ownershipNote);
        }
        tableCell(&t, "%s%s%s%s", ok ? "ok" : "FAILED", detail[0] ? " (" : "",
                  detail, detail[0] ? ")" : "");
        if (!ok) {
            tableCell(&t, "  problems");
            tableCell(&t,
                      "%" PRIu64 " found by the parent, %" PRIu64
                      " by workers, %" PRIu64 " workers failed",
                      res->problems, res->workerErrors, res->workerFailures);
        }
    } else if (!ok) {
        tableCell(&t, "errors");
        tableCell(&t,
                  "%" PRIu64 " operation errors, %" PRIu64 " workers failed",
                  res->workerErrors, res->workerFailures);
    }
    tablePrint(&t, stdout);
    tableFree(&t);
}

static uint64_t perSec(uint64_t n, double seconds) {
    return seconds > 0 ? (uint64_t)llround((double)n / seconds) : 0;
}

static void reportJson(const run *r, const results *res, bool ok, int status) {
    const benchOpts *o = &r->o;
    jsonOut j;
    jsonInit(&j, stdout);
    jsonObjOpen(&j, NULL);
    jsonStr(&j, "workload", o->w->name);
    jsonStr(&j, "engine", o->engine == ENGINE_DKSHM ? "dkshm" : "inproc");
    jsonU64(&j, "procs", (uint64_t)o->procs);
    jsonDouble(&j, "seconds", o->seconds);
    jsonDouble(&j, "elapsedSeconds", res->elapsed);
    jsonU64(&j, "keys", o->keys);
    jsonU64(&j, "keySize", o->keySize);
    jsonU64(&j, "valueSize", o->valueSize);
    jsonDouble(&j, "zipf", o->zipf);
    if (o->engine == ENGINE_DKSHM) {
        jsonStr(&j, "segment", o->segment);
        jsonBool(&j, "segmentCreated", r->created);
        if (r->created)
            jsonU64(&j, "segmentSize", o->size);
        jsonDouble(&j, "preloadSeconds", (double)res->preloadNs / 1e9);
    } else {
        jsonNull(&j, "segment");
    }
    jsonU64(&j, "opsTotal", res->opsTotal);
    /* Rates and latencies as integers: %g would print 2.5e+07. */
    jsonU64(&j, "opsPerSec", perSec(res->opsTotal, res->elapsed));
    jsonArrOpen(&j, "perProcessOpsPerSec");
    for (int i = 0; i < o->procs; i++)
        jsonU64(&j, NULL, perSec(res->ops[i], res->elapsed));
    jsonArrClose(&j);
    jsonArrOpen(&j, "perProcessOps");
    for (int i = 0; i < o->procs; i++)
        jsonU64(&j, NULL, res->ops[i]);
    jsonArrClose(&j);
    if (o->w->kind == K_LIST) {
        jsonArrOpen(&j, "roles");
        for (int i = 0; i < o->procs; i++)
            jsonStr(&j, NULL,
                    r->producers == 0  ? "push+pop"
                    : i < r->producers ? "push"
                                       : "pop");
        jsonArrClose(&j);
    }
    if (res->samples) {
        jsonU64(&j, "p50Ns", (uint64_t)res->p50);
        jsonU64(&j, "p99Ns", (uint64_t)res->p99);
        jsonU64(&j, "p999Ns", (uint64_t)res->p999);
    } else {
        jsonNull(&j, "p50Ns");
        jsonNull(&j, "p99Ns");
        jsonNull(&j, "p999Ns");
    }
    jsonU64(&j, "latencySamples", res->samples);
    jsonU64(&j, "sampleEvery", SAMPLE_EVERY);
    if (o->verify) {
        jsonObjOpen(&j, "verify");
        jsonBool(&j, "ok", ok);
        jsonU64(&j, "checked", res->checked);
        jsonU64(&j, "problems", res->problems);
        jsonU64(&j, "workerErrors", res->workerErrors);
        jsonU64(&j, "workerFailures", res->workerFailures);
        jsonBool(&j, "ownershipChecked", res->ownershipChecked);
        jsonStr(&j, "ownership", res->ownershipNote);
        jsonArrOpen(&j, "messages");
        for (uint64_t i = 0; i < res->problems && i < MAX_PROBLEMS; i++)
            jsonStr(&j, NULL, res->problem[i]);
        jsonArrClose(&j);
        jsonObjClose(&j);
    } else {
        jsonNull(&j, "verify");
    }
    if (o->torture) {
        jsonObjOpen(&j, "torture");
        jsonU64(&j, "kills", res->kills);
        jsonU64(&j, "restarts", res->restarts);
        jsonU64(&j, "acknowledgedWrites", res->ackedWrites);
        if (o->w->kind == K_LIST) {
            jsonU64(&j, "acknowledgedPops", res->ackedPops);
            jsonU64(&j, "lostWithKilledConsumers", res->lost);
            jsonU64(&j, "consumerKills", res->consumerKills);
        }
        jsonU64(&j, "reapedDuringRun", res->reapedDuring);
        jsonU64(&j, "reapedAtEnd", res->reaped);
        jsonBool(&j, "ok", ok);
        jsonObjClose(&j);
    } else {
        jsonNull(&j, "torture");
    }
    jsonU64(&j, "errors", res->workerErrors);
    jsonU64(&j, "workerFailures", res->workerFailures);
    jsonBool(&j, "ok", ok);
    jsonU64(&j, "exitStatus", (uint64_t)status);
    jsonObjClose(&j);
    jsonEnd(&j);
}

/* ---- main --------------------------------------------------------------- */

static void *sharedMap(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void closeHandles(handles *h) {
    multidictClose(h->d);
    multimapClose(h->m);
    multilistClose(h->l);
    memset(h, 0, sizeof *h);
}

int main(int argc, char **argv) {
    run r;
    memset(&r, 0, sizeof r);
    r.recordFd = r.readFd = -1;
    int status = parseOptions(argc, argv, &r.o);
    if (status >= 0)
        return status;
    benchOpts *o = &r.o;
    r.parent = getpid();
    if (o->w->kind == K_LIST && o->procs > 1)
        r.producers = o->procs / 2;
    r.own = o->verify && o->engine == ENGINE_DKSHM;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = onInterrupt;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    results res;
    memset(&res, 0, sizeof res);
    ledger led;
    memset(&led, 0, sizeof led);
    handles h = {0};
    fleet f;
    memset(&f, 0, sizeof f);

    r.sh = sharedMap(sizeof(shared));
    if (!r.sh) {
        fprintf(stderr, PROG ": shared memory for the counters: %s\n",
                strerror(errno));
        return EXIT_FAILED;
    }
    for (int i = 0; i < MAX_PROCS; i++)
        r.sh->slot[i].version = 1; /* the preload's version */
    zipfInit(&r.zipf, o->keys, o->zipf);
    bool needAck =
        o->verify && o->engine == ENGINE_DKSHM && o->w->preload && !o->w->incr;
    if (needAck && !o->torture) {
        r.ack = sharedMap(o->keys * sizeof *r.ack);
        if (!r.ack) {
            fprintf(stderr, PROG ": shared memory for %" PRIu64 " keys: %s\n",
                    o->keys, strerror(errno));
            status = EXIT_FAILED;
            goto done;
        }
    }
    if (o->torture) {
        if (o->w->kind == K_DICT && o->w->incr)
            led.ackCount = calloc(o->keys, sizeof *led.ackCount);
        else if (o->w->kind != K_LIST)
            led.ackMax = calloc(o->keys, sizeof *led.ackMax);
        if (o->w->kind != K_LIST && !led.ackCount && !led.ackMax) {
            fprintf(stderr, PROG ": out of memory for %" PRIu64 " keys\n",
                    o->keys);
            status = EXIT_FAILED;
            goto done;
        }
        int fds[2];
        if (pipe(fds) != 0) {
            fprintf(stderr, PROG ": pipe: %s\n", strerror(errno));
            status = EXIT_FAILED;
            goto done;
        }
        r.readFd = fds[0];
        r.recordFd = fds[1];
        fcntl(r.readFd, F_SETFL, fcntl(r.readFd, F_GETFL) | O_NONBLOCK);
        fcntl(r.readFd, F_SETFD, FD_CLOEXEC);
        fcntl(r.recordFd, F_SETFD, FD_CLOEXEC);
        fcntl(r.recordFd, F_SETPIPE_SZ, 1 << 20); /* fewer stalls */
    }

    if (o->engine == ENGINE_DKSHM) {
        if ((status = openSegment(&r)) >= 0)
            goto done;
        if ((status = preloadDkshm(&r, &h, &res)) >= 0)
            goto done;
    }
    status = -1;

    runWorkers(&r, &f, &led, &res);
    for (int i = 0; i < o->procs; i++) {
        res.ops[i] = r.sh->slot[i].ops;
        res.workerErrors += r.sh->slot[i].errors;
        if (o->w->kind != K_LIST || r.producers == 0 || i >= r.producers)
            res.opsTotal += res.ops[i];
    }
    percentiles(&r, &res);
    if (interrupted)
        fprintf(stderr, PROG ": interrupted\n");
    if (o->verify && o->engine == ENGINE_DKSHM && !interrupted &&
        !res.runFailed)
        verifyAll(&r, &h, &led, &res);
    bool ok = verifyOk(&res) && !res.runFailed && !interrupted;
    status = ok ? EXIT_OK : EXIT_FAILED;
    if (o->json)
        reportJson(&r, &res, ok, status);
    else
        reportText(&r, &res, ok);

done:
    closeHandles(&h);
    if (r.s) {
        dkshmDetach(r.s);
        if (r.created && !o->keep)
            dkshmUnlink(o->segment);
    }
    if (r.readFd >= 0)
        close(r.readFd);
    if (r.recordFd >= 0)
        close(r.recordFd);
    if (r.ack)
        munmap(r.ack, o->keys * sizeof *r.ack);
    munmap(r.sh, sizeof(shared));
    free(led.ackMax);
    free(led.ackCount);
    for (int i = 0; i < MAX_PROCS; i++)
        free(led.q[i]);
    for (uint64_t i = 0; i < res.problems && i < MAX_PROBLEMS; i++)
        free(res.problem[i]);
    fflush(stdout);
    return status;
}
