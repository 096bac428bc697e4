/* multidictInline.h — multidictGet's fast path, compiled into the caller.
 *
 * Included by multidict.h; do not include it on its own. Nothing here is
 * API but multidictGet itself: the names ending in '_' may change in any
 * version.
 *
 * WHY. A get of a key that is not in the CPU's caches waits on two DRAM
 * misses, the key's slot and then its entry. What limits gets per second
 * is how many of those misses the CPU overlaps with the following gets',
 * and that depends on how few instructions stand between them. Compiled
 * into the caller, with the key length a compile-time constant, the hash,
 * the key compare and the copy are specialised for that length and the
 * call's own work goes away: tests/benchDict measured gets at about 1.0x an
 * unshared, unlocked in-process hash table's, against about 0.65x for the
 * same code behind the library call.
 *
 * HOW. The library keeps a multidictView_ at the start of each handle:
 * where the segment is mapped, where the shards' hot lines are, and how to
 * count a read in this process's statistics. multidictGetInline_ reads the
 * shard line, the slots and the entry exactly as the library's own fast
 * path does (an optimistic read validated by the shard's seq word; see
 * multidict.c, READS, for the protocol and the formats) and returns
 * MULTIDICT_MISS_ for anything it does not handle, which multidictGet then
 * does the full way: a shard being written, a key not within 64 slots of
 * its home, an entry with an expiry, keys longer than 32 bytes, values
 * longer than 64, a cache (its CLOCK bits), anything that looks damaged.
 *
 * The inline path is used only when every one of these holds, else the
 * call is made as declared: a GCC-compatible compiler with optimisation
 * (the key length must be known at compile time), xxhash.h available (the
 * library hashes with the system xxHash's XXH3-64, version 0.8 or later),
 * no ThreadSanitizer (which must see the library's word-sized racy reads),
 * DKSHM_NO_INLINE not defined, and a library whose handles carry the
 * layout this header reads (multidictView_.abi == MULTIDICT_VIEW_ABI_: a
 * library with another layout sets another value, so a program built
 * against this header and run with a newer library calls it instead).
 */
#ifndef DKSHM_MULTIDICT_INLINE_H
#define DKSHM_MULTIDICT_INLINE_H

#include <stdint.h>

/* The part of a multidict handle that the inline path reads (per process;
 * written once by multidictOpen, read-only after). */
typedef struct multidictView_ {
    uint32_t abi;       /* MULTIDICT_VIEW_ABI_ when the inline path may run */
    uint32_t shardBits; /* shards = 1 << shardBits */
    const uint8_t *base; /* the segment's mapping */
    uint64_t size;       /* its size */
    const uint8_t *shards; /* the shards' hot lines, 64 bytes apart */
    /* Counting a read as the library does (dkCount): only when the
     * segment handle's fork generation is the process's, i.e. it was not
     * inherited across fork() without registering again. */
    const uint64_t *forkGenNow; /* the process's fork generation */
    const uint64_t *forkGen;    /* the segment handle's */
    uint64_t *const *counters;  /* the segment handle's counters, or NULL */
} multidictView_;

/* The layout below. Bumped whenever the library changes any of it. */
#define MULTIDICT_VIEW_ABI_ 1u

/* The formats the inline path reads (checked against the library's own by
 * static assertions in multidict.c). */
#define MULTIDICT_SHARD_LINE_ 64u /* bytes per shard line: seq (u32),
                                     clearing (u32), table word (u64) */
#define MULTIDICT_TABLE_OFF_MASK_ ((1ull << 56) - 1) /* table word: offset,
                                     log2(slots) in the top 8 bits */
#define MULTIDICT_TAG_BITS_ 22 /* slot: hash tag << 42 | entry offset >> 4 */
#define MULTIDICT_OFF_BITS_ 42
#define MULTIDICT_ENTRY_HDR_ 16u /* entry: lens (vlen << 17 | klen), expiry,
                                    key padded to 8, value */
#define MULTIDICT_KLEN_BITS_ 17
#define MULTIDICT_INLINE_KEY_ 32u   /* longest key the inline path takes */
#define MULTIDICT_INLINE_VALUE_ 64u /* longest value it copies */
#define MULTIDICT_MISS_ 1           /* "do it the full way": not an error */

/* MULTIDICT_INLINE_OK_: the caller gets the inline path. The library
 * itself (DKSHM_BUILDING) compiles the same fast path into its
 * multidictGet, and needs xxhash.h anyway. */
#if defined(__GNUC__) && defined(__OPTIMIZE__) && !defined(DKSHM_NO_INLINE) && \
    !defined(DKSHM_BUILDING) && defined(__has_include)
#if __has_include(<xxhash.h>)
#define MULTIDICT_INLINE_OK_ 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#undef MULTIDICT_INLINE_OK_
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#undef MULTIDICT_INLINE_OK_
#endif
#endif

#if defined(MULTIDICT_INLINE_OK_) || defined(DKSHM_BUILDING)
#ifndef XXH_INLINE_ALL
#define XXH_INLINE_ALL
#define MULTIDICT_UNDEF_XXH_INLINE_ALL_
#endif
#include <xxhash.h>
#ifdef MULTIDICT_UNDEF_XXH_INLINE_ALL_
#undef XXH_INLINE_ALL
#undef MULTIDICT_UNDEF_XXH_INLINE_ALL_
#endif
#if !defined(XXH_VERSION_NUMBER) || XXH_VERSION_NUMBER < 800
#undef MULTIDICT_INLINE_OK_
#endif
#endif

#if defined(MULTIDICT_INLINE_OK_) || defined(DKSHM_BUILDING)

#ifdef __cplusplus
extern "C" {
#endif

typedef uint64_t multidictV16_ __attribute__((vector_size(16)));

/* Copy N <= 64 bytes from P to D with overlapping moves and no call (only
 * [0, N) of D is written). Vector registers, not byte arrays: arrays go
 * through the stack. */
static inline __attribute__((always_inline)) void
multidictCopy64_(uint8_t *d, const uint8_t *p, uint64_t n) {
    if (n > 32) {
        multidictV16_ a0, a1, b0, b1;
        __builtin_memcpy(&a0, p, 16);
        __builtin_memcpy(&a1, p + 16, 16);
        __builtin_memcpy(&b0, p + n - 32, 16);
        __builtin_memcpy(&b1, p + n - 16, 16);
        __builtin_memcpy(d, &a0, 16);
        __builtin_memcpy(d + 16, &a1, 16);
        __builtin_memcpy(d + n - 32, &b0, 16);
        __builtin_memcpy(d + n - 16, &b1, 16);
    } else if (n > 16) {
        multidictV16_ a, b;
        __builtin_memcpy(&a, p, 16);
        __builtin_memcpy(&b, p + n - 16, 16);
        __builtin_memcpy(d, &a, 16);
        __builtin_memcpy(d + n - 16, &b, 16);
    } else if (n >= 8) {
        uint64_t a, b;
        __builtin_memcpy(&a, p, 8);
        __builtin_memcpy(&b, p + n - 8, 8);
        __builtin_memcpy(d, &a, 8);
        __builtin_memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        __builtin_memcpy(&a, p, 4);
        __builtin_memcpy(&b, p + n - 4, 4);
        __builtin_memcpy(d, &a, 4);
        __builtin_memcpy(d + n - 4, &b, 4);
    } else if (n) {
        uint8_t a = p[0], b = p[n / 2], c = p[n - 1];
        d[0] = a;
        d[n / 2] = b;
        d[n - 1] = c;
    }
}

/* Whether the N (1..32) bytes at A equal those at B: overlapping 8-byte
 * loads, no call. Not 16-byte loads: the caller has usually just written
 * its key with 8-byte stores, and a load wider than the stores it reads
 * cannot be forwarded from the store buffer (it waits until they reach the
 * cache). */
static inline __attribute__((always_inline)) int
multidictEq32_(const uint8_t *a, const uint8_t *b, uint64_t n) {
    if (n >= 16) {
        uint64_t a0, a1, a2, a3, b0, b1, b2, b3;
        __builtin_memcpy(&a0, a, 8);
        __builtin_memcpy(&a1, a + 8, 8);
        __builtin_memcpy(&a2, a + n - 16, 8);
        __builtin_memcpy(&a3, a + n - 8, 8);
        __builtin_memcpy(&b0, b, 8);
        __builtin_memcpy(&b1, b + 8, 8);
        __builtin_memcpy(&b2, b + n - 16, 8);
        __builtin_memcpy(&b3, b + n - 8, 8);
        return ((a0 ^ b0) | (a1 ^ b1) | (a2 ^ b2) | (a3 ^ b3)) == 0;
    }
    if (n >= 8) {
        uint64_t a0, a1, b0, b1;
        __builtin_memcpy(&a0, a, 8);
        __builtin_memcpy(&a1, a + n - 8, 8);
        __builtin_memcpy(&b0, b, 8);
        __builtin_memcpy(&b1, b + n - 8, 8);
        return ((a0 ^ b0) | (a1 ^ b1)) == 0;
    }
    if (n >= 4) {
        uint32_t a0, a1, b0, b1;
        __builtin_memcpy(&a0, a, 4);
        __builtin_memcpy(&a1, a + n - 4, 4);
        __builtin_memcpy(&b0, b, 4);
        __builtin_memcpy(&b1, b + n - 4, 4);
        return ((a0 ^ b0) | (a1 ^ b1)) == 0;
    }
    return a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1];
}

/* Count a read in this process's statistics, as the library does. */
static inline __attribute__((always_inline)) void
multidictCountRead_(const multidictView_ *v) {
    if (__atomic_load_n(v->forkGen, __ATOMIC_ACQUIRE) ==
        __atomic_load_n(v->forkGenNow, __ATOMIC_RELAXED)) {
        uint64_t *c = __atomic_load_n(v->counters, __ATOMIC_RELAXED);
        if (c)
            __atomic_store_n(
                &c[DKSHM_CTR_READS],
                __atomic_load_n(&c[DKSHM_CTR_READS], __ATOMIC_RELAXED) + 1,
                __ATOMIC_RELAXED);
    }
}

/* The slots of the table that shard table word WORD names, read racily:
 * NULL for no table, or for a word that names none inside the segment
 * (damage, or a torn read); *MASK gets slots - 1. The slot count and the
 * range check come from the same (masked) log2, so a damaged word can only
 * shrink what is probed. Separate predictable branches, each one fused
 * compare-and-jump. (The library's racy readers use it too.) */
static inline __attribute__((always_inline)) const uint64_t *
multidictSlots_(const multidictView_ *v, uint64_t word, uint64_t *mask) {
    if (__builtin_expect(word == 0, 0)) /* no table yet */
        return NULL;
    if (__builtin_expect(word & 7, 0)) /* damage: slots are 8-byte words */
        return NULL;
    uint64_t slots = 1ull << ((word >> 56) & 63);
    uint64_t off = word & MULTIDICT_TABLE_OFF_MASK_;
    if (__builtin_expect(off + 8 * slots > v->size, 0))
        return NULL;
    *mask = slots - 1;
    return (const uint64_t *)(v->base + off);
}

/* multidictGet's fast path: OK, NOTFOUND or TOOBIG (counted, *VLEN set)
 * or MULTIDICT_MISS_ (nothing counted; BUF may have been written). Racy
 * reads are bounds-checked before they are followed and validated by the
 * shard's seq word before they are returned; a torn or damaged view is a
 * MISS, never a fault. The entry's tag, key length and key decide. */
static inline __attribute__((always_inline)) int
multidictGetView_(const multidictView_ *v, const void *key, size_t klen,
                  void *buf, size_t bufLen, size_t *vlen) {
    if (__builtin_expect(v->abi != MULTIDICT_VIEW_ABI_, 0))
        return MULTIDICT_MISS_;
    uint64_t h = XXH3_64bits(key, klen);
    const uint8_t *sh =
        v->shards + ((h >> 1) >> (63 - v->shardBits)) * MULTIDICT_SHARD_LINE_;
    const uint32_t *seqp = (const uint32_t *)sh;
    uint32_t seq = __atomic_load_n(seqp, __ATOMIC_ACQUIRE);
    uint64_t word = __atomic_load_n((const uint64_t *)(sh + 8), __ATOMIC_ACQUIRE);
    /* Separate predictable branches: each one fused compare-and-jump. */
    if (__builtin_expect(seq & 1, 0)) /* a writer is in the shard */
        return MULTIDICT_MISS_;
    if (__builtin_expect(__atomic_load_n(seqp + 1, __ATOMIC_ACQUIRE) != 0, 0))
        return MULTIDICT_MISS_; /* a clear is emptying it */
    uint64_t mask;
    const uint64_t *tbl = multidictSlots_(v, word, &mask);
    if (__builtin_expect(tbl == NULL, 0))
        return MULTIDICT_MISS_;
    uint64_t i = h & mask;
    uint64_t tag = (h & ((1ull << MULTIDICT_TAG_BITS_) - 1))
                   << MULTIDICT_OFF_BITS_;
    for (int n = 0; n < 64; n++, i = (i + 1) & mask) {
        uint64_t s = __atomic_load_n(tbl + i, __ATOMIC_ACQUIRE);
        if (__builtin_expect(s == 0, 0)) { /* empty: not here */
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(seqp, __ATOMIC_RELAXED) != seq)
                return MULTIDICT_MISS_;
            multidictCountRead_(v);
            return DKSHM_NOTFOUND;
        }
        if ((s & ~((1ull << MULTIDICT_OFF_BITS_) - 1)) != tag)
            continue;
        if (__builtin_expect(s == 1, 0)) /* a tombstone (tag 0) */
            continue;
        uint64_t eo = (s & ((1ull << MULTIDICT_OFF_BITS_) - 1)) << 4;
        /* The header and MULTIDICT_INLINE_KEY_ key bytes lie inside. */
        if (__builtin_expect(eo + MULTIDICT_ENTRY_HDR_ +
                                     MULTIDICT_INLINE_KEY_ >
                                 v->size,
                             0))
            return MULTIDICT_MISS_;
        const uint8_t *e = v->base + eo;
        uint64_t lens = __atomic_load_n((const uint64_t *)e, __ATOMIC_ACQUIRE);
        if (__builtin_expect(
                (lens & ((1ull << MULTIDICT_KLEN_BITS_) - 1)) != klen, 0))
            continue;
        const uint8_t *ek = e + MULTIDICT_ENTRY_HDR_;
        if (!multidictEq32_(ek, (const uint8_t *)key, klen))
            continue;
        uint64_t vl = lens >> MULTIDICT_KLEN_BITS_;
        const uint8_t *ev = ek + ((klen + 7) & ~(size_t)7);
        /* An expiry to look at, a value this path does not copy, or one
         * that would end outside the segment: the full way. */
        if (__builtin_expect(
                __atomic_load_n((const uint64_t *)(e + 8), __ATOMIC_ACQUIRE) !=
                    0,
                0))
            return MULTIDICT_MISS_;
        if (__builtin_expect(vl > MULTIDICT_INLINE_VALUE_, 0))
            return MULTIDICT_MISS_;
        if (__builtin_expect(vl > v->size - (uint64_t)(ev - v->base), 0))
            return MULTIDICT_MISS_;
        if (__builtin_expect(vl <= bufLen, 1))
            multidictCopy64_((uint8_t *)buf, ev, vl);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(seqp, __ATOMIC_RELAXED) != seq)
            return MULTIDICT_MISS_;
        multidictCountRead_(v);
        *vlen = (size_t)vl;
        return __builtin_expect(vl > bufLen, 0) ? DKSHM_TOOBIG : DKSHM_OK;
    }
    return MULTIDICT_MISS_;
}

#ifdef __cplusplus
}
#endif

#endif /* MULTIDICT_INLINE_OK_ || DKSHM_BUILDING */

#if defined(MULTIDICT_INLINE_OK_) && !defined(DKSHM_BUILDING)
/* multidictGet in the caller: the fast path when the key length is a
 * constant it takes and the arguments are valid, the library otherwise.
 * (multidictGet) in parentheses is the library's function. */
static inline __attribute__((always_inline)) int
multidictGetInline_(multidict *d, const void *key, size_t klen, void *buf,
                    size_t bufLen, size_t *vlen) {
    if (__builtin_constant_p(klen) && klen >= 1 &&
        klen <= MULTIDICT_INLINE_KEY_ && d && key && vlen && (buf || !bufLen)) {
        int rc = multidictGetView_((const multidictView_ *)(const void *)d,
                                   key, klen, buf, bufLen, vlen);
        if (__builtin_expect(rc != MULTIDICT_MISS_, 1))
            return rc;
    }
    return (multidictGet)(d, key, klen, buf, bufLen, vlen);
}
#define multidictGet(d, key, klen, buf, bufLen, vlen)                          \
    multidictGetInline_(d, key, klen, buf, bufLen, vlen)
#endif

#endif
