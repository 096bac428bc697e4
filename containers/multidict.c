/* multidict.c — a sharded hash map and shared cache in a dkshm segment.
 *
 * ALGORITHM. A key's XXH3-64 hash picks its shard (the top shardBits bits),
 * its home slot in the shard's table (the low bits) and a 22-bit tag (the
 * low 22 bits again: for tables of up to 2^22 slots the tag alone gives a
 * slot's home, so a resize never reads the entries). Each shard is an open-
 * addressing table with linear probing whose slots hold tagged offsets of
 * entry blocks:
 *
 *   slot = 0 (empty) | 1 (tombstone) | tag << 42 | entry offset >> 4
 *
 * A lookup walks from the home slot to the first empty slot and looks only
 * at entries whose tag matches, so a get usually touches one table line and
 * one entry. Deleting leaves a tombstone unless the next slot is empty.
 * Entries + tombstones stay under 3/4 of the slots; an insert that would
 * pass that builds a new table with room for twice the entries (a doubling,
 * or a rebuild of the same size when most of the load is tombstones) in one
 * step: the new table is allocated in flight, filled with plain stores
 * while nobody can see it, and swapped in by one logged word. Every shard
 * grows on its own; the others go on meanwhile.
 *
 * Why open addressing and not chains through the entries: a chained table
 * cannot be rebuilt beside the old one (the `next` words are shared by
 * both, and changing them means logging every entry, more than an undo log
 * holds), so it needs an incremental two-table resize that readers must
 * follow; a table of offsets is copied, then swapped by one word. Entries
 * then need no `next` word, and the tags spare a get most entry misses.
 *
 * LAYOUT in the segment:
 *
 *   root block   mdRoot (64 bytes: magic, version, geometry, bound,
 *                checksum); then one 64-byte mdShard line per shard (seq
 *                word, table word, lock, counters: all a get reads is in
 *                one dense array, one page for 16 shards); then one mdCold
 *                block of `stride` bytes per shard (CLOCK and sweep hands,
 *                event counters, the lock's undo log of MD_UNDO_CAP
 *                records, and in cache mode the CLOCK reference bitmap of
 *                2^refLog2 bits)
 *   table        2^k uint64_t slots per shard (k >= 4), one block
 *   entry        one block each: mdEntry (the key and value lengths in one
 *                word, the expiry: 16 bytes), the key padded to 8, the
 *                value padded to 8. 16-byte keys with 64-byte values are
 *                96 bytes: membound puts blocks of that class 32-byte
 *                aligned, so a get reads exactly two cache lines of an
 *                entry. No hash: the slot's tag, the key length and the key
 *                decide a lookup, and the rare paths that need a key's
 *                hash (a resize past 2^22 slots, check) hash the key.
 *
 * READS take no lock (seqlock.h). A reader reads the shard's seq word
 * (waiting while it is odd), the table word, the slots and the entry
 * header with acquire loads, compares the key and copies the value out
 * (see mdCopyRacy: memcpy and an acquire fence, or 8-byte acquire loads
 * under ThreadSanitizer), and accepts only if seq has not moved. The
 * common case is one pass without calls: for keys up to 32 bytes and
 * values up to 64 multidictGetView_ (multidictInline.h), which callers
 * compile into their own code when the key length is a constant (a get
 * waits on two dependent DRAM misses, the slot and then the entry, and how
 * many gets' misses the CPU overlaps depends on the instructions between
 * them: inlined, gets run at about 1.0x an unshared in-process table's,
 * called about 0.65x), and mdGetAny for other sizes, caches and
 * ThreadSanitizer builds; anything unusual goes to the full protocol
 * (mdGetSlow). The inline path reads the handle's multidictView_, whose
 * abi word lets a library with another layout turn it off. A reader may see a
 * half-changed or freed table or entry before its validation fails, so every
 * offset it follows is bounds-checked (dkRangeOk) and every loop is bounded; a
 * torn read costs a retry, never a fault. Freed blocks stay mapped, so freeing
 * at once is safe. When seq stays odd the reader looks at the lock: free
 * (the writer died and was rolled back by a reaper that does not know our
 * seq word) means the data is consistent and the odd value is a valid
 * version; held for long means a slow or dead writer: a read-write handle
 * takes the lock once (which waits for a live writer or recovers a dead
 * one) and retries; a read-only handle waits for a live writer and returns
 * BUSY for a dead one. After MD_RETRIES failed validations a read-write
 * reader reads under the lock, so readers cannot starve.
 *
 * WRITES take the shard's fastMutex, make seq odd before the first change
 * (mdSeqBegin: seqlock.h's dkSeqWriteBegin without the locked add), change
 * shared words only through the lock's undo log (dkUndoSet*), and commit
 * with mdSeqEnd. New entries are written with
 * plain (relaxed atomic) stores into a block allocated in flight, and only
 * the words that link it in are logged; small values (<= MD_INPLACE_MAX)
 * of the same padded length are overwritten in place through the log, which
 * makes an overwrite, an incr or a compare-and-set one short critical
 * section without the allocator (the value words are logged as one batch,
 * mdLogRange). Blocks are allocated under the shard lock (shard lock ->
 * allocator lock is the only order ever taken), except for values larger
 * than MD_INPLACE_MAX, which are copied into their block before locking.
 *
 * THREADS. The handle is read-only after open and shared freely. The
 * process's in-flight list is shared by its threads; shm/ makes that safe
 * (a claim is a compare-and-swap, and an entry one lock's operation emptied
 * is not refilled under another lock until that operation commits).
 *
 * OWNERSHIP (RECOVERY.md §1). Every block is owned by the allocator, by this
 * process's in-flight list, or by the map (the root through the directory,
 * tables through their shard's table word, entries through a slot). Link:
 * dkInflightRemove logged under the shard lock in the same critical section
 * as the slot store; unlink: dkInflightAdd logged with the slot change; the
 * block is freed (memboundFreeInflight) only after that section committed.
 * The root goes from in flight to the directory in dkshmObjectCreate.
 *
 * CRASH RECOVERY. A writer killed anywhere leaves its shard lock held by a
 * dead owner and its log describing the uncommitted part; the next locker
 * (or a reaper) rolls it back, and the next locker of ours finds seq odd and
 * repairs it (dkSeqRepair), so every reader that overlapped the dead writer
 * retries. Operations that need several commits keep the map consistent at
 * each: an eviction or a reclaimed expired entry is its own commit; a clear
 * first sets the shard's `clearing` word (readers then see the shard empty,
 * writers finish the clear before anything else), then frees entry after
 * entry. Reaping the dead process frees what its in-flight list still holds.
 *
 * CACHE MODE. With maxBytes > 0 each shard keeps its entry bytes under
 * maxBytes / shards. CLOCK: the hand walks the table; a reader that finds
 * an entry sets the bit of its hash in the shard's reference bitmap (only
 * if not already set, so hot keys cost no write); the hand clears set bits
 * and evicts the first entry whose bit is clear. The bits live in the shard
 * block, never freed while the map exists, so a reader's late store can
 * never land in a block that was freed and reused. Expiry: entries carry a
 * CLOCK_MONOTONIC deadline; an expired entry is never returned, is
 * reclaimed when a read-write get meets it, when a write meets it, by the
 * CLOCK hand, and by a sweep of MD_SWEEP_SLOTS slots on every write to a
 * shard that holds entries with a deadline.
 */
#include "config.h"

#include "memboundInternal.h"
#include "multidict.h"
#include "multidictInternal.h"
#include "segmentInternal.h"
#include "seqlock.h"

#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
/* The system xxHash, its XXH3 inlined from the header (same values as the
 * library's): the hash is a good part of a get. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#define MD_MAGIC 0x3154434944544c4dull /* "MLTDICT1" little-endian */
#define MD_VERSION 2u /* 2: 16-byte entry header, no hash */
#define MD_ROOT_BYTES 64u
#define MD_SHARD_BYTES 64u
#define MD_COLD_BYTES 64u
/* Largest critical section between two commits: an in-place value of
 * MD_INPLACE_MAX bytes (64 records) plus its length, expiry and counters,
 * plus a sweep (two reclaims of 6 records and the hand) and a resize (6). */
#define MD_UNDO_CAP 128u
#define MD_INPLACE_MAX 512u
#define MD_ENTRY_HDR 16u
#define MD_KLEN_BITS 17 /* MULTIDICT_KEY_MAX fits */
#define MD_KLEN_MASK ((1ull << MD_KLEN_BITS) - 1)
#define MD_VLEN_MAX ((1ull << (64 - MD_KLEN_BITS)) - 1)
#define MD_MIN_LOG2 4u
#define MD_MAX_LOG2 40u
#define MD_TAG_BITS 22
#define MD_TAG_MASK ((1ull << MD_TAG_BITS) - 1)
#define MD_OFF_BITS 42
#define MD_OFF_MASK ((1ull << MD_OFF_BITS) - 1)
#define MD_TABLE_OFF_MASK ((1ull << 56) - 1)
#define MD_EMPTY 0ull
#define MD_TOMB 1ull
#define MD_GARBAGE_MAX 8
#define MD_SWEEP_SLOTS 8u
#define MD_SWEEP_MAX 2
#define MD_EVICT_MAX 256 /* evictions one allocation may cost */
#define MD_SPINS 2000    /* odd-seq spins before looking at the writer */
#define MD_RETRIES 64    /* failed validations before reading locked */
#define MD_RO_WAIT_NS (5ull * 1000000000ull)
#define MD_RO_ATTEMPTS 100000 /* a read-only reader's failed validations */
#define MD_REF_MIN_LOG2 9u
#define MD_REF_MAX_LOG2 20u /* <= MD_TAG_BITS: a slot's tag names its bit */
#define MD_TORN 1000 /* internal: a read attempt saw a change, retry */

/* Lock holder's op word in the undo log, for inspection. */
enum { MD_OP_PUT = 1, MD_OP_DELETE, MD_OP_INCR, MD_OP_CLEAR, MD_OP_READ };

typedef struct mdRoot { /* in the segment: the start of the root block */
    uint64_t magic;
    uint32_t version;
    uint32_t shardBits; /* shards = 1 << shardBits */
    uint32_t stride;    /* bytes per shard block, a multiple of 64 */
    uint32_t refLog2;   /* CLOCK bits per shard = 1 << refLog2; 0: none */
    uint32_t undoCap;   /* records of each shard's undo log */
    uint32_t flags;
    uint64_t maxBytes; /* 0: not a cache */
    uint64_t createTimeNs;
    uint64_t checksum; /* XXH3-64 of the fields above */
    uint64_t pad;
} mdRoot;
_Static_assert(sizeof(mdRoot) == MD_ROOT_BYTES, "mdRoot size");

/* A shard's hot line: what readers read, the lock, the counters. The
 * shards' lines are one dense array (for 16 shards one page), so that a
 * get finds its table word in a line that stays cached. */
typedef struct mdShard { /* in the segment, 64 bytes apart */
    uint32_t seq;        /* seqlock: odd while a writer changes the shard */
    uint32_t clearing;   /* 1 while a clear empties the shard (logged) */
    uint64_t table;      /* offset | log2(slots) << 56, 0: none (logged) */
    fastMutex lock;      /* its undo log is in the shard's cold block */
    uint64_t count;      /* entries (logged, like everything below) */
    uint64_t tombs;      /* tombstone slots */
    uint64_t bytes;      /* sum of mdEntrySize over the entries */
    uint64_t ttlCount;   /* entries with an expiry */
} mdShard;
_Static_assert(sizeof(mdShard) == MD_SHARD_BYTES, "mdShard size");

/* A shard's cold block, root->stride bytes apart after the hot lines:
 * writers only. */
typedef struct mdCold { /* in the segment */
    uint64_t hand;      /* CLOCK hand: next slot to look at (logged) */
    uint64_t sweep;     /* expiry sweep: next slot to look at (logged) */
    uint64_t evictions;
    uint64_t expirations;
    uint64_t resizes;
    uint8_t pad[24];
    /* then the lock's undo log (MD_UNDO_CAP records), then in cache mode
     * the CLOCK reference bitmap */
} mdCold;
_Static_assert(sizeof(mdCold) == MD_COLD_BYTES, "mdCold size");

typedef struct mdEntry { /* in the segment: the head of an entry block */
    uint64_t lens;   /* value length << MD_KLEN_BITS | key length: one load
                        gives a reader both, from the same version */
    uint64_t expire; /* CLOCK_MONOTONIC ns; 0: never */
    /* key, padded to 8; value, padded to 8 */
} mdEntry;
_Static_assert(sizeof(mdEntry) == MD_ENTRY_HDR, "mdEntry size");

/* multidictInline.h reads these formats with its own constants. */
_Static_assert(MD_SHARD_BYTES == MULTIDICT_SHARD_LINE_ &&
                   offsetof(mdShard, seq) == 0 &&
                   offsetof(mdShard, clearing) == 4 &&
                   offsetof(mdShard, table) == 8,
               "inline view: shard line");
_Static_assert(MD_TABLE_OFF_MASK == MULTIDICT_TABLE_OFF_MASK_ &&
                   MD_TAG_BITS == MULTIDICT_TAG_BITS_ &&
                   MD_OFF_BITS == MULTIDICT_OFF_BITS_ && MD_EMPTY == 0 &&
                   MD_TOMB == 1,
               "inline view: table and slots");
_Static_assert(MD_ENTRY_HDR == MULTIDICT_ENTRY_HDR_ &&
                   MD_KLEN_BITS == MULTIDICT_KLEN_BITS_ &&
                   offsetof(mdEntry, lens) == 0 &&
                   offsetof(mdEntry, expire) == 8,
               "inline view: entry");
_Static_assert(MULTIDICT_MISS_ > 0 && MULTIDICT_MISS_ != MD_TORN,
               "inline view: MISS is no error code");
_Static_assert(MULTIDICT_KEY_MAX <= MD_KLEN_MASK, "key length field");
_Static_assert(MD_VLEN_MAX >= (1ull << (MD_OFF_BITS + 4)),
               "value length field smaller than the largest segment");

struct multidict { /* per process */
    /* First: what multidictInline.h's fast path reads (a copy of the
     * fields below, in the layout of MULTIDICT_VIEW_ABI_), compiled into
     * callers and into multidictGet. */
    multidictView_ v;
    /* What a get needs, in one line: no chain of loads to the table. */
    uint8_t *base;   /* the segment's mapping (fixed for S's life) */
    uint64_t size;   /* its size */
    mdShard *shards; /* the hot lines */
    uint8_t *colds;  /* the cold blocks */
    dkshm *s;
    membound *mb; /* NULL on a read-only handle */
    mdRoot *root;
    dkoff rootOff;
    uint32_t shardBits;
    uint32_t nShards;
    uint32_t stride;
    uint32_t refLog2;
    uint64_t budget; /* per shard; 0: no bound */
    bool readOnly;
};

/* One locked operation on one shard. */
typedef struct mdOp { /* per process */
    multidict *d;
    dkshm *s;
    mdShard *sh;
    struct mdCold *cold;
    dkUndo *log;
    bool writing; /* seq made odd by us */
    uint64_t now; /* CLOCK_MONOTONIC, 0 until needed */
    int nGarbage; /* blocks in our in-flight list to free */
    dkoff garbage[MD_GARBAGE_MAX];
} mdOp;

/* ---- small helpers ------------------------------------------------------ */

static inline uint64_t mdR8(uint64_t n) {
    return (n + 7) & ~7ull;
}

static inline uint64_t mdEntrySize(uint64_t klen, uint64_t vlen) {
    return MD_ENTRY_HDR + mdR8(klen) + mdR8(vlen);
}

/* mdEntry.lens: both lengths in one word. */
static inline uint64_t mdLens(uint64_t klen, uint64_t vlen) {
    return vlen << MD_KLEN_BITS | klen;
}

static inline uint64_t mdKlen(uint64_t lens) {
    return lens & MD_KLEN_MASK;
}

static inline uint64_t mdVlen(uint64_t lens) {
    return lens >> MD_KLEN_BITS;
}

/* The size of entry E as its header says (under the lock). */
static inline uint64_t mdSizeOf(const mdEntry *e) {
    return mdEntrySize(mdKlen(e->lens), mdVlen(e->lens));
}

static inline void mdRelax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline mdShard *mdShardAt(const multidict *d, uint32_t i) {
    return d->shards + i;
}

static inline mdCold *mdColdOf(const multidict *d, const mdShard *sh) {
    return (mdCold *)(d->colds + (uint64_t)(sh - d->shards) * d->stride);
}

static inline dkUndo *mdColdLog(mdCold *c) {
    return (dkUndo *)((uint8_t *)c + MD_COLD_BYTES);
}

static inline uint64_t *mdRefBits(mdCold *c) {
    return (uint64_t *)((uint8_t *)c + MD_COLD_BYTES +
                        DK_UNDO_BYTES(MD_UNDO_CAP));
}

static inline uint64_t mdHash(const void *key, size_t klen) {
    return XXH3_64bits(key, klen);
}

static inline uint32_t mdShardOf(const multidict *d, uint64_t h) {
    return (uint32_t)((h >> 1) >> (63 - d->shardBits)); /* 0 bits: 0 */
}

static inline uint64_t mdSlotMake(dkoff off, uint64_t h) {
    return ((h & MD_TAG_MASK) << MD_OFF_BITS) | (off >> 4);
}

static inline dkoff mdSlotOff(uint64_t v) {
    return (v & MD_OFF_MASK) << 4;
}

static inline uint64_t mdSlotTag(uint64_t v) {
    return v >> MD_OFF_BITS;
}

static inline uint64_t mdLoad64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline uint32_t mdLoad32(const uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static inline const uint64_t *mdKeyWords(const mdEntry *e) {
    return (const uint64_t *)(e + 1);
}

static inline uint64_t *mdValueWords(mdEntry *e, uint64_t klen) {
    return (uint64_t *)((uint8_t *)(e + 1) + mdR8(klen));
}

/* Write N bytes of SRC into the words at DST (zero padding to 8), with
 * relaxed atomic stores: lock-free readers may be reading a stale view of
 * the same memory. */
static void mdPutWords(uint64_t *dst, const void *src, uint64_t n) {
    const uint8_t *p = src;
    uint64_t full = n / 8;
    for (uint64_t i = 0; i < full; i++) {
        uint64_t w;
        memcpy(&w, p + i * 8, 8);
        __atomic_store_n(&dst[i], w, __ATOMIC_RELAXED);
    }
    if (n & 7) {
        uint64_t w = 0;
        memcpy(&w, p + full * 8, n & 7);
        __atomic_store_n(&dst[full], w, __ATOMIC_RELAXED);
    }
}

/* Copy N bytes from the words at SRC with acquire loads. */
static void mdGetWords(void *dst, const uint64_t *src, uint64_t n) {
    uint8_t *p = dst;
    uint64_t full = n / 8;
    for (uint64_t i = 0; i < full; i++) {
        uint64_t w = mdLoad64(&src[i]);
        memcpy(p + i * 8, &w, 8);
    }
    if (n & 7) {
        uint64_t w = mdLoad64(&src[full]);
        memcpy(p + full * 8, &w, n & 7);
    }
}

/* Whether the N bytes at the words SRC equal B. */
static bool mdWordsEq(const uint64_t *src, const void *b, uint64_t n) {
    const uint8_t *p = b;
    uint64_t full = n / 8;
    for (uint64_t i = 0; i < full; i++) {
        uint64_t w, x = mdLoad64(&src[i]);
        memcpy(&w, p + i * 8, 8);
        if (w != x)
            return false;
    }
    if (n & 7) {
        uint64_t w = 0, x = mdLoad64(&src[full]);
        memcpy(&w, p + full * 8, n & 7);
        uint64_t keep = (1ull << (8 * (n & 7))) - 1; /* little-endian */
        if (__BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__)
            keep = ~0ull << (64 - 8 * (n & 7));
        if ((x & keep) != w)
            return false;
    }
    return true;
}

/* Lock-free readers copy and compare bytes that a writer may be changing,
 * and keep the result only if the seq word then shows no change. Under
 * ThreadSanitizer they do so with 8-byte acquire loads (so that races
 * between threads stay visible to it and nothing it cannot model is
 * used); otherwise with memcpy/memcmp followed by an acquire fence before
 * the validating load: the usual seqlock reader, about three times fewer
 * instructions on the get path. */
#if defined(__SANITIZE_THREAD__)
#define MD_WORD_READS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MD_WORD_READS 1
#endif
#endif

static inline void mdCopyRacy(void *dst, const void *src, uint64_t n) {
#ifdef MD_WORD_READS
    mdGetWords(dst, src, n);
#else
    if (n > 64)
        memcpy(dst, src, n);
    else
        multidictCopy64_(dst, src, n);
#endif
}

static inline bool mdEqRacy(const void *src, const void *b, uint64_t n) {
#ifdef MD_WORD_READS
    return mdWordsEq(src, b, n);
#else
    if (n >= 8 && n <= 16) { /* two overlapping words each side */
        uint64_t a0, a1, b0, b1;
        memcpy(&a0, src, 8);
        memcpy(&b0, b, 8);
        memcpy(&a1, (const uint8_t *)src + n - 8, 8);
        memcpy(&b1, (const uint8_t *)b + n - 8, 8);
        return ((a0 ^ b0) | (a1 ^ b1)) == 0;
    }
    return memcmp(src, b, n) == 0;
#endif
}

/* Between the racy reads and the load that validates them. */
static inline void mdReadFence(void) {
#ifndef MD_WORD_READS
    atomic_thread_fence(memory_order_acquire);
#endif
}

static inline bool mdSeqMoved(const uint32_t *seq, uint32_t start) {
    mdReadFence();
    if (start & 1) /* a stale odd value: see mdReadBegin */
        return __atomic_load_n(seq, __ATOMIC_ACQUIRE) != start;
    return dkSeqReadRetry(seq, start);
}

static uint64_t mdNow(mdOp *op) {
    if (op->now == 0)
        op->now = dkNowNs();
    return op->now;
}

/* TTL in ms to an absolute deadline; 0 for none. */
static uint64_t mdDeadline(uint64_t ttlMs) {
    if (ttlMs == 0)
        return 0;
    uint64_t now = dkNowNs();
    if (ttlMs > (UINT64_MAX - now) / 1000000ull)
        return UINT64_MAX;
    return now + ttlMs * 1000000ull;
}

static int mdFail(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int mdFail(char *why, size_t len, const char *fmt, ...) {
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return DKSHM_CORRUPT;
}

static int mdCheckKey(const multidict *d, const void *key, size_t klen) {
    if (!d || !key || klen == 0)
        return DKSHM_INVALID;
    if (klen > MULTIDICT_KEY_MAX)
        return DKSHM_TOOBIG;
    return DKSHM_OK;
}

/* ---- in flight ---------------------------------------------------------- */

static int mdAllocInflight(multidict *d, uint64_t size, dkoff *out) {
    int rc = memboundAllocInflight(d->mb, size, out);
    DKSHM_CRASHPOINT();
    return rc;
}

static int mdInflightAdd(mdOp *op, dkoff off) {
    int rc = dkInflightAdd(op->s, op->log, off);
    return rc;
}

/* Free entries of this process's in-flight list: whether an allocation
 * that failed FULL could succeed after evicting. */
static int mdInflightFree(dkshm *s) {
    dkProcSlot *p = dkSelfSlot(s);
    int n = 0;
    for (int j = 0; j < DK_INFLIGHT_MAX; j++)
        n += __atomic_load_n(&p->inflight[j], __ATOMIC_RELAXED) == 0;
    return n;
}

/* ---- locking ------------------------------------------------------------ */

static int mdFinishClear(mdOp *op);
static void mdUnlock(mdOp *op);

/* Whether SH's lock names the undo log in its cold block and that log has
 * the capacity the root promises: the shard lines and cold blocks are not
 * under the root's checksum, and a writer appends to the log (and the lock
 * rolls it back) by what these words say. */
static bool mdShardLogOk(const multidict *d, mdShard *sh) {
    dkUndo *log = mdColdLog(mdColdOf(d, sh));
    return __atomic_load_n(&sh->lock.undo, __ATOMIC_RELAXED) ==
               dkOff(d->s, log) &&
           __atomic_load_n(&log->cap, __ATOMIC_RELAXED) == MD_UNDO_CAP;
}

/* seqlock.h's write begin and end with a plain release store instead of
 * an atomic add: only the lock holder writes the seq word (readers only
 * read it, dkSeqRepair runs under the lock too), so the read-modify-write
 * buys nothing, and on x86 each locked instruction is a full barrier that
 * waits for the stores before it (the entry lines of a set, often cache
 * misses): two fewer per write. Ordering is unchanged: every change that
 * follows is a release store (dkUndoSet*, mdLogRange), so a reader that
 * sees one of them sees the odd value too. */
static inline void mdSeqBegin(uint32_t *seq) {
    uint32_t v = __atomic_load_n(seq, __ATOMIC_RELAXED);
    __atomic_store_n(seq, v + 1, __ATOMIC_RELEASE);
    DKSHM_CRASHPOINT();
}

static inline void mdSeqEnd(dkUndo *log, uint32_t *seq) {
    dkUndoCommit(log);
    DKSHM_CRASHPOINT();
    uint32_t v = __atomic_load_n(seq, __ATOMIC_RELAXED);
    __atomic_store_n(seq, v + 1, __ATOMIC_RELEASE);
}

static void mdBegin(mdOp *op) {
    if (!op->writing) {
        mdSeqBegin(&op->sh->seq);
        op->writing = true;
    }
}

/* Commit what is logged so far (seq stays odd), then free the garbage:
 * after the commit nothing can bring those blocks back into the map. */
static void mdCommitMid(mdOp *op) {
    dkUndoCommit(op->log);
    for (int i = 0; i < op->nGarbage; i++)
        memboundFreeInflight(op->d->mb, op->garbage[i]);
    op->nGarbage = 0;
}

/* Room for N more records before the next commit. */
static inline int mdRoom(mdOp *op, uint32_t n) {
    if (dkUndoRoom(op->log) >= n && op->nGarbage < MD_GARBAGE_MAX)
        return DKSHM_OK;
    mdCommitMid(op);
    return dkUndoRoom(op->log) >= n ? DKSHM_OK : DKSHM_CORRUPT;
}

/* Take SH's lock for OP: recover a dead writer (the lock rolls its log
 * back), repair the seq word, finish an interrupted clear. */
static int mdLock(multidict *d, mdShard *sh, mdOp *op, uint32_t what) {
    dkCount(d->s, DKSHM_CTR_WRITES, 1);
    op->d = d;
    op->s = d->s;
    op->sh = sh;
    op->cold = mdColdOf(d, sh);
    op->log = mdColdLog(op->cold);
    op->writing = false;
    op->now = 0;
    op->nGarbage = 0;
    if (d->readOnly)
        return DKSHM_READONLY;
    if (__builtin_expect(!mdShardLogOk(d, sh), 0))
        return DKSHM_CORRUPT; /* damage: multidictCheck says which */
    int rc = fastMutexLock(d->s, &sh->lock);
    if (rc == DKSHM_CORRUPT) {
        /* The log is damaged: the dead writer's work cannot be undone.
         * Holding the lock would stop every writer; multidictCheck says
         * what is left. */
        fastMutexUnlock(d->s, &sh->lock);
        return DKSHM_CORRUPT;
    }
    if (rc < 0)
        return rc;
    /* More records than the log holds: damage. dkUndoRoom would wrap and
     * a writer append past the log. (The log's place and capacity were
     * checked above; nothing but damage changes them.) */
    if (__builtin_expect(__atomic_load_n(&op->log->count, __ATOMIC_RELAXED) >
                             MD_UNDO_CAP,
                         0)) {
        fastMutexUnlock(d->s, &sh->lock);
        return DKSHM_CORRUPT;
    }
    __atomic_store_n(&op->log->op, what, __ATOMIC_RELAXED);
    if (__atomic_load_n(&sh->clearing, __ATOMIC_RELAXED)) {
        /* A clearer died: readers already see the shard empty. */
        if (__atomic_load_n(&sh->seq, __ATOMIC_RELAXED) & 1)
            op->writing = true; /* keep readers out until it is done */
        mdBegin(op);
        rc = mdFinishClear(op);
        if (rc != DKSHM_OK) {
            /* FULL: in-flight list full, the next locker goes on.
             * CORRUPT: a damaged table or entry stops the clear. */
            mdUnlock(op);
            return rc;
        }
        mdSeqEnd(op->log, &sh->seq);
        op->writing = false;
    }
    dkSeqRepair(&sh->seq);
    return DKSHM_OK;
}

/* Commit, make seq even, unlock, then free what was unlinked. */
static void mdUnlock(mdOp *op) {
    if (op->writing)
        mdSeqEnd(op->log, &op->sh->seq);
    op->writing = false;
    fastMutexUnlock(op->s, &op->sh->lock);
    for (int i = 0; i < op->nGarbage; i++) {
        DKSHM_CRASHPOINT();
        memboundFreeInflight(op->d->mb, op->garbage[i]);
    }
    op->nGarbage = 0;
}

/* ---- writers' table access (under the lock) ----------------------------- */

typedef struct mdKey { /* per call */
    const void *key;
    size_t klen;
    uint64_t h;
} mdKey;

typedef struct mdTable { /* per call: a decoded table word */
    uint64_t *slots;
    dkoff off;
    uint64_t mask; /* slots - 1; meaningless when slots is NULL */
    uint32_t log2;
} mdTable;

/* Decode a table word; false if it does not describe a table inside the
 * segment. */
static bool mdTableOf(dkshm *s, uint64_t word, mdTable *t) {
    *t = (mdTable){0};
    if (word == 0)
        return true;
    t->off = word & MD_TABLE_OFF_MASK;
    t->log2 = (uint32_t)(word >> 56);
    if (t->log2 < MD_MIN_LOG2 || t->log2 > MD_MAX_LOG2 || (t->off & 7) ||
        !dkRangeOk(s, t->off, 8ull << t->log2))
        return false;
    t->slots = dkPtr(s, t->off);
    t->mask = (1ull << t->log2) - 1;
    return true;
}

/* Find K in OP's shard. OK with *AT = the slot, or NOTFOUND with *AT = the
 * slot an insert should use (the first tombstone or the empty slot on the
 * probe path; UINT64_MAX without a table), and *TP the decoded table.
 * CORRUPT if the table is bad. */
static int mdFindLocked(mdOp *op, const mdKey *k, uint64_t *at, mdTable *tp) {
    mdTable t;
    *at = UINT64_MAX;
    if (__builtin_expect(!mdTableOf(op->s, op->sh->table, &t), 0))
        return DKSHM_CORRUPT;
    *tp = t;
    if (!t.slots)
        return DKSHM_NOTFOUND;
    uint64_t tag = k->h & MD_TAG_MASK, i = k->h & t.mask;
    for (uint64_t n = 0; n <= t.mask; n++, i = (i + 1) & t.mask) {
        uint64_t v = t.slots[i];
        if (v == MD_EMPTY) {
            if (*at == UINT64_MAX)
                *at = i;
            return DKSHM_NOTFOUND;
        }
        if (v == MD_TOMB) {
            if (*at == UINT64_MAX)
                *at = i;
            continue;
        }
        if (mdSlotTag(v) != tag)
            continue;
        dkoff eo = mdSlotOff(v);
        if (!dkRangeOk(op->s, eo, MD_ENTRY_HDR))
            return DKSHM_CORRUPT;
        const mdEntry *e = dkPtr(op->s, eo);
        uint64_t lens = e->lens;
        if (mdKlen(lens) != k->klen ||
            !dkRangeOk(op->s, eo, MD_ENTRY_HDR + mdR8(k->klen)) ||
            !mdEqRacy(mdKeyWords(e), k->key, k->klen))
            continue;
        /* Callers read (CAS, incr) and overwrite (in place) the value by
         * its length: the whole entry must lie inside the segment. */
        uint64_t vlen = mdVlen(lens);
        if (vlen > op->s->size ||
            !dkRangeOk(op->s, eo, mdEntrySize(k->klen, vlen)))
            return DKSHM_CORRUPT;
        *at = i;
        return DKSHM_OK;
    }
    return DKSHM_CORRUPT; /* no empty slot: the load invariant is broken */
}

/* The entry slot word V names, or NULL if its header would lie outside
 * the segment (damage: writers follow slots under the lock, but a slot
 * word is still data read from the segment). */
static const mdEntry *mdEntryAt(dkshm *s, uint64_t v) {
    dkoff eo = mdSlotOff(v);
    return dkRangeOk(s, eo, MD_ENTRY_HDR) ? dkPtr(s, eo) : NULL;
}

/* The hash of the key of the entry slot word V names (under the lock).
 * False if its key would lie outside the segment. */
static bool mdEntryHash(dkshm *s, uint64_t v, uint64_t *h) {
    const mdEntry *e = mdEntryAt(s, v);
    if (!e)
        return false;
    uint64_t klen = mdKlen(e->lens);
    if (!dkRangeOk(s, mdSlotOff(v), MD_ENTRY_HDR + mdR8(klen)))
        return false;
    *h = mdHash(mdKeyWords(e), klen);
    return true;
}

static bool mdExpired(mdOp *op, const mdEntry *e) {
    uint64_t x = e->expire;
    return x != 0 && x <= mdNow(op);
}

/* Unlink the entry in slot I (into our in-flight list, freed after the
 * commit). EVICT/EXPIRE say which counter to bump. FULL when the in-flight
 * list is full (nothing changed). */
static int mdUnlinkAt(mdOp *op, uint64_t i, bool evict, bool expire) {
    mdShard *sh = op->sh;
    mdTable t;
    if (!mdTableOf(op->s, sh->table, &t) || !t.slots || i > t.mask)
        return DKSHM_CORRUPT; /* nothing changed */
    int rc = mdRoom(op, 8);
    if (rc != DKSHM_OK)
        return rc;
    uint64_t v = t.slots[i];
    dkoff eo = mdSlotOff(v);
    const mdEntry *e = mdEntryAt(op->s, v);
    if (!e)
        return DKSHM_CORRUPT; /* nothing changed */
    uint64_t size = mdSizeOf(e);
    bool ttl = e->expire != 0;
    mdBegin(op);
    rc = mdInflightAdd(op, eo);
    if (rc != DKSHM_OK)
        return rc;
    /* A tombstone only where a probe may have to pass. */
    bool nextEmpty = t.slots[(i + 1) & t.mask] == MD_EMPTY;
    dkUndoSet64(op->s, op->log, &t.slots[i], nextEmpty ? MD_EMPTY : MD_TOMB);
    if (!nextEmpty)
        dkUndoSet64(op->s, op->log, &sh->tombs, sh->tombs + 1);
    dkUndoSet64(op->s, op->log, &sh->count, sh->count - 1);
    dkUndoSet64(op->s, op->log, &sh->bytes, sh->bytes - size);
    if (ttl)
        dkUndoSet64(op->s, op->log, &sh->ttlCount, sh->ttlCount - 1);
    if (evict)
        dkUndoSet64(op->s, op->log, &op->cold->evictions,
                    op->cold->evictions + 1);
    if (expire)
        dkUndoSet64(op->s, op->log, &op->cold->expirations,
                    op->cold->expirations + 1);
    op->garbage[op->nGarbage++] = eo;
    return DKSHM_OK;
}

/* Build a table of 2^LOG2 slots from the current one and swap it in.
 * Everything already logged stays; FULL (allocator or in-flight list) and
 * nothing changed otherwise. */
static int mdResize(mdOp *op, uint32_t log2) {
    mdShard *sh = op->sh;
    dkshm *s = op->s;
    mdTable old;
    if (!mdTableOf(s, sh->table, &old))
        return DKSHM_CORRUPT;
    if (log2 > MD_MAX_LOG2)
        return DKSHM_TOOBIG;
    if (mdInflightFree(s) < (old.slots ? 2 : 1)) /* new and old table */
        return DKSHM_FULL;
    int rc = mdRoom(op, 8);
    if (rc != DKSHM_OK)
        return rc;
    dkoff nt;
    rc = mdAllocInflight(op->d, 8ull << log2, &nt);
    if (rc != DKSHM_OK)
        return rc;
    uint64_t *ns = dkPtr(s, nt), mask = (1ull << log2) - 1;
    for (uint64_t i = 0; i <= mask; i++)
        __atomic_store_n(&ns[i], MD_EMPTY, __ATOMIC_RELAXED);
    uint64_t placed = 0;
    for (uint64_t i = 0; old.slots && i <= old.mask; i++) {
        uint64_t v = old.slots[i];
        if (v == MD_EMPTY || v == MD_TOMB)
            continue;
        uint64_t home = mdSlotTag(v);
        /* More entries than the count said, or (when the tag is not
         * enough and the key is hashed) a key outside the segment:
         * damage, and a probe for a free slot would never end. */
        if (++placed > mask ||
            (log2 > MD_TAG_BITS && !mdEntryHash(s, v, &home))) {
            memboundFreeInflight(op->d->mb, nt);
            return DKSHM_CORRUPT;
        }
        uint64_t j = home & mask;
        while (ns[j] != MD_EMPTY)
            j = (j + 1) & mask;
        __atomic_store_n(&ns[j], v, __ATOMIC_RELAXED);
    }
    DKSHM_CRASHPOINT();
    mdBegin(op);
    if (old.slots) {
        rc = mdInflightAdd(op, old.off);
        if (rc != DKSHM_OK) {
            memboundFreeInflight(op->d->mb, nt);
            return rc;
        }
        op->garbage[op->nGarbage++] = old.off;
    }
    dkUndoSet64(s, op->log, &sh->table, nt | ((uint64_t)log2 << 56));
    dkInflightRemove(s, op->log, nt);
    if (sh->tombs)
        dkUndoSet64(s, op->log, &sh->tombs, 0);
    dkUndoSet64(s, op->log, &op->cold->resizes, op->cold->resizes + 1);
    return DKSHM_OK;
}

/* Make room in the table for one more entry: grow (or purge tombstones)
 * when entries + tombstones + 1 would pass 3/4 of the slots. */
static int mdReserveSlot(mdOp *op) {
    mdShard *sh = op->sh;
    mdTable t;
    if (!mdTableOf(op->s, sh->table, &t))
        return DKSHM_CORRUPT;
    uint64_t slots = t.slots ? t.mask + 1 : 0;
    /* A consistent shard has count + tombs < slots (no table: both 0).
     * Damaged counters would ask for a table past MD_MAX_LOG2. */
    if (sh->count > slots || sh->tombs > slots)
        return DKSHM_CORRUPT;
    if ((sh->count + sh->tombs + 1) * 4 <= slots * 3)
        return DKSHM_OK;
    uint32_t log2 = MD_MIN_LOG2;
    while ((1ull << log2) < (sh->count + 1) * 2) /* load <= 1/2 after */
        log2++;
    return mdResize(op, log2);
}

/* CLOCK: evict (or reclaim, if expired) one entry of the shard other than
 * the one in slot PROTECT. Its own commit; the block is freed at once.
 * NOTFOUND if there is nothing to evict. */
static int mdEvictOne(mdOp *op, uint64_t protect) {
    mdShard *sh = op->sh;
    mdTable t;
    if (!mdTableOf(op->s, sh->table, &t))
        return DKSHM_CORRUPT;
    if (!t.slots || sh->count == 0 || (sh->count == 1 && protect != UINT64_MAX))
        return DKSHM_NOTFOUND;
    uint64_t *bits = op->d->refLog2 ? mdRefBits(op->cold) : NULL;
    uint64_t refMask = (1ull << op->d->refLog2) - 1;
    uint64_t hand = op->cold->hand;
    for (uint64_t n = 0; n <= 2 * t.mask + 1; n++) {
        uint64_t i = (hand + n) & t.mask;
        uint64_t v = t.slots[i];
        if (v == MD_EMPTY || v == MD_TOMB || i == protect)
            continue;
        const mdEntry *e = mdEntryAt(op->s, v);
        if (!e)
            return DKSHM_CORRUPT;
        bool expired = mdExpired(op, e);
        if (!expired && bits) {
            /* The tag's low bits (as mdTouch): no entry to read. */
            uint64_t b = mdSlotTag(v) & refMask;
            uint64_t bit = 1ull << (b & 63);
            if (__atomic_load_n(&bits[b / 64], __ATOMIC_RELAXED) & bit) {
                /* A hint, not state: clearing it needs no log. */
                __atomic_fetch_and(&bits[b / 64], ~bit, __ATOMIC_RELAXED);
                continue;
            }
        }
        int rc = mdUnlinkAt(op, i, !expired, expired);
        if (rc != DKSHM_OK)
            return rc;
        dkUndoSet64(op->s, op->log, &op->cold->hand, hand + n + 1);
        mdCommitMid(op);
        return DKSHM_OK;
    }
    return DKSHM_NOTFOUND;
}

/* Allocate an entry block of SIZE bytes in flight; in cache mode evict
 * (other than slot PROTECT) while the segment is full. */
static int mdAllocEntry(mdOp *op, uint64_t size, uint64_t protect, dkoff *out) {
    for (int evicted = 0;; evicted++) {
        int rc = mdAllocInflight(op->d, size, out);
        if (rc != DKSHM_FULL || !op->d->budget || evicted >= MD_EVICT_MAX ||
            mdInflightFree(op->s) == 0)
            return rc;
        if (mdEvictOne(op, protect) != DKSHM_OK)
            return DKSHM_FULL;
    }
}

/* Reclaim up to MD_SWEEP_MAX expired entries among the next
 * MD_SWEEP_SLOTS slots at the sweep hand (part of the caller's commit). */
static void mdSweepSome(mdOp *op);

static inline void mdSweep(mdOp *op) {
    if (__builtin_expect(op->sh->ttlCount != 0, 0))
        mdSweepSome(op);
}

static void mdSweepSome(mdOp *op) {
    mdShard *sh = op->sh;
    mdTable t;
    if (!mdTableOf(op->s, sh->table, &t) || !t.slots)
        return;
    uint64_t pos = op->cold->sweep;
    int reclaimed = 0;
    uint32_t n;
    for (n = 0; n < MD_SWEEP_SLOTS && reclaimed < MD_SWEEP_MAX; n++) {
        uint64_t i = (pos + n) & t.mask;
        uint64_t v = t.slots[i];
        if (v == MD_EMPTY || v == MD_TOMB)
            continue;
        const mdEntry *e = mdEntryAt(op->s, v);
        if (!e)
            break; /* damage: multidictCheck says where */
        if (!mdExpired(op, e))
            continue;
        if (mdUnlinkAt(op, i, false, true) != DKSHM_OK)
            break;
        reclaimed++;
    }
    if (mdRoom(op, 1) == DKSHM_OK) {
        mdBegin(op);
        dkUndoSet64(op->s, op->log, &op->cold->sweep, pos + n);
    }
}

/* Write a new entry into the fresh block at OFF (nobody can see it yet). */
static void mdFillEntry(dkshm *s, dkoff off, const mdKey *k, const void *value,
                        uint64_t vlen, uint64_t expire) {
    mdEntry *e = dkPtr(s, off);
    __atomic_store_n(&e->lens, mdLens(k->klen, vlen), __ATOMIC_RELAXED);
    __atomic_store_n(&e->expire, expire, __ATOMIC_RELAXED);
    mdPutWords((uint64_t *)(e + 1), k->key, k->klen);
    mdPutWords(mdValueWords(e, k->klen), value, vlen);
    DKSHM_CRASHPOINT();
}

/* Store the N words at SRC (bytes; the last word zero-padded past LEN)
 * into the N words at W through the undo log, as one batch: N records
 * {offset, old value} in the format dkUndoSet64 writes (so dkUndoRollback
 * restores them), then one release store of the count that publishes them
 * all, then the stores. Dying anywhere leaves every changed word recorded;
 * restoring a word not yet changed is harmless. Half the work of N
 * dkUndoSet64 calls. The caller checked the room. */
static void mdLogRange(mdOp *op, uint64_t *w, const uint8_t *src,
                       uint64_t len) {
    dkUndo *u = op->log;
    uint32_t n = (uint32_t)(mdR8(len) / 8);
    uint32_t c = __atomic_load_n(&u->count, __ATOMIC_RELAXED);
    uint64_t at = (8ull << 56) | dkOff(op->s, w);
    dkUndoRec *r = u->rec + c;
    for (uint32_t i = 0; i < n; i++, r++, at += 8) {
        __atomic_store_n(&r->at, at, __ATOMIC_RELAXED);
        __atomic_store_n(&r->old, w[i], __ATOMIC_RELAXED);
    }
    atomic_signal_fence(memory_order_seq_cst);
    __atomic_store_n(&u->count, c + n, __ATOMIC_RELEASE);
    atomic_signal_fence(memory_order_seq_cst);
    DKSHM_CRASHPOINT();
    uint32_t full = (uint32_t)(len / 8);
    for (uint32_t i = 0; i < full; i++) {
        uint64_t x;
        memcpy(&x, src + 8ull * i, 8);
        __atomic_store_n(&w[i], x, __ATOMIC_RELEASE);
        DKSHM_CRASHPOINT();
    }
    if (len & 7) {
        uint64_t x = 0;
        memcpy(&x, src + 8ull * full, len & 7);
        __atomic_store_n(&w[full], x, __ATOMIC_RELEASE);
        DKSHM_CRASHPOINT();
    }
}

/* Overwrite the value of the entry E in place (same padded length). */
static void mdWriteInPlace(mdOp *op, mdEntry *e, const void *value,
                           uint64_t vlen, uint64_t expire) {
    mdBegin(op);
    uint64_t klen = mdKlen(e->lens);
    if (vlen)
        mdLogRange(op, mdValueWords(e, klen), value, vlen);
    if (mdVlen(e->lens) != vlen)
        dkUndoSet64(op->s, op->log, &e->lens, mdLens(klen, vlen));
    if (e->expire != expire) {
        if ((e->expire != 0) != (expire != 0))
            dkUndoSet64(op->s, op->log, &op->sh->ttlCount,
                        op->sh->ttlCount + (expire ? 1 : -1));
        dkUndoSet64(op->s, op->log, &e->expire, expire);
    }
}

/* ---- the write operation ------------------------------------------------ */

enum { MD_W_SET, MD_W_ADD, MD_W_REPLACE, MD_W_CAS, MD_W_INCR };

typedef struct mdWrite { /* per call */
    int mode;
    const void *value;
    uint64_t vlen;
    uint64_t expire;      /* for SET/ADD/REPLACE */
    const void *expected; /* CAS */
    uint64_t expLen;
    int64_t delta; /* INCR */
    int64_t result;
    uint8_t incrBuf[8];
} mdWrite;

/* Decide what the write does given the entry E found (NULL: absent or
 * expired). Fills W's value for INCR. OK to write, or the error. */
static int mdDecide(mdWrite *w, const mdEntry *e) {
    switch (w->mode) {
    case MD_W_ADD:
        return e ? DKSHM_EXISTS : DKSHM_OK;
    case MD_W_REPLACE:
        return e ? DKSHM_OK : DKSHM_NOTFOUND;
    case MD_W_CAS:
        if (!e)
            return DKSHM_NOTFOUND;
        if (mdVlen(e->lens) != w->expLen ||
            !mdWordsEq(mdValueWords((mdEntry *)e, mdKlen(e->lens)),
                       w->expected, w->expLen))
            return DKSHM_EXISTS;
        return DKSHM_OK;
    case MD_W_INCR: {
        int64_t cur = 0;
        if (e) {
            if (mdVlen(e->lens) != 8)
                return DKSHM_TYPE;
            memcpy(&cur, mdValueWords((mdEntry *)e, mdKlen(e->lens)), 8);
        }
        if (__builtin_add_overflow(cur, w->delta, &w->result))
            return DKSHM_INVALID;
        memcpy(w->incrBuf, &w->result, 8);
        w->value = w->incrBuf;
        w->vlen = 8;
        return DKSHM_OK;
    }
    default:
        return DKSHM_OK;
    }
}

/* Start the key's entry on its way before the writer locks. A locked
 * section waits on a DRAM miss for the key's slot and then one for its
 * entry, and the lock's atomic instructions keep both from overlapping
 * anything outside it: sets run miss after miss (perf: about 60% of a set's
 * samples on those two loads). Looked up racily here, as a get does
 * (nothing read is trusted: the offset is bounds-checked and only
 * prefetched, never followed), the slot is cached by the time the lock is
 * taken and the entry's lines (NEED bytes, what the new value takes in
 * place) arrive while it is. About 5% more sets/s (benchDict --only
 * dict:set, alternating builds). */
static inline void mdPrefetch(const multidict *d, const mdShard *sh,
                              uint64_t h, uint64_t need) {
    uint64_t mask;
    const uint64_t *tbl = multidictSlots_(&d->v, mdLoad64(&sh->table), &mask);
    if (!tbl || need > MD_INPLACE_MAX)
        return;
    uint64_t i = h & mask;
    uint64_t tag = (h & MD_TAG_MASK) << MD_OFF_BITS;
    for (int n = 0; n < 8; n++, i = (i + 1) & mask) {
        uint64_t v = mdLoad64(tbl + i);
        if (v == MD_EMPTY)
            return;
        if ((v & ~MD_OFF_MASK) != tag || v == MD_TOMB)
            continue;
        dkoff eo = mdSlotOff(v);
        if (eo + need <= d->size) {
            __builtin_prefetch(d->base + eo, 1);
            __builtin_prefetch(d->base + eo + need - 1, 1);
        }
        return;
    }
}

static int mdWriteOp(multidict *d, const mdKey *k, mdWrite *w) {
    if (d->readOnly)
        return DKSHM_READONLY;
    uint64_t need = mdEntrySize(k->klen, w->vlen);
    if (w->vlen > d->s->size || w->vlen > MD_VLEN_MAX ||
        (d->budget && need > d->budget))
        return DKSHM_TOOBIG;
    mdShard *sh = mdShardAt(d, mdShardOf(d, k->h));
    /* Big values never go in place: copy them in before taking the lock. */
    dkoff fresh = 0;
    if (w->vlen > MD_INPLACE_MAX) {
        int rc = mdAllocInflight(d, need, &fresh);
        if (rc == DKSHM_OK)
            mdFillEntry(d->s, fresh, k, w->value, w->vlen, w->expire);
        else if (rc != DKSHM_FULL || !d->budget)
            return rc;
        /* Cache mode: allocate under the lock, evicting. */
    }
    mdPrefetch(d, sh, k->h, need);
    mdOp op;
    int rc = mdLock(d, sh, &op, w->mode == MD_W_INCR ? MD_OP_INCR : MD_OP_PUT);
    if (rc != DKSHM_OK) {
        if (fresh)
            memboundFreeInflight(d->mb, fresh);
        return rc;
    }
    uint64_t at;
    mdTable t;
    rc = mdFindLocked(&op, k, &at, &t);
    if (rc == DKSHM_CORRUPT)
        goto out;
    bool found = rc == DKSHM_OK;
    mdEntry *e = found ? dkPtr(d->s, mdSlotOff(t.slots[at])) : NULL;
    bool expired = e && mdExpired(&op, e);
    if (w->mode == MD_W_CAS || w->mode == MD_W_INCR) /* keep the expiry */
        w->expire = e && !expired ? e->expire : 0;
    rc = mdDecide(w, expired ? NULL : e);
    if (rc != DKSHM_OK) {
        if (expired) /* reclaim it while we are here */
            mdUnlinkAt(&op, at, false, true);
        goto out;
    }
    need = mdEntrySize(k->klen, w->vlen);
    if (e && !fresh && w->vlen <= MD_INPLACE_MAX &&
        mdR8(w->vlen) == mdR8(mdVlen(e->lens))) {
        if ((rc = mdRoom(&op, MD_INPLACE_MAX / 8 + 4)) != DKSHM_OK)
            goto out;
        if (expired)
            dkUndoSet64(d->s, op.log, &op.cold->expirations,
                        op.cold->expirations + 1);
        mdWriteInPlace(&op, e, w->value, w->vlen, w->expire);
        goto done;
    }
    /* A new entry: make room under the bound first (each eviction its own
     * commit), then the block, then a slot. */
    uint64_t oldSize = e ? mdSizeOf(e) : 0;
    uint64_t protect = found ? at : UINT64_MAX;
    while (d->budget && sh->bytes - oldSize + need > d->budget) {
        if ((rc = mdEvictOne(&op, protect)) != DKSHM_OK) {
            rc = rc == DKSHM_NOTFOUND ? DKSHM_FULL : rc;
            goto out;
        }
    }
    if (!fresh) {
        if ((rc = mdAllocEntry(&op, need, protect, &fresh)) != DKSHM_OK) {
            fresh = 0;
            goto out;
        }
        mdFillEntry(d->s, fresh, k, w->value, w->vlen, w->expire);
    }
    if (!found) {
        rc = mdReserveSlot(&op);
        while (rc == DKSHM_FULL && d->budget && mdInflightFree(op.s) > 0 &&
               mdEvictOne(&op, UINT64_MAX) == DKSHM_OK)
            rc = mdReserveSlot(&op);
        if (rc != DKSHM_OK)
            goto out;
        if ((rc = mdFindLocked(&op, k, &at, &t)) != DKSHM_NOTFOUND) {
            rc = DKSHM_CORRUPT; /* it cannot have appeared */
            goto out;
        }
    }
    if ((rc = mdRoom(&op, 8)) != DKSHM_OK)
        goto out;
    mdBegin(&op);
    uint64_t slotWord = mdSlotMake(fresh, k->h);
    if (found) {
        /* Unlinking the old entry first: it is the step that can fail. */
        bool oldTtl = e->expire != 0;
        if ((rc = mdInflightAdd(&op, mdSlotOff(t.slots[at]))) != DKSHM_OK)
            goto out;
        op.garbage[op.nGarbage++] = mdSlotOff(t.slots[at]);
        dkUndoSet64(d->s, op.log, &t.slots[at], slotWord);
        dkInflightRemove(d->s, op.log, fresh);
        dkUndoSet64(d->s, op.log, &sh->bytes, sh->bytes - oldSize + need);
        if (oldTtl != (w->expire != 0))
            dkUndoSet64(d->s, op.log, &sh->ttlCount,
                        sh->ttlCount + (w->expire ? 1 : -1));
        if (expired)
            dkUndoSet64(d->s, op.log, &op.cold->expirations,
                        op.cold->expirations + 1);
    } else {
        if (t.slots[at] == MD_TOMB)
            dkUndoSet64(d->s, op.log, &sh->tombs, sh->tombs - 1);
        dkUndoSet64(d->s, op.log, &t.slots[at], slotWord);
        dkInflightRemove(d->s, op.log, fresh);
        dkUndoSet64(d->s, op.log, &sh->count, sh->count + 1);
        dkUndoSet64(d->s, op.log, &sh->bytes, sh->bytes + need);
        if (w->expire)
            dkUndoSet64(d->s, op.log, &sh->ttlCount, sh->ttlCount + 1);
    }
    fresh = 0; /* linked */
done:
    mdSweep(&op);
    rc = DKSHM_OK;
out:
    mdUnlock(&op);
    if (fresh)
        memboundFreeInflight(d->mb, fresh);
    return rc;
}

/* ---- optimistic reads --------------------------------------------------- */

/* Wait until SH can be read: *SEQ gets the version to validate against.
 * A read-write handle takes the lock once when a writer holds it for long
 * (that waits for a live writer, or recovers a dead one). */
static int mdReadBegin(multidict *d, mdShard *sh, uint32_t *seq) {
    uint64_t deadline = 0;
    for (uint32_t spins = 0;; spins++) {
        uint32_t v = dkSeqReadBegin(&sh->seq);
        if (!(v & 1)) {
            *seq = v;
            return DKSHM_OK;
        }
        uint32_t w = __atomic_load_n(&sh->lock.word, __ATOMIC_ACQUIRE);
        if (w == 0) {
            /* Odd but unlocked: a writer died and a reaper rolled it back
             * without knowing our seq word. The data is consistent, and
             * the next writer moves seq before changing anything, so this
             * odd value is a version like any other. */
            if (__atomic_load_n(&sh->seq, __ATOMIC_ACQUIRE) == v) {
                *seq = v;
                return DKSHM_OK;
            }
            continue;
        }
        if (spins < MD_SPINS) {
            mdRelax();
            continue;
        }
        if (!d->readOnly) {
            mdOp op;
            int rc = mdLock(d, sh, &op, MD_OP_READ);
            if (rc != DKSHM_OK)
                return rc;
            mdUnlock(&op);
            spins = 0;
            continue;
        }
        /* Read-only: we cannot recover a dead writer. */
        if (!dkOwnerAlive(d->s, w))
            return DKSHM_BUSY;
        uint64_t now = dkNowNs();
        if (!deadline)
            deadline = now + MD_RO_WAIT_NS;
        else if (now > deadline)
            return DKSHM_BUSY;
        sched_yield();
        spins = MD_SPINS / 2;
    }
}

typedef struct mdFound { /* per call: what a lock-free probe found */
    const mdEntry *e;
    uint64_t vlen;
    uint64_t expire;
} mdFound;

/* Look K up in SH as it is now, without the lock. OK (F filled), NOTFOUND,
 * or MD_TORN when what it read cannot be trusted. Nothing is valid before
 * the caller validates the seq word. */
static int mdProbe(multidict *d, mdShard *sh, const mdKey *k, uint32_t seq,
                   mdFound *f) {
    dkshm *s = d->s;
    uint64_t word = mdLoad64(&sh->table);
    if (word == 0 || mdLoad32(&sh->clearing))
        return DKSHM_NOTFOUND;
    mdTable t;
    if (!mdTableOf(s, word, &t))
        return MD_TORN;
    uint64_t tag = k->h & MD_TAG_MASK, i = k->h & t.mask;
    for (uint64_t n = 0; n <= t.mask; n++, i = (i + 1) & t.mask) {
        uint64_t v = mdLoad64(&t.slots[i]);
        if (v == MD_EMPTY)
            return DKSHM_NOTFOUND;
        if ((n & 255) == 255 && mdSeqMoved(&sh->seq, seq))
            return MD_TORN;
        if (v == MD_TOMB || mdSlotTag(v) != tag)
            continue;
        dkoff eo = mdSlotOff(v);
        if (!dkRangeOk(s, eo, MD_ENTRY_HDR))
            return MD_TORN;
        const mdEntry *e = dkPtr(s, eo);
        uint64_t lens = mdLoad64(&e->lens);
        if (mdKlen(lens) != k->klen)
            continue;
        uint64_t vlen = mdVlen(lens);
        if (vlen > s->size ||
            !dkRangeOk(s, eo, MD_ENTRY_HDR + mdR8(k->klen) + mdR8(vlen)))
            return MD_TORN;
        if (!mdEqRacy(mdKeyWords(e), k->key, k->klen))
            continue;
        f->e = e;
        f->vlen = vlen;
        f->expire = mdLoad64(&e->expire);
        return DKSHM_OK;
    }
    return MD_TORN; /* no empty slot: not a consistent table */
}

/* A read-write get met an expired entry: reclaim it under the lock. */
static void mdReclaimExpired(multidict *d, mdShard *sh, const mdKey *k) {
    mdOp op;
    if (mdLock(d, sh, &op, MD_OP_DELETE) != DKSHM_OK)
        return;
    uint64_t at;
    mdTable t;
    if (mdFindLocked(&op, k, &at, &t) == DKSHM_OK) {
        if (mdExpired(&op, dkPtr(d->s, mdSlotOff(t.slots[at]))))
            mdUnlinkAt(&op, at, false, true);
    }
    mdUnlock(&op);
}

static inline void mdTouch(multidict *d, mdShard *sh, uint64_t h) {
    if (!d->refLog2 || d->readOnly)
        return;
    /* The tag's low bits, as mdEvictOne reads them from the slot. */
    uint64_t b = h & ((1ull << d->refLog2) - 1);
    uint64_t *word = &mdRefBits(mdColdOf(d, sh))[b / 64];
    uint64_t bit = 1ull << (b & 63);
    if (!(__atomic_load_n(word, __ATOMIC_RELAXED) & bit))
        __atomic_fetch_or(word, bit, __ATOMIC_RELAXED);
}

static int mdGetSlow(multidict *d, const void *key, size_t klen, void *buf,
                     size_t bufLen, size_t *vlen) __attribute__((noinline));

/* The get of any size, in one pass, for what the small fast path
 * (multidictGetView_ in multidictInline.h, also compiled into callers)
 * does not take: keys over MULTIDICT_INLINE_KEY_ or values over
 * MULTIDICT_INLINE_VALUE_ bytes, a cache (its CLOCK bit is set here), and
 * every get under ThreadSanitizer. The same protocol: a shard nobody is
 * writing, the key found (or not) within 64 slots, no expiry on the entry;
 * anything else, and any doubt, goes to the full protocol (mdGetSlow, a
 * tail call with the same arguments). Each racy read is bounds-checked
 * before it is followed, and validated by the seq word before it is
 * returned. The entry's tag, key length and key decide. */
static __attribute__((noinline)) int mdGetAny(multidict *d, const void *key,
                                              size_t klen, void *buf,
                                              size_t bufLen, size_t *vlen) {
    uint64_t h = mdHash(key, klen);
    const mdShard *sh = d->shards + mdShardOf(d, h);
    uint32_t seq = __atomic_load_n(&sh->seq, __ATOMIC_ACQUIRE);
    uint64_t word = mdLoad64(&sh->table), mask;
    if (__builtin_expect((seq & 1) || mdLoad32(&sh->clearing) != 0, 0))
        goto slow;
    const uint64_t *tbl = multidictSlots_(&d->v, word, &mask);
    if (__builtin_expect(tbl == NULL, 0))
        goto slow;
    uint64_t i = h & mask;
    uint64_t tag = (h & MD_TAG_MASK) << MD_OFF_BITS;
    for (int n = 0; n < 64; n++, i = (i + 1) & mask) {
        uint64_t v = mdLoad64(tbl + i);
        if (__builtin_expect(v == MD_EMPTY, 0)) {
            if (mdSeqMoved(&sh->seq, seq))
                goto slow;
            return DKSHM_NOTFOUND;
        }
        if ((v & ~MD_OFF_MASK) != tag || v == MD_TOMB)
            continue;
        dkoff eo = mdSlotOff(v);
        /* The header and the key lie inside the segment. */
        if (__builtin_expect(eo + MD_ENTRY_HDR + mdR8(klen) > d->size, 0))
            goto slow;
        const mdEntry *e = (const mdEntry *)(d->base + eo);
        uint64_t lens = mdLoad64(&e->lens);
        if (__builtin_expect(mdKlen(lens) != klen, 0))
            continue;
        const uint8_t *ek = (const uint8_t *)(e + 1);
        if (!mdEqRacy(ek, key, klen))
            continue;
        uint64_t vl = mdVlen(lens);
        const uint8_t *ev = ek + mdR8(klen);
        /* An expiry to look at, or a value that would end outside the
         * segment (torn, or damage): the full protocol. */
        if (__builtin_expect(mdLoad64(&e->expire) != 0, 0))
            goto slow;
        if (__builtin_expect(vl > d->size - (uint64_t)(ev - d->base), 0))
            goto slow;
        if (__builtin_expect(vl <= bufLen, 1))
            mdCopyRacy(buf, ev, vl);
        if (mdSeqMoved(&sh->seq, seq))
            goto slow;
        *vlen = (size_t)vl;
        if (__builtin_expect(vl > bufLen, 0))
            return DKSHM_TOOBIG;
        if (d->refLog2 != 0)
            mdTouch(d, (mdShard *)sh, h);
        return DKSHM_OK;
    }
slow:
    return mdGetSlow(d, key, klen, buf, bufLen, vlen);
}

/* The library's multidictGet: the small fast path that callers compile in
 * (it counts its own reads), then the rest. flatten: XXH3 inlined. */
__attribute__((flatten)) DKSHM_API int
multidictGet(multidict *d, const void *key, size_t klen, void *buf,
             size_t bufLen, size_t *vlen) {
#ifndef MD_WORD_READS
    /* Each argument check its own predictable branch. */
    if (__builtin_expect(klen - 1 < MULTIDICT_INLINE_KEY_, 1) &&
        __builtin_expect(d != NULL, 1) && __builtin_expect(key != NULL, 1) &&
        __builtin_expect(vlen != NULL, 1) && (buf || !bufLen)) {
        int rc = multidictGetView_(&d->v, key, klen, buf, bufLen, vlen);
        if (__builtin_expect(rc != MULTIDICT_MISS_, 1))
            return rc;
    }
#endif
    if (!d || !key || !vlen || klen - 1 >= MULTIDICT_KEY_MAX ||
        (!buf && bufLen))
        return mdGetSlow(d, key, klen, buf, bufLen, vlen); /* errors */
    dkCount(d->s, DKSHM_CTR_READS, 1);
    return mdGetAny(d, key, klen, buf, bufLen, vlen);
}

/* The full protocol: wait out or recover writers, retry torn reads, read
 * under the lock when writers keep winning, reclaim an expired entry. */
static int mdGetSlow(multidict *d, const void *key, size_t klen, void *buf,
                     size_t bufLen, size_t *vlen) {
    int rc = mdCheckKey(d, key, klen);
    if (rc != DKSHM_OK)
        return rc;
    if (!vlen || (!buf && bufLen))
        return DKSHM_INVALID;
    mdKey k = {key, klen, mdHash(key, klen)};
    mdShard *sh = mdShardAt(d, mdShardOf(d, k.h));
    mdOp op;
    bool locked = false;
    int stable = 0; /* torn reads while the seq word held still */
    for (int attempt = 0;; attempt++) {
        uint32_t seq;
        if (attempt >= MD_RETRIES && !d->readOnly && !locked) {
            /* Writers keep moving the shard: read under the lock. */
            if ((rc = mdLock(d, sh, &op, MD_OP_READ)) != DKSHM_OK)
                return rc;
            locked = true;
        }
        if (locked)
            seq = __atomic_load_n(&sh->seq, __ATOMIC_ACQUIRE);
        else if ((rc = mdReadBegin(d, sh, &seq)) != DKSHM_OK)
            return rc;
        mdFound f;
        rc = mdProbe(d, sh, &k, seq, &f);
        if (rc == MD_TORN && locked) {
            mdUnlock(&op); /* torn under the lock: damaged */
            return DKSHM_CORRUPT;
        }
        if (rc == MD_TORN) {
            /* Nobody wrote while we read, yet the table or an entry does
             * not hold together: damage, however often we retry. */
            if (!mdSeqMoved(&sh->seq, seq) && ++stable >= 2)
                return DKSHM_CORRUPT;
            if (d->readOnly && attempt > MD_RO_ATTEMPTS)
                return DKSHM_BUSY;
            continue;
        }
        bool expired = false;
        if (rc == DKSHM_OK) {
            expired = f.expire != 0 && f.expire <= dkNowNs();
            if (!expired && f.vlen <= bufLen)
                mdCopyRacy(buf, mdValueWords((mdEntry *)f.e, klen), f.vlen);
        }
        if (!locked && mdSeqMoved(&sh->seq, seq)) {
            if (d->readOnly && attempt > MD_RO_ATTEMPTS)
                return DKSHM_BUSY;
            continue;
        }
        if (locked)
            mdUnlock(&op);
        if (rc == DKSHM_NOTFOUND)
            return rc;
        if (expired) {
            if (!d->readOnly)
                mdReclaimExpired(d, sh, &k);
            return DKSHM_NOTFOUND;
        }
        *vlen = (size_t)f.vlen;
        if (f.vlen > bufLen)
            return DKSHM_TOOBIG;
        mdTouch(d, sh, k.h);
        return DKSHM_OK;
    }
}

/* ---- public writes ------------------------------------------------------ */

static int mdPutChecked(multidict *d, const void *key, size_t klen,
                        const void *value, size_t vlen, uint64_t ttlMs,
                        int mode) {
    int rc = mdCheckKey(d, key, klen);
    if (rc != DKSHM_OK)
        return rc;
    if (!value && vlen)
        return DKSHM_INVALID;
    mdKey k = {key, klen, mdHash(key, klen)};
    mdWrite w = {.mode = mode,
                 .value = value,
                 .vlen = vlen,
                 .expire = mdDeadline(ttlMs)};
    return mdWriteOp(d, &k, &w);
}

DKSHM_API int multidictPut(multidict *d, const void *key, size_t klen,
                           const void *value, size_t vlen, uint64_t ttlMs,
                           uint32_t mode) {
    if (mode > MULTIDICT_REPLACE)
        return DKSHM_INVALID;
    static const int modes[] = {MD_W_SET, MD_W_ADD, MD_W_REPLACE};
    return mdPutChecked(d, key, klen, value, vlen, ttlMs, modes[mode]);
}

DKSHM_API int multidictSet(multidict *d, const void *key, size_t klen,
                           const void *value, size_t vlen) {
    return mdPutChecked(d, key, klen, value, vlen, 0, MD_W_SET);
}

DKSHM_API int multidictAdd(multidict *d, const void *key, size_t klen,
                           const void *value, size_t vlen) {
    return mdPutChecked(d, key, klen, value, vlen, 0, MD_W_ADD);
}

DKSHM_API int multidictReplace(multidict *d, const void *key, size_t klen,
                               const void *value, size_t vlen) {
    return mdPutChecked(d, key, klen, value, vlen, 0, MD_W_REPLACE);
}

DKSHM_API int multidictSetTTL(multidict *d, const void *key, size_t klen,
                              const void *value, size_t vlen, uint64_t ttlMs) {
    return mdPutChecked(d, key, klen, value, vlen, ttlMs, MD_W_SET);
}

DKSHM_API int multidictIncr(multidict *d, const void *key, size_t klen,
                            int64_t delta, int64_t *result) {
    int rc = mdCheckKey(d, key, klen);
    if (rc != DKSHM_OK)
        return rc;
    mdKey k = {key, klen, mdHash(key, klen)};
    mdWrite w = {.mode = MD_W_INCR, .delta = delta, .vlen = 8};
    rc = mdWriteOp(d, &k, &w);
    if (rc == DKSHM_OK && result)
        *result = w.result;
    return rc;
}

DKSHM_API int multidictCompareAndSet(multidict *d, const void *key, size_t klen,
                                     const void *expected, size_t expLen,
                                     const void *value, size_t vlen) {
    int rc = mdCheckKey(d, key, klen);
    if (rc != DKSHM_OK)
        return rc;
    if ((!expected && expLen) || (!value && vlen))
        return DKSHM_INVALID;
    mdKey k = {key, klen, mdHash(key, klen)};
    mdWrite w = {.mode = MD_W_CAS,
                 .value = value,
                 .vlen = vlen,
                 .expected = expected,
                 .expLen = expLen};
    return mdWriteOp(d, &k, &w);
}

DKSHM_API int multidictDelete(multidict *d, const void *key, size_t klen) {
    int rc = mdCheckKey(d, key, klen);
    if (rc != DKSHM_OK)
        return rc;
    mdKey k = {key, klen, mdHash(key, klen)};
    mdShard *sh = mdShardAt(d, mdShardOf(d, k.h));
    mdOp op;
    if ((rc = mdLock(d, sh, &op, MD_OP_DELETE)) != DKSHM_OK)
        return rc;
    uint64_t at;
    mdTable t;
    rc = mdFindLocked(&op, &k, &at, &t);
    if (rc == DKSHM_OK) {
        bool expired = mdExpired(&op, dkPtr(d->s, mdSlotOff(t.slots[at])));
        rc = mdUnlinkAt(&op, at, false, expired);
        if (rc == DKSHM_OK && expired)
            rc = DKSHM_NOTFOUND;
    }
    if (rc == DKSHM_OK || rc == DKSHM_NOTFOUND)
        mdSweep(&op);
    mdUnlock(&op);
    return rc;
}

/* ---- clear -------------------------------------------------------------- */

/* Free every entry of OP's shard, then its table. Each step commits; the
 * clearing word keeps readers seeing an empty shard until the end. */
static int mdFinishClear(mdOp *op) {
    mdShard *sh = op->sh;
    mdTable t;
    if (!mdTableOf(op->s, sh->table, &t))
        return DKSHM_CORRUPT; /* the shard stays cleared for readers */
    if (t.slots) {
        for (uint64_t i = 0; i <= t.mask; i++) {
            uint64_t v = t.slots[i];
            if (v == MD_EMPTY || v == MD_TOMB)
                continue;
            /* FULL: in-flight list full, the next locker goes on;
             * CORRUPT: an entry outside the segment. */
            int rc = mdUnlinkAt(op, i, false, false);
            if (rc != DKSHM_OK)
                return rc;
            if (op->nGarbage == MD_GARBAGE_MAX)
                mdCommitMid(op);
        }
        mdCommitMid(op);
        int rc = mdInflightAdd(op, t.off);
        if (rc != DKSHM_OK)
            return rc;
        op->garbage[op->nGarbage++] = t.off;
        dkUndoSet64(op->s, op->log, &sh->table, 0);
    }
    dkUndoSet64(op->s, op->log, &sh->tombs, 0);
    dkUndoSet64(op->s, op->log, &op->cold->hand, 0);
    dkUndoSet64(op->s, op->log, &op->cold->sweep, 0);
    dkUndoSet32(op->s, op->log, &sh->clearing, 0);
    mdCommitMid(op);
    return DKSHM_OK;
}

DKSHM_API int multidictClear(multidict *d) {
    if (!d)
        return DKSHM_INVALID;
    if (d->readOnly)
        return DKSHM_READONLY;
    for (uint32_t i = 0; i < d->nShards; i++) {
        mdShard *sh = mdShardAt(d, i);
        mdOp op;
        int rc = mdLock(d, sh, &op, MD_OP_CLEAR);
        if (rc != DKSHM_OK)
            return rc;
        if (sh->table) {
            mdBegin(&op);
            dkUndoSet32(d->s, op.log, &sh->clearing, 1);
            mdCommitMid(&op); /* from here the shard is empty */
            rc = mdFinishClear(&op);
        }
        mdUnlock(&op);
        if (rc != DKSHM_OK)
            return rc;
    }
    return DKSHM_OK;
}

/* ---- count, stats ------------------------------------------------------- */

DKSHM_API int multidictCount(multidict *d, uint64_t *count) {
    if (!d || !count)
        return DKSHM_INVALID;
    uint64_t n = 0;
    for (uint32_t i = 0; i < d->nShards; i++) {
        mdShard *sh = mdShardAt(d, i);
        if (!__atomic_load_n(&sh->clearing, __ATOMIC_RELAXED))
            n += __atomic_load_n(&sh->count, __ATOMIC_RELAXED);
    }
    *count = n;
    return DKSHM_OK;
}

DKSHM_API int multidictGetShardStats(multidict *d, uint32_t index,
                                     multidictShardStats *out) {
    if (!d || !out || index >= d->nShards)
        return DKSHM_INVALID;
    mdShard *sh = mdShardAt(d, index);
    *out = (multidictShardStats){0};
    out->count = __atomic_load_n(&sh->count, __ATOMIC_RELAXED);
    out->bytes = __atomic_load_n(&sh->bytes, __ATOMIC_RELAXED);
    out->tombstones = __atomic_load_n(&sh->tombs, __ATOMIC_RELAXED);
    mdCold *c = mdColdOf(d, sh);
    out->evictions = __atomic_load_n(&c->evictions, __ATOMIC_RELAXED);
    out->expirations = __atomic_load_n(&c->expirations, __ATOMIC_RELAXED);
    out->resizes = __atomic_load_n(&c->resizes, __ATOMIC_RELAXED);
    uint64_t word = __atomic_load_n(&sh->table, __ATOMIC_RELAXED);
    uint32_t log2 = (uint32_t)(word >> 56);
    out->slots = word && log2 <= MD_MAX_LOG2 ? 1ull << log2 : 0;
    if (out->slots)
        out->load = (double)(out->count + out->tombstones) / (double)out->slots;
    fastMutexState ls;
    if (fastMutexInspect(d->s, &sh->lock, &ls) == DKSHM_OK) {
        out->recoveries = ls.recoveries;
        out->locked = ls.held;
        out->ownerDead = ls.held && ls.ownerDead;
    }
    return DKSHM_OK;
}

DKSHM_API int multidictGetStats(multidict *d, multidictStats *out) {
    if (!d || !out)
        return DKSHM_INVALID;
    *out = (multidictStats){0};
    out->shards = d->nShards;
    out->maxBytes = d->root->maxBytes;
    out->minShardCount = UINT64_MAX;
    for (uint32_t i = 0; i < d->nShards; i++) {
        mdShard *sh = mdShardAt(d, i);
        multidictShardStats ss = {0};
        ss.count = __atomic_load_n(&sh->count, __ATOMIC_RELAXED);
        ss.bytes = __atomic_load_n(&sh->bytes, __ATOMIC_RELAXED);
        ss.tombstones = __atomic_load_n(&sh->tombs, __ATOMIC_RELAXED);
        uint64_t word = __atomic_load_n(&sh->table, __ATOMIC_RELAXED);
        uint32_t log2 = (uint32_t)(word >> 56);
        ss.slots = word && log2 <= MD_MAX_LOG2 ? 1ull << log2 : 0;
        out->count += ss.count;
        out->bytes += ss.bytes;
        out->tombstones += ss.tombstones;
        out->slots += ss.slots;
        out->tableBytes += 8 * ss.slots;
        mdCold *c = mdColdOf(d, sh);
        out->evictions += __atomic_load_n(&c->evictions, __ATOMIC_RELAXED);
        out->expirations += __atomic_load_n(&c->expirations, __ATOMIC_RELAXED);
        out->resizes += __atomic_load_n(&c->resizes, __ATOMIC_RELAXED);
        out->recoveries +=
            __atomic_load_n(&sh->lock.recoveries, __ATOMIC_RELAXED);
        if (ss.count < out->minShardCount)
            out->minShardCount = ss.count;
        if (ss.count > out->maxShardCount)
            out->maxShardCount = ss.count;
        if (ss.slots) {
            double load = (double)(ss.count + ss.tombstones) / (double)ss.slots;
            if (load > out->maxLoad)
                out->maxLoad = load;
        }
    }
    return DKSHM_OK;
}

/* ---- iterate ------------------------------------------------------------ */

typedef struct mdBuf { /* per process: a growable byte buffer */
    uint8_t *p;
    size_t len, cap;
} mdBuf;

static bool mdBufReserve(mdBuf *b, size_t more) {
    if (more > SIZE_MAX / 2 - b->len)
        return false;
    if (b->len + more <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

/* Records in the copy: klen (8 bytes), vlen (8), key, value, each padded. */
static int mdCopyShard(multidict *d, mdShard *sh, uint32_t seq, mdBuf *b,
                       uint64_t now) {
    b->len = 0;
    uint64_t word = mdLoad64(&sh->table);
    if (word == 0 || mdLoad32(&sh->clearing))
        return DKSHM_OK;
    mdTable t;
    if (!mdTableOf(d->s, word, &t))
        return MD_TORN;
    /* What a consistent shard can hold: more means a torn read. */
    uint64_t limit = mdLoad64(&sh->bytes) + 16 * (t.mask + 1);
    for (uint64_t i = 0; i <= t.mask; i++) {
        if ((i & 1023) == 1023 && mdSeqMoved(&sh->seq, seq))
            return MD_TORN;
        uint64_t v = mdLoad64(&t.slots[i]);
        if (v == MD_EMPTY || v == MD_TOMB)
            continue;
        dkoff eo = mdSlotOff(v);
        if (!dkRangeOk(d->s, eo, MD_ENTRY_HDR))
            return MD_TORN;
        const mdEntry *e = dkPtr(d->s, eo);
        uint64_t lens = mdLoad64(&e->lens);
        uint64_t klen = mdKlen(lens), vlen = mdVlen(lens);
        uint64_t expire = mdLoad64(&e->expire);
        if (klen == 0 || klen > MULTIDICT_KEY_MAX || vlen > d->s->size ||
            !dkRangeOk(d->s, eo, mdEntrySize(klen, vlen)))
            return MD_TORN;
        if (expire && expire <= now)
            continue;
        uint64_t rec = 16 + mdR8(klen) + mdR8(vlen);
        if (b->len + rec > limit)
            return MD_TORN;
        if (!mdBufReserve(b, rec))
            return DKSHM_FULL;
        uint8_t *p = b->p + b->len;
        memcpy(p, &klen, 8);
        memcpy(p + 8, &vlen, 8);
        mdGetWords(p + 16, mdKeyWords(e), mdR8(klen));
        mdGetWords(p + 16 + mdR8(klen), mdValueWords((mdEntry *)e, klen),
                   mdR8(vlen));
        b->len += rec;
    }
    return DKSHM_OK;
}

DKSHM_API int multidictIterate(multidict *d, multidictIterFn fn, void *ctx) {
    if (!d || !fn)
        return DKSHM_INVALID;
    mdBuf b = {0};
    int rc = DKSHM_OK;
    for (uint32_t i = 0; i < d->nShards && rc == DKSHM_OK; i++) {
        mdShard *sh = mdShardAt(d, i);
        int stable = 0; /* torn copies while the seq word held still */
        for (int attempt = 0;; attempt++) {
            mdOp op;
            bool locked = attempt >= MD_RETRIES && !d->readOnly;
            uint32_t seq;
            if (locked) {
                if ((rc = mdLock(d, sh, &op, MD_OP_READ)) != DKSHM_OK)
                    break;
                seq = __atomic_load_n(&sh->seq, __ATOMIC_ACQUIRE);
            } else if ((rc = mdReadBegin(d, sh, &seq)) != DKSHM_OK) {
                break;
            }
            rc = mdCopyShard(d, sh, seq, &b, dkNowNs());
            if (locked) {
                mdUnlock(&op);
                if (rc == MD_TORN) /* torn under the lock: damaged */
                    rc = DKSHM_CORRUPT;
            } else if (rc != DKSHM_FULL && mdSeqMoved(&sh->seq, seq)) {
                rc = MD_TORN;
            } else if (rc == MD_TORN && ++stable >= 2) {
                /* Nobody wrote while we copied, yet the shard does not
                 * hold together: damage, however often we retry. */
                rc = DKSHM_CORRUPT;
            }
            if (rc == MD_TORN && d->readOnly && attempt > MD_RO_ATTEMPTS)
                rc = DKSHM_BUSY;
            if (rc != MD_TORN)
                break;
        }
        if (rc != DKSHM_OK)
            break;
        for (size_t at = 0; at < b.len;) {
            uint64_t klen, vlen;
            memcpy(&klen, b.p + at, 8);
            memcpy(&vlen, b.p + at + 8, 8);
            const uint8_t *key = b.p + at + 16;
            if (!fn(ctx, key, klen, key + mdR8(klen), vlen)) {
                free(b.p);
                return DKSHM_OK;
            }
            at += 16 + mdR8(klen) + mdR8(vlen);
        }
    }
    free(b.p);
    return rc;
}

/* ---- open and close ----------------------------------------------------- */

static uint64_t mdRootSum(const mdRoot *r) {
    return XXH3_64bits(r, offsetof(mdRoot, checksum));
}

/* Bytes of a cold block. */
static uint32_t mdStride(uint32_t refLog2) {
    uint64_t bytes = MD_COLD_BYTES + DK_UNDO_BYTES(MD_UNDO_CAP) +
                     (refLog2 ? (1ull << refLog2) / 8 : 0);
    return (uint32_t)((bytes + 63) & ~63ull);
}

/* Bytes of a root block: header, hot lines, cold blocks. */
static uint64_t mdRootBytes(uint32_t shardBits, uint32_t stride) {
    return MD_ROOT_BYTES + ((uint64_t)MD_SHARD_BYTES << shardBits) +
           ((uint64_t)stride << shardBits);
}

/* Validate the root at OFF and fill the handle. */
static int mdAdopt(multidict *d, dkshm *s, dkoff off) {
    if (off < s->hdr->heap || !dkRangeOk(s, off, MD_ROOT_BYTES) || (off & 7))
        return DKSHM_CORRUPT;
    mdRoot *r = dkPtr(s, off);
    mdRoot copy;
    mdGetWords(&copy, (const uint64_t *)r, sizeof copy);
    if (copy.magic != MD_MAGIC || copy.checksum != mdRootSum(&copy))
        return DKSHM_CORRUPT;
    if (copy.version != MD_VERSION)
        return DKSHM_VERSION;
    if (copy.shardBits > 12 || copy.undoCap != MD_UNDO_CAP ||
        (copy.refLog2 &&
         (copy.refLog2 < MD_REF_MIN_LOG2 || copy.refLog2 > MD_REF_MAX_LOG2)) ||
        copy.stride != mdStride(copy.refLog2) ||
        !dkRangeOk(s, off, mdRootBytes(copy.shardBits, copy.stride)))
        return DKSHM_CORRUPT;
    d->base = s->base;
    d->size = s->size;
    d->shards = (mdShard *)((uint8_t *)r + MD_ROOT_BYTES);
    d->colds = (uint8_t *)r + MD_ROOT_BYTES +
               ((uint64_t)MD_SHARD_BYTES << copy.shardBits);
    d->s = s;
    d->root = r;
    d->rootOff = off;
    d->shardBits = copy.shardBits;
    d->nShards = 1u << copy.shardBits;
    d->stride = copy.stride;
    d->refLog2 = copy.refLog2;
    d->budget = copy.maxBytes >> copy.shardBits;
    if (copy.maxBytes && d->budget == 0)
        d->budget = 1;
    d->readOnly = dkshmReadOnly(s);
    /* A cache's gets set CLOCK bits: the inline path leaves them to the
     * library (abi 0 sends every get there). */
    d->v = (multidictView_){
        .abi = copy.maxBytes ? 0 : MULTIDICT_VIEW_ABI_,
        .shardBits = d->shardBits,
        .base = d->base,
        .size = d->size,
        .shards = (const uint8_t *)d->shards,
        .forkGenNow = &dkForkGeneration,
        .forkGen = &s->forkGen,
        .counters = &s->counters,
    };
    return DKSHM_OK;
}

/* Allocate (in flight) and initialise a root for OPT. */
static int mdMakeRoot(dkshm *s, membound *mb, const multidictOptions *opt,
                      dkoff *out) {
    uint32_t shards =
        opt && opt->shards ? opt->shards : MULTIDICT_SHARDS_DEFAULT;
    uint64_t maxBytes = opt ? opt->maxBytes : 0;
    uint32_t bits = 0;
    while ((1u << bits) < shards)
        bits++;
    uint32_t refLog2 = 0;
    if (maxBytes) {
        /* About one bit per 64 bytes of a shard's share. */
        refLog2 = MD_REF_MIN_LOG2;
        while (refLog2 < MD_REF_MAX_LOG2 &&
               (1ull << refLog2) * 64 < (maxBytes >> bits))
            refLog2++;
    }
    uint32_t stride = mdStride(refLog2);
    uint64_t bytes = mdRootBytes(bits, stride);
    dkoff off;
    int rc = memboundAllocInflight(mb, bytes, &off);
    if (rc != DKSHM_OK)
        return rc;
    uint8_t *p = dkPtr(s, off);
    memset(p, 0, bytes); /* nobody can see it yet */
    mdRoot *r = (mdRoot *)p;
    r->magic = MD_MAGIC;
    r->version = MD_VERSION;
    r->shardBits = bits;
    r->stride = stride;
    r->refLog2 = refLog2;
    r->undoCap = MD_UNDO_CAP;
    r->maxBytes = maxBytes;
    r->createTimeNs = dkRealNs();
    r->checksum = mdRootSum(r);
    uint8_t *colds = p + MD_ROOT_BYTES + ((uint64_t)MD_SHARD_BYTES << bits);
    for (uint32_t i = 0; i < (1u << bits); i++) {
        mdShard *sh = (mdShard *)(p + MD_ROOT_BYTES) + i;
        dkUndo *log = mdColdLog((mdCold *)(colds + (uint64_t)i * stride));
        dkUndoInit(log, MD_UNDO_CAP);
        rc = fastMutexInit(s, &sh->lock, dkOff(s, log));
        if (rc != DKSHM_OK)
            break;
    }
    if (rc != DKSHM_OK) {
        memboundFreeInflight(mb, off);
        return rc;
    }
    *out = off;
    return DKSHM_OK;
}

/* dkshmObjectOpen's root maker and discarder; the open flags are its own. */
_Static_assert(MULTIDICT_CREATE == DKSHM_OBJ_CREATE &&
                   MULTIDICT_EXCL == DKSHM_OBJ_EXCL,
               "open flags");
typedef struct mdMakeCtx {
    multidict *d;
    dkshm *s;
    const multidictOptions *opt;
} mdMakeCtx;

static int mdMake(void *ctx, dkoff *root) {
    mdMakeCtx *c = ctx;
    return mdMakeRoot(c->s, c->d->mb, c->opt, root);
}

static void mdDiscard(void *ctx, dkoff root) {
    memboundFreeInflight(((mdMakeCtx *)ctx)->d->mb, root);
}

DKSHM_API int multidictOpen(dkshm *s, const char *name,
                            const multidictOptions *opt, uint32_t flags,
                            multidict **out) {
    if (out)
        *out = NULL;
    if (!s || !out || (flags & ~(MULTIDICT_CREATE | MULTIDICT_EXCL)) ||
        ((flags & MULTIDICT_EXCL) && !(flags & MULTIDICT_CREATE)))
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    if (opt && (opt->flags != 0 || opt->shards > MULTIDICT_SHARDS_MAX ||
                (opt->shards & (opt->shards - 1)) != 0))
        return DKSHM_INVALID;
    multidict *d = calloc(1, sizeof *d);
    if (!d)
        return DKSHM_SYSTEM;
    if (!dkshmReadOnly(s) && !(d->mb = memboundForSegment(s))) {
        free(d);
        return DKSHM_FULL;
    }
    mdMakeCtx mc = {d, s, opt};
    dkoff root;
    rc = dkshmObjectOpen(s, name, MULTIDICT_TYPE, flags, mdMake, mdDiscard, &mc,
                         &root, NULL);
    if (rc == DKSHM_OK)
        rc = mdAdopt(d, s, root);
    if (rc != DKSHM_OK) {
        free(d);
        return rc;
    }
    *out = d;
    return DKSHM_OK;
}

DKSHM_API int multidictClose(multidict *d) {
    free(d);
    return DKSHM_OK;
}

dkoff multidictRootOff(const multidict *d) {
    return d ? d->rootOff : 0;
}

/* ---- check -------------------------------------------------------------- */

typedef struct mdCheckCtx { /* per call */
    dkoff *offs;
    size_t n, cap;
    char *why;
    size_t whyLen;
} mdCheckCtx;

static int mdCmpOff(const void *a, const void *b) {
    dkoff x = *(const dkoff *)a, y = *(const dkoff *)b;
    return x < y ? -1 : x > y;
}

/* Whether shard I's lock and undo log are its own (mdShardLogOk), with
 * the reason if not. */
static int mdCheckLog(multidict *d, uint32_t idx, char *why, size_t wl) {
    mdShard *sh = mdShardAt(d, idx);
    dkUndo *log = mdColdLog(mdColdOf(d, sh));
    if (__atomic_load_n(&sh->lock.undo, __ATOMIC_RELAXED) != dkOff(d->s, log))
        return mdFail(why, wl, "shard %u: lock has a foreign undo log", idx);
    uint32_t cap = __atomic_load_n(&log->cap, __ATOMIC_RELAXED);
    if (cap != MD_UNDO_CAP)
        return mdFail(why, wl, "shard %u: undo log capacity %u", idx, cap);
    return DKSHM_OK;
}

/* Check shard I as it is now (locked, or optimistically: then a CORRUPT
 * verdict only counts if the seq word did not move). */
static int mdCheckShard(multidict *d, uint32_t idx, mdCheckCtx *c) {
    dkshm *s = d->s;
    mdShard *sh = mdShardAt(d, idx);
    char *why = c->why;
    size_t wl = c->whyLen;
    int lrc = mdCheckLog(d, idx, why, wl);
    if (lrc != DKSHM_OK)
        return lrc;
    if (mdLoad32(&sh->clearing))
        return mdFail(why, wl, "shard %u: clear left unfinished", idx);
    mdTable t;
    if (!mdTableOf(s, mdLoad64(&sh->table), &t))
        return mdFail(why, wl, "shard %u: bad table word %#llx", idx,
                      (unsigned long long)sh->table);
    uint64_t count = 0, tombs = 0, bytes = 0, ttl = 0;
    if (t.slots && t.off < s->hdr->heap)
        return mdFail(why, wl, "shard %u: table outside the heap", idx);
    for (uint64_t i = 0; t.slots && i <= t.mask; i++) {
        uint64_t v = mdLoad64(&t.slots[i]);
        if (v == MD_EMPTY)
            continue;
        if (v == MD_TOMB) {
            tombs++;
            continue;
        }
        dkoff eo = mdSlotOff(v);
        if (eo < s->hdr->heap || (eo & 15) || !dkRangeOk(s, eo, MD_ENTRY_HDR))
            return mdFail(why, wl, "shard %u slot %llu: bad offset %#llx", idx,
                          (unsigned long long)i, (unsigned long long)eo);
        const mdEntry *e = dkPtr(s, eo);
        uint64_t lens = mdLoad64(&e->lens);
        uint64_t klen = mdKlen(lens), vlen = mdVlen(lens);
        if (klen == 0 || klen > MULTIDICT_KEY_MAX || vlen > s->size ||
            !dkRangeOk(s, eo, mdEntrySize(klen, vlen)))
            return mdFail(why, wl,
                          "shard %u slot %llu: bad lengths key %llu value "
                          "%llu",
                          idx, (unsigned long long)i, (unsigned long long)klen,
                          (unsigned long long)vlen);
        uint8_t *key = malloc(klen);
        if (!key)
            return DKSHM_FULL;
        mdGetWords(key, mdKeyWords(e), klen);
        uint64_t h = mdHash(key, klen);
        free(key);
        if (mdShardOf(d, h) != idx)
            return mdFail(why, wl, "shard %u slot %llu: key of shard %u", idx,
                          (unsigned long long)i, mdShardOf(d, h));
        if (mdSlotTag(v) != (h & MD_TAG_MASK))
            return mdFail(why, wl, "shard %u slot %llu: bad tag", idx,
                          (unsigned long long)i);
        /* Reachable: no empty slot between home and here, and no earlier
         * slot on the way holds the same key. */
        for (uint64_t j = h & t.mask, n = 0; j != i;
             j = (j + 1) & t.mask, n++) {
            uint64_t u = mdLoad64(&t.slots[j]);
            if (u == MD_EMPTY || n > t.mask)
                return mdFail(why, wl,
                              "shard %u slot %llu: unreachable from home", idx,
                              (unsigned long long)i);
            if (u != MD_TOMB && mdSlotTag(u) == mdSlotTag(v)) {
                dkoff fo = mdSlotOff(u);
                const mdEntry *f = dkPtr(s, fo);
                if (dkRangeOk(s, fo, mdEntrySize(klen, 0)) &&
                    mdKlen(mdLoad64(&f->lens)) == klen) {
                    uint8_t *a = malloc(mdR8(klen));
                    if (!a)
                        return DKSHM_FULL;
                    mdGetWords(a, mdKeyWords(e), klen);
                    bool dup = mdWordsEq(mdKeyWords(f), a, klen);
                    free(a);
                    if (dup)
                        return mdFail(
                            why, wl, "shard %u: key in slots %llu and %llu",
                            idx, (unsigned long long)j, (unsigned long long)i);
                }
            }
        }
        if (c->n == c->cap) {
            size_t cap = c->cap ? 2 * c->cap : 1024;
            dkoff *o = realloc(c->offs, cap * sizeof *o);
            if (!o)
                return DKSHM_FULL;
            c->offs = o;
            c->cap = cap;
        }
        c->offs[c->n++] = eo;
        count++;
        bytes += mdEntrySize(klen, vlen);
        ttl += mdLoad64(&e->expire) != 0;
    }
    uint64_t slots = t.slots ? t.mask + 1 : 0;
    if (t.slots && count + tombs >= slots)
        return mdFail(why, wl, "shard %u: table has no empty slot", idx);
    if (count != mdLoad64(&sh->count) || tombs != mdLoad64(&sh->tombs) ||
        bytes != mdLoad64(&sh->bytes) || ttl != mdLoad64(&sh->ttlCount))
        return mdFail(
            why, wl,
            "shard %u: counters (entries %llu, tombstones %llu, "
            "bytes %llu, ttl %llu) differ from the table (%llu, "
            "%llu, %llu, %llu)",
            idx, (unsigned long long)sh->count, (unsigned long long)sh->tombs,
            (unsigned long long)sh->bytes, (unsigned long long)sh->ttlCount,
            (unsigned long long)count, (unsigned long long)tombs,
            (unsigned long long)bytes, (unsigned long long)ttl);
    if (d->budget && bytes > d->budget)
        return mdFail(why, wl, "shard %u: %llu bytes over the bound %llu", idx,
                      (unsigned long long)bytes, (unsigned long long)d->budget);
    /* No block in two slots, no two blocks overlapping. Within the shard
     * only: shards are checked one after the other, so a block freed by
     * one and reused by another in between is no damage (and a block in
     * two shards would fail the "key of shard" test above). */
    if (c->n > 1)
        qsort(c->offs, c->n, sizeof *c->offs, mdCmpOff);
    for (size_t i = 1; i < c->n; i++) {
        if (c->offs[i] == c->offs[i - 1])
            return mdFail(why, wl, "shard %u: entry %#llx in two slots", idx,
                          (unsigned long long)c->offs[i]);
        if (c->offs[i] < c->offs[i - 1] + MD_ENTRY_HDR)
            return mdFail(why, wl, "shard %u: entries %#llx and %#llx overlap",
                          idx, (unsigned long long)c->offs[i - 1],
                          (unsigned long long)c->offs[i]);
    }
    return DKSHM_OK;
}

DKSHM_API int multidictCheck(multidict *d, char *why, size_t whyLen) {
    if (why && whyLen)
        why[0] = '\0';
    if (!d)
        return DKSHM_INVALID;
    mdRoot copy;
    mdGetWords(&copy, (const uint64_t *)d->root, sizeof copy);
    if (copy.magic != MD_MAGIC || copy.checksum != mdRootSum(&copy) ||
        copy.shardBits != d->shardBits)
        return mdFail(why, whyLen, "root: bad magic or checksum");
    mdCheckCtx c = {.why = why, .whyLen = whyLen};
    int rc = DKSHM_OK;
    for (uint32_t i = 0; i < d->nShards && rc == DKSHM_OK; i++) {
        mdShard *sh = mdShardAt(d, i);
        for (int attempt = 0;; attempt++) {
            c.n = 0;
            mdOp op;
            uint32_t seq = 0;
            if (!d->readOnly) {
                /* mdLock refuses a shard whose log is not its own. */
                if ((rc = mdCheckLog(d, i, why, whyLen)) != DKSHM_OK)
                    break;
                rc = mdLock(d, sh, &op, MD_OP_READ);
                if (rc == DKSHM_CORRUPT)
                    rc = mdFail(why, whyLen,
                                "shard %u: cannot be locked (damaged undo "
                                "log or unfinished clear)",
                                i);
                if (rc != DKSHM_OK)
                    break;
                if (__atomic_load_n(&op.log->count, __ATOMIC_RELAXED) != 0)
                    rc = mdFail(why, whyLen, "shard %u: undo log not empty", i);
                else if (__atomic_load_n(&sh->seq, __ATOMIC_RELAXED) & 1)
                    rc = mdFail(why, whyLen, "shard %u: seq odd under lock", i);
                else
                    rc = mdCheckShard(d, i, &c);
                mdUnlock(&op);
                break;
            }
            if ((rc = mdReadBegin(d, sh, &seq)) != DKSHM_OK)
                break;
            rc = mdCheckShard(d, i, &c);
            if (!mdSeqMoved(&sh->seq, seq))
                break;
            if (attempt >= MD_RETRIES) {
                rc = DKSHM_BUSY;
                break;
            }
        }
    }
    free(c.offs);
    return rc;
}

/* ---- ownership walk ----------------------------------------------------- */

int multidictForEachBlock(multidict *d, multidictBlockFn fn, void *ctx) {
    if (!d || !fn)
        return DKSHM_INVALID;
    int rc = fn(ctx, d->rootOff, mdRootBytes(d->shardBits, d->stride),
                MULTIDICT_BLOCK_ROOT);
    for (uint32_t i = 0; i < d->nShards && rc == DKSHM_OK; i++) {
        mdShard *sh = mdShardAt(d, i);
        mdOp op;
        bool locked = false;
        if (!d->readOnly) {
            if ((rc = mdLock(d, sh, &op, MD_OP_READ)) != DKSHM_OK)
                break;
            locked = true;
        }
        mdTable t;
        if (!mdTableOf(d->s, mdLoad64(&sh->table), &t)) {
            rc = DKSHM_CORRUPT;
        } else if (t.slots) {
            rc = fn(ctx, t.off, 8 * (t.mask + 1), MULTIDICT_BLOCK_TABLE);
            for (uint64_t j = 0; j <= t.mask && rc == DKSHM_OK; j++) {
                uint64_t v = mdLoad64(&t.slots[j]);
                if (v == MD_EMPTY || v == MD_TOMB)
                    continue;
                dkoff eo = mdSlotOff(v);
                if (!dkRangeOk(d->s, eo, MD_ENTRY_HDR)) {
                    rc = DKSHM_CORRUPT;
                    break;
                }
                const mdEntry *e = dkPtr(d->s, eo);
                uint64_t lens = mdLoad64(&e->lens);
                rc = fn(ctx, eo, mdEntrySize(mdKlen(lens), mdVlen(lens)),
                        MULTIDICT_BLOCK_ENTRY);
            }
        }
        if (locked)
            mdUnlock(&op);
    }
    return rc;
}
