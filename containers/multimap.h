/* multimap.h — an ordered map (a B+tree) in a dkshm segment.
 *
 * Keys are byte strings ordered bytewise (memcmp over the shorter length,
 * then the shorter first), or, chosen at creation, int64 values ordered
 * numerically (MULTIMAP_KEYS_INT64: a key is the 8 bytes of an int64_t in
 * native byte order). Values are byte strings. Both are copied into the
 * segment, and copied out to the caller. A multimap is found by name in the
 * segment's directory, so any process that attaches to the segment —
 * forked or unrelated — opens the same map.
 *
 * THREAD SAFETY: a multimap handle may be shared by the threads of a
 * process, and every call is thread- and process-safe. Reads (lookup, seek,
 * first/last, iterate, count, stats) take no lock: they read optimistically
 * and retry when a writer changed the map under them, so a reader never
 * waits for a dead process and never sees a torn key or value. Writers take
 * the map's robust lock; a process killed inside any call leaves the map as
 * if the call had not happened or had completed, and leaks nothing once it
 * is reaped (dkshmReap). A read-only attachment (DKSHM_RDONLY) can read,
 * count, stat and check; its writes return DKSHM_READONLY, and its reads
 * return DKSHM_BUSY if the map stays locked by a dead writer that nobody
 * has recovered yet. multimapClose must not race other calls on the same
 * handle. Callbacks of multimapIterate may call any multimap function.
 */
#ifndef DKSHM_MULTIMAP_H
#define DKSHM_MULTIMAP_H

#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct multimap multimap; /* per process */

/* The directory type of a multimap. */
#define MULTIMAP_TYPE 2u

/* Longest key in bytes (bytes mode); int64 keys are always 8 bytes. */
#define MULTIMAP_KEY_MAX 65536u

/* Key modes (multimapOptions.keyMode). */
#define MULTIMAP_KEYS_BYTES 0u
#define MULTIMAP_KEYS_INT64 1u

/* multimapOpen flags. */
#define MULTIMAP_CREATE 0x1u /* create NAME when it does not exist */
#define MULTIMAP_EXCL 0x2u   /* with CREATE: EXISTS if NAME exists */

/* multimapInsert flags. */
#define MULTIMAP_UPSERT 0x0u      /* insert, or overwrite the value */
#define MULTIMAP_NOOVERWRITE 0x1u /* insert only: EXISTS if present */

/* multimapOptions.flags. */
#define MULTIMAP_VERSIONED                                                     \
    0x1u /* changed only by publishing drafts (see                             \
            "Versioned maps" below) */

typedef struct multimapOptions { /* per process, caller-owned */
    uint32_t keyMode; /* MULTIMAP_KEYS_BYTES (0) or MULTIMAP_KEYS_INT64 */
    uint32_t flags;   /* 0 or MULTIMAP_VERSIONED */
} multimapOptions;

/* Open the multimap NAME of segment S, creating it with OPT (NULL: bytes
 * keys) when FLAGS has MULTIMAP_CREATE and it does not exist (OPT is
 * ignored when it exists: see multimapKeyMode). Several processes may race
 * to create the same name: one creates, the others open it.
 * Returns OK with *OUT; NOTFOUND (absent, no CREATE); EXISTS (CREATE|EXCL
 * and present); TYPE (NAME holds another kind of object); INVALID (null
 * argument, bad name, flags or options); READONLY (creating on a read-only
 * attachment); FULL (no room in the segment or the directory); CORRUPT
 * (the object under NAME is damaged); SYSTEM (out of process memory).
 * May block briefly on the directory and allocator locks. */
DKSHM_API int multimapOpen(dkshm *s, const char *name,
                           const multimapOptions *opt, uint32_t flags,
                           multimap **out);

/* Free the handle (the map stays in the segment). NULL is accepted.
 * Closing a snapshot releases its version (freed once no snapshot holds
 * it); closing a draft that was not published discards it. May block
 * briefly on the map's lock for those. Returns OK. */
DKSHM_API int multimapClose(multimap *m);

/* The key mode the map was created with. OK or INVALID. */
DKSHM_API int multimapKeyMode(const multimap *m, uint32_t *mode);

/* Store VALUE (VLEN bytes; may be NULL when VLEN is 0) under KEY (KLEN
 * bytes). FLAGS: MULTIMAP_UPSERT or MULTIMAP_NOOVERWRITE. Returns OK;
 * EXISTS (NOOVERWRITE and present: nothing changed); FULL (no room in the
 * segment, or this process's in-flight list is full: nothing changed);
 * TOOBIG (KLEN > MULTIMAP_KEY_MAX, or the value can never fit); INVALID
 * (null M or KEY, KLEN 0, KLEN != 8 in int64 mode, VALUE NULL with VLEN >
 * 0, unknown flags); READONLY; CORRUPT. Blocks while another process or
 * thread writes to the map. */
DKSHM_API int multimapInsert(multimap *m, const void *key, size_t klen,
                             const void *value, size_t vlen, uint32_t flags);

/* Copy the value of KEY into BUF (BUFLEN bytes) and its length into *VLEN.
 * Returns OK; NOTFOUND; TOOBIG when BUFLEN is smaller than the value:
 * *VLEN gets the length needed (BUF NULL with BUFLEN 0 asks for the
 * length); INVALID (null M, KEY or VLEN, BUF NULL with BUFLEN > 0, bad
 * KLEN as for insert); TOOBIG for KLEN > MULTIMAP_KEY_MAX; BUSY (read-only
 * handle and a dead writer not yet recovered); CORRUPT. BUF may be written
 * even when the call does not return OK (by an attempt that a racing
 * writer made it retry). Takes no lock, except once to recover a writer
 * that died (read-write handles). */
DKSHM_API int multimapLookup(multimap *m, const void *key, size_t klen,
                             void *buf, size_t bufLen, size_t *vlen);

/* Remove KEY. Returns OK, NOTFOUND, INVALID, TOOBIG, READONLY, FULL (this
 * process's in-flight list is full: nothing changed), CORRUPT. Blocks like
 * multimapInsert. */
DKSHM_API int multimapDelete(multimap *m, const void *key, size_t klen);

/* Entries in the map, read without a lock. */
DKSHM_API int multimapCount(multimap *m, uint64_t *count);

/* Int64-mode conveniences: the same calls with the key as an int64_t. */
DKSHM_API int multimapInsertInt(multimap *m, int64_t key, const void *value,
                                size_t vlen, uint32_t flags);
DKSHM_API int multimapLookupInt(multimap *m, int64_t key, void *buf,
                                size_t bufLen, size_t *vlen);
DKSHM_API int multimapDeleteInt(multimap *m, int64_t key);

/* Where multimapSeek looks. */
typedef enum multimapSeekMode {
    MULTIMAP_FIRST = 0, /* the smallest key (KEY ignored) */
    MULTIMAP_LAST,      /* the largest key (KEY ignored) */
    MULTIMAP_GE,        /* the smallest key >= KEY */
    MULTIMAP_GT,        /* the smallest key > KEY */
    MULTIMAP_LE,        /* the largest key <= KEY */
    MULTIMAP_LT,        /* the largest key < KEY */
} multimapSeekMode;

/* Find the entry that HOW names and copy it out: its key into KEYBUF
 * (KEYBUFLEN bytes) and its length into *KLENOUT, its value into VALBUF
 * (VALBUFLEN bytes) and its length into *VLENOUT. A NULL KLENOUT (VLENOUT)
 * means "do not copy the key (value)". Returns OK; NOTFOUND (no such
 * entry); TOOBIG when a buffer is too small (both lengths are then set,
 * and nothing is guaranteed about the buffers); INVALID; BUSY; CORRUPT.
 * In int64 mode the key comes back as the 8 bytes of an int64_t. */
DKSHM_API int multimapSeek(multimap *m, multimapSeekMode how, const void *key,
                           size_t klen, void *keyBuf, size_t keyBufLen,
                           size_t *klenOut, void *valBuf, size_t valBufLen,
                           size_t *vlenOut);
/* multimapSeek with MULTIMAP_FIRST / MULTIMAP_LAST. */
DKSHM_API int multimapFirst(multimap *m, void *keyBuf, size_t keyBufLen,
                            size_t *klenOut, void *valBuf, size_t valBufLen,
                            size_t *vlenOut);
DKSHM_API int multimapLast(multimap *m, void *keyBuf, size_t keyBufLen,
                           size_t *klenOut, void *valBuf, size_t valBufLen,
                           size_t *vlenOut);

/* multimapIterate flags. */
#define MULTIMAP_ITER_REVERSE 0x1u   /* from large keys to small ones */
#define MULTIMAP_ITER_EXCLUSIVE 0x2u /* start after (before) START */

/* Call FN(CTX, key, klen, value, vlen) for the entries from START (KLEN
 * bytes; NULL: from the first key, or the last with REVERSE) onwards, in
 * key order (descending with REVERSE), until FN returns false or the map
 * ends. START itself is included unless EXCLUSIVE. Each entry is read
 * consistently and copied out before FN sees it (so FN may call any
 * multimap function, writes to this map included); the walk as a whole is
 * not a snapshot: entries inserted or deleted meanwhile may or may not be
 * seen, but keys come strictly in order, each at most once. Returns OK,
 * INVALID, TOOBIG, BUSY, CORRUPT, SYSTEM (out of process memory). */
typedef bool (*multimapIterFn)(void *ctx, const void *key, size_t klen,
                               const void *value, size_t vlen);
DKSHM_API int multimapIterate(multimap *m, const void *start, size_t klen,
                              uint32_t flags, multimapIterFn fn, void *ctx);

/* Copy the whole map, as it is at one instant, into a new multimap NEWNAME
 * of the same segment (same key mode). The copy is independent of the
 * original. Writers of M wait while it is made; readers do not. If the
 * process dies while copying, the new name never appears and the partial
 * copy is freed by the next writer of M. *OUT (may be NULL) gets a handle
 * on the copy. Returns OK; EXISTS (NEWNAME is taken); FULL (no room:
 * nothing created); INVALID; READONLY; TYPE; CORRUPT; SYSTEM. */
DKSHM_API int multimapDuplicate(multimap *m, const char *newName,
                                multimap **out);

/* ---- Versioned maps: copy-on-write publishing ----------------------------
 *
 * A map created with MULTIMAP_VERSIONED holds a current version that
 * changes only as a whole. A writer takes a draft (a private copy of the
 * current version), changes it with the ordinary calls on the draft's
 * handle, and publishes it: readers of the map see the old contents or the
 * new ones, never a mix. A snapshot is a handle on the version current
 * when it was taken; it keeps seeing exactly that version, whatever is
 * published later, until it is closed. A replaced version is freed when no
 * snapshot holds it any longer: at the close of the last one, or, when its
 * holders died, at the next snapshot, draft, publish or check of the map
 * (dkshmReap does not know multimaps). Drafts of a process that died are
 * discarded at the same moments.
 *
 * On the map's own handle, reads (lookup, seek, first/last, iterate,
 * count, stats) read the current version; insert, delete and duplicate
 * return INVALID. Snapshot handles read (writes: READONLY; duplicate
 * copies the snapshot into a new, ordinary map). Draft handles read and
 * write their draft. A versioned map keeps at most 16 replaced versions
 * that are still held, 16 drafts and 64 snapshot holders (process and
 * version) at once: past that, BUSY. Holds and drafts belong to the process
 * that made them: a forked child's copy of such a handle can read, but its
 * close releases nothing and its publish is INVALID. Versions are whole copies:
 * a draft costs a copy of the map (writers of drafts and snapshot takers wait
 * for it; readers do not).
 */

/* A snapshot of versioned map M (a handle opened on it). *OUT reads M's
 * current version until closed. Returns OK; INVALID (M not versioned, or
 * itself a snapshot or draft); READONLY (read-only attachment: a snapshot
 * must record its holder); BUSY (64 holders); FULL; SYSTEM; CORRUPT. */
DKSHM_API int multimapSnapshot(multimap *m, multimap **out);

/* A draft of versioned map M: a private, writable copy of its current
 * version. Returns OK; INVALID; READONLY; BUSY (16 drafts); FULL (no room
 * for the copy: nothing made); SYSTEM; CORRUPT. */
DKSHM_API int multimapDraft(multimap *m, multimap **out);

/* Make DRAFT the current version of its map, atomically, and free the
 * DRAFT handle (on success only). The version it replaces is freed now if
 * no snapshot holds it, else when the last holder closes or dies. The
 * draft handle must not be in use by another thread meanwhile. Returns OK;
 * INVALID (not a draft, or already published); BUSY (16 replaced versions
 * still held); CORRUPT. */
DKSHM_API int multimapPublish(multimap *draft);

typedef struct multimapStats { /* per process */
    uint64_t count;            /* entries */
    uint32_t height; /* levels above the leaves (0: the root is a leaf) */
    uint32_t keyMode;
    uint64_t leaves;     /* leaf nodes */
    uint64_t inner;      /* inner nodes */
    uint64_t nodeBytes;  /* bytes of all nodes */
    uint64_t entryBytes; /* bytes of the entry blocks (key + value + 16) */
    uint64_t keyBlocks;  /* separators too long to live in their node */
    uint64_t keyBytes;   /* bytes of those */
    uint64_t recoveries; /* times the lock was taken from a dead writer */
} multimapStats;

/* Statistics, read without a lock. OK or INVALID. */
DKSHM_API int multimapGetStats(multimap *m, multimapStats *out);

/* Verify every invariant: the header, the lock and its undo log; every
 * node (bounds, alignment, kind, level, fill, the order permutation) and
 * every entry and separator block (bounds, lengths, cached key prefixes);
 * key order inside nodes and against the separators of the parents; the
 * leaf chain in both directions; no node or block reached twice, none
 * overlapping (so no cycles); the counters against what the walk finds.
 * Takes the lock on a read-write handle (recovering a dead writer first);
 * a read-only handle checks optimistically. Returns OK, CORRUPT with a
 * one-line reason in WHY (WHYLEN bytes; may be NULL), BUSY, INVALID,
 * SYSTEM (out of process memory). */
DKSHM_API int multimapCheck(multimap *m, char *why, size_t whyLen);

#ifdef __cplusplus
}
#endif
#endif
