/* multimap.c — an ordered map: a B+tree of offsets in a dkshm segment.
 *
 * STRUCTURE. A B+tree of 4 KiB nodes (membound blocks of one page). Keys
 * are compared bytewise (memcmp, then length); int64 keys are stored as
 * the 8 big-endian bytes of (value ^ 2^63), whose bytewise order is the
 * numeric order, so below the API every key is bytes.
 *
 * A node is a 64-byte header, a 128-byte order permutation, 128 bytes of
 * key fingerprints (leaves) and 118 slots of 32 bytes:
 *
 *   slot = { p0, p1: the first 16 key bytes as big-endian words, zero
 *                    padded (two integer compares order most keys);
 *            meta:   key length << 47 | offset of a separator key block;
 *            ref:    leaf: the entry block; inner node: the child node }
 *
 * The slots are not kept sorted; perm[0 .. count) lists their indices in
 * key order. Putting a key in a node writes one free slot and shifts the
 * permutation (16 words at most), instead of moving every slot after it.
 * Because sorted neighbours are not neighbours in memory, a binary search
 * would touch a cache line per probe; two 128-byte side tables cut that:
 * a leaf keeps a fingerprint byte per slot and a bitmap of the slots in
 * use, so an exact lookup scans two lines and compares one slot (about
 * 1.3 on average); an inner node keeps the first key word of every 8th
 * position, so its search narrows to 8 positions from two lines first.
 * An inner node's slot i holds child i and the smallest key that child may
 * hold; the key of position 0 is unused (cleared: "minus infinity").
 * Leaves are chained both ways (next/prev) for iteration; the header keeps
 * the first and last leaf.
 *
 *   entry block   {klen, kind, vlen} (16 bytes), the key, the value, each
 *                 padded to 8: one per key, never changed once linked (an
 *                 overwrite links a new entry). 16-byte keys with 64-byte
 *                 values take 96 bytes.
 *   key block     {klen, kind, 0}, the key: an inner separator longer than
 *                 16 bytes. Leaf splits choose the shortest separator
 *                 between the halves (a prefix of the right half's first
 *                 key), so most separators fit in their slot.
 *   header block  mmHeader (320 bytes: geometry, the reader-visible words
 *                 root/height/count, counters, the lock) and the lock's
 *                 undo log (MM_UNDO_CAP records): 32 KiB.
 *
 * Fill: a leaf split at the rightmost leaf with the new key last keeps the
 * left node full (ascending loads pack leaves full); otherwise the split
 * point is the middle give or take 8 slots, whichever gives the shortest
 * separator. Deletes keep non-root nodes at MM_MIN (1/4) or more: an
 * underfull node merges into a sibling when both fit in one node,
 * otherwise it borrows up to MM_BORROW_MAX slots from it (only a leaf
 * borrow may need a new separator block; if that cannot be allocated the
 * leaf stays underfull, never empty). A root with one child is replaced by
 * it.
 *
 * READS take no lock (seqlock.h): read the header's seq word, walk from the
 * root with acquire loads, copy the result out, and accept it only if seq
 * has not moved. A reader may meet a half-changed or freed node before its
 * validation fails, so every offset it follows is bounds-checked, every
 * node's magic and level are checked against the level expected (so a walk
 * is at most `height` steps), every count and index bounded; a torn read
 * costs a retry. A walk that fails its checks while seq did not move is
 * real damage: CORRUPT. Freed blocks stay mapped (punched pages read as
 * zeros), so freeing at once is safe. When seq stays odd the reader looks
 * at the lock: free means a dead writer was rolled back by a reaper and
 * the map is consistent (the next writer moves seq on); held by a dead
 * process: a read-write handle takes the lock once (which recovers it); a
 * read-only one waits a while, then BUSY. After MM_RETRIES failed
 * validations a read-write reader reads under the lock, so a reader cannot
 * starve.
 *
 * WRITES take the map's fastMutex and run in two phases. Phase 1 changes
 * nothing: it walks the tree, decides what the operation will do (splits
 * up to the root, merges and borrows up to the root), and allocates every
 * block it will need in flight (memboundAllocInflight). Phase 2 makes seq
 * odd, changes live words only through the undo log (dkUndoSet*: slots,
 * permutation words, counts, links, header words), fills new nodes and
 * blocks with plain (release atomic) stores while nobody can see them, and
 * links them with a few logged words; dkSeqWriteEnd commits. Nothing in
 * phase 2 allocates, so nothing there fails but an in-flight list found
 * full, which rolls the operation back (dkUndoRollback) and returns FULL.
 * The two phases keep a rule the undo log needs: an in-flight entry
 * cleared under our log (a link) could be reused by the allocator's log
 * and then restored by our rollback over the allocator's block, so no
 * allocation may run between our first change and our commit.
 *
 * A split, a merge and a borrow each move a block of slots: slots written
 * into a live node are logged (4 words each), slots written into a new
 * node are not; MM_BORROW_MAX and MM_MIN bound the records of a level, and
 * phase 1 checks the log has room for the whole plan before it starts.
 *
 * OWNERSHIP (RECOVERY.md §1). Every block is owned by the allocator, by a
 * process's in-flight list, or by the map: the header through the
 * directory, nodes through their parent's slot (the root through the
 * header), entries through a leaf slot, key blocks through an inner slot.
 * Link: dkInflightRemove logged in the same critical section as the word
 * that links the block; unlink: dkInflightAdd logged with the unlinking
 * change; blocks are freed (memboundFreeInflight) only after the commit.
 * A map is created empty (root 0), so creating it links one block: the
 * header, moved from in flight into the directory by dkshmObjectCreate.
 *
 * DUPLICATE copies under the source's lock (so the copy is one instant of
 * the source; readers go on). The copy's header hangs off the source's
 * header (pendingDup, logged) while it is filled through the ordinary
 * insert path under the copy's own lock, then it is bound to its name,
 * then pendingDup is cleared. Whoever next takes the source lock and finds
 * pendingDup set knows the copier died (it held that lock throughout): if
 * the name is bound to the copy the copy is complete and only the pointer
 * is cleared; otherwise the copy is emptied, one logged delete at a time,
 * and freed. No block of a copy is ever unowned.
 *
 * CRASH RECOVERY. A writer killed anywhere leaves the lock held by a dead
 * owner and its log describing everything uncommitted; the next locker
 * (or a reaper) rolls it back, and the next locker of ours finds seq odd
 * and repairs it (dkSeqRepair), so every reader that overlapped the dead
 * writer retries. Reaping the dead process then frees what its in-flight
 * list still holds.
 *
 * THREADS. In-flight entries are per process and shared by its threads;
 * shm/ makes that safe (a claim is a compare-and-swap, and an entry one
 * lock's operation emptied is not refilled under another lock until that
 * operation commits), so writers of different maps run in parallel.
 */
#include "config.h"

#include "memboundInternal.h"
#include "multimap.h"
#include "multimapInternal.h"
#include "segmentInternal.h"
#include "seqlock.h"

#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#define MM_MAGIC 0x3150414d49544c4dull /* "MLTIMAP1" little-endian */
#define MM_VERSION 1u
#define MM_NODE_MAGIC 0x4e4d4d44u /* "DMMN" */
#define MM_NODE_BYTES 4096u
#define MM_SLOTS 118u
#define MM_PERM_WORDS 16u
#define MM_FP_WORDS 16u
#define MM_MIN (MM_SLOTS / 4)
#define MM_BORROW_MAX 32u
#define MM_WINDOW 8u      /* split point search, slots each side */
#define MM_MAX_LEVELS 24u /* height + 1 at most */
#define MM_HDR_BYTES 320u
#define MM_UNDO_CAP 2024u
#define MM_BLOCK_BYTES (MM_HDR_BYTES + DK_UNDO_BYTES(MM_UNDO_CAP))
#define MM_ENTRY_HDR 16u
#define MM_KIND_ENTRY 0x45u /* 'E' */
#define MM_KIND_KEY 0x4bu   /* 'K' */
#define MM_KLEN_SHIFT 47
#define MM_OFF_MASK ((1ull << MM_KLEN_SHIFT) - 1)
#define MM_INLINE 16u
#define MM_FRESH_MAX 40
#define MM_GARBAGE_MAX 64
#define MM_SPINS 2000 /* odd-seq spins before looking at the lock */
#define MM_RETRIES 64 /* failed validations before reading locked */
#define MM_RO_WAIT_NS (5ull * 1000000000ull)
#define MM_RO_ATTEMPTS 1000000 /* a read-only reader's failed validations */
#define MM_TORN 1000           /* internal: a read saw something inconsistent */
#define MM_EQ 100              /* internal seek mode: exact match */
#define MM_EMPTY 1001 /* internal: a versioned map with no version yet */

_Static_assert(MM_SLOTS <= 8 * MM_PERM_WORDS, "permutation too small");
_Static_assert(MM_BLOCK_BYTES <= 32768, "header block past 32 KiB");
_Static_assert(MULTIMAP_KEY_MAX < (1u << (64 - MM_KLEN_SHIFT)),
               "key length does not fit the slot");
_Static_assert(DKSHM_MAX_CAPACITY <= MM_OFF_MASK, "offsets do not fit");

/* What the lock holder is doing, in the undo log's op word. */
enum {
    MM_OP_INSERT = 1,
    MM_OP_DELETE,
    MM_OP_DUP,
    MM_OP_CLEANUP,
    MM_OP_READ,
    MM_OP_PIN,
    MM_OP_DRAFT,
    MM_OP_PUBLISH
};

typedef struct mmSlot { /* in the segment: 32 bytes */
    uint64_t p0, p1;    /* key bytes 0-7 and 8-15, big-endian, zero padded */
    uint64_t meta;      /* key length << 47 | separator key block (inner) */
    dkoff ref;          /* leaf: entry block; inner: child node */
} mmSlot;

typedef struct mmNode { /* in the segment: one 4 KiB block */
    uint32_t magic;     /* MM_NODE_MAGIC */
    uint32_t level;     /* 0: leaf */
    uint32_t count;     /* slots in use: perm bytes [0, count) */
    uint32_t pad0;
    dkoff owner;      /* the map's header block */
    dkoff next, prev; /* leaves: neighbours in key order, 0: none */
    uint64_t live[2]; /* leaves: bit i set iff slot i is in use */
    uint64_t pad1;
    uint64_t perm[MM_PERM_WORDS]; /* byte i (bits 8i..8i+7 of word i/8):
                                     the slot at position i */
    uint64_t fp[MM_FP_WORDS];     /* leaves: byte i, the fingerprint of the
                                     key in slot i (mmFp); inner nodes:
                                     word j >= 1, p0 of position 8j */
    mmSlot slot[MM_SLOTS];
} mmNode;
_Static_assert(sizeof(mmNode) == MM_NODE_BYTES, "node is not 4 KiB");

typedef struct mmEntry { /* in the segment: an entry or a key block */
    uint32_t klen;
    uint32_t kind; /* MM_KIND_ENTRY or MM_KIND_KEY */
    uint64_t vlen; /* 0 for key blocks */
    /* key, padded to 8; value, padded to 8 */
} mmEntry;

typedef struct mmHeader { /* in the segment: the start of the map block */
    /* Fixed at creation and covered by `checksum`. */
    uint64_t magic;
    uint32_t version;
    uint32_t keyMode;
    uint32_t undoCap;
    uint32_t nodeBytes;
    uint64_t createTimeNs;
    uint32_t hflags; /* MM_H_...: what kind of map block this is */
    uint32_t pad0a;
    uint64_t checksum; /* XXH3-64 of the fields above */
    uint64_t pad0[2];
    /* Read by readers (seq, height, root, leaves at the ends, count). */
    uint32_t seq;
    uint32_t height; /* levels above the leaves */
    dkoff root;      /* 0: empty */
    dkoff firstLeaf;
    dkoff lastLeaf;
    uint64_t count;
    uint64_t pad1[3];
    /* Writers' counters and the copy in progress. */
    uint64_t leaves, inner, keyBlocks, keyBytes, entryBytes;
    dkoff pendingDup;
    dkoff anchor;    /* versioned maps: the mmAnchor block, 0 until used */
    dkoff versionOf; /* versions: the header of their versioned map */
    fastMutex lock;  /* its undo log follows the header */
    uint64_t pad3[6];
    char name[64]; /* the name it was created under */
} mmHeader;
_Static_assert(sizeof(mmHeader) == MM_HDR_BYTES, "header size");

/* mmHeader.hflags */
#define MM_H_VERSIONED                                                         \
    0x1u                  /* a versioned map: its tree stays empty; the        \
                             versions hang off its mmAnchor */
#define MM_H_VERSION 0x2u /* one version of a versioned map */

/* What a handle is on. */
enum {
    MM_HANDLE_MAP = 0,
    MM_HANDLE_ANCHOR,
    MM_HANDLE_SNAPSHOT,
    MM_HANDLE_DRAFT
};

struct multimap { /* per process */
    dkshm *s;
    membound *mb; /* NULL on a read-only handle */
    mmHeader *h;
    dkUndo *log;
    dkoff off;  /* the header block */
    dkoff heap; /* nothing of ours lies below */
    bool readOnly;
    bool intKeys;
    uint32_t kind;   /* MM_HANDLE_... */
    dkoff anchorOff; /* snapshots and drafts: their versioned map */
};

/* A slot being moved: its new value and where it lives now. */
typedef struct mmItem { /* per process */
    mmSlot v;
    mmNode *src; /* node it is in now, NULL for a new slot */
    uint32_t phys;
} mmItem;

/* One locked change of one tree. */
typedef struct mmOp { /* per process */
    multimap *t;
    dkshm *s;
    mmHeader *h;
    dkUndo *log;
    bool writing; /* changing: in-flight mutex held (and seq odd) */
    bool quiet;   /* changing words no reader looks at: seq untouched */
    bool ok;      /* outcome, for mmRelease */
    int nFresh;
    dkoff fresh[MM_FRESH_MAX]; /* allocated in flight by this op */
    bool linked[MM_FRESH_MAX];
    int nGarbage;
    dkoff garbage[MM_GARBAGE_MAX]; /* unlinked into flight by this op */
    int spareNext; /* fresh[] index of the next preallocated node */
    /* The walk: path[l] is the inner node at level l, pos[l] the position
     * taken in it, rightmost[l] whether it is the last node of its level. */
    uint32_t height;
    mmNode *path[MM_MAX_LEVELS];
    dkoff pathOff[MM_MAX_LEVELS];
    uint32_t pos[MM_MAX_LEVELS];
    bool rightmost[MM_MAX_LEVELS];
} mmOp;


#define LD64(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LD32(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
/* Stores into blocks nobody can see yet. Release, not relaxed: the block
 * may be memory a stale optimistic reader still reads; a reader that sees
 * one of these stores must also see the seq change of the writer that
 * freed the block (free on x86, needed on weaker CPUs). */
#define ST64(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define ST32(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

/* ---- small helpers ------------------------------------------------------ */

static inline uint64_t mmR8(uint64_t n) {
    return (n + 7) & ~7ull;
}

static inline uint64_t mmEntrySize(uint64_t klen, uint64_t vlen) {
    return MM_ENTRY_HDR + mmR8(klen) + mmR8(vlen);
}

static inline uint32_t mmKlen(uint64_t meta) {
    return (uint32_t)(meta >> MM_KLEN_SHIFT);
}

static inline dkoff mmKoff(uint64_t meta) {
    return meta & MM_OFF_MASK;
}

static inline uint64_t mmMeta(uint32_t klen, dkoff koff) {
    return (uint64_t)klen << MM_KLEN_SHIFT | koff;
}

/* A byte of hash of a key's first 16 bytes and length: an exact lookup in a
 * leaf compares only the slots whose byte matches (keys longer than 16
 * bytes that share their first 16 share it too, and are told apart by the
 * full compare). */
static inline uint32_t mmFp(uint64_t k0, uint64_t k1, uint32_t len) {
    uint64_t h =
        k0 * 0x9e3779b97f4a7c15ull ^ (k1 + len) * 0xc2b2ae3d27d4eb4full;
    h ^= h >> 29;
    return (uint32_t)(h >> 56);
}

static inline uint32_t mmFpOf(const mmSlot *v) {
    return mmFp(v->p0, v->p1, (uint32_t)(v->meta >> MM_KLEN_SHIFT));
}

static inline void mmRelax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The first min(N, 8) bytes at P as the high bytes of a big-endian word. */
static inline uint64_t mmBE(const uint8_t *p, size_t n) {
    uint8_t b[8] = {0};
    memcpy(b, p, n < 8 ? n : 8);
    uint64_t v;
    memcpy(&v, b, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline void mmPutBE(uint8_t *p, uint64_t v) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}

/* Copy N bytes out of the segment at SRC (8-aligned, readable up to the
 * next multiple of 8) with whole-word atomic loads. */
static void mmCopyOut(void *dst, const uint8_t *src, size_t n) {
    uint8_t *d = dst;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w = LD64((const uint64_t *)(const void *)(src + i));
        memcpy(d + i, &w, 8);
    }
    if (i < n) {
        uint64_t w = LD64((const uint64_t *)(const void *)(src + i));
        memcpy(d + i, &w, n - i);
    }
}

/* Copy N bytes into a block nobody can see yet (DST 8-aligned), padding
 * the last word with zeros. */
static void mmCopyIn(uint8_t *dst, const void *src, size_t n) {
    const uint8_t *s = src;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        ST64((uint64_t *)(void *)(dst + i), w);
    }
    if (i < n) {
        uint64_t w = 0;
        memcpy(&w, s + i, n - i);
        ST64((uint64_t *)(void *)(dst + i), w);
    }
}

/* ---- keys --------------------------------------------------------------- */

/* A key as the tree sees it: bytes (int64 keys already transformed). */
typedef struct mmKey { /* per process; not to be copied (B may point at
                          IBUF) */
    uint64_t k0, k1;
    const uint8_t *b;
    uint32_t len;
    uint8_t ibuf[8];
} mmKey;

static void mmKeyInit(mmKey *k, const uint8_t *b, uint32_t len) {
    k->b = b;
    k->len = len;
    k->k0 = mmBE(b, len);
    k->k1 = len > 8 ? mmBE(b + 8, len - 8) : 0;
}

static void mmIntToKey(int64_t v, uint8_t out[8]) {
    mmPutBE(out, (uint64_t)v ^ (1ull << 63));
}

static int64_t mmKeyToInt(const uint8_t in[8]) {
    return (int64_t)(mmBE(in, 8) ^ (1ull << 63));
}

/* The caller's key as a tree key. INVALID, TOOBIG. */
static int mmUserKey(const multimap *m, const void *key, size_t klen,
                     mmKey *k) {
    if (!key)
        return DKSHM_INVALID;
    if (m->intKeys) {
        if (klen != 8)
            return DKSHM_INVALID;
        int64_t v;
        memcpy(&v, key, 8);
        mmIntToKey(v, k->ibuf);
        mmKeyInit(k, k->ibuf, 8);
        return DKSHM_OK;
    }
    if (klen == 0)
        return DKSHM_INVALID;
    if (klen > MULTIMAP_KEY_MAX)
        return DKSHM_TOOBIG;
    mmKeyInit(k, key, (uint32_t)klen);
    return DKSHM_OK;
}

/* ---- reading nodes (safe against torn and damaged data) ----------------- */

static inline mmNode *mmNodeAt(const multimap *t, dkoff off, uint32_t level) {
    if ((off & (MM_NODE_BYTES - 1)) || off < t->heap ||
        !dkRangeOk(t->s, off, MM_NODE_BYTES))
        return NULL;
    mmNode *n = dkPtr(t->s, off);
    if (LD32(&n->magic) != MM_NODE_MAGIC || LD32(&n->level) != level)
        return NULL;
    return n;
}

static inline uint32_t mmPerm(const mmNode *n, uint32_t pos) {
    return (uint32_t)(LD64(&n->perm[pos >> 3]) >> ((pos & 7) * 8)) & 0xffu;
}

/* The slot at position POS, or NULL if its index is out of range. */
static inline mmSlot *mmSlotAt(mmNode *n, uint32_t pos) {
    uint32_t i = mmPerm(n, pos);
    return i < MM_SLOTS ? &n->slot[i] : NULL;
}

/* The key bytes of the entry or key block at OFF, which must hold a key of
 * LEN bytes of kind KIND; NULL if it does not. */
static const uint8_t *mmBlockKey(const multimap *t, dkoff off, uint32_t len,
                                 uint32_t kind) {
    if ((off & 7) || off < t->heap ||
        !dkRangeOk(t->s, off, MM_ENTRY_HDR + mmR8(len)))
        return NULL;
    const mmEntry *e = dkPtr(t->s, off);
    if (LD32(&e->klen) != len || LD32(&e->kind) != kind)
        return NULL;
    return (const uint8_t *)e + MM_ENTRY_HDR;
}

/* Bytes [16, ...) of A (caller memory) against B (8-aligned, in the
 * segment); both longer than 16 bytes with equal first 16. */
static int mmCmpTail(const uint8_t *a, uint32_t alen, const uint8_t *b,
                     uint32_t blen) {
    uint32_t n = alen < blen ? alen : blen;
    for (uint32_t i = MM_INLINE; i < n; i += 8) {
        uint64_t w = LD64((const uint64_t *)(const void *)(b + i));
        uint8_t bb[8];
        memcpy(bb, &w, 8);
        uint32_t c = n - i < 8 ? n - i : 8;
        int r = memcmp(a + i, bb, c);
        if (r)
            return r < 0 ? -1 : 1;
    }
    return alen < blen ? -1 : alen > blen;
}

/* KEY against the key of slot SL (of a leaf when LEAF): -1, 0, 1, or
 * MM_TORN when a block it needs is not what the slot says. */
static int mmCmp(const multimap *t, const mmKey *k, const mmSlot *sl,
                 bool leaf) {
    uint64_t p0 = LD64(&sl->p0);
    if (k->k0 != p0)
        return k->k0 < p0 ? -1 : 1;
    uint64_t p1 = LD64(&sl->p1);
    if (k->k1 != p1)
        return k->k1 < p1 ? -1 : 1;
    uint64_t meta = LD64(&sl->meta);
    uint32_t slen = mmKlen(meta);
    if (k->len <= MM_INLINE && slen <= MM_INLINE)
        return k->len < slen ? -1 : k->len > slen;
    /* Same first 16 bytes: a key of at most 16 bytes is a prefix of the
     * longer one. */
    if (slen <= MM_INLINE)
        return 1;
    if (k->len <= MM_INLINE)
        return -1;
    dkoff blk = leaf ? LD64(&sl->ref) : mmKoff(meta);
    const uint8_t *kb =
        mmBlockKey(t, blk, slen, leaf ? MM_KIND_ENTRY : MM_KIND_KEY);
    if (!kb)
        return MM_TORN;
    return mmCmpTail(k->b, k->len, kb, slen);
}

/* In inner node N of CNT slots, the position of the child that may hold
 * KEY: the last position whose key is <= KEY (position 0 always is). */
static int mmChildPos(const multimap *t, mmNode *n, uint32_t cnt,
                      const mmKey *k, uint32_t *out) {
    /* The samples (p0 of every 8th position, in two lines) narrow the
     * search: a sample below KEY's first word is a separator below KEY, a
     * sample above it one above KEY; equal says nothing. */
    uint32_t lo = 1, hi = cnt;
    for (uint32_t j = 1; 8 * j < cnt; j++) {
        uint64_t smp = LD64(&n->fp[j]);
        if (smp < k->k0) {
            lo = 8 * j + 1;
        } else if (smp > k->k0) {
            hi = 8 * j;
            break;
        }
    }
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        mmSlot *sl = mmSlotAt(n, mid);
        if (!sl)
            return MM_TORN;
        int c = mmCmp(t, k, sl, false);
        if (c == MM_TORN)
            return MM_TORN;
        if (c >= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *out = lo - 1;
    return DKSHM_OK;
}

/* In leaf N of CNT slots, the first position whose key is >= KEY, and
 * whether it is equal. */
static int mmLowerBound(const multimap *t, mmNode *n, uint32_t cnt,
                        const mmKey *k, uint32_t *out, bool *eq) {
    uint32_t lo = 0, hi = cnt;
    uint32_t eqPos = UINT32_MAX;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        mmSlot *sl = mmSlotAt(n, mid);
        if (!sl)
            return MM_TORN;
        int c = mmCmp(t, k, sl, true);
        if (c == MM_TORN)
            return MM_TORN;
        if (c > 0) {
            lo = mid + 1;
        } else {
            if (c == 0)
                eqPos = mid;
            hi = mid;
        }
    }
    *out = lo;
    *eq = eqPos == lo;
    return DKSHM_OK;
}

/* In leaf N, the slot holding exactly KEY (*OUT NULL if none): only live
 * slots whose fingerprint byte matches are compared. The fingerprints are
 * two cache lines, scanned eight at a time (SWAR: a byte of x is zero iff
 * it matched; the test may flag a byte above a match too, which the
 * compare rejects, but never misses one). */
static int mmLeafFind(const multimap *t, mmNode *n, const mmKey *k,
                      mmSlot **out) {
    uint64_t live0 = LD64(&n->live[0]), live1 = LD64(&n->live[1]);
    uint64_t want = mmFp(k->k0, k->k1, k->len) * 0x0101010101010101ull;
    *out = NULL;
    for (uint32_t j = 0; j < (MM_SLOTS + 7) / 8; j++) {
        uint64_t x = LD64(&n->fp[j]) ^ want;
        uint64_t z = (x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull;
        while (z) {
            uint32_t p = j * 8 + ((uint32_t)__builtin_ctzll(z) >> 3);
            z &= z - 1;
            if (p >= MM_SLOTS)
                break;
            if (!(((p < 64 ? live0 >> p : live1 >> (p - 64))) & 1))
                continue;
            int c = mmCmp(t, k, &n->slot[p], true);
            if (c == MM_TORN)
                return MM_TORN;
            if (c == 0) {
                *out = &n->slot[p];
                return DKSHM_OK;
            }
        }
    }
    return DKSHM_OK;
}

/* Start loading the lines of the node at OFF that a walk reads first: the
 * header, and the fingerprints of a leaf or the permutation of an inner
 * node. Only a hint: nothing is read. */
static inline void mmPrefetch(const multimap *t, dkoff off, bool leaf) {
    if (off < t->heap || off >= t->s->size - MM_NODE_BYTES)
        return;
    const uint8_t *p = (const uint8_t *)dkPtr(t->s, off);
    __builtin_prefetch(p);
    if (leaf) {
        __builtin_prefetch(p + offsetof(mmNode, fp));
        __builtin_prefetch(p + offsetof(mmNode, fp) + 64);
    } else {
        __builtin_prefetch(p + offsetof(mmNode, perm));
        __builtin_prefetch(p + offsetof(mmNode, perm) + 64);
        __builtin_prefetch(p + offsetof(mmNode, fp));
        __builtin_prefetch(p + offsetof(mmNode, fp) + 64);
    }
}

/* Walk from the root to the leaf that may hold KEY. *LEAF is NULL for an
 * empty map. With OP, records the path in it. */
static int mmDescend(const multimap *t, const mmKey *k, mmNode **leaf,
                     dkoff *leafOff, mmOp *op) {
    mmHeader *h = t->h;
    uint32_t height = LD32(&h->height);
    dkoff off = LD64(&h->root);
    *leaf = NULL;
    if (off == 0)
        return DKSHM_OK;
    if (height >= MM_MAX_LEVELS)
        return MM_TORN;
    bool right = true;
    for (uint32_t lvl = height;; lvl--) {
        mmNode *n = mmNodeAt(t, off, lvl);
        if (!n)
            return MM_TORN;
        uint32_t cnt = LD32(&n->count);
        if (cnt > MM_SLOTS)
            return MM_TORN;
        if (lvl == 0) {
            *leaf = n;
            *leafOff = off;
            return DKSHM_OK;
        }
        if (cnt == 0)
            return MM_TORN;
        uint32_t pos;
        if (mmChildPos(t, n, cnt, k, &pos) != DKSHM_OK)
            return MM_TORN;
        mmSlot *sl = mmSlotAt(n, pos);
        if (!sl)
            return MM_TORN;
        if (op) {
            op->path[lvl] = n;
            op->pathOff[lvl] = off;
            op->pos[lvl] = pos;
            op->rightmost[lvl] = right; /* this node is last of its level */
            right = right && pos == cnt - 1;
        }
        off = LD64(&sl->ref);
        mmPrefetch(t, off, lvl == 1);
    }
}

/* ---- optimistic reads -----------------------------------------------------
 */

typedef int (*mmAttemptFn)(multimap *t, void *ctx);

static int mmLock(multimap *m, mmOp *op);
static void mmUnlock(mmOp *op);

/* Run FN under the lock: no writer can run, so what it sees is the map. */
static int mmReadLocked(multimap *m, mmAttemptFn fn, void *ctx) {
    mmOp op;
    int rc = mmLock(m, &op);
    if (rc != DKSHM_OK)
        return rc;
    op.log->op = MM_OP_READ;
    rc = fn(m, ctx);
    mmUnlock(&op);
    return rc == MM_TORN ? DKSHM_CORRUPT : rc;
}

static void mmSleepNs(uint64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000ull),
                          (long)(ns % 1000000000ull)};
    nanosleep(&ts, NULL);
}

/* Run the read FN until it sees one version of the map. */
static int mmRead(multimap *m, mmAttemptFn fn, void *ctx) {
    mmHeader *h = m->h;
    unsigned spins = 0, fails = 0;
    uint64_t roDeadline = 0;
    for (;;) {
        uint32_t seq = LD32(&h->seq);
        if (seq & 1) {
            if (++spins < MM_SPINS) {
                mmRelax();
                continue;
            }
            uint32_t w = LD32(&h->lock.word);
            if (w != 0) {
                if (!dkOwnerAlive(m->s, w)) {
                    if (!m->readOnly) {
                        /* Taking the lock recovers the dead writer. */
                        mmOp op;
                        int rc = mmLock(m, &op);
                        if (rc != DKSHM_OK)
                            return rc;
                        mmUnlock(&op);
                        spins = 0;
                        continue;
                    }
                    uint64_t now = dkNowNs();
                    if (!roDeadline)
                        roDeadline = now + MM_RO_WAIT_NS;
                    else if (now >= roDeadline)
                        return DKSHM_BUSY;
                    mmSleepNs(1000000);
                    continue;
                }
                /* A live writer, and a slow one. */
                if (!m->readOnly && spins > 4 * MM_SPINS)
                    return mmReadLocked(m, fn, ctx);
                sched_yield();
                continue;
            }
            /* Free lock and odd seq: a reaper rolled a dead writer back;
             * this odd value is a consistent version. */
        }
        int rc = fn(m, ctx);
        if (LD32(&h->seq) == seq)
            return rc == MM_TORN ? DKSHM_CORRUPT : rc;
        ++fails;
        if (fails >= MM_RETRIES && !m->readOnly)
            return mmReadLocked(m, fn, ctx);
        if (fails >= MM_RO_ATTEMPTS)
            return DKSHM_BUSY; /* read-only, and writers never pause */
        spins = 0;
    }
}

/* ---- seek and lookup -------------------------------------------------------
 */

typedef struct mmSeekCtx { /* per call */
    int how;
    const mmKey *k;
    void *keyBuf;
    size_t keyBufLen;
    bool wantKey;
    void *valBuf;
    size_t valBufLen;
    bool wantVal;
    size_t klen, vlen; /* out */
} mmSeekCtx;

/* Copy out the entry of slot SL. */
static int mmCopyEntry(const multimap *t, mmSlot *sl, mmSeekCtx *c) {
    dkoff e = LD64(&sl->ref);
    uint32_t klen = mmKlen(LD64(&sl->meta));
    const uint8_t *kb = mmBlockKey(t, e, klen, MM_KIND_ENTRY);
    if (!kb || (t->intKeys && klen != 8))
        return MM_TORN;
    const mmEntry *E = dkPtr(t->s, e);
    uint64_t vlen = LD64(&E->vlen);
    if (vlen > t->s->size || !dkRangeOk(t->s, e, mmEntrySize(klen, vlen)))
        return MM_TORN;
    c->klen = klen;
    c->vlen = (size_t)vlen;
    if ((c->wantKey && klen > c->keyBufLen) ||
        (c->wantVal && vlen > c->valBufLen))
        return DKSHM_TOOBIG;
    if (c->wantKey) {
        if (t->intKeys) {
            uint8_t raw[8];
            mmCopyOut(raw, kb, 8);
            int64_t v = mmKeyToInt(raw);
            memcpy(c->keyBuf, &v, 8);
        } else {
            mmCopyOut(c->keyBuf, kb, klen);
        }
    }
    if (c->wantVal && vlen)
        mmCopyOut(c->valBuf, kb + mmR8(klen), (size_t)vlen);
    return DKSHM_OK;
}

/* Step to the next (DIR > 0) or previous leaf; NOTFOUND at the end. */
static int mmStepLeaf(const multimap *t, mmNode **leaf, int dir,
                      uint32_t *cnt) {
    dkoff off = LD64(dir > 0 ? &(*leaf)->next : &(*leaf)->prev);
    if (off == 0)
        return DKSHM_NOTFOUND;
    mmNode *n = mmNodeAt(t, off, 0);
    if (!n)
        return MM_TORN;
    uint32_t c = LD32(&n->count);
    if (c == 0 || c > MM_SLOTS)
        return MM_TORN; /* only the root leaf may be empty */
    *leaf = n;
    *cnt = c;
    return DKSHM_OK;
}

static int mmSeekAttempt(multimap *t, void *ctx) {
    mmSeekCtx *c = ctx;
    mmHeader *h = t->h;
    mmNode *leaf;
    dkoff leafOff = 0;
    uint32_t cnt;
    int64_t p;
    if (c->how == MULTIMAP_FIRST || c->how == MULTIMAP_LAST) {
        bool first = c->how == MULTIMAP_FIRST;
        dkoff off = LD64(first ? &h->firstLeaf : &h->lastLeaf);
        if (off == 0)
            return LD64(&h->root) == 0 ? DKSHM_NOTFOUND : MM_TORN;
        leaf = mmNodeAt(t, off, 0);
        if (!leaf)
            return MM_TORN;
        cnt = LD32(&leaf->count);
        if (cnt > MM_SLOTS)
            return MM_TORN;
        if (cnt == 0)
            return LD64(&h->root) == off ? DKSHM_NOTFOUND : MM_TORN;
        p = first ? 0 : (int64_t)cnt - 1;
    } else {
        int rc = mmDescend(t, c->k, &leaf, &leafOff, NULL);
        if (rc != DKSHM_OK)
            return rc;
        if (!leaf)
            return DKSHM_NOTFOUND;
        if (c->how == MM_EQ) {
            mmSlot *sl;
            if (mmLeafFind(t, leaf, c->k, &sl) != DKSHM_OK)
                return MM_TORN;
            return sl ? mmCopyEntry(t, sl, c) : DKSHM_NOTFOUND;
        }
        cnt = LD32(&leaf->count);
        uint32_t pos;
        bool eq;
        if (mmLowerBound(t, leaf, cnt, c->k, &pos, &eq) != DKSHM_OK)
            return MM_TORN;
        switch (c->how) {
        case MM_EQ:
            if (!eq)
                return DKSHM_NOTFOUND;
            p = pos;
            break;
        case MULTIMAP_GE:
            p = pos;
            break;
        case MULTIMAP_GT:
            p = (int64_t)pos + eq;
            break;
        case MULTIMAP_LE:
            p = (int64_t)pos + eq - 1;
            break;
        default: /* LT */
            p = (int64_t)pos - 1;
            break;
        }
        if (p >= (int64_t)cnt) {
            int rc2 = mmStepLeaf(t, &leaf, 1, &cnt);
            if (rc2 != DKSHM_OK)
                return rc2;
            p = 0;
        } else if (p < 0) {
            int rc2 = mmStepLeaf(t, &leaf, -1, &cnt);
            if (rc2 != DKSHM_OK)
                return rc2;
            p = (int64_t)cnt - 1;
        }
    }
    mmSlot *sl = mmSlotAt(leaf, (uint32_t)p);
    if (!sl)
        return MM_TORN;
    return mmCopyEntry(t, sl, c);
}

/* ---- handles and arguments --------------------------------------------------
 */

static int mmReadMap(multimap *m, mmAttemptFn fn, void *ctx);
static void mmCloseVersion(multimap *m);

static int mmCheckHandle(const multimap *m) {
    return m && m->s && m->h ? DKSHM_OK : DKSHM_INVALID;
}

DKSHM_API int multimapLookup(multimap *m, const void *key, size_t klen,
                             void *buf, size_t bufLen, size_t *vlen) {
    if (mmCheckHandle(m) != DKSHM_OK || !vlen || (!buf && bufLen))
        return DKSHM_INVALID;
    mmKey k;
    int rc = mmUserKey(m, key, klen, &k);
    if (rc != DKSHM_OK)
        return rc;
    mmSeekCtx c = {.how = MM_EQ,
                   .k = &k,
                   .valBuf = buf,
                   .valBufLen = bufLen,
                   .wantVal = true};
    rc = mmReadMap(m, mmSeekAttempt, &c);
    if (rc == MM_EMPTY)
        rc = DKSHM_NOTFOUND;
    if (rc == DKSHM_OK || rc == DKSHM_TOOBIG)
        *vlen = c.vlen;
    return rc;
}

DKSHM_API int multimapSeek(multimap *m, multimapSeekMode how, const void *key,
                           size_t klen, void *keyBuf, size_t keyBufLen,
                           size_t *klenOut, void *valBuf, size_t valBufLen,
                           size_t *vlenOut) {
    if (mmCheckHandle(m) != DKSHM_OK || (unsigned)how > MULTIMAP_LT ||
        (!keyBuf && keyBufLen) || (!valBuf && valBufLen))
        return DKSHM_INVALID;
    mmKey k;
    if (how != MULTIMAP_FIRST && how != MULTIMAP_LAST) {
        int rc = mmUserKey(m, key, klen, &k);
        if (rc != DKSHM_OK)
            return rc;
    }
    mmSeekCtx c = {.how = (int)how,
                   .k = &k,
                   .keyBuf = keyBuf,
                   .keyBufLen = keyBufLen,
                   .wantKey = klenOut != NULL,
                   .valBuf = valBuf,
                   .valBufLen = valBufLen,
                   .wantVal = vlenOut != NULL};
    int rc = mmReadMap(m, mmSeekAttempt, &c);
    if (rc == MM_EMPTY)
        rc = DKSHM_NOTFOUND;
    if (rc == DKSHM_OK || rc == DKSHM_TOOBIG) {
        if (klenOut)
            *klenOut = c.klen;
        if (vlenOut)
            *vlenOut = c.vlen;
    }
    return rc;
}

DKSHM_API int multimapFirst(multimap *m, void *keyBuf, size_t keyBufLen,
                            size_t *klenOut, void *valBuf, size_t valBufLen,
                            size_t *vlenOut) {
    return multimapSeek(m, MULTIMAP_FIRST, NULL, 0, keyBuf, keyBufLen, klenOut,
                        valBuf, valBufLen, vlenOut);
}

DKSHM_API int multimapLast(multimap *m, void *keyBuf, size_t keyBufLen,
                           size_t *klenOut, void *valBuf, size_t valBufLen,
                           size_t *vlenOut) {
    return multimapSeek(m, MULTIMAP_LAST, NULL, 0, keyBuf, keyBufLen, klenOut,
                        valBuf, valBufLen, vlenOut);
}

static int mmCountAttempt(multimap *t, void *c) {
    *(uint64_t *)c = LD64(&t->h->count);
    return DKSHM_OK;
}

DKSHM_API int multimapCount(multimap *m, uint64_t *count) {
    if (mmCheckHandle(m) != DKSHM_OK || !count)
        return DKSHM_INVALID;
    if (m->kind != MM_HANDLE_ANCHOR) {
        *count = LD64(&m->h->count);
        return DKSHM_OK;
    }
    uint64_t n = 0;
    int rc = mmReadMap(m, mmCountAttempt, &n);
    if (rc == MM_EMPTY)
        rc = DKSHM_OK;
    *count = rc == DKSHM_OK ? n : 0;
    return rc;
}

DKSHM_API int multimapKeyMode(const multimap *m, uint32_t *mode) {
    if (mmCheckHandle(m) != DKSHM_OK || !mode)
        return DKSHM_INVALID;
    *mode = m->intKeys ? MULTIMAP_KEYS_INT64 : MULTIMAP_KEYS_BYTES;
    return DKSHM_OK;
}

DKSHM_API int multimapIterate(multimap *m, const void *start, size_t klen,
                              uint32_t flags, multimapIterFn fn, void *ctx) {
    if (mmCheckHandle(m) != DKSHM_OK || !fn ||
        (flags & ~(MULTIMAP_ITER_REVERSE | MULTIMAP_ITER_EXCLUSIVE)))
        return DKSHM_INVALID;
    bool rev = flags & MULTIMAP_ITER_REVERSE;
    multimapSeekMode how;
    if (start) {
        bool excl = flags & MULTIMAP_ITER_EXCLUSIVE;
        how = rev ? (excl ? MULTIMAP_LT : MULTIMAP_LE)
                  : (excl ? MULTIMAP_GT : MULTIMAP_GE);
        mmKey k;
        int rc = mmUserKey(m, start, klen, &k);
        if (rc != DKSHM_OK)
            return rc;
    } else {
        how = rev ? MULTIMAP_LAST : MULTIMAP_FIRST;
    }
    size_t keyCap = m->intKeys ? 8 : MULTIMAP_KEY_MAX;
    uint8_t *kbuf = malloc(keyCap);
    uint8_t *kprev = malloc(keyCap);
    size_t valCap = 256;
    uint8_t *vbuf = malloc(valCap);
    int rc = DKSHM_OK;
    if (!kbuf || !kprev || !vbuf) {
        rc = DKSHM_SYSTEM;
        errno = ENOMEM;
        goto out;
    }
    const void *from = start;
    size_t fromLen = klen;
    for (;;) {
        size_t kl = 0, vl = 0;
        rc = multimapSeek(m, how, from, fromLen, kbuf, keyCap, &kl, vbuf,
                          valCap, &vl);
        if (rc == DKSHM_TOOBIG && vl > valCap) {
            uint8_t *nv = realloc(vbuf, vl);
            if (!nv) {
                rc = DKSHM_SYSTEM;
                errno = ENOMEM;
                break;
            }
            vbuf = nv;
            valCap = vl;
            continue;
        }
        if (rc == DKSHM_NOTFOUND) {
            rc = DKSHM_OK;
            break;
        }
        if (rc != DKSHM_OK)
            break;
        if (!fn(ctx, kbuf, kl, vbuf, vl))
            break;
        /* The key we just passed is where the next step starts. */
        memcpy(kprev, kbuf, kl);
        from = kprev;
        fromLen = kl;
        how = rev ? MULTIMAP_LT : MULTIMAP_GT;
    }
out:
    free(kbuf);
    free(kprev);
    free(vbuf);
    return rc;
}

static int mmStatsAttempt(multimap *m, void *c) {
    multimapStats *out = c;
    mmHeader *h = m->h;
    *out = (multimapStats){0};
    out->count = LD64(&h->count);
    out->height = LD32(&h->height);
    out->keyMode = m->intKeys ? MULTIMAP_KEYS_INT64 : MULTIMAP_KEYS_BYTES;
    out->leaves = LD64(&h->leaves);
    out->inner = LD64(&h->inner);
    out->nodeBytes = (out->leaves + out->inner) * MM_NODE_BYTES;
    out->entryBytes = LD64(&h->entryBytes);
    out->keyBlocks = LD64(&h->keyBlocks);
    out->keyBytes = LD64(&h->keyBytes);
    out->recoveries = LD32(&h->lock.recoveries);
    return DKSHM_OK;
}

DKSHM_API int multimapGetStats(multimap *m, multimapStats *out) {
    if (mmCheckHandle(m) != DKSHM_OK || !out)
        return DKSHM_INVALID;
    if (m->kind != MM_HANDLE_ANCHOR)
        return mmStatsAttempt(m, out);
    int rc = mmReadMap(m, mmStatsAttempt, out);
    if (rc == MM_EMPTY) {
        *out = (multimapStats){0};
        out->keyMode = m->intKeys ? MULTIMAP_KEYS_INT64 : MULTIMAP_KEYS_BYTES;
        rc = DKSHM_OK;
    }
    /* The versioned map's own lock is the one writers recover. */
    out->recoveries = LD32(&m->h->lock.recoveries);
    return rc;
}

/* ---- writers: locking, logging, in-flight blocks ----------------------------
 */

static void mmOpInit(mmOp *op, multimap *t) {
    memset(op, 0, offsetof(mmOp, height));
    op->t = t;
    op->s = t->s;
    op->h = t->h;
    op->log = t->log;
}

/* Take T's lock. CORRUPT (lock released) when a dead owner's log could not
 * be applied. */
static int mmLockTree(multimap *t, mmOp *op) {
    if (t->readOnly)
        return DKSHM_READONLY;
    dkCount(t->s, DKSHM_CTR_WRITES, 1);
    int rc = fastMutexLock(t->s, &t->h->lock);
    if (rc == DKSHM_CORRUPT) {
        fastMutexUnlock(t->s, &t->h->lock);
        return DKSHM_CORRUPT;
    }
    if (rc < 0)
        return rc;
    dkSeqRepair(&t->h->seq);
    mmOpInit(op, t);
    return DKSHM_OK;
}

static void mmUnlock(mmOp *op) {
    fastMutexUnlock(op->s, &op->h->lock);
}

static int mmCleanupDup(multimap *m);

/* Take M's lock for an operation of M: also finishes what a copier that
 * died left behind. */
static int mmLock(multimap *m, mmOp *op) {
    int rc = mmLockTree(m, op);
    if (rc != DKSHM_OK)
        return rc;
    if (LD64(&m->h->pendingDup) != 0) {
        rc = mmCleanupDup(m);
        if (rc != DKSHM_OK) {
            mmUnlock(op);
            return rc;
        }
    }
    return DKSHM_OK;
}

/* Phase 1: a block of SIZE bytes in flight, for this op. */
static int mmAllocFresh(mmOp *op, uint64_t size, dkoff *out) {
    if (op->writing || op->nFresh >= MM_FRESH_MAX)
        return DKSHM_FULL;
    int rc = memboundAllocInflight(op->t->mb, (size_t)size, out);
    if (rc != DKSHM_OK)
        return rc;
    op->fresh[op->nFresh] = *out;
    op->linked[op->nFresh] = false;
    op->nFresh++;
    return DKSHM_OK;
}

/* Phase 2 starts: seq odd. */
static void mmBegin(mmOp *op, uint32_t what) {
    if (op->writing)
        return;
    op->log->op = what;
    dkSeqWriteBegin(&op->h->seq);
    op->writing = true;
    op->quiet = false;
}

/* The same for changes optimistic readers never look at (a versioned
 * map's bookkeeping, a pending copy): logged, but seq stays. */
static void mmBeginQuiet(mmOp *op, uint32_t what) {
    if (op->writing)
        return;
    op->log->op = what;
    op->writing = true;
    op->quiet = true;
}

static void mmSet64(mmOp *op, uint64_t *p, uint64_t v) {
    if (LD64(p) != v)
        dkUndoSet64(op->s, op->log, p, v);
}

static void mmSet32(mmOp *op, uint32_t *p, uint32_t v) {
    if (LD32(p) != v)
        dkUndoSet32(op->s, op->log, p, v);
}

static void mmAdd64(mmOp *op, uint64_t *p, int64_t d) {
    mmSet64(op, p, LD64(p) + (uint64_t)d);
}

/* A fresh block of this op becomes the tree's. */
static int mmLink(mmOp *op, dkoff off) {
    int rc = dkInflightRemove(op->s, op->log, off);
    if (rc != DKSHM_OK)
        return DKSHM_CORRUPT;
    for (int i = 0; i < op->nFresh; i++)
        if (op->fresh[i] == off)
            op->linked[i] = true;
    return DKSHM_OK;
}

/* A block of the tree goes in flight, to be freed after the commit. */
static int mmUnlink(mmOp *op, dkoff off) {
    if (op->nGarbage >= MM_GARBAGE_MAX)
        return DKSHM_FULL;
    int rc = dkInflightAdd(op->s, op->log, off);
    if (rc != DKSHM_OK)
        return rc;
    op->garbage[op->nGarbage++] = off;
    return DKSHM_OK;
}

/* End phase 2: commit when OK, else roll back what the op changed. */
static void mmEnd(mmOp *op, bool ok) {
    op->ok = ok;
    if (!op->writing)
        return;
    if (!ok)
        dkUndoRollback(op->s, op->log);
    if (op->quiet)
        dkUndoCommit(op->log);
    else
        dkSeqWriteEnd(op->log, &op->h->seq);
    op->writing = false;
}

/* After mmEnd: free what the op leaves in flight. */
static void mmRelease(mmOp *op) {
    membound *mb = op->t->mb;
    for (int i = 0; i < op->nFresh; i++)
        if (!op->ok || !op->linked[i])
            memboundFreeInflight(mb, op->fresh[i]);
    if (op->ok)
        for (int i = 0; i < op->nGarbage; i++)
            memboundFreeInflight(mb, op->garbage[i]);
    op->nFresh = 0;
    op->nGarbage = 0;
    op->spareNext = 0;
}

/* ---- rewriting nodes
 * ---------------------------------------------------------- */

static void mmLoadSlot(const mmSlot *sl, mmSlot *out) {
    out->p0 = LD64(&sl->p0);
    out->p1 = LD64(&sl->p1);
    out->meta = LD64(&sl->meta);
    out->ref = LD64(&sl->ref);
}

/* The CNT slots of N in key order. */
static int mmGather(mmNode *n, mmItem *it, uint32_t *cnt) {
    uint32_t c = LD32(&n->count);
    if (c > MM_SLOTS)
        return DKSHM_CORRUPT;
    for (uint32_t i = 0; i < c; i++) {
        uint32_t p = mmPerm(n, i);
        if (p >= MM_SLOTS)
            return DKSHM_CORRUPT;
        mmLoadSlot(&n->slot[p], &it[i].v);
        it[i].src = n;
        it[i].phys = p;
    }
    *cnt = c;
    return DKSHM_OK;
}

static void mmPutSlot(mmOp *op, mmSlot *dst, const mmSlot *v) {
    mmSet64(op, &dst->p0, v->p0);
    mmSet64(op, &dst->p1, v->p1);
    mmSet64(op, &dst->meta, v->meta);
    mmSet64(op, &dst->ref, v->ref);
}

/* Make live node N hold exactly the N items IT, in that order, through
 * the log: items already in N keep their slot, the others take free ones;
 * only words that change are logged. */
static void mmRewrite(mmOp *op, mmNode *node, const mmItem *it, uint32_t n) {
    uint8_t used[MM_SLOTS] = {0};
    uint8_t phys[MM_SLOTS];
    for (uint32_t i = 0; i < n; i++)
        if (it[i].src == node) {
            phys[i] = (uint8_t)it[i].phys;
            used[it[i].phys] = 1;
        }
    uint32_t f = 0;
    for (uint32_t i = 0; i < n; i++)
        if (it[i].src != node) {
            while (used[f])
                f++;
            phys[i] = (uint8_t)f;
            used[f] = 1;
        }
    for (uint32_t i = 0; i < n; i++)
        mmPutSlot(op, &node->slot[phys[i]], &it[i].v);
    uint64_t w[MM_PERM_WORDS];
    for (uint32_t j = 0; j < MM_PERM_WORDS; j++)
        w[j] = LD64(&node->perm[j]);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t sh = (i & 7) * 8;
        w[i >> 3] = (w[i >> 3] & ~(0xffull << sh)) | ((uint64_t)phys[i] << sh);
    }
    for (uint32_t j = 0; j < MM_PERM_WORDS; j++)
        mmSet64(op, &node->perm[j], w[j]);
    if (LD32(&node->level) > 0) {
        for (uint32_t j = 0; j < MM_FP_WORDS; j++)
            mmSet64(op, &node->fp[j], j && 8 * j < n ? it[8 * j].v.p0 : 0);
    } else {
        uint64_t fw[MM_FP_WORDS], live[2] = {0, 0};
        for (uint32_t j = 0; j < MM_FP_WORDS; j++)
            fw[j] = LD64(&node->fp[j]);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t p = phys[i], sh = (p & 7) * 8;
            fw[p >> 3] = (fw[p >> 3] & ~(0xffull << sh)) |
                         ((uint64_t)mmFpOf(&it[i].v) << sh);
            live[p >> 6] |= 1ull << (p & 63);
        }
        for (uint32_t j = 0; j < MM_FP_WORDS; j++)
            mmSet64(op, &node->fp[j], fw[j]);
        mmSet64(op, &node->live[0], live[0]);
        mmSet64(op, &node->live[1], live[1]);
    }
    mmSet32(op, &node->count, n);
}

/* Fill a fresh node nobody can see yet. */
static void mmFill(const multimap *t, mmNode *node, uint32_t level,
                   const mmItem *it, uint32_t n, dkoff next, dkoff prev) {
    ST32(&node->magic, MM_NODE_MAGIC);
    ST32(&node->level, level);
    ST32(&node->count, n);
    ST32(&node->pad0, 0);
    ST64(&node->owner, t->off);
    ST64(&node->next, next);
    ST64(&node->prev, prev);
    ST64(&node->pad1, 0);
    uint64_t live[2] = {0, 0};
    for (uint32_t j = 0; j < MM_PERM_WORDS; j++) {
        uint64_t w = 0, f = 0;
        for (uint32_t b = 0; b < 8; b++)
            if (j * 8 + b < n) {
                w |= (uint64_t)(j * 8 + b) << (b * 8);
                if (level == 0) {
                    f |= (uint64_t)mmFpOf(&it[j * 8 + b].v) << (b * 8);
                    live[(j * 8 + b) >> 6] |= 1ull << ((j * 8 + b) & 63);
                }
            }
        ST64(&node->perm[j], w);
        if (level > 0)
            f = j && 8 * j < n ? it[8 * j].v.p0 : 0;
        ST64(&node->fp[j], f);
    }
    ST64(&node->live[0], live[0]);
    ST64(&node->live[1], live[1]);
    for (uint32_t i = 0; i < MM_SLOTS; i++) {
        mmSlot z = {0};
        const mmSlot *v = i < n ? &it[i].v : &z;
        ST64(&node->slot[i].p0, v->p0);
        ST64(&node->slot[i].p1, v->p1);
        ST64(&node->slot[i].meta, v->meta);
        ST64(&node->slot[i].ref, v->ref);
    }
}

static void mmFillBlock(dkshm *s, dkoff off, uint32_t kind, const uint8_t *key,
                        uint32_t klen, const void *val, uint64_t vlen) {
    mmEntry *e = dkPtr(s, off);
    ST32(&e->klen, klen);
    ST32(&e->kind, kind);
    ST64(&e->vlen, vlen);
    uint8_t *p = (uint8_t *)e + MM_ENTRY_HDR;
    mmCopyIn(p, key, klen);
    if (vlen)
        mmCopyIn(p + mmR8(klen), val, (size_t)vlen);
}

/* A view of an item's full key: P points at LEN bytes (at TMP for keys of
 * at most 16 bytes). CORRUPT if the block it needs is bad. */
typedef struct mmView { /* per process; not to be copied */
    const uint8_t *p;
    uint32_t len;
    uint8_t tmp[16];
} mmView;

static int mmViewOf(const multimap *t, const mmSlot *v, bool leaf,
                    mmView *out) {
    uint32_t len = mmKlen(v->meta);
    out->len = len;
    if (len <= MM_INLINE) {
        mmPutBE(out->tmp, v->p0);
        mmPutBE(out->tmp + 8, v->p1);
        out->p = out->tmp;
        return DKSHM_OK;
    }
    dkoff blk = leaf ? v->ref : mmKoff(v->meta);
    out->p = mmBlockKey(t, blk, len, leaf ? MM_KIND_ENTRY : MM_KIND_KEY);
    return out->p ? DKSHM_OK : DKSHM_CORRUPT;
}

static int mmViewCmp(const mmView *a, const mmView *b) {
    uint32_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->p, b->p, n) : 0;
    if (c)
        return c < 0 ? -1 : 1;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* Length of the shortest separator between leaf keys A < B: a prefix of B
 * that is greater than A. */
static uint32_t mmSepLen(const mmView *a, const mmView *b) {
    uint32_t n = a->len < b->len ? a->len : b->len;
    uint32_t l = 0;
    while (l < n && a->p[l] == b->p[l])
        l++;
    return l + 1 <= b->len ? l + 1 : b->len;
}

/* The slot value of a separator: the first LEN bytes of view B, with key
 * block KOFF when longer than 16. */
static mmSlot mmSepSlot(const mmView *b, uint32_t len, dkoff koff, dkoff ref) {
    mmSlot v;
    v.p0 = mmBE(b->p, len);
    v.p1 = len > 8 ? mmBE(b->p + 8, len - 8) : 0;
    v.meta = mmMeta(len, len > MM_INLINE ? koff : 0);
    v.ref = ref;
    return v;
}

static void mmCopyKey(mmSlot *dst, const mmSlot *src) {
    dst->p0 = src->p0;
    dst->p1 = src->p1;
    dst->meta = src->meta;
}

static void mmClearKey(mmSlot *v) {
    v->p0 = v->p1 = v->meta = 0;
}

/* ---- insert
 * --------------------------------------------------------------------- */

typedef struct mmInsertPlan { /* per call */
    mmItem items[MM_SLOTS + 1];
    uint32_t n, m;   /* leaf split: items, split point */
    uint32_t sepLen; /* leaf separator */
    mmView sepFrom;  /* the key it is a prefix of (items[m]) */
    dkoff sepBlock;  /* key block for it, 0 if it fits its slot */
} mmInsertPlan;

/* Choose the leaf split point of the N items around the middle with the
 * shortest separator. */
static int mmChooseSplit(mmOp *op, mmInsertPlan *pl) {
    uint32_t n = pl->n, mid = n / 2;
    uint32_t best = mid, bestLen = UINT32_MAX;
    for (uint32_t d = 0; d <= MM_WINDOW; d++) {
        for (int side = 0; side < 2; side++) {
            if (d == 0 && side)
                continue;
            uint32_t m = side ? mid - d : mid + d;
            if (m < 1 || m >= n)
                continue;
            mmView a, b;
            if (mmViewOf(op->t, &pl->items[m - 1].v, true, &a) ||
                mmViewOf(op->t, &pl->items[m].v, true, &b))
                return DKSHM_CORRUPT;
            uint32_t len = mmSepLen(&a, &b);
            if (len < bestLen) {
                bestLen = len;
                best = m;
            }
        }
        if (bestLen <= 2)
            break;
    }
    pl->m = best;
    return DKSHM_OK;
}

static mmNode *mmSpareNode(mmOp *op, dkoff *off) {
    *off = op->fresh[op->spareNext++];
    return dkPtr(op->s, *off);
}

/* Insert KEY with the fresh entry ENTRY (ESIZE bytes) into the tree whose
 * lock OP holds. Phase 1, then phase 2; the caller ends the op. */
static int mmInsertLocked(mmOp *op, const mmKey *k, dkoff entry, uint64_t esize,
                          uint32_t flags) {
    multimap *t = op->t;
    mmHeader *h = op->h;
    dkshm *s = op->s;
    uint32_t height = LD32(&h->height);
    if (height >= MM_MAX_LEVELS - 1)
        return DKSHM_CORRUPT;
    op->height = height;
    mmNode *leaf = NULL;
    dkoff leafOff = 0;
    int rc = mmDescend(t, k, &leaf, &leafOff, op);
    if (rc != DKSHM_OK)
        return DKSHM_CORRUPT;
    uint32_t pos = 0, cnt = 0;
    bool eq = false;
    if (leaf) {
        cnt = LD32(&leaf->count);
        if (mmLowerBound(t, leaf, cnt, k, &pos, &eq) != DKSHM_OK)
            return DKSHM_CORRUPT;
    }
    if (eq && (flags & MULTIMAP_NOOVERWRITE))
        return DKSHM_EXISTS;
    /* Overwriting: check the old entry before following it (a damaged
     * leaf may hold any ref), while nothing is changed yet. */
    dkoff oldEntry = 0;
    uint64_t oldSize = 0;
    if (eq) {
        mmSlot *sl = mmSlotAt(leaf, pos);
        if (!sl)
            return DKSHM_CORRUPT;
        oldEntry = LD64(&sl->ref);
        if (!mmBlockKey(t, oldEntry, k->len, MM_KIND_ENTRY))
            return DKSHM_CORRUPT;
        uint64_t ovlen = LD64(&((const mmEntry *)dkPtr(s, oldEntry))->vlen);
        oldSize = mmEntrySize(k->len, ovlen);
        if (ovlen > s->size || !dkRangeOk(s, oldEntry, oldSize))
            return DKSHM_CORRUPT;
    }
    /* ---- phase 1: the plan and its blocks ---- */
    mmSlot nv = {k->k0, k->k1, mmMeta(k->len, 0), entry};
    static __thread mmInsertPlan plBuf; /* 7 KiB: off the stack */
    mmInsertPlan *pl = &plBuf;
    uint32_t splits = 0;
    bool rootSplit = false;
    if (!eq && leaf && cnt >= MM_SLOTS) {
        splits = 1;
        for (uint32_t l = 1; l <= height; l++) {
            if (LD32(&op->path[l]->count) < MM_SLOTS)
                break;
            splits++;
        }
        rootSplit = splits == height + 1;
        uint32_t n;
        if (mmGather(leaf, pl->items, &n) != DKSHM_OK || n != cnt)
            return DKSHM_CORRUPT;
        memmove(&pl->items[pos + 1], &pl->items[pos],
                (n - pos) * sizeof pl->items[0]);
        pl->items[pos] = (mmItem){nv, NULL, 0};
        pl->n = n + 1;
        if (pos == n && LD64(&leaf->next) == 0)
            pl->m = n; /* appending at the end: keep the left node full */
        else if ((rc = mmChooseSplit(op, pl)) != DKSHM_OK)
            return rc;
        mmView a;
        if (mmViewOf(t, &pl->items[pl->m - 1].v, true, &a) ||
            mmViewOf(t, &pl->items[pl->m].v, true, &pl->sepFrom))
            return DKSHM_CORRUPT;
        pl->sepLen = mmSepLen(&a, &pl->sepFrom);
        pl->sepBlock = 0;
    }
    uint64_t need = 32 + 48ull * (splits + 2);
    if (dkUndoRoom(op->log) < need)
        return DKSHM_CORRUPT;
    op->spareNext = op->nFresh;
    dkoff rootLeaf = 0;
    if (!leaf && (rc = mmAllocFresh(op, MM_NODE_BYTES, &rootLeaf)) != DKSHM_OK)
        return rc;
    for (uint32_t i = 0; i < splits + rootSplit; i++) {
        dkoff off;
        if ((rc = mmAllocFresh(op, MM_NODE_BYTES, &off)) != DKSHM_OK)
            return rc;
    }
    if (splits && pl->sepLen > MM_INLINE &&
        (rc = mmAllocFresh(op, MM_ENTRY_HDR + mmR8(pl->sepLen),
                           &pl->sepBlock)) != DKSHM_OK)
        return rc;

    /* ---- phase 2 ---- */
    mmBegin(op, MM_OP_INSERT);
    if ((rc = mmLink(op, entry)) != DKSHM_OK)
        return rc;
    if (!leaf) {
        /* The first key of an empty map: a root leaf. */
        mmItem one = {nv, NULL, 0};
        mmNode *n = dkPtr(s, rootLeaf);
        mmFill(t, n, 0, &one, 1, 0, 0);
        DKSHM_CRASHPOINT();
        mmSet64(op, &h->firstLeaf, rootLeaf);
        mmSet64(op, &h->lastLeaf, rootLeaf);
        mmSet32(op, &h->height, 0);
        mmSet64(op, &h->root, rootLeaf);
        mmAdd64(op, &h->leaves, 1);
        if ((rc = mmLink(op, rootLeaf)) != DKSHM_OK)
            return rc;
    } else if (eq) {
        mmSlot *sl = mmSlotAt(leaf, pos);
        if (!sl)
            return DKSHM_CORRUPT;
        mmSet64(op, &sl->ref, entry);
        if ((rc = mmUnlink(op, oldEntry)) != DKSHM_OK)
            return rc;
        mmAdd64(op, &h->entryBytes, (int64_t)esize - (int64_t)oldSize);
        return DKSHM_OK; /* the count does not change */
    } else if (cnt < MM_SLOTS) {
        static __thread mmItem it[MM_SLOTS + 1];
        uint32_t n;
        if (mmGather(leaf, it, &n) != DKSHM_OK)
            return DKSHM_CORRUPT;
        memmove(&it[pos + 1], &it[pos], (n - pos) * sizeof it[0]);
        it[pos] = (mmItem){nv, NULL, 0};
        mmRewrite(op, leaf, it, n + 1);
    } else {
        /* Split the leaf: [0, m) stay, [m, n) go to a new right leaf. */
        dkoff rOff;
        mmNode *r = mmSpareNode(op, &rOff);
        dkoff next = LD64(&leaf->next);
        mmFill(t, r, 0, pl->items + pl->m, pl->n - pl->m, next, leafOff);
        DKSHM_CRASHPOINT();
        mmRewrite(op, leaf, pl->items, pl->m);
        if (next) {
            mmNode *nx = mmNodeAt(t, next, 0);
            if (!nx)
                return DKSHM_CORRUPT;
            mmSet64(op, &nx->prev, rOff);
        } else {
            mmSet64(op, &h->lastLeaf, rOff);
        }
        mmSet64(op, &leaf->next, rOff);
        mmAdd64(op, &h->leaves, 1);
        if ((rc = mmLink(op, rOff)) != DKSHM_OK)
            return rc;
        if (pl->sepBlock) {
            mmFillBlock(s, pl->sepBlock, MM_KIND_KEY, pl->sepFrom.p, pl->sepLen,
                        NULL, 0);
            if ((rc = mmLink(op, pl->sepBlock)) != DKSHM_OK)
                return rc;
            mmAdd64(op, &h->keyBlocks, 1);
            mmAdd64(op, &h->keyBytes,
                    (int64_t)(MM_ENTRY_HDR + mmR8(pl->sepLen)));
        }
        mmItem up = {mmSepSlot(&pl->sepFrom, pl->sepLen, pl->sepBlock, rOff),
                     NULL, 0};
        /* Push the separator up, splitting full inner nodes. */
        for (uint32_t lvl = 1;; lvl++) {
            if (lvl > height) {
                dkoff nOff;
                mmNode *nr = mmSpareNode(op, &nOff);
                mmItem two[2] = {{{0, 0, 0, LD64(&h->root)}, NULL, 0}, up};
                mmFill(t, nr, lvl, two, 2, 0, 0);
                DKSHM_CRASHPOINT();
                mmSet64(op, &h->root, nOff);
                mmSet32(op, &h->height, lvl);
                mmAdd64(op, &h->inner, 1);
                if ((rc = mmLink(op, nOff)) != DKSHM_OK)
                    return rc;
                break;
            }
            mmNode *p = op->path[lvl];
            uint32_t ppos = op->pos[lvl] + 1, n;
            mmItem *it = pl->items; /* the leaf's items are written */
            if (mmGather(p, it, &n) != DKSHM_OK)
                return DKSHM_CORRUPT;
            memmove(&it[ppos + 1], &it[ppos], (n - ppos) * sizeof it[0]);
            it[ppos] = up;
            n++;
            if (n <= MM_SLOTS) {
                mmRewrite(op, p, it, n);
                break;
            }
            /* Appending at the right edge leaves the left node nearly
             * full; an inner node keeps at least two children. */
            uint32_t m = op->rightmost[lvl] && ppos == n - 1 ? n - 2 : n / 2;
            dkoff r2Off;
            mmNode *r2 = mmSpareNode(op, &r2Off);
            mmItem next2 = it[m];
            mmClearKey(&it[m].v);
            mmFill(t, r2, lvl, it + m, n - m, 0, 0);
            DKSHM_CRASHPOINT();
            mmRewrite(op, p, it, m);
            mmAdd64(op, &h->inner, 1);
            if ((rc = mmLink(op, r2Off)) != DKSHM_OK)
                return rc;
            up = (mmItem){next2.v, NULL, 0};
            up.v.ref = r2Off;
        }
    }
    mmAdd64(op, &h->entryBytes, (int64_t)esize);
    mmAdd64(op, &h->count, 1);
    return DKSHM_OK;
}

DKSHM_API int multimapInsert(multimap *m, const void *key, size_t klen,
                             const void *value, size_t vlen, uint32_t flags) {
    if (mmCheckHandle(m) != DKSHM_OK || (flags & ~MULTIMAP_NOOVERWRITE) ||
        (!value && vlen))
        return DKSHM_INVALID;
    mmKey k;
    int rc = mmUserKey(m, key, klen, &k);
    if (rc != DKSHM_OK)
        return rc;
    if (m->kind == MM_HANDLE_ANCHOR)
        return DKSHM_INVALID; /* versioned: change a draft */
    if (m->readOnly || m->kind == MM_HANDLE_SNAPSHOT)
        return DKSHM_READONLY;
    if (vlen > m->s->size)
        return DKSHM_TOOBIG;
    uint64_t esize = mmEntrySize(k.len, vlen);
    mmOp op;
    mmOpInit(&op, m);
    dkoff entry;
    if ((rc = mmAllocFresh(&op, esize, &entry)) != DKSHM_OK)
        return rc;
    mmFillBlock(m->s, entry, MM_KIND_ENTRY, k.b, k.len, value, vlen);
    mmOp lk;
    rc = mmLock(m, &lk);
    if (rc == DKSHM_OK) {
        rc = mmInsertLocked(&op, &k, entry, esize, flags);
        mmEnd(&op, rc == DKSHM_OK);
        mmUnlock(&lk);
    } else {
        op.ok = false;
    }
    mmRelease(&op);
    return rc;
}

DKSHM_API int multimapInsertInt(multimap *m, int64_t key, const void *value,
                                size_t vlen, uint32_t flags) {
    return multimapInsert(m, &key, sizeof key, value, vlen, flags);
}

/* ---- delete
 * ------------------------------------------------------------------- */

enum { MM_NONE = 0, MM_MERGE, MM_BORROW };

typedef struct mmLevelPlan { /* per call */
    int action;
    bool right; /* the sibling is to the right */
    mmNode *sib;
    dkoff sibOff;
    uint32_t k; /* borrow: slots moved */
    uint32_t sepLen;
    dkoff sepBlock; /* leaf borrow: new separator block, or 0 */
} mmLevelPlan;

/* Remove KEY from the tree whose lock OP holds. *ENTRYSIZE (may be NULL)
 * gets the bytes of the removed entry. */
static int mmDeleteLocked(mmOp *op, const mmKey *k) {
    multimap *t = op->t;
    mmHeader *h = op->h;
    dkshm *s = op->s;
    uint32_t height = LD32(&h->height);
    if (height >= MM_MAX_LEVELS - 1)
        return DKSHM_CORRUPT;
    op->height = height;
    mmNode *leaf;
    dkoff leafOff = 0;
    if (mmDescend(t, k, &leaf, &leafOff, op) != DKSHM_OK)
        return DKSHM_CORRUPT;
    if (!leaf)
        return DKSHM_NOTFOUND;
    uint32_t cnt = LD32(&leaf->count), pos;
    bool eq;
    if (mmLowerBound(t, leaf, cnt, k, &pos, &eq) != DKSHM_OK)
        return DKSHM_CORRUPT;
    if (!eq)
        return DKSHM_NOTFOUND;
    op->path[0] = leaf;
    op->pathOff[0] = leafOff;

    /* ---- phase 1: plan the rebalancing, level by level ---- */
    mmLevelPlan plan[MM_MAX_LEVELS];
    memset(plan, 0, sizeof plan);
    bool collapse = false;
    uint64_t need = 64;
    uint32_t c = cnt - 1;
    for (uint32_t lvl = 0;; lvl++) {
        if (lvl == height) {
            collapse = lvl > 0 && c == 1;
            need += 32;
            break;
        }
        if (c >= MM_MIN) {
            need += 32;
            break;
        }
        mmNode *p = op->path[lvl + 1];
        uint32_t ppos = op->pos[lvl + 1], pc = LD32(&p->count);
        if (pc < 2 || pc > MM_SLOTS || ppos >= pc)
            return DKSHM_CORRUPT;
        bool right = ppos + 1 < pc;
        mmSlot *ss = mmSlotAt(p, right ? ppos + 1 : ppos - 1);
        if (!ss)
            return DKSHM_CORRUPT;
        dkoff sOff = LD64(&ss->ref);
        mmNode *sib = mmNodeAt(t, sOff, lvl);
        if (!sib)
            return DKSHM_CORRUPT;
        uint32_t sc = LD32(&sib->count);
        if (sc > MM_SLOTS)
            return DKSHM_CORRUPT;
        mmLevelPlan *lp = &plan[lvl];
        lp->right = right;
        lp->sib = sib;
        lp->sibOff = sOff;
        if (c + sc <= MM_SLOTS) {
            lp->action = MM_MERGE;
            need += 64 + 4ull * c;
            c = pc - 1;
            continue;
        }
        lp->action = MM_BORROW;
        lp->k = (sc - c) / 2 < MM_BORROW_MAX ? (sc - c) / 2 : MM_BORROW_MAX;
        need += 96 + 4ull * (lp->k + c);
        if (lvl == 0) {
            /* The new separator is between two neighbours of the
             * sibling: S[k-1] | S[k] (right) or S[sc-k-1] | S[sc-k]. */
            uint32_t b = right ? lp->k : sc - lp->k;
            mmSlot *sa = mmSlotAt(sib, b - 1), *sb = mmSlotAt(sib, b);
            mmSlot va, vb;
            if (!sa || !sb)
                return DKSHM_CORRUPT;
            mmLoadSlot(sa, &va);
            mmLoadSlot(sb, &vb);
            mmView a, bv;
            if (mmViewOf(t, &va, true, &a) || mmViewOf(t, &vb, true, &bv))
                return DKSHM_CORRUPT;
            lp->sepLen = mmSepLen(&a, &bv);
            if (lp->sepLen > MM_INLINE &&
                mmAllocFresh(op, MM_ENTRY_HDR + mmR8(lp->sepLen),
                             &lp->sepBlock) != DKSHM_OK)
                lp->action = MM_NONE; /* no room: stay underfull */
        }
        break;
    }
    if (dkUndoRoom(op->log) < need)
        return DKSHM_CORRUPT;

    /* ---- phase 2 ---- */
    static __thread mmItem cur[MM_SLOTS + 1], sit[MM_SLOTS + 1],
        pit[MM_SLOTS + 1], tmp[2 * MM_SLOTS + 2];
    uint32_t n, sn, pn;
    if (mmGather(leaf, cur, &n) != DKSHM_OK)
        return DKSHM_CORRUPT;
    dkoff entry = cur[pos].v.ref;
    uint32_t eklen = mmKlen(cur[pos].v.meta);
    if (!mmBlockKey(t, entry, eklen, MM_KIND_ENTRY))
        return DKSHM_CORRUPT;
    uint64_t evlen = LD64(&((const mmEntry *)dkPtr(s, entry))->vlen);
    uint64_t esize = mmEntrySize(eklen, evlen);
    if (evlen > s->size || !dkRangeOk(s, entry, esize))
        return DKSHM_CORRUPT;
    memmove(&cur[pos], &cur[pos + 1], (n - pos - 1) * sizeof cur[0]);
    n--;
    mmBegin(op, MM_OP_DELETE);
    int rc = mmUnlink(op, entry);
    if (rc != DKSHM_OK)
        return rc;
    mmAdd64(op, &h->entryBytes, -(int64_t)esize);
    mmAdd64(op, &h->count, -1);
    uint32_t lvl = 0;
    for (;; lvl++) {
        mmNode *node = op->path[lvl];
        dkoff nodeOff = op->pathOff[lvl];
        mmLevelPlan *lp = &plan[lvl];
        if (lvl == height && collapse) {
            mmSet64(op, &h->root, cur[0].v.ref);
            mmSet32(op, &h->height, height - 1);
            mmAdd64(op, &h->inner, -1);
            return mmUnlink(op, nodeOff);
        }
        if (lvl == height || lp->action == MM_NONE) {
            mmRewrite(op, node, cur, n);
            return DKSHM_OK;
        }
        mmNode *p = op->path[lvl + 1];
        uint32_t ppos = op->pos[lvl + 1];
        if (mmGather(p, pit, &pn) != DKSHM_OK ||
            mmGather(lp->sib, sit, &sn) != DKSHM_OK || ppos >= pn ||
            pit[ppos].v.ref != nodeOff)
            return DKSHM_CORRUPT;
        uint32_t sp = lp->right ? ppos + 1 : ppos - 1; /* sibling's slot */
        bool leafLvl = lvl == 0;
        if (lp->action == MM_MERGE) {
            /* Move NODE's slots into the sibling; NODE goes. */
            uint32_t removed = lp->right ? sp : ppos;
            if (leafLvl) {
                dkoff kb = mmKoff(pit[removed].v.meta);
                if (kb) {
                    if ((rc = mmUnlink(op, kb)) != DKSHM_OK)
                        return rc;
                    mmAdd64(op, &h->keyBlocks, -1);
                    mmAdd64(op, &h->keyBytes,
                            -(int64_t)(MM_ENTRY_HDR +
                                       mmR8(mmKlen(pit[removed].v.meta))));
                }
            } else if (lp->right) {
                mmCopyKey(&sit[0].v, &pit[sp].v); /* sepS comes down */
            } else {
                mmCopyKey(&cur[0].v, &pit[ppos].v); /* sepN comes down */
            }
            uint32_t mn = 0;
            if (lp->right) {
                memcpy(tmp, cur, n * sizeof cur[0]);
                memcpy(tmp + n, sit, sn * sizeof sit[0]);
            } else {
                memcpy(tmp, sit, sn * sizeof sit[0]);
                memcpy(tmp + sn, cur, n * sizeof cur[0]);
            }
            mn = n + sn;
            mmRewrite(op, lp->sib, tmp, mn);
            if (leafLvl) {
                dkoff nb = LD64(lp->right ? &node->prev : &node->next);
                mmNode *nbn = nb ? mmNodeAt(t, nb, 0) : NULL;
                if (nb && !nbn)
                    return DKSHM_CORRUPT;
                if (lp->right) {
                    mmSet64(op, &lp->sib->prev, nb);
                    if (nbn)
                        mmSet64(op, &nbn->next, lp->sibOff);
                    else
                        mmSet64(op, &h->firstLeaf, lp->sibOff);
                } else {
                    mmSet64(op, &lp->sib->next, nb);
                    if (nbn)
                        mmSet64(op, &nbn->prev, lp->sibOff);
                    else
                        mmSet64(op, &h->lastLeaf, lp->sibOff);
                }
                mmAdd64(op, &h->leaves, -1);
            } else {
                mmAdd64(op, &h->inner, -1);
            }
            if ((rc = mmUnlink(op, nodeOff)) != DKSHM_OK)
                return rc;
            if (lp->right)
                pit[ppos].v.ref = lp->sibOff;
            memmove(&pit[removed], &pit[removed + 1],
                    (pn - removed - 1) * sizeof pit[0]);
            pn--;
            memcpy(cur, pit, pn * sizeof pit[0]);
            n = pn;
            continue;
        }
        /* Borrow K slots from the sibling. */
        uint32_t kk = lp->k, ln = 0, rn = 0;
        if (lp->right) {
            /* cur + sit[0, k) | sit[k, sn) */
            if (leafLvl) {
                mmView b;
                mmSlot vb = sit[kk].v;
                if (mmViewOf(t, &vb, true, &b) != DKSHM_OK)
                    return DKSHM_CORRUPT;
                dkoff old = mmKoff(pit[sp].v.meta);
                uint32_t oldLen = mmKlen(pit[sp].v.meta);
                if (lp->sepBlock) {
                    mmFillBlock(s, lp->sepBlock, MM_KIND_KEY, b.p, lp->sepLen,
                                NULL, 0);
                    if ((rc = mmLink(op, lp->sepBlock)) != DKSHM_OK)
                        return rc;
                    mmAdd64(op, &h->keyBlocks, 1);
                    mmAdd64(op, &h->keyBytes,
                            (int64_t)(MM_ENTRY_HDR + mmR8(lp->sepLen)));
                }
                pit[sp].v =
                    mmSepSlot(&b, lp->sepLen, lp->sepBlock, pit[sp].v.ref);
                if (old) {
                    if ((rc = mmUnlink(op, old)) != DKSHM_OK)
                        return rc;
                    mmAdd64(op, &h->keyBlocks, -1);
                    mmAdd64(op, &h->keyBytes,
                            -(int64_t)(MM_ENTRY_HDR + mmR8(oldLen)));
                }
            } else {
                mmCopyKey(&sit[0].v, &pit[sp].v);
                mmCopyKey(&pit[sp].v, &sit[kk].v);
                mmClearKey(&sit[kk].v);
            }
            memcpy(tmp, cur, n * sizeof cur[0]);
            memcpy(tmp + n, sit, kk * sizeof sit[0]);
            ln = n + kk;
            rn = sn - kk;
            mmRewrite(op, node, tmp, ln);
            mmRewrite(op, lp->sib, sit + kk, rn);
        } else {
            /* sit[0, sn-k) | sit[sn-k, sn) + cur */
            uint32_t b0 = sn - kk;
            if (leafLvl) {
                mmView b;
                mmSlot vb = sit[b0].v;
                if (mmViewOf(t, &vb, true, &b) != DKSHM_OK)
                    return DKSHM_CORRUPT;
                dkoff old = mmKoff(pit[ppos].v.meta);
                uint32_t oldLen = mmKlen(pit[ppos].v.meta);
                if (lp->sepBlock) {
                    mmFillBlock(s, lp->sepBlock, MM_KIND_KEY, b.p, lp->sepLen,
                                NULL, 0);
                    if ((rc = mmLink(op, lp->sepBlock)) != DKSHM_OK)
                        return rc;
                    mmAdd64(op, &h->keyBlocks, 1);
                    mmAdd64(op, &h->keyBytes,
                            (int64_t)(MM_ENTRY_HDR + mmR8(lp->sepLen)));
                }
                pit[ppos].v =
                    mmSepSlot(&b, lp->sepLen, lp->sepBlock, pit[ppos].v.ref);
                if (old) {
                    if ((rc = mmUnlink(op, old)) != DKSHM_OK)
                        return rc;
                    mmAdd64(op, &h->keyBlocks, -1);
                    mmAdd64(op, &h->keyBytes,
                            -(int64_t)(MM_ENTRY_HDR + mmR8(oldLen)));
                }
            } else {
                mmCopyKey(&cur[0].v, &pit[ppos].v);
                mmCopyKey(&pit[ppos].v, &sit[b0].v);
                mmClearKey(&sit[b0].v);
            }
            memcpy(tmp, sit + b0, kk * sizeof sit[0]);
            memcpy(tmp + kk, cur, n * sizeof cur[0]);
            ln = kk + n;
            rn = b0;
            mmRewrite(op, node, tmp, ln);
            mmRewrite(op, lp->sib, sit, rn);
        }
        mmRewrite(op, p, pit, pn);
        return DKSHM_OK;
    }
}

DKSHM_API int multimapDelete(multimap *m, const void *key, size_t klen) {
    if (mmCheckHandle(m) != DKSHM_OK)
        return DKSHM_INVALID;
    mmKey k;
    int rc = mmUserKey(m, key, klen, &k);
    if (rc != DKSHM_OK)
        return rc;
    if (m->kind == MM_HANDLE_ANCHOR)
        return DKSHM_INVALID;
    if (m->readOnly || m->kind == MM_HANDLE_SNAPSHOT)
        return DKSHM_READONLY;
    mmOp op;
    rc = mmLock(m, &op);
    if (rc != DKSHM_OK)
        return rc;
    rc = mmDeleteLocked(&op, &k);
    mmEnd(&op, rc == DKSHM_OK);
    mmUnlock(&op);
    mmRelease(&op);
    return rc;
}

DKSHM_API int multimapDeleteInt(multimap *m, int64_t key) {
    return multimapDelete(m, &key, sizeof key);
}

DKSHM_API int multimapLookupInt(multimap *m, int64_t key, void *buf,
                                size_t bufLen, size_t *vlen) {
    return multimapLookup(m, &key, sizeof key, buf, bufLen, vlen);
}

/* ---- open, create, close
 * ------------------------------------------------------- */

static uint64_t mmHeaderSum(const mmHeader *h) {
    return XXH3_64bits(h, offsetof(mmHeader, checksum));
}

/* A new, empty map header block in flight. HFLAGS: MM_H_...; VERSIONOF:
 * for a version, its versioned map. */
static int mmMakeHeader(dkshm *s, membound *mb, uint32_t keyMode,
                        uint32_t hflags, dkoff versionOf, const char *name,
                        dkoff *out) {
    dkoff off;
    int rc = memboundAllocInflight(mb, MM_BLOCK_BYTES, &off);
    if (rc != DKSHM_OK)
        return rc;
    /* Built aside, then stored word by word: the block may be memory an
     * optimistic reader still looks at. */
    mmHeader h;
    memset(&h, 0, sizeof h);
    h.magic = MM_MAGIC;
    h.version = MM_VERSION;
    h.keyMode = keyMode;
    h.undoCap = MM_UNDO_CAP;
    h.nodeBytes = MM_NODE_BYTES;
    h.createTimeNs = dkRealNs();
    h.hflags = hflags;
    h.checksum = mmHeaderSum(&h);
    h.versionOf = versionOf;
    size_t nl = strlen(name);
    memcpy(h.name, name, nl < sizeof h.name ? nl : sizeof h.name - 1);
    uint8_t *p = dkPtr(s, off);
    mmCopyIn(p, &h, sizeof h);
    dkUndo *log = (dkUndo *)(p + MM_HDR_BYTES);
    dkUndoInit(log, MM_UNDO_CAP);
    rc = fastMutexInit(s, &((mmHeader *)p)->lock, off + MM_HDR_BYTES);
    if (rc != DKSHM_OK) {
        memboundFreeInflight(mb, off);
        return rc;
    }
    *out = off;
    return DKSHM_OK;
}

/* Fill handle M for the header at OFF, checking everything fixed. */
static int mmAdopt(multimap *m, dkshm *s, dkoff off) {
    if ((off & 7) || off < s->hdr->heap || !dkRangeOk(s, off, MM_BLOCK_BYTES))
        return DKSHM_CORRUPT;
    mmHeader *h = dkPtr(s, off);
    if (h->magic != MM_MAGIC || h->version != MM_VERSION ||
        h->checksum != mmHeaderSum(h) || h->undoCap != MM_UNDO_CAP ||
        h->nodeBytes != MM_NODE_BYTES || h->keyMode > MULTIMAP_KEYS_INT64 ||
        h->hflags > MM_H_VERSION || LD64(&h->lock.undo) != off + MM_HDR_BYTES)
        return DKSHM_CORRUPT;
    dkUndo *log = (dkUndo *)((uint8_t *)h + MM_HDR_BYTES);
    if (log->cap != MM_UNDO_CAP)
        return DKSHM_CORRUPT;
    m->s = s;
    m->h = h;
    m->log = log;
    m->off = off;
    m->heap = s->hdr->heap;
    m->readOnly = dkshmReadOnly(s);
    m->intKeys = h->keyMode == MULTIMAP_KEYS_INT64;
    m->kind = (h->hflags & MM_H_VERSIONED) ? MM_HANDLE_ANCHOR : MM_HANDLE_MAP;
    m->anchorOff = 0;
    return DKSHM_OK;
}

/* dkshmObjectOpen's root maker and discarder; the open flags are its own. */
_Static_assert(MULTIMAP_CREATE == DKSHM_OBJ_CREATE && MULTIMAP_EXCL == DKSHM_OBJ_EXCL,
               "open flags");
typedef struct mmMakeCtx {
    multimap *m;
    dkshm *s;
    const multimapOptions *opt;
    const char *name;
} mmMakeCtx;

static int mmMake(void *ctx, dkoff *root) {
    mmMakeCtx *c = ctx;
    const multimapOptions *opt = c->opt;
    return mmMakeHeader(
        c->s, c->m->mb, opt ? opt->keyMode : MULTIMAP_KEYS_BYTES,
        opt && (opt->flags & MULTIMAP_VERSIONED) ? MM_H_VERSIONED : 0, 0,
        c->name, root);
}

static void mmDiscard(void *ctx, dkoff root) {
    memboundFreeInflight(((mmMakeCtx *)ctx)->m->mb, root);
}

DKSHM_API int multimapOpen(dkshm *s, const char *name,
                           const multimapOptions *opt, uint32_t flags,
                           multimap **out) {
    if (out)
        *out = NULL;
    if (!s || !out || (flags & ~(MULTIMAP_CREATE | MULTIMAP_EXCL)) ||
        ((flags & MULTIMAP_EXCL) && !(flags & MULTIMAP_CREATE)))
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(name);
    if (rc != DKSHM_OK)
        return rc;
    if (opt && ((opt->flags & ~MULTIMAP_VERSIONED) ||
                opt->keyMode > MULTIMAP_KEYS_INT64))
        return DKSHM_INVALID;
    multimap *m = calloc(1, sizeof *m);
    if (!m) {
        errno = ENOMEM;
        return DKSHM_SYSTEM;
    }
    if (!dkshmReadOnly(s) && !(m->mb = memboundForSegment(s))) {
        free(m);
        return DKSHM_FULL;
    }
    mmMakeCtx mc = {m, s, opt, name};
    dkoff root;
    rc = dkshmObjectOpen(s, name, MULTIMAP_TYPE, flags, mmMake, mmDiscard,
                         &mc, &root, NULL);
    if (rc == DKSHM_OK && (rc = mmAdopt(m, s, root)) == DKSHM_OK &&
        (m->h->hflags & MM_H_VERSION))
        rc = DKSHM_CORRUPT; /* a version is never bound to a name */
    if (rc != DKSHM_OK) {
        free(m);
        return rc;
    }
    *out = m;
    return DKSHM_OK;
}

DKSHM_API int multimapClose(multimap *m) {
    if (m && (m->kind == MM_HANDLE_SNAPSHOT || m->kind == MM_HANDLE_DRAFT))
        mmCloseVersion(m);
    free(m);
    return DKSHM_OK;
}

dkoff multimapRootOff(const multimap *m) {
    return m ? m->off : 0;
}

/* ---- duplicate
 * ---------------------------------------------------------------- */

/* A handle on the tree whose header is at OFF, for this library's own use
 * (a copy in progress). CORRUPT if it is not a map header. */
static int mmTreeAt(const multimap *m, dkoff off, multimap *t) {
    *t = *m;
    return mmAdopt(t, m->s, off);
}

/* Empty tree T, whose lock the caller holds, one logged delete at a time,
 * then free its root leaf: what is left is its header. */
static int mmDrain(multimap *t) {
    mmHeader *h = t->h;
    for (;;) {
        mmOp op;
        mmOpInit(&op, t);
        dkoff root = LD64(&h->root);
        if (root == 0)
            return DKSHM_OK;
        if (LD64(&h->count) == 0) {
            mmNode *r = mmNodeAt(t, root, 0);
            if (!r || LD32(&h->height) != 0 || LD32(&r->count) != 0)
                return DKSHM_CORRUPT;
            mmBegin(&op, MM_OP_CLEANUP);
            mmSet64(&op, &h->root, 0);
            mmSet64(&op, &h->firstLeaf, 0);
            mmSet64(&op, &h->lastLeaf, 0);
            mmAdd64(&op, &h->leaves, -1);
            int rc = mmUnlink(&op, root);
            mmEnd(&op, rc == DKSHM_OK);
            mmRelease(&op);
            if (rc != DKSHM_OK)
                return rc;
            continue;
        }
        mmNode *first = mmNodeAt(t, LD64(&h->firstLeaf), 0);
        mmSlot *sl = first ? mmSlotAt(first, 0) : NULL;
        if (!sl || LD32(&first->count) == 0)
            return DKSHM_CORRUPT;
        mmSlot v;
        mmLoadSlot(sl, &v);
        mmView kv;
        if (mmViewOf(t, &v, true, &kv) != DKSHM_OK)
            return DKSHM_CORRUPT;
        uint8_t kcopy[MM_INLINE];
        const uint8_t *kp = kv.p;
        if (kv.len <= MM_INLINE) {
            memcpy(kcopy, kv.tmp, MM_INLINE);
            kp = kcopy;
        }
        mmKey k;
        mmKeyInit(&k, kp, kv.len);
        int rc = mmDeleteLocked(&op, &k);
        mmEnd(&op, rc == DKSHM_OK);
        mmRelease(&op);
        if (rc != DKSHM_OK)
            return rc == DKSHM_NOTFOUND ? DKSHM_CORRUPT : rc;
    }
}

/* Under M's lock: the copy at h->pendingDup loses its anchor: freed, or,
 * if BOUND (it made it into the directory), only forgotten. */
static int mmDropPending(multimap *m, multimap *d, bool bound) {
    mmOp op;
    mmOpInit(&op, m);
    int rc = DKSHM_OK;
    if (!bound) {
        mmOp dl;
        rc = mmLockTree(d, &dl); /* recovers a dead copier's last step */
        if (rc != DKSHM_OK)
            return rc;
        rc = mmDrain(d);
        mmUnlock(&dl);
        if (rc != DKSHM_OK)
            return rc;
    }
    /* Not a change readers can see: no seq, but the log all the same. */
    m->log->op = MM_OP_CLEANUP;
    dkUndoSet64(m->s, m->log, &m->h->pendingDup, 0);
    if (!bound) {
        rc = dkInflightAdd(m->s, m->log, d->off);
        if (rc != DKSHM_OK)
            dkUndoRollback(m->s, m->log);
    }
    dkUndoCommit(m->log);
    if (rc == DKSHM_OK && !bound)
        memboundFreeInflight(m->mb, d->off);
    return rc;
}

/* M's lock is held and pendingDup is set: its copier is dead. */
static int mmCleanupDup(multimap *m) {
    dkoff off = LD64(&m->h->pendingDup);
    multimap d;
    if (mmTreeAt(m, off, &d) != DKSHM_OK)
        return DKSHM_CORRUPT;
    char name[sizeof d.h->name];
    memcpy(name, d.h->name, sizeof name);
    name[sizeof name - 1] = '\0';
    uint32_t type;
    dkoff root;
    bool bound = dkshmObjectFind(m->s, name, &type, &root) == DKSHM_OK &&
                 type == MULTIMAP_TYPE && root == off;
    return mmDropPending(m, &d, bound);
}

/* Copy every entry of M (whose lock the caller holds) into D (whose lock
 * the caller holds), in key order. */
static int mmCopyAll(multimap *m, multimap *d) {
    mmHeader *h = m->h;
    uint64_t leaves = LD64(&h->leaves), seen = 0, total = LD64(&h->count);
    dkoff off = LD64(&h->firstLeaf);
    while (off) {
        mmNode *leaf = mmNodeAt(m, off, 0);
        if (!leaf || ++seen > leaves)
            return DKSHM_CORRUPT;
        uint32_t cnt = LD32(&leaf->count);
        if (cnt > MM_SLOTS)
            return DKSHM_CORRUPT;
        for (uint32_t i = 0; i < cnt; i++) {
            mmSlot *sl = mmSlotAt(leaf, i);
            if (!sl)
                return DKSHM_CORRUPT;
            dkoff e = LD64(&sl->ref);
            uint32_t klen = mmKlen(LD64(&sl->meta));
            const uint8_t *kb = mmBlockKey(m, e, klen, MM_KIND_ENTRY);
            if (!kb)
                return DKSHM_CORRUPT;
            uint64_t vlen = LD64(&((const mmEntry *)dkPtr(m->s, e))->vlen);
            uint64_t esize = mmEntrySize(klen, vlen);
            if (vlen > m->s->size || !dkRangeOk(m->s, e, esize))
                return DKSHM_CORRUPT;
            mmOp op;
            mmOpInit(&op, d);
            dkoff ne;
            int rc = mmAllocFresh(&op, esize, &ne);
            if (rc != DKSHM_OK)
                return rc;
            uint8_t *dst = dkPtr(m->s, ne);
            for (uint64_t w = 0; w < esize; w += 8)
                ST64((uint64_t *)(void *)(dst + w),
                     LD64((const uint64_t *)(const void *)(kb - MM_ENTRY_HDR +
                                                           w)));
            mmKey k;
            mmKeyInit(&k, kb, klen);
            rc = mmInsertLocked(&op, &k, ne, esize, MULTIMAP_NOOVERWRITE);
            mmEnd(&op, rc == DKSHM_OK);
            mmRelease(&op);
            if (rc != DKSHM_OK)
                return rc == DKSHM_EXISTS ? DKSHM_CORRUPT : rc;
        }
        off = LD64(&leaf->next);
    }
    return LD64(&d->h->count) == total ? DKSHM_OK : DKSHM_CORRUPT;
}

DKSHM_API int multimapDuplicate(multimap *m, const char *newName,
                                multimap **out) {
    if (out)
        *out = NULL;
    if (mmCheckHandle(m) != DKSHM_OK)
        return DKSHM_INVALID;
    int rc = dkshmValidateObjectName(newName);
    if (rc != DKSHM_OK)
        return rc;
    if (m->kind == MM_HANDLE_ANCHOR)
        return DKSHM_INVALID; /* duplicate a snapshot of it */
    if (m->readOnly)
        return DKSHM_READONLY;
    dkshm *s = m->s;
    if (dkshmObjectFind(s, newName, NULL, NULL) == DKSHM_OK)
        return DKSHM_EXISTS;
    dkoff dOff;
    rc = mmMakeHeader(s, m->mb, m->h->keyMode, 0, 0, newName, &dOff);
    if (rc != DKSHM_OK)
        return rc;
    mmOp lk;
    rc = mmLock(m, &lk);
    if (rc != DKSHM_OK) {
        memboundFreeInflight(m->mb, dOff);
        return rc;
    }
    /* The copy hangs off our header from now on. */
    m->log->op = MM_OP_DUP;
    rc = dkInflightRemove(s, m->log, dOff);
    if (rc == DKSHM_OK)
        dkUndoSet64(s, m->log, &m->h->pendingDup, dOff);
    dkUndoCommit(m->log);
    if (rc != DKSHM_OK) {
        mmUnlock(&lk);
        memboundFreeInflight(m->mb, dOff);
        return DKSHM_CORRUPT;
    }
    DKSHM_CRASHPOINT();
    multimap d;
    if (mmTreeAt(m, dOff, &d) != DKSHM_OK) {
        mmUnlock(&lk); /* cannot be: we made it; leave it to check */
        return DKSHM_CORRUPT;
    }
    mmOp dl;
    rc = mmLockTree(&d, &dl);
    if (rc == DKSHM_OK) {
        rc = mmCopyAll(m, &d);
        mmUnlock(&dl);
    }
    DKSHM_CRASHPOINT();
    if (rc == DKSHM_OK)
        rc = dkshmObjectCreate(s, newName, MULTIMAP_TYPE, dOff);
    DKSHM_CRASHPOINT();
    int rc2 = mmDropPending(m, &d, rc == DKSHM_OK);
    mmUnlock(&lk);
    if (rc == DKSHM_OK)
        rc = rc2;
    if (rc == DKSHM_OK && out) {
        rc = multimapOpen(s, newName, NULL, 0, out);
    }
    return rc;
}

/* ---- versioned maps: copy-on-write publishing -------------------------------
 *
 * The header bound to the name (the anchor) keeps its own tree empty and
 * points at an mmAnchor block: the current version, the versions replaced
 * but maybe still held, the drafts being built, and the snapshot holders.
 * Each version or draft is a complete map block of its own (header, lock,
 * log, tree) with MM_H_VERSION set; it is owned through the anchor block,
 * which the anchor owns. All of it changes under the anchor's lock and log.
 *
 * Readers of the anchor read `current` inside the anchor's seqlock and then
 * the version's tree; a publish moves `current` with the anchor's seq odd,
 * so a reader that overlapped it retries, and a version is freed only
 * after the publish that replaced it. The current version is never changed
 * in place (the anchor refuses writes), so its own seq never moves.
 *
 * Snapshot holders are (version, process lock id, holds) entries; a dead
 * process's entries do not count, so its versions are freed by the next
 * cleanup (any snapshot, draft, publish, close or check of the map).
 * Drafts carry their owner's lock id the same way. Freeing a version
 * empties its tree one logged delete at a time under its own lock, then
 * drops it from the anchor block and frees its header: every step leaves
 * every block owned.
 */

#define MM_ANCHOR_MAGIC 0x31524843414d4d44ull /* "DMMACHR1" */
#define MM_RETIRED_MAX 16
#define MM_DRAFTS_MAX 16
#define MM_PINS_MAX 64

typedef struct mmPin { /* in the segment */
    dkoff ver;         /* a version, 0: free entry */
    uint64_t oc;       /* holder's lock id << 32 | holds */
} mmPin;

typedef struct mmAnchor { /* in the segment: a versioned map's versions */
    uint64_t magic;
    dkoff current; /* what readers of the map see */
    uint64_t publishes;
    uint64_t pad;
    dkoff retired[MM_RETIRED_MAX]; /* replaced, freed once not held */
    mmPin drafts[MM_DRAFTS_MAX];   /* private versions being built */
    mmPin pins[MM_PINS_MAX];       /* snapshot holds */
} mmAnchor;

static mmAnchor *mmAnchorAt(const multimap *a, dkoff off) {
    if (off == 0 || (off & 7) || off < a->heap ||
        !dkRangeOk(a->s, off, sizeof(mmAnchor)))
        return NULL;
    mmAnchor *an = dkPtr(a->s, off);
    return LD64(&an->magic) == MM_ANCHOR_MAGIC ? an : NULL;
}

/* A handle on version OFF of versioned map A, for reads on the hot path:
 * only what a torn read could get wrong is checked (the walk checks the
 * rest). */
static int mmVersionFast(const multimap *a, dkoff off, multimap *v) {
    if ((off & 7) || off < a->heap || !dkRangeOk(a->s, off, MM_BLOCK_BYTES))
        return MM_TORN;
    mmHeader *h = dkPtr(a->s, off);
    if (LD64(&h->magic) != MM_MAGIC || LD32(&h->hflags) != MM_H_VERSION)
        return MM_TORN;
    *v = *a;
    v->h = h;
    v->off = off;
    v->log = (dkUndo *)((uint8_t *)h + MM_HDR_BYTES);
    v->kind = MM_HANDLE_SNAPSHOT;
    v->anchorOff = a->off;
    return DKSHM_OK;
}

typedef struct mmVerRead { /* per call */
    mmAttemptFn fn;
    void *ctx;
} mmVerRead;

/* Run a read on the current version of versioned map A. */
static int mmAnchorAttempt(multimap *a, void *c) {
    mmVerRead *vr = c;
    dkoff ext = LD64(&a->h->anchor);
    if (ext == 0)
        return MM_EMPTY;
    mmAnchor *an = mmAnchorAt(a, ext);
    if (!an)
        return MM_TORN;
    multimap v;
    if (mmVersionFast(a, LD64(&an->current), &v) != DKSHM_OK)
        return MM_TORN;
    return vr->fn(&v, vr->ctx);
}

/* mmRead, through the current version when M is a versioned map. */
static int mmReadMap(multimap *m, mmAttemptFn fn, void *ctx) {
    dkCount(m->s, DKSHM_CTR_READS, 1);
    if (m->kind != MM_HANDLE_ANCHOR)
        return mmRead(m, fn, ctx);
    mmVerRead vr = {fn, ctx};
    return mmRead(m, mmAnchorAttempt, &vr);
}

/* The anchor's lock is held (OP): make sure it has an anchor block and a
 * (first, empty) version. */
static int mmAnchorReady(multimap *a, mmOp *op, mmAnchor **out) {
    dkoff ext = LD64(&a->h->anchor);
    if (ext) {
        *out = mmAnchorAt(a, ext);
        return *out ? DKSHM_OK : DKSHM_CORRUPT;
    }
    dkoff e, v;
    int rc = mmAllocFresh(op, sizeof(mmAnchor), &e);
    if (rc != DKSHM_OK)
        return rc;
    rc = mmMakeHeader(a->s, a->mb, a->h->keyMode, MM_H_VERSION, a->off, "", &v);
    if (rc != DKSHM_OK) {
        mmEnd(op, false);
        mmRelease(op);
        return rc;
    }
    op->fresh[op->nFresh] = v;
    op->linked[op->nFresh++] = false;
    mmAnchor init;
    memset(&init, 0, sizeof init);
    init.magic = MM_ANCHOR_MAGIC;
    init.current = v;
    mmCopyIn(dkPtr(a->s, e), &init, sizeof init);
    mmBeginQuiet(op, MM_OP_DRAFT);
    mmSet64(op, &a->h->anchor, e);
    rc = mmLink(op, e);
    if (rc == DKSHM_OK)
        rc = mmLink(op, v);
    mmEnd(op, rc == DKSHM_OK);
    mmRelease(op);
    if (rc != DKSHM_OK)
        return rc;
    *out = dkPtr(a->s, e);
    return DKSHM_OK;
}

/* Whether version V of anchor block AN is held by a live snapshot. */
static bool mmPinned(const multimap *a, mmAnchor *an, dkoff v) {
    for (int i = 0; i < MM_PINS_MAX; i++)
        if (LD64(&an->pins[i].ver) == v &&
            dkOwnerAlive(a->s, (uint32_t)(LD64(&an->pins[i].oc) >> 32)))
            return true;
    return false;
}

/* Under the anchor's lock: free version VOFF, recorded in the anchor block
 * at SLOT (and OC, for a draft): empty its tree, then unlink it. */
static int mmDestroyVersion(multimap *a, dkoff voff, uint64_t *slot,
                            uint64_t *oc) {
    multimap v;
    if (mmTreeAt(a, voff, &v) != DKSHM_OK || !(v.h->hflags & MM_H_VERSION))
        return DKSHM_CORRUPT;
    mmOp vl;
    int rc = mmLock(&v, &vl); /* recovers a dead writer of a draft */
    if (rc != DKSHM_OK)
        return rc;
    rc = mmDrain(&v);
    mmUnlock(&vl);
    if (rc != DKSHM_OK)
        return rc;
    mmOp op;
    mmOpInit(&op, a);
    mmBeginQuiet(&op, MM_OP_CLEANUP);
    mmSet64(&op, slot, 0);
    if (oc)
        mmSet64(&op, oc, 0);
    rc = mmUnlink(&op, voff);
    mmEnd(&op, rc == DKSHM_OK);
    mmRelease(&op);
    return rc;
}

/* Under the anchor's lock: forget the holds of dead processes, discard
 * the drafts of dead processes, free replaced versions nobody holds. */
static int mmAnchorCleanup(multimap *a, mmAnchor *an) {
    int rc = DKSHM_OK;
    for (int i = 0; i < MM_PINS_MAX && rc == DKSHM_OK; i++) {
        uint64_t oc = LD64(&an->pins[i].oc);
        if (LD64(&an->pins[i].ver) &&
            !dkOwnerAlive(a->s, (uint32_t)(oc >> 32))) {
            mmOp op;
            mmOpInit(&op, a);
            mmBeginQuiet(&op, MM_OP_CLEANUP);
            mmSet64(&op, &an->pins[i].ver, 0);
            mmSet64(&op, &an->pins[i].oc, 0);
            mmEnd(&op, true);
        }
    }
    for (int i = 0; i < MM_DRAFTS_MAX && rc == DKSHM_OK; i++) {
        dkoff d = LD64(&an->drafts[i].ver);
        if (d && !dkOwnerAlive(a->s, (uint32_t)(LD64(&an->drafts[i].oc) >> 32)))
            rc = mmDestroyVersion(a, d, &an->drafts[i].ver, &an->drafts[i].oc);
    }
    for (int i = 0; i < MM_RETIRED_MAX && rc == DKSHM_OK; i++) {
        dkoff v = LD64(&an->retired[i]);
        if (v && !mmPinned(a, an, v))
            rc = mmDestroyVersion(a, v, &an->retired[i], NULL);
    }
    return rc;
}

/* Add DELTA (+1/-1) to this process's hold on version V. */
static int mmPinAdjust(multimap *a, mmAnchor *an, dkoff v, uint32_t me,
                       int delta) {
    int at = -1, freeAt = -1;
    for (int i = 0; i < MM_PINS_MAX; i++) {
        dkoff pv = LD64(&an->pins[i].ver);
        if (pv == v && (uint32_t)(LD64(&an->pins[i].oc) >> 32) == me)
            at = i;
        if (pv == 0 && freeAt < 0)
            freeAt = i;
    }
    if (at < 0 && delta < 0)
        return DKSHM_NOTFOUND;
    if (at < 0 && freeAt < 0)
        return DKSHM_BUSY;
    mmOp op;
    mmOpInit(&op, a);
    mmBeginQuiet(&op, MM_OP_PIN);
    if (at < 0) {
        mmSet64(&op, &an->pins[freeAt].ver, v);
        mmSet64(&op, &an->pins[freeAt].oc, (uint64_t)me << 32 | 1);
    } else {
        uint64_t n = (LD64(&an->pins[at].oc) & 0xffffffffull) + (uint64_t)delta;
        if (n == 0) {
            mmSet64(&op, &an->pins[at].ver, 0);
            mmSet64(&op, &an->pins[at].oc, 0);
        } else {
            mmSet64(&op, &an->pins[at].oc, (uint64_t)me << 32 | n);
        }
    }
    mmEnd(&op, true);
    return DKSHM_OK;
}

/* Lock versioned map A, make it ready and clean it. */
static int mmAnchorLock(multimap *a, mmOp *lk, mmAnchor **an, uint32_t *me) {
    int rc = dkSelf(a->s, me);
    if (rc != DKSHM_OK)
        return rc;
    rc = mmLock(a, lk);
    if (rc != DKSHM_OK)
        return rc;
    mmOp op;
    mmOpInit(&op, a);
    rc = mmAnchorReady(a, &op, an);
    if (rc == DKSHM_OK)
        rc = mmAnchorCleanup(a, *an);
    if (rc != DKSHM_OK)
        mmUnlock(lk);
    return rc;
}

static multimap *mmHandleOn(const multimap *a, dkoff off, uint32_t kind) {
    multimap *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    if (mmTreeAt(a, off, h) != DKSHM_OK) {
        free(h);
        return NULL;
    }
    h->kind = kind;
    h->anchorOff = a->off;
    return h;
}

DKSHM_API int multimapSnapshot(multimap *m, multimap **out) {
    if (out)
        *out = NULL;
    if (mmCheckHandle(m) != DKSHM_OK || !out || m->kind != MM_HANDLE_ANCHOR)
        return DKSHM_INVALID;
    if (m->readOnly)
        return DKSHM_READONLY;
    mmOp lk;
    mmAnchor *an;
    uint32_t me;
    int rc = mmAnchorLock(m, &lk, &an, &me);
    if (rc != DKSHM_OK)
        return rc;
    dkoff cur = LD64(&an->current);
    multimap *h = mmHandleOn(m, cur, MM_HANDLE_SNAPSHOT);
    if (!h) {
        rc = DKSHM_CORRUPT;
    } else if ((rc = mmPinAdjust(m, an, cur, me, +1)) != DKSHM_OK) {
        free(h);
        h = NULL;
    }
    mmUnlock(&lk);
    *out = h;
    return rc;
}

DKSHM_API int multimapDraft(multimap *m, multimap **out) {
    if (out)
        *out = NULL;
    if (mmCheckHandle(m) != DKSHM_OK || !out || m->kind != MM_HANDLE_ANCHOR)
        return DKSHM_INVALID;
    if (m->readOnly)
        return DKSHM_READONLY;
    dkoff dOff;
    int rc = mmMakeHeader(m->s, m->mb, m->h->keyMode, MM_H_VERSION, m->off, "",
                          &dOff);
    if (rc != DKSHM_OK)
        return rc;
    mmOp lk;
    mmAnchor *an;
    uint32_t me;
    if ((rc = mmAnchorLock(m, &lk, &an, &me)) != DKSHM_OK) {
        memboundFreeInflight(m->mb, dOff);
        return rc;
    }
    int slot = -1;
    for (int i = 0; i < MM_DRAFTS_MAX && slot < 0; i++)
        if (LD64(&an->drafts[i].ver) == 0)
            slot = i;
    if (slot < 0) {
        mmUnlock(&lk);
        memboundFreeInflight(m->mb, dOff);
        return DKSHM_BUSY;
    }
    /* The draft is the map's (owned through the anchor block) from now
     * on; if we die it is discarded by the next cleanup. */
    mmOp op;
    mmOpInit(&op, m);
    mmBeginQuiet(&op, MM_OP_DRAFT);
    mmSet64(&op, &an->drafts[slot].ver, dOff);
    mmSet64(&op, &an->drafts[slot].oc, (uint64_t)me << 32);
    rc = dkInflightRemove(m->s, op.log, dOff);
    mmEnd(&op, rc == DKSHM_OK);
    if (rc != DKSHM_OK) {
        mmUnlock(&lk);
        memboundFreeInflight(m->mb, dOff);
        return DKSHM_CORRUPT;
    }
    DKSHM_CRASHPOINT();
    /* Copy the current version (it cannot be replaced while we hold the
     * anchor's lock) into the draft, under the draft's lock. */
    multimap src, d;
    rc = mmTreeAt(m, LD64(&an->current), &src);
    if (rc == DKSHM_OK)
        rc = mmTreeAt(m, dOff, &d);
    if (rc == DKSHM_OK) {
        mmOp dl;
        rc = mmLockTree(&d, &dl);
        if (rc == DKSHM_OK) {
            rc = mmCopyAll(&src, &d);
            mmUnlock(&dl);
        }
    }
    multimap *h = NULL;
    if (rc == DKSHM_OK && !(h = mmHandleOn(m, dOff, MM_HANDLE_DRAFT))) {
        errno = ENOMEM;
        rc = DKSHM_SYSTEM;
    }
    if (rc != DKSHM_OK) {
        int rc2 = mmDestroyVersion(m, dOff, &an->drafts[slot].ver,
                                   &an->drafts[slot].oc);
        (void)rc2; /* if that fails too, the next cleanup retries */
    }
    mmUnlock(&lk);
    *out = h;
    return rc;
}

DKSHM_API int multimapPublish(multimap *draft) {
    if (mmCheckHandle(draft) != DKSHM_OK || draft->kind != MM_HANDLE_DRAFT)
        return DKSHM_INVALID;
    multimap a;
    if (mmTreeAt(draft, draft->anchorOff, &a) != DKSHM_OK ||
        !(a.h->hflags & MM_H_VERSIONED))
        return DKSHM_CORRUPT;
    a.kind = MM_HANDLE_ANCHOR;
    mmOp lk;
    mmAnchor *an;
    uint32_t me;
    int rc = mmAnchorLock(&a, &lk, &an, &me);
    if (rc != DKSHM_OK)
        return rc;
    int d = -1, r = -1;
    for (int i = 0; i < MM_DRAFTS_MAX && d < 0; i++)
        if (LD64(&an->drafts[i].ver) == draft->off &&
            (uint32_t)(LD64(&an->drafts[i].oc) >> 32) == me)
            d = i;
    for (int i = 0; i < MM_RETIRED_MAX && r < 0; i++)
        if (LD64(&an->retired[i]) == 0)
            r = i;
    if (d < 0 || r < 0) {
        mmUnlock(&lk);
        return d < 0 ? DKSHM_INVALID : DKSHM_BUSY;
    }
    /* One commit: readers of the map see the old version or the new. */
    mmOp op;
    mmOpInit(&op, &a);
    mmBegin(&op, MM_OP_PUBLISH);
    mmSet64(&op, &an->retired[r], LD64(&an->current));
    mmSet64(&op, &an->current, draft->off);
    mmSet64(&op, &an->drafts[d].ver, 0);
    mmSet64(&op, &an->drafts[d].oc, 0);
    mmAdd64(&op, &an->publishes, 1);
    mmEnd(&op, true);
    DKSHM_CRASHPOINT();
    rc = mmAnchorCleanup(&a, an); /* frees the old one if nobody holds it */
    mmUnlock(&lk);
    free(draft);
    return rc == DKSHM_CORRUPT ? rc : DKSHM_OK;
}

/* multimapClose of a snapshot or a draft: give the hold back, or discard
 * the draft, and clean up. Best effort: errors leave it to the next
 * cleanup. */
static void mmCloseVersion(multimap *m) {
    multimap a;
    if (m->readOnly || mmTreeAt(m, m->anchorOff, &a) != DKSHM_OK ||
        !(a.h->hflags & MM_H_VERSIONED))
        return;
    a.kind = MM_HANDLE_ANCHOR;
    mmOp lk;
    mmAnchor *an;
    uint32_t me;
    if (mmAnchorLock(&a, &lk, &an, &me) != DKSHM_OK)
        return;
    if (m->kind == MM_HANDLE_SNAPSHOT) {
        if (mmPinAdjust(&a, an, m->off, me, -1) == DKSHM_OK)
            mmAnchorCleanup(&a, an);
    } else {
        for (int i = 0; i < MM_DRAFTS_MAX; i++)
            if (LD64(&an->drafts[i].ver) == m->off &&
                (uint32_t)(LD64(&an->drafts[i].oc) >> 32) == me) {
                mmDestroyVersion(&a, m->off, &an->drafts[i].ver,
                                 &an->drafts[i].oc);
                break;
            }
    }
    mmUnlock(&lk);
}

/* ---- check and block walk ---------------------------------------------------
 */

typedef struct mmBlk {
    dkoff off;
    uint64_t size;
} mmBlk;

typedef struct mmChk { /* per call */
    multimap *t;
    char *why;
    size_t whyLen;
    mmBlk *blk;
    size_t n, cap;
    uint64_t entries, leaves, inner, keyBlocks, keyBytes, entryBytes;
    dkoff prevLeaf;
    multimapBlockFn fn;
    void *fnCtx;
    int fnRc;
    bool nomem;
} mmChk;

static int mmFail(mmChk *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int mmFail(mmChk *c, const char *fmt, ...) {
    if (c->why && c->whyLen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->why, c->whyLen, fmt, ap);
        va_end(ap);
    }
    return DKSHM_CORRUPT;
}

static int mmRecord(mmChk *c, dkoff off, uint64_t size, int kind) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 1024;
        mmBlk *b = realloc(c->blk, cap * sizeof *b);
        if (!b) {
            c->nomem = true;
            return DKSHM_SYSTEM;
        }
        c->blk = b;
        c->cap = cap;
    }
    c->blk[c->n++] = (mmBlk){off, size};
    if (c->fn && c->fnRc == 0)
        c->fnRc = c->fn(c->fnCtx, off, size, kind);
    return DKSHM_OK;
}

#define ULL(x) ((unsigned long long)(x))

static int mmCheckNode(mmChk *c, dkoff off, uint32_t level, bool isRoot,
                       const mmView *lo, const mmView *hi) {
    multimap *t = c->t;
    mmHeader *h = t->h;
    mmNode *n = mmNodeAt(t, off, level);
    if (!n)
        return mmFail(c, "node %#llx (level %u): bad offset, magic or level",
                      ULL(off), level);
    if (LD64(&n->owner) != t->off)
        return mmFail(c, "node %#llx: owner %#llx, not this map", ULL(off),
                      ULL(LD64(&n->owner)));
    uint32_t cnt = LD32(&n->count);
    uint32_t minCnt = level == 0 ? (isRoot ? 0 : 1) : 2;
    if (cnt > MM_SLOTS || cnt < minCnt)
        return mmFail(c, "node %#llx (level %u): %u slots", ULL(off), level,
                      cnt);
    if (mmRecord(c, off, MM_NODE_BYTES, MULTIMAP_BLOCK_NODE))
        return DKSHM_SYSTEM;
    uint8_t seen[MM_SLOTS] = {0};
    uint64_t live[2] = {0, 0};
    for (uint32_t i = 0; i < cnt; i++) {
        uint32_t p = mmPerm(n, i);
        if (p >= MM_SLOTS || seen[p])
            return mmFail(c, "node %#llx: permutation broken at %u", ULL(off),
                          i);
        seen[p] = 1;
        live[p >> 6] |= 1ull << (p & 63);
        if (level == 0) {
            mmSlot sv;
            mmLoadSlot(&n->slot[p], &sv);
            uint32_t f =
                (uint32_t)(LD64(&n->fp[p >> 3]) >> ((p & 7) * 8)) & 0xffu;
            if (f != mmFpOf(&sv))
                return mmFail(c, "leaf %#llx: slot %u fingerprint %#x",
                              ULL(off), p, f);
        }
    }
    if (level == 0
            ? (LD64(&n->live[0]) != live[0] || LD64(&n->live[1]) != live[1])
            : (LD64(&n->live[0]) || LD64(&n->live[1])))
        return mmFail(c, "node %#llx: live-slot bitmap does not match",
                      ULL(off));
    for (uint32_t j = 0; level > 0 && j < MM_FP_WORDS; j++) {
        uint64_t want = 0;
        if (j && 8 * j < cnt) {
            mmSlot *ss = mmSlotAt(n, 8 * j);
            want = LD64(&ss->p0);
        }
        if (LD64(&n->fp[j]) != want)
            return mmFail(c, "node %#llx: search sample %u is stale", ULL(off),
                          j);
    }
    if (level == 0) {
        c->leaves++;
        if (LD64(&n->prev) != c->prevLeaf)
            return mmFail(c, "leaf %#llx: prev %#llx, expected %#llx", ULL(off),
                          ULL(LD64(&n->prev)), ULL(c->prevLeaf));
        if (c->prevLeaf) {
            mmNode *pl = mmNodeAt(t, c->prevLeaf, 0);
            if (!pl || LD64(&pl->next) != off)
                return mmFail(c, "leaf %#llx: next is not %#llx",
                              ULL(c->prevLeaf), ULL(off));
        } else if (LD64(&h->firstLeaf) != off) {
            return mmFail(c, "first leaf %#llx, expected %#llx",
                          ULL(LD64(&h->firstLeaf)), ULL(off));
        }
        c->prevLeaf = off;
    } else {
        c->inner++;
    }
    /* Views of every key of the node (position 0 of an inner node has
     * none). */
    mmView *v = malloc((cnt ? cnt : 1) * sizeof *v);
    if (!v) {
        c->nomem = true;
        return DKSHM_SYSTEM;
    }
    int rc = DKSHM_OK;
    for (uint32_t i = 0; i < cnt && rc == DKSHM_OK; i++) {
        mmSlot sv;
        mmLoadSlot(&n->slot[mmPerm(n, i)], &sv);
        uint32_t klen = mmKlen(sv.meta);
        dkoff koff = mmKoff(sv.meta);
        if (level > 0 && i == 0) {
            if (sv.p0 || sv.p1 || sv.meta)
                rc = mmFail(c, "node %#llx: first key not cleared", ULL(off));
            v[i].len = 0;
            v[i].p = v[i].tmp;
        } else if (klen == 0 || klen > MULTIMAP_KEY_MAX ||
                   (t->intKeys && (level == 0 ? klen != 8 : klen > 8))) {
            rc = mmFail(c, "node %#llx slot %u: key length %u", ULL(off), i,
                        klen);
        } else if (level == 0 && koff != 0) {
            rc = mmFail(c, "leaf %#llx slot %u: key block set", ULL(off), i);
        } else if (level > 0 && (klen <= MM_INLINE) != (koff == 0)) {
            rc = mmFail(c, "node %#llx slot %u: key block %#llx for %u bytes",
                        ULL(off), i, ULL(koff), klen);
        } else {
            dkoff blk = level == 0 ? sv.ref : koff;
            const uint8_t *kb = NULL;
            uint64_t size = 0;
            if (level == 0 || klen > MM_INLINE) {
                uint32_t kind = level == 0 ? MM_KIND_ENTRY : MM_KIND_KEY;
                kb = mmBlockKey(t, blk, klen, kind);
                if (!kb) {
                    rc = mmFail(c, "node %#llx slot %u: bad %s block %#llx",
                                ULL(off), i, level ? "key" : "entry", ULL(blk));
                    break;
                }
                const mmEntry *e = dkPtr(t->s, blk);
                uint64_t vlen = LD64(&e->vlen);
                size = mmEntrySize(klen, vlen);
                if ((level > 0 && vlen) || vlen > t->s->size ||
                    !dkRangeOk(t->s, blk, size)) {
                    rc = mmFail(c, "block %#llx: value length %llu", ULL(blk),
                                ULL(vlen));
                    break;
                }
                if (mmRecord(c, blk, size,
                             level ? MULTIMAP_BLOCK_KEY
                                   : MULTIMAP_BLOCK_ENTRY)) {
                    rc = DKSHM_SYSTEM;
                    break;
                }
                if (level == 0) {
                    c->entries++;
                    c->entryBytes += size;
                } else {
                    c->keyBlocks++;
                    c->keyBytes += size;
                }
            }
            /* The cached prefix must be the key's, zero padded. */
            uint8_t pfx[16] = {0};
            if (kb)
                memcpy(pfx, kb, klen < 16 ? klen : 16);
            else {
                mmPutBE(pfx, sv.p0);
                mmPutBE(pfx + 8, sv.p1);
                for (uint32_t j = klen; j < 16; j++)
                    if (pfx[j])
                        rc = mmFail(c, "node %#llx slot %u: prefix not padded",
                                    ULL(off), i);
            }
            if (rc == DKSHM_OK &&
                (mmBE(pfx, 8) != sv.p0 || mmBE(pfx + 8, 8) != sv.p1))
                rc = mmFail(c, "node %#llx slot %u: prefix does not match",
                            ULL(off), i);
            if (rc == DKSHM_OK) {
                mmViewOf(t, &sv, level == 0, &v[i]);
                if (v[i].len <= MM_INLINE)
                    v[i].p = v[i].tmp;
                bool first = level > 0 ? i == 1 : i == 0;
                if (!first && mmViewCmp(&v[i - 1], &v[i]) >= 0)
                    rc = mmFail(c, "node %#llx: keys out of order at %u",
                                ULL(off), i);
                else if ((lo && mmViewCmp(&v[i], lo) < 0) ||
                         (hi && mmViewCmp(&v[i], hi) >= 0))
                    rc = mmFail(c,
                                "node %#llx: key %u outside its parent's "
                                "range",
                                ULL(off), i);
            }
        }
    }
    if (rc == DKSHM_OK && level > 0) {
        for (uint32_t i = 0; i < cnt && rc == DKSHM_OK; i++) {
            dkoff child = LD64(&n->slot[mmPerm(n, i)].ref);
            rc = mmCheckNode(c, child, level - 1, false, i ? &v[i] : lo,
                             i + 1 < cnt ? &v[i + 1] : hi);
        }
    }
    free(v);
    return rc;
}

static int mmBlkCmp(const void *a, const void *b) {
    dkoff x = ((const mmBlk *)a)->off, y = ((const mmBlk *)b)->off;
    return x < y ? -1 : x > y;
}

/* Check tree T (locked, or optimistically) and give each block to FN. */
static int mmCheckTree(mmChk *c) {
    multimap *t = c->t;
    mmHeader *h = t->h;
    c->entries = c->leaves = c->inner = c->keyBlocks = c->keyBytes =
        c->entryBytes = 0;
    c->prevLeaf = 0;
    c->fnRc = 0;
    if (h->magic != MM_MAGIC || h->checksum != mmHeaderSum(h))
        return mmFail(c, "header %#llx: bad magic or checksum", ULL(t->off));
    if (t->log->cap != MM_UNDO_CAP || LD32(&t->log->overflow) != 0)
        return mmFail(c, "undo log: capacity %u, %u overflows", t->log->cap,
                      LD32(&t->log->overflow));
    if (mmRecord(c, t->off, MM_BLOCK_BYTES, MULTIMAP_BLOCK_HEADER))
        return DKSHM_SYSTEM;
    dkoff root = LD64(&h->root);
    uint32_t height = LD32(&h->height);
    int rc = DKSHM_OK;
    if (root == 0) {
        if (height || LD64(&h->firstLeaf) || LD64(&h->lastLeaf))
            return mmFail(c, "empty map with height %u or leaves", height);
    } else {
        if (height >= MM_MAX_LEVELS)
            return mmFail(c, "height %u", height);
        rc = mmCheckNode(c, root, height, true, NULL, NULL);
        if (rc != DKSHM_OK)
            return rc;
        if (LD64(&h->lastLeaf) != c->prevLeaf)
            return mmFail(c, "last leaf %#llx, expected %#llx",
                          ULL(LD64(&h->lastLeaf)), ULL(c->prevLeaf));
        mmNode *last = mmNodeAt(t, c->prevLeaf, 0);
        if (!last || LD64(&last->next) != 0)
            return mmFail(c, "last leaf has a next");
    }
    if (c->entries != LD64(&h->count) || c->leaves != LD64(&h->leaves) ||
        c->inner != LD64(&h->inner) || c->keyBlocks != LD64(&h->keyBlocks) ||
        c->keyBytes != LD64(&h->keyBytes) ||
        c->entryBytes != LD64(&h->entryBytes))
        return mmFail(c,
                      "counters: %llu/%llu entries, %llu/%llu leaves, "
                      "%llu/%llu inner, %llu/%llu key blocks, bytes %llu/%llu "
                      "%llu/%llu",
                      ULL(c->entries), ULL(LD64(&h->count)), ULL(c->leaves),
                      ULL(LD64(&h->leaves)), ULL(c->inner),
                      ULL(LD64(&h->inner)), ULL(c->keyBlocks),
                      ULL(LD64(&h->keyBlocks)), ULL(c->keyBytes),
                      ULL(LD64(&h->keyBytes)), ULL(c->entryBytes),
                      ULL(LD64(&h->entryBytes)));
    return DKSHM_OK;
}

/* Check tree T and the copy that a dead copier left hanging off it. */
static int mmCheckWithPending(mmChk *c, multimap *t) {
    c->t = t;
    int rc = mmCheckTree(c);
    dkoff pd = LD64(&t->h->pendingDup);
    if (rc == DKSHM_OK && pd) {
        multimap d;
        if (mmTreeAt(t, pd, &d) != DKSHM_OK)
            return mmFail(c, "pending copy %#llx is not a map", ULL(pd));
        c->t = &d;
        rc = mmCheckTree(c);
    }
    c->t = t;
    return rc;
}

/* Check version V of versioned map A (a handle on V). */
static int mmCheckVersion(mmChk *c, multimap *a, dkoff v, const char *what) {
    multimap t;
    if (mmTreeAt(a, v, &t) != DKSHM_OK || t.h->hflags != MM_H_VERSION ||
        LD64(&t.h->versionOf) != a->off || t.h->keyMode != a->h->keyMode)
        return mmFail(c, "%s %#llx is not a version of map %#llx", what, ULL(v),
                      ULL(a->off));
    return mmCheckWithPending(c, &t);
}

/* The versions of versioned map A: the anchor block and every version it
 * owns; every hold names the current or a replaced version. */
static int mmCheckAnchor(mmChk *c, multimap *a) {
    dkoff ext = LD64(&a->h->anchor);
    if (ext == 0)
        return DKSHM_OK;
    mmAnchor *an = mmAnchorAt(a, ext);
    if (!an)
        return mmFail(c, "anchor block %#llx: bad offset or magic", ULL(ext));
    if (mmRecord(c, ext, sizeof(mmAnchor), MULTIMAP_BLOCK_HEADER))
        return DKSHM_SYSTEM;
    dkoff cur = LD64(&an->current);
    int rc = mmCheckVersion(c, a, cur, "current version");
    for (int i = 0; i < MM_RETIRED_MAX && rc == DKSHM_OK; i++)
        if (LD64(&an->retired[i]))
            rc =
                mmCheckVersion(c, a, LD64(&an->retired[i]), "replaced version");
    for (int i = 0; i < MM_DRAFTS_MAX && rc == DKSHM_OK; i++)
        if (LD64(&an->drafts[i].ver))
            rc = mmCheckVersion(c, a, LD64(&an->drafts[i].ver), "draft");
    for (int i = 0; i < MM_PINS_MAX && rc == DKSHM_OK; i++) {
        dkoff pv = LD64(&an->pins[i].ver);
        bool known = pv == 0 || pv == cur;
        for (int j = 0; j < MM_RETIRED_MAX && !known; j++)
            known = LD64(&an->retired[j]) == pv;
        if (!known || (pv && (LD64(&an->pins[i].oc) & 0xffffffffull) == 0))
            rc = mmFail(c, "hold %d names %#llx, not a held version", i,
                        ULL(pv));
    }
    return rc;
}

static int mmCheckAttempt(multimap *t, void *ctx) {
    mmChk *c = ctx;
    c->n = 0;
    c->fnRc = 0;
    int rc = mmCheckWithPending(c, t);
    if (rc == DKSHM_OK && (t->h->hflags & MM_H_VERSIONED))
        rc = mmCheckAnchor(c, t);
    if (rc == DKSHM_OK) {
        /* No block reached twice, none overlapping, over all the trees. */
        qsort(c->blk, c->n, sizeof *c->blk, mmBlkCmp);
        for (size_t i = 0; i + 1 < c->n && rc == DKSHM_OK; i++)
            if (c->blk[i].off + c->blk[i].size > c->blk[i + 1].off)
                rc = mmFail(c,
                            "blocks %#llx and %#llx overlap (or one is "
                            "reached twice)",
                            ULL(c->blk[i].off), ULL(c->blk[i + 1].off));
    }
    if (rc == DKSHM_OK && c->fnRc)
        return c->fnRc;
    return rc;
}

static int mmCheckRun(multimap *m, mmChk *c) {
    int rc;
    if (m->readOnly) {
        /* No lock: retry until one walk sees one version. */
        rc = DKSHM_BUSY;
        for (int i = 0; i < 100; i++) {
            uint32_t seq = LD32(&m->h->seq);
            if (seq & 1) {
                sched_yield();
                continue;
            }
            int r = mmCheckAttempt(m, c);
            if (LD32(&m->h->seq) == seq) {
                rc = r;
                break;
            }
        }
    } else {
        mmOp op;
        mmAnchor *an;
        uint32_t me;
        rc = m->kind == MM_HANDLE_ANCHOR ? mmAnchorLock(m, &op, &an, &me)
                                         : mmLock(m, &op);
        if (rc != DKSHM_OK)
            return rc;
        if (LD32(&m->log->count) != 0)
            rc = mmFail(c, "undo log holds %u records under a free lock",
                        LD32(&m->log->count));
        else
            rc = mmCheckAttempt(m, c);
        mmUnlock(&op);
    }
    if (c->nomem) {
        errno = ENOMEM;
        rc = DKSHM_SYSTEM;
    }
    return rc;
}

DKSHM_API int multimapCheck(multimap *m, char *why, size_t whyLen) {
    if (why && whyLen)
        why[0] = '\0';
    if (mmCheckHandle(m) != DKSHM_OK)
        return DKSHM_INVALID;
    mmChk c = {.why = why, .whyLen = whyLen};
    int rc = mmCheckRun(m, &c);
    free(c.blk);
    return rc;
}

int multimapForEachBlock(multimap *m, multimapBlockFn fn, void *ctx) {
    if (mmCheckHandle(m) != DKSHM_OK || !fn)
        return DKSHM_INVALID;
    mmChk c = {.fn = fn, .fnCtx = ctx};
    int rc = mmCheckRun(m, &c);
    free(c.blk);
    return rc;
}
