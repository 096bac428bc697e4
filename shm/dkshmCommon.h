/* dkshmCommon.h — types, errors and versions shared by every dkshm module.
 *
 * THREAD SAFETY: everything here is a constant or a pure function; all of it
 * may be called from any thread at any time.
 */
#ifndef DKSHM_COMMON_H
#define DKSHM_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Export macro: the library is built with -fvisibility=hidden, so only what
 * carries DKSHM_API is part of the shared object's ABI. */
#if defined(DKSHM_BUILDING) && defined(__GNUC__)
#define DKSHM_API __attribute__((visibility("default")))
#else
#define DKSHM_API
#endif

/* Library version (of the API). The libtool -version-info is kept in
 * configure.ac and the segment layout version in shm/segmentInternal.h. */
#define DKSHM_VERSION_MAJOR 0
#define DKSHM_VERSION_MINOR 1
#define DKSHM_VERSION_PATCH 0

/* A byte offset from the start of a segment; 0 is the null offset. Every
 * structure that lives in a segment stores dkoff, never a pointer. */
typedef uint64_t dkoff;

/* Errors: one table gives the names, the messages and the values.
 * Every fallible call returns DKSHM_OK (0), a negative DKSHM_E... code,
 * or (lock calls only) the positive DKSHM_RECOVERED. */
#define DKSHM_ERRORS(X)                                                        \
    X(NOTFOUND, -1, "not found")                                               \
    X(EXISTS, -2, "already exists")                                            \
    X(FULL, -3, "segment full")                                                \
    X(TOOBIG, -4, "too big")                                                   \
    X(INVALID, -5, "invalid argument")                                         \
    X(CORRUPT, -6, "segment damaged or not a dkshm segment")                   \
    X(VERSION, -7, "segment of another layout version or format")              \
    X(PERM, -8, "permission denied")                                           \
    X(TIMEDOUT, -9, "timed out")                                               \
    X(SHUTDOWN, -10, "shut down")                                              \
    X(SYSTEM, -11, "system call failed")                                       \
    X(BUSY, -12, "busy")                                                       \
    X(TYPE, -13, "object of another type")                                     \
    X(READONLY, -14, "segment attached read-only")

enum {
    DKSHM_OK = 0,
    /* A lock was taken from a dead owner and its interrupted operation was
     * rolled back before the caller got the lock. Not an error. */
    DKSHM_RECOVERED = 1,
#define DKSHM_X_ENUM(name, value, msg) DKSHM_##name = (value),
    DKSHM_ERRORS(DKSHM_X_ENUM)
#undef DKSHM_X_ENUM
};

/* A static, human-readable message for a return code ("unknown error" for a
 * value outside the table). For DKSHM_SYSTEM the errno of the failed call is
 * kept in errno by the call that failed. */
DKSHM_API const char *dkshmStrerror(int code);
/* The code's name without prefix, e.g. "NOTFOUND"; "UNKNOWN" otherwise. */
DKSHM_API const char *dkshmErrName(int code);
/* "major.minor.patch" of the library that is running. */
DKSHM_API const char *dkshmVersion(void);

#ifdef __cplusplus
}
#endif
#endif
