/* OSRegulate.h — a limiter shared by every process that maps a segment.
 *
 * Two independent limits, either or both:
 *   - holders: at most maxHolders permits out at once, across all processes
 *     (a process-wide semaphore). A permit held by a process that dies is
 *     given back automatically: permits are counted per process-table slot,
 *     so an acquirer that finds the limit reached reclaims the permits of
 *     dead holders before it waits. OSRegulateReclaim does the same on
 *     demand (dkshm-tool reap calls it).
 *   - rate: a token bucket of ratePerSec tokens per second holding at most
 *     burst tokens; OSRegulateTryRate takes tokens or says BUSY.
 * Found by name in the segment's directory (type OSREGULATE_TYPE).
 *
 * THREAD SAFETY: a handle may be shared by the threads of a process; every
 * call is thread- and process-safe. Permits belong to the process, not the
 * thread: any thread may release a permit another thread of the same
 * process acquired. Acquire may block (with a timeout); the rest does not,
 * beyond the regulator's robust lock. A read-only attachment (DKSHM_RDONLY)
 * may open, stat and check; the rest returns DKSHM_READONLY. OSRegulateClose
 * must not race other calls on the same handle.
 */
#ifndef DKSHM_OSREGULATE_H
#define DKSHM_OSREGULATE_H

#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct OSRegulate OSRegulate; /* per process */

#define OSREGULATE_TYPE 5u

/* OSRegulateOpen flags. */
#define OSREGULATE_CREATE 0x1u /* create NAME when it does not exist */
#define OSREGULATE_EXCL 0x2u   /* with CREATE: EXISTS if NAME exists */

typedef struct OSRegulateOptions { /* per process, caller-owned */
    uint32_t maxHolders; /* permits; 0: no holder limit */
    uint32_t burst;      /* bucket size in tokens; 0: ratePerSec */
    uint64_t ratePerSec; /* tokens added per second; 0: no rate limit */
} OSRegulateOptions;

/* Open regulator NAME of S, creating it with OPT when FLAGS has
 * OSREGULATE_CREATE and it does not exist (OPT is ignored when it does).
 * OK, NOTFOUND, EXISTS (CREATE|EXCL), TYPE (another kind of object under
 * NAME), INVALID (null argument, bad name, flags, or OPT with neither
 * limit, or creating without OPT), READONLY (creating on a read-only
 * handle), FULL, CORRUPT (the object under NAME is damaged). */
DKSHM_API int OSRegulateOpen(dkshm *s, const char *name,
                             const OSRegulateOptions *opt, uint32_t flags,
                             OSRegulate **out);
/* Free the handle (permits this process holds stay held). NULL is fine. */
DKSHM_API int OSRegulateClose(OSRegulate *r);

/* Take one permit: OK, or BUSY at once when all are out to live holders.
 * INVALID when the regulator has no holder limit. */
DKSHM_API int OSRegulateTryAcquire(OSRegulate *r);
/* Take one permit, waiting up to TIMEOUTNS nanoseconds (0: no limit):
 * OK or TIMEDOUT. */
DKSHM_API int OSRegulateAcquire(OSRegulate *r, uint64_t timeoutNs);
/* Give back one permit this process holds: OK, or INVALID if it holds
 * none. Wakes one waiter. */
DKSHM_API int OSRegulateRelease(OSRegulate *r);

/* Take N tokens from the bucket: OK, or BUSY (nothing taken) when fewer
 * than N are there now. INVALID when the regulator has no rate limit or N
 * is 0 or more than the burst. */
DKSHM_API int OSRegulateTryRate(OSRegulate *r, uint32_t n);

typedef struct OSRegulateStats { /* per process */
    uint32_t maxHolders;
    uint32_t held;      /* permits out, dead holders' included until reaped */
    uint32_t mine;      /* permits this process holds */
    uint32_t burst;
    uint64_t ratePerSec;
    uint64_t tokens;    /* tokens in the bucket now */
    uint64_t acquired;  /* permits handed out since creation */
    uint64_t reclaimed; /* permits taken back from dead holders */
    uint64_t rateDenied;
    uint32_t deadHeld; /* of held: permits of holders that are dead now */
} OSRegulateStats;

/* Statistics, read without the lock (each word atomically). deadHeld asks
 * the process table whether each holder is alive, so it costs a look at
 * /proc per process that holds permits. OK or INVALID. */
DKSHM_API int OSRegulateGetStats(OSRegulate *r, OSRegulateStats *out);

/* Give back now the permits of holders that are dead (what an acquirer
 * that finds every permit out does by itself), waking waiters if any came
 * back; *RECLAIMED (may be NULL) gets how many. A holder killed at any
 * point leaves each dead holder's permits wholly reclaimed or not at all.
 * OK, INVALID (null R), READONLY (read-only attachment), or an error of
 * the lock. Blocks only on the regulator's lock. */
DKSHM_API int OSRegulateReclaim(OSRegulate *r, uint32_t *reclaimed);

/* Verify the regulator: bounds, the per-process counts adding up to held,
 * held <= maxHolders, tokens <= burst. CORRUPT with a reason in WHY. */
DKSHM_API int OSRegulateCheck(OSRegulate *r, char *why, size_t whyLen);

#ifdef __cplusplus
}
#endif
#endif
