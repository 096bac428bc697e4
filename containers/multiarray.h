/* multiarray.h — a growable array of fixed-size elements in a dkshm
 * segment, shared by every process that attaches to it.
 *
 * The element size (1 to MULTIARRAY_ELEM_MAX bytes) is chosen when the
 * array is created; elements are copied in and out. Append, get, set,
 * insert and delete at an index (shifting the elements after it), count.
 * An index past the end is an error: DKSHM_NOTFOUND ("no element there";
 * insert accepts index == count, which appends).
 *
 * THREAD SAFETY: a multiarray handle may be shared by the threads of a
 * process, and every call is thread- and process-safe. Writers (append,
 * set, insert, delete) take the array's robust lock; every one of them is
 * atomic, also against a crash: a process killed inside any call leaves
 * the array as if the call had not happened or had completed, and leaks
 * nothing once it is reaped (dkshmReap). Get and count take no lock: get
 * reads optimistically and retries when a writer changed the array under
 * it, so it never returns a torn element and never waits for a dead
 * process. A read-only attachment (DKSHM_RDONLY) can get, count, stat and
 * check; its writes return DKSHM_READONLY. multiarrayClose must not race
 * other calls on the same handle.
 */
#ifndef DKSHM_MULTIARRAY_H
#define DKSHM_MULTIARRAY_H

#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct multiarray multiarray; /* per process */

/* The directory type of a multiarray. */
#define MULTIARRAY_TYPE 4u

/* Largest element size, in bytes. */
#define MULTIARRAY_ELEM_MAX 65536u

/* multiarrayOpen flags. */
#define MULTIARRAY_CREATE 0x1u /* create NAME when it does not exist */
#define MULTIARRAY_EXCL 0x2u   /* with CREATE: EXISTS if NAME exists */

typedef struct multiarrayOptions { /* per process, caller-owned */
    /* Bytes per element, 1..MULTIARRAY_ELEM_MAX: required to create; when
     * opening an existing array, 0 or its element size. */
    uint32_t elemSize;
    uint32_t flags; /* reserved: 0 */
    /* Elements to make room for at creation (a hint: without room the
     * array starts with none); 0: room comes with the first append. */
    uint64_t initialCapacity;
} multiarrayOptions;

/* Open the multiarray NAME of segment S, creating it with OPT when FLAGS
 * has MULTIARRAY_CREATE and it does not exist. Several processes may race
 * to create the same name: one creates, the others open it.
 * Returns OK with *OUT; NOTFOUND (absent, no CREATE); EXISTS (CREATE|EXCL
 * and present); TYPE (NAME holds another kind of object); INVALID (null
 * argument, bad name or flags, creating without an element size, an
 * element size other than the existing array's); READONLY (creating on a
 * read-only attachment); FULL (no room in the segment or the directory);
 * CORRUPT (the object under NAME is damaged); VERSION. */
DKSHM_API int multiarrayOpen(dkshm *s, const char *name,
                             const multiarrayOptions *opt, uint32_t flags,
                             multiarray **out);

/* Free the handle (the array stays in the segment). NULL is accepted.
 * Returns OK. */
DKSHM_API int multiarrayClose(multiarray *a);

/* The element size in *SIZE. OK or INVALID. */
DKSHM_API int multiarrayElemSize(multiarray *a, size_t *size);

/* Elements in the array, read without a lock. OK or INVALID. */
DKSHM_API int multiarrayCount(multiarray *a, uint64_t *count);

/* Copy element INDEX into ELEM (elemSize bytes). Returns OK; NOTFOUND
 * (INDEX >= count); INVALID (null argument); BUSY (read-only handle and a
 * writer that died has not been recovered yet). Takes no lock, except once
 * to recover a dead writer, or after many retries against busy writers
 * (read-write handles). ELEM may be written by an attempt that a racing
 * writer made it retry even when the call then returns NOTFOUND. */
DKSHM_API int multiarrayGet(multiarray *a, uint64_t index, void *elem);

/* Replace element INDEX by ELEM. OK, NOTFOUND, INVALID, READONLY, FULL
 * (a large element is replaced on a copy of the array: no room for it),
 * CORRUPT. */
DKSHM_API int multiarraySet(multiarray *a, uint64_t index, const void *elem);

/* Add ELEM at the end; *INDEX (may be NULL) gets its index. OK, FULL (no
 * room to grow: nothing changed), INVALID, READONLY, CORRUPT. */
DKSHM_API int multiarrayAppend(multiarray *a, const void *elem,
                               uint64_t *index);

/* Insert ELEM before element INDEX (INDEX == count appends), shifting the
 * elements from INDEX on up by one. OK, NOTFOUND (INDEX > count), FULL,
 * INVALID, READONLY, CORRUPT. */
DKSHM_API int multiarrayInsert(multiarray *a, uint64_t index, const void *elem);

/* Remove element INDEX, shifting the ones after it down by one. The block
 * shrinks when the array is down to a quarter of its room. OK, NOTFOUND,
 * INVALID, READONLY, FULL (a shift too large for the undo log is done on a
 * copy of the array: no room for it), CORRUPT. */
DKSHM_API int multiarrayDelete(multiarray *a, uint64_t index);

typedef struct multiarrayStats { /* per process */
    uint64_t count;              /* elements */
    uint64_t capacity;           /* elements the current block holds */
    uint64_t elemSize;
    uint64_t blockBytes; /* bytes of the element block */
    uint64_t rebuilds;   /* blocks replaced (grow, shrink, large shifts) */
    uint32_t recoveries; /* times the lock was taken from a dead owner */
    uint32_t pad;
} multiarrayStats;

/* Statistics, read without a lock. OK or INVALID. */
DKSHM_API int multiarrayGetStats(multiarray *a, multiarrayStats *out);

/* Verify every invariant: the root, the lock's undo log, the version
 * word, the block (inside the heap, large enough for the capacity), count
 * against capacity, and (read-write handles) that the block is a live
 * allocation that large. Takes the lock on a read-write handle; a
 * read-only handle checks optimistically. Returns OK, CORRUPT with a
 * one-line reason in WHY (WHYLEN bytes; may be NULL), BUSY, INVALID. */
DKSHM_API int multiarrayCheck(multiarray *a, char *why, size_t whyLen);

#ifdef __cplusplus
}
#endif
#endif
