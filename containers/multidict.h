/* multidict.h — a sharded hash map and shared cache in a dkshm segment.
 *
 * Keys and values are byte strings copied into the segment (keys of 1 to
 * MULTIDICT_KEY_MAX bytes, values of 0 bytes up to what the segment holds),
 * hashed with XXH3-64 and spread over a power-of-two number of shards, each
 * with its own lock, table and growth. A multidict is found by name in the
 * segment's directory, so any process that attaches to the segment — forked
 * or unrelated — opens the same map.
 *
 * Cache mode (multidictOptions.maxBytes > 0): entries may carry a time to
 * live (expired entries are never returned and their memory is reclaimed),
 * and a write that would pass the memory bound, or that finds the segment
 * full, evicts entries (CLOCK, per shard) instead of failing.
 *
 * THREAD SAFETY: a multidict handle may be shared by the threads of a
 * process, and every call is thread- and process-safe. Lookups (get, count,
 * iterate, stats) take no lock: they read optimistically and retry when a
 * writer changed the shard under them, so a reader never waits for a dead
 * process and never sees a torn value. Writers take their shard's robust
 * lock; a process killed inside any call leaves the map as if the call had
 * not happened or had completed, and leaks nothing once it is reaped
 * (dkshmReap). A read-only attachment (DKSHM_RDONLY) can get, iterate,
 * count, stat and check; its writes return DKSHM_READONLY, and its reads
 * return DKSHM_BUSY if a shard stays locked by a dead writer that nobody
 * has recovered yet. multidictClose must not race other calls on the same
 * handle. Callbacks of multidictIterate may call any multidict function.
 */
#ifndef DKSHM_MULTIDICT_H
#define DKSHM_MULTIDICT_H

#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct multidict multidict; /* per process */

/* The directory type of a multidict (types below DKSHM_TYPE_USER belong to
 * dkshm's containers). */
#define MULTIDICT_TYPE 1u

/* Longest key, in bytes. */
#define MULTIDICT_KEY_MAX 65536u
/* Shards: a power of two up to this many; 0 in the options means
 * MULTIDICT_SHARDS_DEFAULT. */
#define MULTIDICT_SHARDS_MAX 4096u
#define MULTIDICT_SHARDS_DEFAULT 16u

/* multidictOpen flags. */
#define MULTIDICT_CREATE 0x1u /* create NAME when it does not exist */
#define MULTIDICT_EXCL 0x2u   /* with CREATE: EXISTS if NAME exists */

/* multidictPut modes. */
#define MULTIDICT_SET 0u     /* insert or overwrite */
#define MULTIDICT_ADD 1u     /* insert only: EXISTS if present */
#define MULTIDICT_REPLACE 2u /* overwrite only: NOTFOUND if absent */

typedef struct multidictOptions { /* per process, caller-owned */
    uint32_t shards; /* power of two, 1..MULTIDICT_SHARDS_MAX; 0: 16 */
    uint32_t flags;  /* reserved: 0 */
    /* Cache mode when non-zero: the bytes of entries (header, key and
     * value of each, see multidictStats.bytes) stay under this bound, each
     * shard keeping to maxBytes / shards, by CLOCK eviction; a write that
     * finds the segment full evicts too. 0: no bound, no eviction (a write
     * into a full segment returns DKSHM_FULL). */
    uint64_t maxBytes;
} multidictOptions;

/* Open the multidict NAME of segment S, creating it with OPT (NULL: the
 * defaults) when FLAGS has MULTIDICT_CREATE and it does not exist (OPT is
 * ignored when it exists). Several processes may race to create the same
 * name: one creates, the others open it.
 * Returns OK with *OUT, NOTFOUND (absent, no CREATE), EXISTS (CREATE|EXCL
 * and present), TYPE (NAME holds another kind of object), INVALID (null
 * argument, bad name, flags or options), READONLY (creating on a read-only
 * attachment), FULL (no room in the segment or the directory), CORRUPT
 * (the object under NAME is damaged). May block briefly on the directory
 * and allocator locks. */
DKSHM_API int multidictOpen(dkshm *s, const char *name,
                            const multidictOptions *opt, uint32_t flags,
                            multidict **out);

/* Free the handle (the map stays in the segment). NULL is accepted.
 * Returns OK. */
DKSHM_API int multidictClose(multidict *d);

/* Copy the value of KEY (KLEN bytes) into BUF (BUFLEN bytes) and its length
 * into *VLEN. Returns OK; NOTFOUND (absent or expired); TOOBIG when BUFLEN
 * is smaller than the value: *VLEN gets the length needed (so BUF NULL with
 * BUFLEN 0 asks for the length); INVALID (null D, KEY or VLEN, BUF NULL
 * with BUFLEN > 0, KLEN 0); TOOBIG for KLEN > MULTIDICT_KEY_MAX; BUSY (read-
 * only handle and a dead writer's shard not yet recovered). BUF is written
 * only when the call returns OK (or, transiently, by an attempt that a
 * racing writer made it retry). Takes no lock, except once to recover a
 * shard whose writer died (read-write handles). With an optimising
 * GCC-compatible compiler and a KLEN that is a constant of at most 32
 * bytes, the common case is compiled into the caller (multidictInline.h);
 * define DKSHM_NO_INLINE to always call the library. */
DKSHM_API int multidictGet(multidict *d, const void *key, size_t klen,
                           void *buf, size_t bufLen, size_t *vlen);

/* Store VALUE (VLEN bytes; VALUE may be NULL when VLEN is 0) under KEY.
 * MODE: MULTIDICT_SET, MULTIDICT_ADD or MULTIDICT_REPLACE. TTLMS: the entry
 * expires that many milliseconds from now (CLOCK_MONOTONIC); 0: never.
 * Returns OK; EXISTS (ADD, key present); NOTFOUND (REPLACE, key absent);
 * FULL (no room in the segment, not in cache mode, or nothing left to
 * evict; nothing changed); TOOBIG (key too long, or the entry can never fit
 * the shard's share of maxBytes or the segment); INVALID; READONLY;
 * CORRUPT. Blocks while another process or thread writes to the same
 * shard. */
DKSHM_API int multidictPut(multidict *d, const void *key, size_t klen,
                           const void *value, size_t vlen, uint64_t ttlMs,
                           uint32_t mode);

/* multidictPut with MULTIDICT_SET, ADD or REPLACE and no expiry. */
DKSHM_API int multidictSet(multidict *d, const void *key, size_t klen,
                           const void *value, size_t vlen);
DKSHM_API int multidictAdd(multidict *d, const void *key, size_t klen,
                           const void *value, size_t vlen);
DKSHM_API int multidictReplace(multidict *d, const void *key, size_t klen,
                               const void *value, size_t vlen);
/* multidictPut with MULTIDICT_SET and a time to live of TTLMS ms. */
DKSHM_API int multidictSetTTL(multidict *d, const void *key, size_t klen,
                              const void *value, size_t vlen, uint64_t ttlMs);

/* Remove KEY. Returns OK, NOTFOUND, INVALID, TOOBIG, READONLY, CORRUPT.
 * Blocks like multidictPut. */
DKSHM_API int multidictDelete(multidict *d, const void *key, size_t klen);

/* Add DELTA to the int64 stored under KEY (8 bytes, native byte order),
 * atomically with respect to every process; an absent key is created with
 * the value DELTA (and no expiry). *RESULT (may be NULL) gets the new
 * value. Returns OK; TYPE (the value is not 8 bytes); INVALID (overflow:
 * nothing changed, or a bad argument); FULL; TOOBIG; READONLY; CORRUPT. */
DKSHM_API int multidictIncr(multidict *d, const void *key, size_t klen,
                            int64_t delta, int64_t *result);

/* Replace the value of KEY by VALUE only if it is now exactly EXPECTED
 * (EXPLEN bytes). The expiry of the entry is kept. Returns OK, NOTFOUND,
 * EXISTS (the value differs: nothing changed), FULL, TOOBIG, INVALID,
 * READONLY, CORRUPT. */
DKSHM_API int multidictCompareAndSet(multidict *d, const void *key, size_t klen,
                                     const void *expected, size_t expLen,
                                     const void *value, size_t vlen);

/* Entries stored (expired ones not yet reclaimed included), summed over
 * the shards without a lock: exact when no write runs. */
DKSHM_API int multidictCount(multidict *d, uint64_t *count);

/* Call FN(CTX, key, klen, value, vlen) for every live entry, shard by
 * shard; the entries of one shard are a consistent snapshot (copied out
 * before FN sees them, so FN may call any multidict function, and a write
 * to the shard during the copy makes it start again). FN returns false to
 * stop. Returns OK, BUSY (read-only handle, dead writer), INVALID, FULL
 * (out of process memory for the copy). */
typedef bool (*multidictIterFn)(void *ctx, const void *key, size_t klen,
                                const void *value, size_t vlen);
DKSHM_API int multidictIterate(multidict *d, multidictIterFn fn, void *ctx);

/* Remove every entry, shard by shard: each shard empties atomically (an
 * interrupted clear is finished by the next writer of that shard, and
 * readers see the shard empty as soon as it started). Returns OK,
 * INVALID, READONLY, CORRUPT. */
DKSHM_API int multidictClear(multidict *d);

typedef struct multidictStats { /* per process */
    uint64_t count;             /* entries, as multidictCount */
    uint64_t bytes;       /* bytes of entries: 32-byte header + key + value,
                             each padded to 8, per entry */
    uint64_t maxBytes;    /* the bound; 0: not a cache */
    uint64_t tableBytes;  /* bytes of the shards' slot tables */
    uint64_t slots;       /* slots in all tables */
    uint64_t tombstones;  /* slots of deleted entries not yet reused */
    uint64_t evictions;   /* entries evicted for room */
    uint64_t expirations; /* expired entries reclaimed */
    uint64_t resizes;     /* table rebuilds (growth or tombstone purge) */
    uint64_t recoveries;  /* shard locks taken over from dead owners */
    uint32_t shards;
    uint32_t pad;
    uint64_t minShardCount; /* entries in the emptiest and fullest shard */
    uint64_t maxShardCount;
    double maxLoad; /* largest (entries + tombstones) / slots */
} multidictStats;

/* Statistics, read without locks. Returns OK or INVALID. */
DKSHM_API int multidictGetStats(multidict *d, multidictStats *out);

typedef struct multidictShardStats { /* per process */
    uint64_t count, bytes, slots, tombstones, evictions, expirations, resizes;
    uint32_t recoveries;
    bool locked;    /* the shard lock is held now */
    bool ownerDead; /* ... by a process that died */
    double load;    /* (count + tombstones) / slots, 0 without a table */
} multidictShardStats;

/* Statistics of shard INDEX (0 .. shards - 1). OK or INVALID. */
DKSHM_API int multidictGetShardStats(multidict *d, uint32_t index,
                                     multidictShardStats *out);

/* Verify every invariant: the root, each shard's lock, log and counters,
 * every slot and entry (bounds, alignment, lengths, hash, shard, probe
 * reachability, no duplicate key, no entry in two slots), the totals.
 * Takes each shard's lock in turn (recovering dead writers) on a read-write
 * handle; a read-only handle checks optimistically. Returns OK, CORRUPT
 * with a one-line reason in WHY (WHYLEN bytes; may be NULL), BUSY, INVALID,
 * FULL (out of process memory). */
DKSHM_API int multidictCheck(multidict *d, char *why, size_t whyLen);

#ifdef __cplusplus
}
#endif

/* multidictGet's fast path, compiled into callers where it can be. */
#include "multidictInline.h"

#endif
