/* databox.h — typed values and their compact encoding.
 *
 * A databox is one value of one of six types: null, bool, signed 64-bit,
 * unsigned 64-bit, double, or bytes. In process memory it is a small struct
 * (a bytes box points at the caller's memory); in a segment, or anywhere a
 * value travels as bytes, it is its encoding: a type byte and a payload.
 *
 * ENCODING. The first byte carries the type in its low four bits and a
 * small number in its high four bits:
 *
 *   null     0x01                      (high nibble 0)
 *   bool     0x02 | value << 4         (0 or 1, no payload)
 *   int64    0x03 | n << 4, then n bytes: zigzag(value), little-endian,
 *            without high zero bytes (n = 0 for the value 0, n <= 8)
 *   uint64   0x04 | n << 4, then n bytes, as int64 but without zigzag
 *   double   0x05, then the 8 bytes of the IEEE-754 value, little-endian
 *   bytes    0x06 | len << 4 for len < 15, else 0xf6 then LEB128(len - 15);
 *            then the len bytes
 *
 * Encodings are canonical (one encoding per value: no high zero bytes, no
 * redundant LEB128 bytes), so two boxes are equal exactly when their
 * encodings are. Decoding trusts nothing: an unknown type, a bad nibble, a
 * non-canonical or truncated encoding is DKSHM_CORRUPT, never a read past
 * the buffer.
 *
 * ORDER (databoxCompare), a total order:
 *   null < false < true < every number < every bytes value;
 *   numbers compare by mathematical value across int64, uint64 and double
 *   (exactly: int64 -1 < uint64 0 < double 0.5 < int64 1), NaN after every
 *   other number; equal values order by type (int64 < uint64 < double),
 *   -0.0 before +0.0, NaNs by their bit pattern;
 *   bytes compare with memcmp over the shorter length, then the shorter
 *   first.
 * Two boxes compare equal exactly when they have the same type and value
 * (for doubles: the same bits).
 *
 * THREAD SAFETY: every function is pure or touches only its arguments; all
 * may be called from any thread. databoxStore/databoxLoad use the segment's
 * allocator, which is thread- and process-safe; a stored box is immutable.
 */
#ifndef DKSHM_DATABOX_H
#define DKSHM_DATABOX_H

#include "membound.h"
#include "segment.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum databoxType {
    DATABOX_NULL = 1,
    DATABOX_BOOL = 2,
    DATABOX_INT64 = 3,
    DATABOX_UINT64 = 4,
    DATABOX_DOUBLE = 5,
    DATABOX_BYTES = 6,
} databoxType;

/* databox.flags: the bytes belong to the box (databoxDup): release them
 * with databoxRelease. */
#define DATABOX_OWNED 0x1u

typedef struct databox { /* per process */
    uint32_t type;       /* databoxType */
    uint32_t flags;      /* DATABOX_OWNED or 0 */
    union {
        bool b;
        int64_t i64;
        uint64_t u64;
        double d;
        struct {
            const void *ptr; /* may be NULL when len is 0 */
            size_t len;
        } bytes;
    } v;
} databox;

/* The longest encoding of a non-bytes box, and the longest header of a
 * bytes box (type byte + 10 LEB128 bytes). */
#define DATABOX_SCALAR_MAX 9u
#define DATABOX_HEADER_MAX 11u

static inline databox databoxNull(void) {
    databox b = {.type = DATABOX_NULL};
    return b;
}
static inline databox databoxBool(bool v) {
    databox b = {.type = DATABOX_BOOL};
    b.v.b = v;
    return b;
}
static inline databox databoxInt64(int64_t v) {
    databox b = {.type = DATABOX_INT64};
    b.v.i64 = v;
    return b;
}
static inline databox databoxUint64(uint64_t v) {
    databox b = {.type = DATABOX_UINT64};
    b.v.u64 = v;
    return b;
}
static inline databox databoxDouble(double v) {
    databox b = {.type = DATABOX_DOUBLE};
    b.v.d = v;
    return b;
}
/* A bytes box that points at P (not copied). */
static inline databox databoxBytes(const void *p, size_t len) {
    databox b = {.type = DATABOX_BYTES};
    b.v.bytes.ptr = p;
    b.v.bytes.len = len;
    return b;
}

/* "null", "bool", "int64", "uint64", "double", "bytes"; "unknown" for
 * anything else. */
DKSHM_API const char *databoxTypeName(uint32_t type);

/* OK if B is a well-formed box: a known type, no unknown flag, bytes with
 * a pointer unless empty, a length that can be encoded. INVALID
 * otherwise (and for NULL). */
DKSHM_API int databoxValidate(const databox *b);

/* Bytes B's encoding takes. OK or INVALID. */
DKSHM_API int databoxEncodedSize(const databox *b, size_t *out);

/* Encode B into BUF (BUFLEN bytes); *WRITTEN gets the length written, or
 * with TOOBIG the length needed (BUF may then be NULL with BUFLEN 0).
 * Returns OK, TOOBIG, INVALID. */
DKSHM_API int databoxEncode(const databox *b, void *buf, size_t bufLen,
                            size_t *written);

/* Decode the box at the start of BUF (LEN bytes). A bytes box points into
 * BUF (copy it with databoxCopy/databoxDup to keep it). *USED (may be NULL)
 * gets the length of the encoding. Returns OK, CORRUPT (unknown type, bad
 * header, non-canonical or truncated encoding: *OUT is untouched), INVALID
 * (null BUF or OUT). */
DKSHM_API int databoxDecode(const void *buf, size_t len, databox *out,
                            size_t *used);

/* Compare A and B in the order above: *RESULT gets -1, 0 or 1. OK, or
 * INVALID (a null or malformed box: *RESULT untouched). */
DKSHM_API int databoxCompare(const databox *a, const databox *b, int *result);
/* Whether A and B are the same type and value (false for malformed boxes). */
DKSHM_API bool databoxEqual(const databox *a, const databox *b);

/* Copy SRC into DST with its bytes copied into BUF (BUFLEN bytes), so DST
 * no longer depends on SRC's memory. *NEEDED (may be NULL) gets the bytes
 * of BUF used, or with TOOBIG the bytes needed. DST may be SRC.
 * Returns OK, TOOBIG (DST untouched), INVALID. */
DKSHM_API int databoxCopy(databox *dst, const databox *src, void *buf,
                          size_t bufLen, size_t *needed);

/* Copy SRC into DST with its bytes in a new malloc'ed buffer that DST owns
 * (DATABOX_OWNED); release it with databoxRelease. OK, INVALID, SYSTEM
 * (out of memory, errno ENOMEM). */
DKSHM_API int databoxDup(databox *dst, const databox *src);

/* Free what a databoxDup'ed box owns and make it null. Boxes that own
 * nothing are made null too. NULL is accepted. */
DKSHM_API void databoxRelease(databox *b);

/* Encode B into a new block of segment S's allocator; *OUT gets its
 * offset. The block belongs to the caller (free it with memboundFreeOff).
 * Returns OK, INVALID, FULL, TOOBIG, READONLY. */
DKSHM_API int databoxStore(dkshm *s, const databox *b, dkoff *out);

/* Decode the box stored at OFF of segment S (by databoxStore, or any
 * encoding placed there), copying its bytes into BUF (BUFLEN bytes).
 * *NEEDED (may be NULL) gets the bytes of BUF used, or with TOOBIG the
 * bytes needed. The encoding is read within the segment's bounds only.
 * Returns OK, TOOBIG, CORRUPT, INVALID. */
DKSHM_API int databoxLoad(dkshm *s, dkoff off, databox *out, void *buf,
                          size_t bufLen, size_t *needed);

#ifdef __cplusplus
}
#endif
#endif
