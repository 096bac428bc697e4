/* segment.h — named and anonymous dkshm segments, offsets, the process table
 * and the named-object directory.
 *
 * A segment is one POSIX shared-memory object (/dev/shm/NAME on Linux) or an
 * anonymous shared mapping (memfd) for pools that only fork. Its first page is
 * a versioned, checksummed header; then come the process table, the
 * directory and the heap that membound carves.
 *
 * THREAD SAFETY: a dkshm handle may be shared by the threads of a process.
 * Every call is thread-safe and process-safe. A forked child may keep using
 * the handle it inherited: it registers itself in the process table the first
 * time it takes a lock. dkshmDetach must not race other calls on the handle.
 */
#ifndef DKSHM_SEGMENT_H
#define DKSHM_SEGMENT_H

#include "dkshmCommon.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dkshm dkshm; /* per process */

/* "/" then 1..DKSHM_NAME_MAX-1 of [A-Za-z0-9._-], not only dots. */
#define DKSHM_NAME_MAX 63
/* Object names in the directory: 1..DKSHM_OBJNAME_MAX printable ASCII bytes
 * (0x21-0x7e). */
#define DKSHM_OBJNAME_MAX 63
#define DKSHM_MAX_PROCS 1024
#define DKSHM_DEFAULT_PROCS 128
#define DKSHM_DEFAULT_OBJECTS 256
#define DKSHM_MAX_OBJECTS 65536
/* Smallest and largest capacity accepted by create. */
#define DKSHM_MIN_CAPACITY (256u * 1024u)
#define DKSHM_MAX_CAPACITY (1ull << 46)

/* Creation flags (dkshmOptions.flags). */
#define DKSHM_EPHEMERAL 0x1u /* `dkshm-tool reap --orphans` may remove it */

/* Attach flags. */
#define DKSHM_RDONLY 0x1u /* map PROT_READ; never writes, needs only r */

typedef struct dkshmOptions { /* per process, caller-owned */
    uint32_t mode;       /* permission bits; 0 means 0600 */
    uint32_t maxProcs;   /* process-table slots; 0 means 128, <= 1024 */
    uint32_t maxObjects; /* directory entries; 0 means 256, <= 65536 */
    uint32_t flags;      /* DKSHM_EPHEMERAL */
} dkshmOptions;

/* Create NAME exclusively with room for CAPACITY bytes (the whole segment,
 * header included; rounded up to the page size). OPT may be NULL.
 * Returns OK, EXISTS, INVALID (bad name, capacity or option), PERM, FULL
 * (no room in /dev/shm for the metadata), SYSTEM. */
DKSHM_API int dkshmCreate(const char *name, uint64_t capacity,
                          const dkshmOptions *opt, dkshm **out);

/* Attach to NAME, creating it when it does not exist. *created (may be NULL)
 * says which happened. CAPACITY and OPT only matter when creating. Also
 * takes over the initialisation of a segment whose creator died before it
 * finished. May block up to a few seconds while another process creates it.
 */
DKSHM_API int dkshmOpen(const char *name, uint64_t capacity,
                        const dkshmOptions *opt, dkshm **out, bool *created);

/* Attach to an existing NAME. FLAGS: 0 or DKSHM_RDONLY.
 * Returns OK, NOTFOUND, PERM, CORRUPT (too small, damaged, not dkshm, size
 * not matching the header, creator died during creation), VERSION, BUSY
 * (still being created after a few seconds), INVALID, SYSTEM. Touches no
 * data page: the cost does not depend on the capacity. */
DKSHM_API int dkshmAttach(const char *name, uint32_t flags, dkshm **out);

/* An unnamed segment (memfd) shared only with children forked after it. */
DKSHM_API int dkshmCreateAnonymous(uint64_t capacity, const dkshmOptions *opt,
                                   dkshm **out);

/* Leave the segment: frees this process's table slot (unless the handle was
 * inherited through fork and never used) and unmaps. The handle is freed.
 * The caller must hold no lock of the segment. NULL is accepted. */
DKSHM_API int dkshmDetach(dkshm *s);

/* Remove NAME from the namespace; attached processes keep their mapping. */
DKSHM_API int dkshmUnlink(const char *name);

/* OK if NAME is a valid segment name, INVALID otherwise. */
DKSHM_API int dkshmValidateName(const char *name);

/* Offset to pointer: NULL for 0 or an offset outside the segment. */
DKSHM_API void *dkshmPtr(const dkshm *s, dkoff off);
/* Pointer to offset: 0 for NULL or a pointer outside the segment. */
DKSHM_API dkoff dkshmOff(const dkshm *s, const void *p);

DKSHM_API uint64_t dkshmCapacity(const dkshm *s);
DKSHM_API bool dkshmReadOnly(const dkshm *s);
/* "/name", or "" for an anonymous segment. */
DKSHM_API const char *dkshmName(const dkshm *s);

typedef struct dkshmInfo { /* per process, filled by dkshmGetInfo */
    uint32_t layoutVersion;
    uint32_t format;
    uint64_t capacity;
    uint32_t creatorUid;
    uint32_t creatorPid;
    uint64_t createTimeNs; /* CLOCK_REALTIME */
    uint32_t flags;
    uint32_t maxProcs;
    uint32_t maxObjects;
    uint32_t liveProcs;
    uint32_t deadProcs;
    uint32_t objects;
    uint64_t heapOffset;
    uint64_t heapSize;
    uint64_t residentBytes; /* pages of the backing file in memory */
    uint32_t fileMode;      /* 0 for anonymous */
    uint32_t fileUid;
} dkshmInfo;

DKSHM_API int dkshmGetInfo(dkshm *s, dkshmInfo *out);

/* Process table. */
enum { DKSHM_PROC_FREE = 0, DKSHM_PROC_CLAIMING, DKSHM_PROC_LIVE,
       DKSHM_PROC_DEAD };

/* Per-process statistics, indexes of dkshmProcInfo.counters: operations
 * on containers that only read, and that change something; lock
 * acquisitions that had to wait, and the time they waited; allocator
 * blocks and bytes allocated and freed (allocated - freed bytes is what the
 * process holds now, whoever frees it later). Counters only grow, from 0
 * when the process attached; a reader computes rates from two samples. */
enum {
    DKSHM_CTR_READS,
    DKSHM_CTR_WRITES,
    DKSHM_CTR_LOCK_WAITS,
    DKSHM_CTR_LOCK_WAIT_NS,
    DKSHM_CTR_ALLOCS,
    DKSHM_CTR_FREES,
    DKSHM_CTR_ALLOC_BYTES,
    DKSHM_CTR_FREE_BYTES,
    DKSHM_COUNTERS
};

typedef struct dkshmProcInfo { /* per process, filled by dkshmProcList */
    uint32_t slot;
    uint32_t state; /* DKSHM_PROC_... as recorded */
    uint32_t pid;
    uint32_t uid;
    uint64_t startTime; /* kernel start time, clock ticks since boot */
    uint64_t attachTimeNs;
    bool alive;         /* checked now: pid exists with the same start time */
    uint32_t inflight;  /* blocks it holds between allocator and container */
    uint32_t readLocks; /* fastRWLock read holds */
    uint64_t counters[DKSHM_COUNTERS]; /* DKSHM_CTR_... */
} dkshmProcInfo;

/* Fill up to MAX entries of attached (or dead, not yet reaped) processes;
 * *COUNT gets how many there are in all. */
DKSHM_API int dkshmProcList(dkshm *s, dkshmProcInfo *out, size_t max,
                            size_t *count);

/* Release every dead process: the undo-logged locks it held (taken and
 * released, which rolls its interrupted operations back), its read holds,
 * the blocks it held in flight, then its table slot. *REAPED (may be NULL)
 * gets how many processes were released. CORRUPT when a dead process's lock
 * had an undo log that could not be applied (the lock is released and the
 * log kept for inspection); the other processes are still reaped. May
 * block while a live process holds one of those locks. */
DKSHM_API int dkshmReap(dkshm *s, size_t *reaped);

/* The named-object directory. 0 is not a valid type; types below
 * DKSHM_TYPE_USER belong to dkshm's containers, the others to applications
 * binding their own structures to names. */
#define DKSHM_TYPE_USER 256u
typedef struct dkshmObjectInfo { /* per process */
    char name[DKSHM_OBJNAME_MAX + 1];
    uint32_t type;
    dkoff root;
    uint64_t createTimeNs;
} dkshmObjectInfo;

/* OK if NAME is a valid object name, INVALID otherwise. */
DKSHM_API int dkshmValidateObjectName(const char *name);
/* Find NAME: OK with *TYPE and *ROOT (either may be NULL), or NOTFOUND. */
DKSHM_API int dkshmObjectFind(dkshm *s, const char *name, uint32_t *type,
                              dkoff *root);
/* Bind NAME to ROOT (a block this process allocated in flight, or any offset
 * inside the heap). Returns OK, EXISTS (ROOT stays the caller's), FULL (no
 * free entry), INVALID, READONLY. */
DKSHM_API int dkshmObjectCreate(dkshm *s, const char *name, uint32_t type,
                                dkoff root);
/* Find-or-create, the way containers and applications open a named
 * object. Flags: DKSHM_OBJ_CREATE makes NAME when it is absent,
 * DKSHM_OBJ_EXCL (with CREATE) makes it only if absent. To create, MAKE is
 * called to allocate and initialise a root (in flight, e.g. membound's
 * in-flight allocation) and return its offset; if another process binds
 * NAME first, or binding fails, DISCARD is called to free it, and with
 * CREATE alone the winner's root is opened instead. *ROOT gets the root,
 * *CREATED (may be NULL) whether this call made it. Returns OK, NOTFOUND
 * (absent, no CREATE), EXISTS (EXCL), TYPE (NAME has another type),
 * READONLY (creating on a read-only handle), INVALID, FULL, BUSY, or what
 * MAKE returned. */
#define DKSHM_OBJ_CREATE 0x1u
#define DKSHM_OBJ_EXCL 0x2u
typedef int (*dkshmRootMakeFn)(void *ctx, dkoff *root);
typedef void (*dkshmRootDiscardFn)(void *ctx, dkoff root);
DKSHM_API int dkshmObjectOpen(dkshm *s, const char *name, uint32_t type,
                              uint32_t flags, dkshmRootMakeFn make,
                              dkshmRootDiscardFn discard, void *ctx,
                              dkoff *root, bool *created);
/* Unbind NAME; *ROOT gets the root, which is now the caller's (in flight:
 * reclaimed if the caller dies before freeing it). NOTFOUND, TYPE when
 * EXPECTTYPE is non-zero and differs. */
DKSHM_API int dkshmObjectRemove(dkshm *s, const char *name,
                                uint32_t expectType, dkoff *root);
/* Fill up to MAX entries; *COUNT gets how many objects there are. */
DKSHM_API int dkshmObjectList(dkshm *s, dkshmObjectInfo *out, size_t max,
                              size_t *count);

#ifdef __cplusplus
}
#endif
#endif
