/* membound.h — the bounded allocator that carves a dkshm segment.
 *
 * A binary buddy allocator over pages (after SQLite's mem5) serves large
 * blocks; size-class slabs carved from buddy pages serve small objects. All
 * metadata lives in the segment, in offsets; the allocator never grows past
 * the segment's capacity and answers DKSHM_FULL instead of failing later.
 *
 * Every named or anonymous segment has one allocator, set up at creation;
 * memboundForSegment() gives a process its handle. memboundCreate() is the
 * THREAD_SAFETY.md API: an anonymous pool that forked children share.
 *
 * THREAD SAFETY: every call is thread- and process-safe (one robust
 * fastMutex per segment, with an undo log: a process killed inside any call
 * leaves the allocator as if the call had not happened, or had completed).
 * Pointers are valid in every process that maps the segment, at the address
 * where that process mapped it: store offsets (memboundOff) in shared data.
 */
#ifndef DKSHM_MEMBOUND_H
#define DKSHM_MEMBOUND_H

#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct membound membound; /* per process */

/* Largest size served by the slabs; larger requests are buddy blocks of
 * whole pages, rounded up to a power of two. */
#define MEMBOUND_SLAB_MAX 2048
#define MEMBOUND_CLASSES 32

/* An anonymous pool with room for SIZE bytes of allocations (the segment is
 * made larger by the allocator's own metadata). NULL on failure (errno). */
DKSHM_API membound *memboundCreate(size_t size);
/* The allocator of segment S (created with it). NULL for a null S. The
 * handle belongs to S: it stays valid until S is detached. */
DKSHM_API membound *memboundForSegment(dkshm *s);
/* The segment a membound carves. */
DKSHM_API dkshm *memboundSegment(const membound *m);

/* malloc-like calls; NULL on failure with errno ENOMEM (full), EINVAL, or
 * EROFS (read-only attach). Zero bytes gives NULL and EINVAL. */
DKSHM_API void *memboundAlloc(membound *m, size_t size);
DKSHM_API void *memboundCalloc(membound *m, size_t count, size_t size);
/* Like realloc: NULL P allocates; SIZE 0 frees and returns NULL. On
 * failure P is untouched. */
DKSHM_API void *memboundRealloc(membound *m, void *p, size_t size);
/* Free P (NULL is a no-op). INVALID for a pointer that is not a live
 * allocation of this pool (foreign, interior, already freed): nothing is
 * changed and the event is counted in memboundStats.badFrees. */
DKSHM_API int memboundFree(membound *m, void *p);

/* Offset-based variants for data that lives in the segment. */
DKSHM_API int memboundAllocOff(membound *m, size_t size, dkoff *out);
DKSHM_API int memboundFreeOff(membound *m, dkoff off);
/* Usable size of the allocation at OFF (its slot or block size). */
DKSHM_API int memboundUsableSize(membound *m, dkoff off, size_t *out);

/* Statistics. */
DKSHM_API size_t memboundCurrentAllocationCount(const membound *m);
DKSHM_API size_t memboundBytesUsed(const membound *m);
DKSHM_API size_t memboundBytesAvailable(const membound *m);
DKSHM_API size_t memboundCapacity(const membound *m);
DKSHM_API bool memboundOwns(const membound *m, const void *p);

typedef struct memboundClassStats { /* per process */
    uint32_t size;        /* slot size of this class */
    uint64_t slabs;       /* pages given to it */
    uint64_t used;        /* slots in use */
    uint64_t free;        /* free slots in its slabs */
} memboundClassStats;

typedef struct memboundStats { /* per process */
    uint64_t capacity;       /* bytes the allocator may hand out */
    uint64_t used;           /* bytes in live allocations (slot/block size) */
    uint64_t free;           /* capacity - used - slab slack */
    uint64_t allocations;    /* live allocations */
    uint64_t largestFree;    /* largest block one call can get now */
    uint64_t slabSlack;      /* free bytes inside slabs */
    uint64_t metadata;       /* bytes of the allocator's own tables */
    uint64_t badFrees;       /* rejected frees */
    uint64_t fullErrors;     /* allocations refused for want of room */
    double fragmentation;    /* 1 - largestFree / free buddy bytes */
    uint32_t pageSize;
    uint32_t classes;        /* entries used in class[] */
    memboundClassStats cls[MEMBOUND_CLASSES];
} memboundStats;

DKSHM_API int memboundGetStats(membound *m, memboundStats *out);

/* Verify every invariant of the allocator: free lists (bounds, no cycles,
 * buddy orders), slab bitmaps against counts, total accounting. Takes the
 * lock. CORRUPT with a one-line reason in WHY (may be NULL). */
DKSHM_API int memboundCheck(membound *m, char *why, size_t whyLen);

/* Free every allocation at once. Takes the lock. */
DKSHM_API int memboundReset(membound *m);
/* For pools from memboundCreate: unmap and free the handle (allocations
 * die with it). For memboundForSegment handles: a no-op. */
DKSHM_API void memboundShutdown(membound *m);
/* Like memboundShutdown but only when no allocation is live: true if it
 * shut down, false (and nothing done) otherwise. */
DKSHM_API bool memboundShutdownSafe(membound *m);

#ifdef __cplusplus
}
#endif
#endif
