/* databox.c — typed values, their canonical encoding and their order.
 *
 * The encoding and the order are specified in databox.h. This file is
 * pure computation except databoxStore/databoxLoad, which place an
 * encoding in a segment block and read one back.
 *
 * Decoding is written for hostile input: every length is checked against
 * what remains of the buffer before it is used, LEB128 lengths are bounded
 * to 10 bytes and 64 bits, and non-canonical forms are refused so that
 * equality of values and equality of encodings stay the same thing.
 *
 * Comparing numbers of different types is exact: an int64 or uint64 is
 * compared with a double through the double's integral part (exact in
 * range) and the sign of its fraction, never by converting the integer to
 * a double (which rounds above 2^53).
 *
 * PROCESS SAFETY: nothing here is shared except a stored encoding, which
 * is written once into a block the caller owns before anyone can see it.
 * CRASH RECOVERY: nothing to recover; databoxStore allocates one block
 * (a crash after it returns leaks nothing the caller did not own).
 */
#include "config.h"

#include "databox.h"
#include "segmentInternal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DB_ISNAN(x) __builtin_isnan(x)
#define DB_LEB_MAX 10u
#define DB_INLINE_LEN 15u /* nibble value that announces a LEB128 length */

DKSHM_API const char *databoxTypeName(uint32_t type) {
    switch (type) {
    case DATABOX_NULL:
        return "null";
    case DATABOX_BOOL:
        return "bool";
    case DATABOX_INT64:
        return "int64";
    case DATABOX_UINT64:
        return "uint64";
    case DATABOX_DOUBLE:
        return "double";
    case DATABOX_BYTES:
        return "bytes";
    default:
        return "unknown";
    }
}

DKSHM_API int databoxValidate(const databox *b) {
    if (!b || (b->flags & ~DATABOX_OWNED))
        return DKSHM_INVALID;
    switch (b->type) {
    case DATABOX_NULL:
    case DATABOX_BOOL:
    case DATABOX_INT64:
    case DATABOX_UINT64:
    case DATABOX_DOUBLE:
        return DKSHM_OK;
    case DATABOX_BYTES:
        if (b->v.bytes.len && !b->v.bytes.ptr)
            return DKSHM_INVALID;
        /* Leave room for the header in a size_t. */
        if (b->v.bytes.len > SIZE_MAX - DATABOX_HEADER_MAX)
            return DKSHM_INVALID;
        return DKSHM_OK;
    default:
        return DKSHM_INVALID;
    }
}

static unsigned dbIntBytes(uint64_t v) {
    unsigned n = 0;
    while (v) {
        n++;
        v >>= 8;
    }
    return n;
}

static uint64_t dbZigzag(int64_t v) {
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static int64_t dbUnzigzag(uint64_t u) {
    return (int64_t)((u >> 1) ^ (0 - (u & 1)));
}

static unsigned dbLebBytes(uint64_t v) {
    unsigned n = 1;
    while (v >= 0x80) {
        n++;
        v >>= 7;
    }
    return n;
}

/* Header and payload sizes of a valid box. */
static size_t dbSize(const databox *b) {
    switch (b->type) {
    case DATABOX_INT64:
        return 1 + dbIntBytes(dbZigzag(b->v.i64));
    case DATABOX_UINT64:
        return 1 + dbIntBytes(b->v.u64);
    case DATABOX_DOUBLE:
        return 9;
    case DATABOX_BYTES: {
        size_t len = b->v.bytes.len;
        size_t hdr = 1;
        if (len >= DB_INLINE_LEN)
            hdr += dbLebBytes((uint64_t)(len - DB_INLINE_LEN));
        return hdr + len;
    }
    default: /* null, bool */
        return 1;
    }
}

DKSHM_API int databoxEncodedSize(const databox *b, size_t *out) {
    int rc = databoxValidate(b);
    if (rc != DKSHM_OK || !out)
        return DKSHM_INVALID;
    *out = dbSize(b);
    return DKSHM_OK;
}

static void dbPutLE(uint8_t *p, uint64_t v, unsigned n) {
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t dbGetLE(const uint8_t *p, unsigned n) {
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

DKSHM_API int databoxEncode(const databox *b, void *buf, size_t bufLen,
                            size_t *written) {
    if (databoxValidate(b) != DKSHM_OK || !written || (!buf && bufLen))
        return DKSHM_INVALID;
    size_t need = dbSize(b);
    if (bufLen < need) {
        *written = need;
        return DKSHM_TOOBIG;
    }
    uint8_t *p = buf;
    uint64_t u;
    unsigned n;
    switch (b->type) {
    case DATABOX_NULL:
        p[0] = DATABOX_NULL;
        break;
    case DATABOX_BOOL:
        p[0] = (uint8_t)(DATABOX_BOOL | (b->v.b ? 0x10 : 0));
        break;
    case DATABOX_INT64:
    case DATABOX_UINT64:
        u = b->type == DATABOX_INT64 ? dbZigzag(b->v.i64) : b->v.u64;
        n = dbIntBytes(u);
        p[0] = (uint8_t)(b->type | (n << 4));
        dbPutLE(p + 1, u, n);
        break;
    case DATABOX_DOUBLE:
        memcpy(&u, &b->v.d, 8);
        p[0] = DATABOX_DOUBLE;
        dbPutLE(p + 1, u, 8);
        break;
    case DATABOX_BYTES: {
        size_t len = b->v.bytes.len, at = 1;
        if (len < DB_INLINE_LEN) {
            p[0] = (uint8_t)(DATABOX_BYTES | (len << 4));
        } else {
            p[0] = (uint8_t)(DATABOX_BYTES | (DB_INLINE_LEN << 4));
            uint64_t rest = (uint64_t)(len - DB_INLINE_LEN);
            do {
                uint8_t byte = (uint8_t)(rest & 0x7f);
                rest >>= 7;
                p[at++] = (uint8_t)(byte | (rest ? 0x80 : 0));
            } while (rest);
        }
        if (len)
            memcpy(p + at, b->v.bytes.ptr, len);
        break;
    }
    }
    *written = need;
    return DKSHM_OK;
}

DKSHM_API int databoxDecode(const void *buf, size_t len, databox *out,
                            size_t *used) {
    if (!buf || !out)
        return DKSHM_INVALID;
    const uint8_t *p = buf;
    if (len < 1)
        return DKSHM_CORRUPT;
    unsigned type = p[0] & 0x0f, nib = p[0] >> 4;
    databox b = {.type = type};
    size_t size = 1;
    switch (type) {
    case DATABOX_NULL:
        if (nib != 0)
            return DKSHM_CORRUPT;
        break;
    case DATABOX_BOOL:
        if (nib > 1)
            return DKSHM_CORRUPT;
        b.v.b = nib == 1;
        break;
    case DATABOX_INT64:
    case DATABOX_UINT64: {
        if (nib > 8 || len - 1 < nib)
            return DKSHM_CORRUPT;
        uint64_t u = dbGetLE(p + 1, nib);
        if (nib > 0 && p[nib] == 0)
            return DKSHM_CORRUPT; /* a high zero byte: not canonical */
        if (type == DATABOX_INT64)
            b.v.i64 = dbUnzigzag(u);
        else
            b.v.u64 = u;
        size += nib;
        break;
    }
    case DATABOX_DOUBLE: {
        if (nib != 0 || len - 1 < 8)
            return DKSHM_CORRUPT;
        uint64_t u = dbGetLE(p + 1, 8);
        memcpy(&b.v.d, &u, 8);
        size += 8;
        break;
    }
    case DATABOX_BYTES: {
        uint64_t n = nib;
        if (nib == DB_INLINE_LEN) {
            uint64_t rest = 0;
            unsigned i = 0;
            for (;; i++) {
                if (i >= DB_LEB_MAX || 1 + i >= len)
                    return DKSHM_CORRUPT;
                uint8_t byte = p[1 + i];
                uint64_t part = (uint64_t)(byte & 0x7f);
                if (i == 9 && part > 1)
                    return DKSHM_CORRUPT; /* past 64 bits */
                rest |= part << (7 * i);
                if (!(byte & 0x80)) {
                    if (i > 0 && byte == 0)
                        return DKSHM_CORRUPT; /* redundant byte */
                    break;
                }
            }
            size += i + 1;
            if (rest > UINT64_MAX - DB_INLINE_LEN)
                return DKSHM_CORRUPT;
            n = rest + DB_INLINE_LEN;
        }
        if (n > len - size)
            return DKSHM_CORRUPT;
        b.v.bytes.ptr = n ? p + size : NULL;
        b.v.bytes.len = (size_t)n;
        size += (size_t)n;
        break;
    }
    default:
        return DKSHM_CORRUPT;
    }
    *out = b;
    if (used)
        *used = size;
    return DKSHM_OK;
}

/* ---- order ----------------------------------------------------------------
 */

static int dbSign(int v) {
    return (v > 0) - (v < 0);
}

#define DB_TWO63 9223372036854775808.0
#define DB_TWO64 18446744073709551616.0

/* Exact comparison of an int64 with a double that is not NaN. */
static int dbCmpI64Double(int64_t i, double d) {
    if (d >= DB_TWO63)
        return -1;
    if (d < -DB_TWO63)
        return 1;
    int64_t ti = (int64_t)d; /* truncates; exact in [-2^63, 2^63) */
    double t = (double)ti;
    if (i != ti)
        return i < ti ? -1 : 1;
    double frac = d - t;
    return frac > 0 ? -1 : frac < 0 ? 1 : 0;
}

static int dbCmpU64Double(uint64_t u, double d) {
    if (d < 0)
        return 1; /* includes -inf; -0.0 is not < 0 */
    if (d >= DB_TWO64)
        return -1;
    uint64_t tu = (uint64_t)d; /* truncates; exact in [0, 2^64) */
    double t = (double)tu;
    if (u != tu)
        return u < tu ? -1 : 1;
    return d - t > 0 ? -1 : 0;
}

static int dbCmpI64U64(int64_t i, uint64_t u) {
    if (i < 0)
        return -1;
    return (uint64_t)i < u ? -1 : (uint64_t)i > u;
}

/* Order class: null 0, false 1, true 2, numbers 3, bytes 4. */
static int dbClass(const databox *b) {
    switch (b->type) {
    case DATABOX_NULL:
        return 0;
    case DATABOX_BOOL:
        return b->v.b ? 2 : 1;
    case DATABOX_BYTES:
        return 4;
    default:
        return 3;
    }
}

static uint64_t dbBits(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* Two numbers by value only (0 for equal values of different types).
 * NaN is above every other number; two NaNs are equal here. */
static int dbCmpValue(const databox *a, const databox *b) {
    bool an = a->type == DATABOX_DOUBLE && DB_ISNAN(a->v.d);
    bool bn = b->type == DATABOX_DOUBLE && DB_ISNAN(b->v.d);
    if (an || bn)
        return an == bn ? 0 : an ? 1 : -1;
    switch (a->type * 8 + b->type) {
    case DATABOX_INT64 * 8 + DATABOX_INT64:
        return a->v.i64 < b->v.i64 ? -1 : a->v.i64 > b->v.i64;
    case DATABOX_UINT64 * 8 + DATABOX_UINT64:
        return a->v.u64 < b->v.u64 ? -1 : a->v.u64 > b->v.u64;
    case DATABOX_DOUBLE * 8 + DATABOX_DOUBLE:
        return a->v.d < b->v.d ? -1 : a->v.d > b->v.d;
    case DATABOX_INT64 * 8 + DATABOX_UINT64:
        return dbCmpI64U64(a->v.i64, b->v.u64);
    case DATABOX_UINT64 * 8 + DATABOX_INT64:
        return -dbCmpI64U64(b->v.i64, a->v.u64);
    case DATABOX_INT64 * 8 + DATABOX_DOUBLE:
        return dbCmpI64Double(a->v.i64, b->v.d);
    case DATABOX_DOUBLE * 8 + DATABOX_INT64:
        return -dbCmpI64Double(b->v.i64, a->v.d);
    case DATABOX_UINT64 * 8 + DATABOX_DOUBLE:
        return dbCmpU64Double(a->v.u64, b->v.d);
    default: /* DOUBLE, UINT64 */
        return -dbCmpU64Double(b->v.u64, a->v.d);
    }
}

static int dbCmpBytes(const databox *a, const databox *b) {
    size_t la = a->v.bytes.len, lb = b->v.bytes.len;
    size_t n = la < lb ? la : lb;
    int c = n ? memcmp(a->v.bytes.ptr, b->v.bytes.ptr, n) : 0;
    if (c)
        return dbSign(c);
    return la < lb ? -1 : la > lb;
}

DKSHM_API int databoxCompare(const databox *a, const databox *b, int *result) {
    if (databoxValidate(a) != DKSHM_OK || databoxValidate(b) != DKSHM_OK ||
        !result)
        return DKSHM_INVALID;
    int ca = dbClass(a), cb = dbClass(b);
    int c;
    if (ca != cb) {
        c = ca < cb ? -1 : 1;
    } else if (ca == 4) {
        c = dbCmpBytes(a, b);
    } else if (ca != 3) {
        c = 0; /* null, false, true: one value each */
    } else {
        c = dbCmpValue(a, b);
        if (c == 0 && a->type != b->type)
            c = a->type < b->type ? -1 : 1; /* INT64 < UINT64 < DOUBLE */
        if (c == 0 && a->type == DATABOX_DOUBLE) {
            /* Same value: -0.0 before +0.0; NaNs by bits. */
            uint64_t x = dbBits(a->v.d), y = dbBits(b->v.d);
            if (DB_ISNAN(a->v.d))
                c = x < y ? -1 : x > y;
            else if (x != y)
                c = (x >> 63) ? -1 : 1;
        }
    }
    *result = c;
    return DKSHM_OK;
}

DKSHM_API bool databoxEqual(const databox *a, const databox *b) {
    int c;
    return databoxCompare(a, b, &c) == DKSHM_OK && c == 0;
}

/* ---- copies -----------------------------------------------------------------
 */

DKSHM_API int databoxCopy(databox *dst, const databox *src, void *buf,
                          size_t bufLen, size_t *needed) {
    if (!dst || databoxValidate(src) != DKSHM_OK || (!buf && bufLen))
        return DKSHM_INVALID;
    size_t need = src->type == DATABOX_BYTES ? src->v.bytes.len : 0;
    if (needed)
        *needed = need;
    if (bufLen < need)
        return DKSHM_TOOBIG;
    databox b = *src;
    b.flags = 0;
    if (src->type == DATABOX_BYTES) {
        if (need)
            memmove(buf, src->v.bytes.ptr, need);
        b.v.bytes.ptr = need ? buf : NULL;
    }
    *dst = b;
    return DKSHM_OK;
}

DKSHM_API int databoxDup(databox *dst, const databox *src) {
    if (!dst || databoxValidate(src) != DKSHM_OK)
        return DKSHM_INVALID;
    databox b = *src;
    b.flags = 0;
    if (src->type == DATABOX_BYTES && src->v.bytes.len) {
        void *p = malloc(src->v.bytes.len);
        if (!p) {
            errno = ENOMEM;
            return DKSHM_SYSTEM;
        }
        memcpy(p, src->v.bytes.ptr, src->v.bytes.len);
        b.v.bytes.ptr = p;
        b.flags = DATABOX_OWNED;
    }
    *dst = b;
    return DKSHM_OK;
}

DKSHM_API void databoxRelease(databox *b) {
    if (!b)
        return;
    if ((b->flags & DATABOX_OWNED) && b->type == DATABOX_BYTES)
        free((void *)(uintptr_t)b->v.bytes.ptr);
    *b = databoxNull();
}

/* ---- in a segment
 * ------------------------------------------------------------ */

DKSHM_API int databoxStore(dkshm *s, const databox *b, dkoff *out) {
    if (!s || !out || databoxValidate(b) != DKSHM_OK)
        return DKSHM_INVALID;
    if (dkshmReadOnly(s))
        return DKSHM_READONLY;
    membound *m = memboundForSegment(s);
    if (!m)
        return DKSHM_FULL;
    size_t need = dbSize(b);
    dkoff off;
    int rc = memboundAllocOff(m, need, &off);
    if (rc != DKSHM_OK)
        return rc;
    size_t written;
    rc = databoxEncode(b, dkPtr(s, off), need, &written);
    if (rc != DKSHM_OK) { /* cannot happen: sized above */
        memboundFreeOff(m, off);
        return rc;
    }
    *out = off;
    return DKSHM_OK;
}

DKSHM_API int databoxLoad(dkshm *s, dkoff off, databox *out, void *buf,
                          size_t bufLen, size_t *needed) {
    if (!s || !out || (!buf && bufLen))
        return DKSHM_INVALID;
    if (off < s->hdr->heap || !dkRangeOk(s, off, 1))
        return DKSHM_INVALID;
    databox b;
    int rc = databoxDecode(dkPtr(s, off), (size_t)(s->size - off), &b, NULL);
    if (rc != DKSHM_OK)
        return rc;
    return databoxCopy(out, &b, buf, bufLen, needed);
}
