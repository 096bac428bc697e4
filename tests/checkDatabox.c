/* checkDatabox.c — Check suite for containers/databox: constructors and
 * validation, the canonical encoding (sizes, round trips, every malformed
 * form refused, random bytes never crash), the total order across types,
 * the copy helpers, and storing and loading boxes in a segment.
 */
#include "config.h"

#include "databox.h"
#include "membound.h"
#include "testUtil.h"

#include <float.h>
#include <stdint.h>

#define MiB (1024u * 1024u)

static double dbl(uint64_t bits) {
    double d;
    memcpy(&d, &bits, 8);
    return d;
}

static uint64_t bitsOf(double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* Encode B, decode it again, and check it is the same box and the size is
 * what databoxEncodedSize said. Returns the encoded size. */
static size_t roundTrip(const databox *b) {
    static uint8_t buf[200000];
    size_t size = 0, written = 0, used = 0;
    ck_assert_int_eq(databoxEncodedSize(b, &size), DKSHM_OK);
    ck_assert_int_le(size, sizeof buf);
    ck_assert_int_eq(databoxEncode(b, buf, sizeof buf, &written), DKSHM_OK);
    ck_assert_uint_eq(written, size);
    databox d;
    ck_assert_int_eq(databoxDecode(buf, written, &d, &used), DKSHM_OK);
    ck_assert_uint_eq(used, written);
    ck_assert_uint_eq(d.type, b->type);
    ck_assert_msg(databoxEqual(&d, b), "round trip of a %s changed it",
                  databoxTypeName(b->type));
    if (b->type == DATABOX_DOUBLE)
        ck_assert_uint_eq(bitsOf(d.v.d), bitsOf(b->v.d));
    /* Every strict prefix is truncated. */
    for (size_t cut = 0; cut < written && cut < 40; cut++)
        ck_assert_int_eq(databoxDecode(buf, cut, &d, NULL), DKSHM_CORRUPT);
    return written;
}

/* ---- basics ------------------------------------------------------------- */

START_TEST(test_constructors_validate) {
    databox b = databoxInt64(-5);
    ck_assert_uint_eq(b.type, DATABOX_INT64);
    ck_assert_int_eq(b.v.i64, -5);
    ck_assert_int_eq(databoxValidate(&b), DKSHM_OK);
    b = databoxUint64(UINT64_MAX);
    ck_assert_uint_eq(b.v.u64, UINT64_MAX);
    b = databoxDouble(1.5);
    ck_assert(b.v.d == 1.5);
    b = databoxBool(true);
    ck_assert(b.v.b);
    b = databoxNull();
    ck_assert_int_eq(databoxValidate(&b), DKSHM_OK);
    b = databoxBytes("abc", 3);
    ck_assert_uint_eq(b.v.bytes.len, 3);
    ck_assert_int_eq(databoxValidate(&b), DKSHM_OK);
    b = databoxBytes(NULL, 0);
    ck_assert_int_eq(databoxValidate(&b), DKSHM_OK);

    ck_assert_int_eq(databoxValidate(NULL), DKSHM_INVALID);
    b = databoxBytes(NULL, 3);
    ck_assert_int_eq(databoxValidate(&b), DKSHM_INVALID);
    b = databoxInt64(1);
    b.type = 0;
    ck_assert_int_eq(databoxValidate(&b), DKSHM_INVALID);
    b.type = 7;
    ck_assert_int_eq(databoxValidate(&b), DKSHM_INVALID);
    b = databoxInt64(1);
    b.flags = 0x80;
    ck_assert_int_eq(databoxValidate(&b), DKSHM_INVALID);
    ck_assert_str_eq(databoxTypeName(DATABOX_BYTES), "bytes");
    ck_assert_str_eq(databoxTypeName(DATABOX_NULL), "null");
    ck_assert_str_eq(databoxTypeName(99), "unknown");
}
END_TEST

START_TEST(test_encoding_sizes) {
    struct {
        databox b;
        size_t size;
    } cases[] = {
        {databoxNull(), 1},
        {databoxBool(false), 1},
        {databoxBool(true), 1},
        {databoxInt64(0), 1},
        {databoxInt64(-1), 2},
        {databoxInt64(127), 2},
        {databoxInt64(128), 3},
        {databoxInt64(-128), 2},
        {databoxInt64(-129), 3},
        {databoxInt64(INT64_MAX), 9},
        {databoxInt64(INT64_MIN), 9},
        {databoxUint64(0), 1},
        {databoxUint64(255), 2},
        {databoxUint64(256), 3},
        {databoxUint64(UINT64_MAX), 9},
        {databoxDouble(0.0), 9},
        {databoxBytes("", 0), 1},
        {databoxBytes("abcdefghijklmn", 14), 15},
        {databoxBytes("abcdefghijklmno", 15), 17},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t size;
        ck_assert_int_eq(databoxEncodedSize(&cases[i].b, &size), DKSHM_OK);
        ck_assert_msg(size == cases[i].size, "case %zu: %zu bytes, not %zu", i,
                      size, cases[i].size);
    }
    /* A bytes length of 15 + 127 takes one LEB128 byte, 15 + 128 two. */
    static uint8_t big[200];
    databox b = databoxBytes(big, 142);
    size_t size;
    ck_assert_int_eq(databoxEncodedSize(&b, &size), DKSHM_OK);
    ck_assert_uint_eq(size, 2 + 142);
    b = databoxBytes(big, 143);
    ck_assert_int_eq(databoxEncodedSize(&b, &size), DKSHM_OK);
    ck_assert_uint_eq(size, 3 + 143);
    ck_assert_int_eq(databoxEncodedSize(NULL, &size), DKSHM_INVALID);
    ck_assert_int_eq(databoxEncodedSize(&b, NULL), DKSHM_INVALID);
}
END_TEST

START_TEST(test_round_trips) {
    const int64_t ints[] = {0,
                            1,
                            -1,
                            2,
                            -2,
                            127,
                            -128,
                            1000,
                            -1000,
                            1ll << 32,
                            -(1ll << 32),
                            INT64_MAX,
                            INT64_MIN,
                            INT64_MAX - 1,
                            INT64_MIN + 1};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        databox b = databoxInt64(ints[i]);
        roundTrip(&b);
    }
    for (int sh = 0; sh < 64; sh++) {
        databox b = databoxUint64(1ull << sh);
        roundTrip(&b);
        b = databoxUint64((1ull << sh) - 1);
        roundTrip(&b);
        b = databoxInt64((int64_t)(1ull << sh));
        roundTrip(&b);
        b = databoxInt64(-(int64_t)(1ull << (sh < 63 ? sh : 62)));
        roundTrip(&b);
    }
    databox u = databoxUint64(UINT64_MAX);
    roundTrip(&u);
    const double ds[] = {0.0,      -0.0,    1.0,    -1.5,      DBL_MAX,
                         -DBL_MAX, DBL_MIN, 5e-324, 1.0 / 0.0, -1.0 / 0.0};
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) {
        databox b = databoxDouble(ds[i]);
        roundTrip(&b);
    }
    databox nan = databoxDouble(dbl(0x7ff8000000000123ull));
    roundTrip(&nan);
    databox n = databoxNull(), t = databoxBool(true), f = databoxBool(false);
    roundTrip(&n);
    roundTrip(&t);
    roundTrip(&f);
    static uint8_t bytes[100000];
    for (size_t i = 0; i < sizeof bytes; i++)
        bytes[i] = (uint8_t)(i * 7 + 3);
    const size_t lens[] = {0,   1,   14,  15,    16,    141,   142,
                           143, 144, 300, 16398, 16399, 100000};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        databox b = databoxBytes(bytes, lens[i]);
        size_t sz = roundTrip(&b);
        ck_assert_uint_gt(sz, lens[i]);
    }
    /* Decoded bytes point into the buffer. */
    uint8_t buf[32];
    size_t w;
    databox b = databoxBytes("hello", 5), d;
    ck_assert_int_eq(databoxEncode(&b, buf, sizeof buf, &w), DKSHM_OK);
    ck_assert_int_eq(databoxDecode(buf, w, &d, NULL), DKSHM_OK);
    ck_assert_ptr_eq(d.v.bytes.ptr, buf + 1);
    /* Trailing bytes are not part of the box. */
    size_t used;
    buf[w] = 0xff;
    ck_assert_int_eq(databoxDecode(buf, w + 1, &d, &used), DKSHM_OK);
    ck_assert_uint_eq(used, w);
}
END_TEST

START_TEST(test_encode_toobig) {
    databox b = databoxBytes("0123456789abcdefghij", 20);
    uint8_t buf[64];
    size_t w = 0;
    ck_assert_int_eq(databoxEncode(&b, buf, 5, &w), DKSHM_TOOBIG);
    ck_assert_uint_eq(w, 22);
    ck_assert_int_eq(databoxEncode(&b, NULL, 0, &w), DKSHM_TOOBIG);
    ck_assert_uint_eq(w, 22);
    ck_assert_int_eq(databoxEncode(&b, buf, 22, &w), DKSHM_OK);
    ck_assert_int_eq(databoxEncode(&b, NULL, 5, &w), DKSHM_INVALID);
    ck_assert_int_eq(databoxEncode(&b, buf, sizeof buf, NULL), DKSHM_INVALID);
    ck_assert_int_eq(databoxEncode(NULL, buf, sizeof buf, &w), DKSHM_INVALID);
    databox bad = databoxInt64(1);
    bad.type = 42;
    ck_assert_int_eq(databoxEncode(&bad, buf, sizeof buf, &w), DKSHM_INVALID);
}
END_TEST

static void assertCorrupt(const uint8_t *p, size_t n, const char *what) {
    databox d = databoxInt64(77);
    int rc = databoxDecode(p, n, &d, NULL);
    ck_assert_msg(rc == DKSHM_CORRUPT, "%s: %s", what, dkshmErrName(rc));
    ck_assert_msg(d.type == DATABOX_INT64 && d.v.i64 == 77,
                  "%s: output changed", what);
}

START_TEST(test_decode_malformed) {
    databox d;
    ck_assert_int_eq(databoxDecode(NULL, 3, &d, NULL), DKSHM_INVALID);
    ck_assert_int_eq(databoxDecode("x", 1, NULL, NULL), DKSHM_INVALID);
    assertCorrupt((const uint8_t *)"", 0, "empty");
    for (unsigned t = 0; t < 16; t++)
        if (t == 0 || t > DATABOX_BYTES) {
            uint8_t b[16] = {(uint8_t)t};
            assertCorrupt(b, sizeof b, "unknown type");
        }
    uint8_t nul[] = {0x11};
    assertCorrupt(nul, 1, "null with a nibble");
    uint8_t boo[] = {0x22};
    assertCorrupt(boo, 1, "bool 2");
    uint8_t i9[16] = {0x93};
    assertCorrupt(i9, sizeof i9, "int of 9 bytes");
    uint8_t itr[] = {0x43, 1, 2, 3};
    assertCorrupt(itr, sizeof itr, "truncated int");
    uint8_t ihz[] = {0x23, 5, 0};
    assertCorrupt(ihz, sizeof ihz, "int with a high zero byte");
    uint8_t uhz[] = {0x14, 0};
    assertCorrupt(uhz, sizeof uhz, "uint 0 in one byte");
    uint8_t dnib[16] = {0x15};
    assertCorrupt(dnib, sizeof dnib, "double with a nibble");
    uint8_t dtr[] = {0x05, 1, 2, 3, 4, 5, 6, 7};
    assertCorrupt(dtr, sizeof dtr, "truncated double");
    uint8_t btr[] = {0x36, 'a', 'b'};
    assertCorrupt(btr, sizeof btr, "truncated bytes");
    uint8_t lebNone[] = {0xf6};
    assertCorrupt(lebNone, sizeof lebNone, "missing length");
    uint8_t lebOpen[] = {0xf6, 0x80, 0x80};
    assertCorrupt(lebOpen, sizeof lebOpen, "unterminated length");
    uint8_t lebLong[16] = {0xf6, 0x80, 0x80, 0x80, 0x80, 0x80,
                           0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    assertCorrupt(lebLong, sizeof lebLong, "length of 11 bytes");
    uint8_t leb65[16] = {0xf6, 0xff, 0xff, 0xff, 0xff, 0xff,
                         0xff, 0xff, 0xff, 0xff, 0x02};
    assertCorrupt(leb65, sizeof leb65, "length past 64 bits");
    uint8_t lebMax[16] = {0xf6, 0xff, 0xff, 0xff, 0xff, 0xff,
                          0xff, 0xff, 0xff, 0xff, 0x01};
    assertCorrupt(lebMax, sizeof lebMax, "length near 2^64");
    uint8_t lebRed[] = {0xf6, 0x81, 0x00, 'x', 'x'};
    assertCorrupt(lebRed, sizeof lebRed, "redundant length byte");
    uint8_t lebBig[] = {0xf6, 0x05, 'a'};
    assertCorrupt(lebBig, sizeof lebBig, "length past the buffer");
}
END_TEST

START_TEST(test_decode_random_bytes) {
    uint64_t seed = 12345;
    uint8_t buf[64], again[64];
    int ok = 0;
    for (int i = 0; i < 200000; i++) {
        size_t n = testRng(&seed) % sizeof buf;
        for (size_t j = 0; j < n; j++)
            buf[j] = (uint8_t)testRng(&seed);
        if (n && (i & 1))
            buf[0] = (uint8_t)((buf[0] & 0xf0) | (1 + testRng(&seed) % 6));
        databox d;
        size_t used = 0;
        int rc = databoxDecode(buf, n, &d, &used);
        ck_assert(rc == DKSHM_OK || rc == DKSHM_CORRUPT);
        if (rc != DKSHM_OK)
            continue;
        ok++;
        ck_assert_uint_le(used, n);
        /* Canonical: encoding the box gives back the same bytes. */
        size_t w;
        ck_assert_int_eq(databoxEncode(&d, again, sizeof again, &w), DKSHM_OK);
        ck_assert_uint_eq(w, used);
        ck_assert(memcmp(again, buf, w) == 0);
    }
    ck_assert_int_gt(ok, 1000);
}
END_TEST

/* ---- order -------------------------------------------------------------- */

START_TEST(test_total_order) {
    /* Strictly increasing. */
    databox v[] = {
        databoxNull(),
        databoxBool(false),
        databoxBool(true),
        databoxDouble(-1.0 / 0.0),
        databoxDouble(-1e300),
        databoxInt64(INT64_MIN),
        databoxDouble(-9223372036854775808.0),
        databoxInt64(INT64_MIN + 1),
        databoxDouble(-2.5),
        databoxInt64(-1),
        databoxDouble(-1.0),
        databoxDouble(-0.5),
        databoxInt64(0),
        databoxUint64(0),
        databoxDouble(-0.0),
        databoxDouble(0.0),
        databoxDouble(5e-324),
        databoxDouble(0.5),
        databoxInt64(1),
        databoxUint64(1),
        databoxDouble(1.0),
        databoxInt64(9007199254740992ll),
        databoxDouble(9007199254740992.0),
        databoxInt64(9007199254740993ll),
        databoxUint64(9007199254740993ull),
        databoxDouble(9007199254740994.0),
        databoxInt64(INT64_MAX),
        databoxUint64(9223372036854775808ull),
        databoxDouble(9223372036854775808.0),
        databoxUint64(UINT64_MAX),
        databoxDouble(18446744073709551616.0),
        databoxDouble(1e300),
        databoxDouble(1.0 / 0.0),
        databoxDouble(dbl(0x7ff8000000000000ull)),
        databoxDouble(dbl(0x7ff8000000000001ull)),
        databoxDouble(dbl(0xfff8000000000000ull)),
        databoxBytes("", 0),
        databoxBytes("\0", 1),
        databoxBytes("\0\0", 2),
        databoxBytes("a", 1),
        databoxBytes("a\0", 2),
        databoxBytes("ab", 2),
        databoxBytes("b", 1),
        databoxBytes("\xff", 1),
    };
    size_t n = sizeof v / sizeof v[0];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            int c = 99;
            ck_assert_int_eq(databoxCompare(&v[i], &v[j], &c), DKSHM_OK);
            int want = i < j ? -1 : i > j;
            ck_assert_msg(c == want, "compare(%zu %s, %zu %s) = %d, not %d", i,
                          databoxTypeName(v[i].type), j,
                          databoxTypeName(v[j].type), c, want);
            ck_assert(databoxEqual(&v[i], &v[j]) == (i == j));
        }
    /* Bad input. */
    int c = 7;
    databox bad = databoxInt64(0);
    bad.type = 0;
    ck_assert_int_eq(databoxCompare(&bad, &v[0], &c), DKSHM_INVALID);
    ck_assert_int_eq(databoxCompare(&v[0], NULL, &c), DKSHM_INVALID);
    ck_assert_int_eq(databoxCompare(&v[0], &v[1], NULL), DKSHM_INVALID);
    ck_assert_int_eq(c, 7);
    ck_assert(!databoxEqual(&bad, &bad));
}
END_TEST

START_TEST(test_order_random_numbers) {
    /* Against an exact reference: long double holds every int64, uint64
     * and double exactly on x86 (64-bit mantissa); elsewhere skip. */
    if (sizeof(long double) < 10 || LDBL_MANT_DIG < 64)
        return;
    uint64_t seed = 99;
    for (int i = 0; i < 200000; i++) {
        databox a, b;
        long double x[2];
        databox *p[2] = {&a, &b};
        for (int k = 0; k < 2; k++) {
            uint64_t r = testRng(&seed);
            switch (r % 3) {
            case 0:
                *p[k] = databoxInt64((int64_t)(testRng(&seed) >> (1 + r % 63)) *
                                     ((r & 8) ? -1 : 1));
                x[k] = (long double)p[k]->v.i64;
                break;
            case 1:
                *p[k] = databoxUint64(testRng(&seed) >> (r % 64));
                x[k] = (long double)p[k]->v.u64;
                break;
            default: {
                double d = (double)(int64_t)(testRng(&seed) >> (r % 64)) /
                           (double)(1 + (r >> 60));
                if (r & 16)
                    d = -d;
                *p[k] = databoxDouble(d);
                x[k] = d;
                break;
            }
            }
        }
        int c;
        ck_assert_int_eq(databoxCompare(&a, &b, &c), DKSHM_OK);
        if (x[0] != x[1])
            ck_assert_int_eq(c, x[0] < x[1] ? -1 : 1);
        else if (a.type != b.type)
            ck_assert_int_eq(c, a.type < b.type ? -1 : 1);
        int back;
        ck_assert_int_eq(databoxCompare(&b, &a, &back), DKSHM_OK);
        ck_assert_int_eq(back, -c);
    }
}
END_TEST

/* ---- copies ------------------------------------------------------------- */

START_TEST(test_copy_dup_release) {
    char src[] = "some bytes";
    databox b = databoxBytes(src, 10), c;
    char buf[16];
    size_t need = 0;
    ck_assert_int_eq(databoxCopy(&c, &b, buf, 4, &need), DKSHM_TOOBIG);
    ck_assert_uint_eq(need, 10);
    ck_assert_int_eq(databoxCopy(&c, &b, buf, sizeof buf, &need), DKSHM_OK);
    ck_assert_ptr_eq(c.v.bytes.ptr, buf);
    src[0] = 'X';
    ck_assert(memcmp(c.v.bytes.ptr, "some bytes", 10) == 0);
    /* In place. */
    ck_assert_int_eq(databoxCopy(&b, &b, buf, sizeof buf, NULL), DKSHM_OK);
    ck_assert_ptr_eq(b.v.bytes.ptr, buf);
    ck_assert(memcmp(b.v.bytes.ptr, "Xome bytes", 10) == 0);
    /* Scalars need no buffer. */
    databox i = databoxInt64(3), j;
    ck_assert_int_eq(databoxCopy(&j, &i, NULL, 0, &need), DKSHM_OK);
    ck_assert_uint_eq(need, 0);
    ck_assert(databoxEqual(&i, &j));
    ck_assert_int_eq(databoxCopy(NULL, &i, NULL, 0, NULL), DKSHM_INVALID);
    ck_assert_int_eq(databoxCopy(&j, &i, NULL, 3, NULL), DKSHM_INVALID);

    databox d;
    b = databoxBytes("dup me", 6);
    ck_assert_int_eq(databoxDup(&d, &b), DKSHM_OK);
    ck_assert(d.flags & DATABOX_OWNED);
    ck_assert(d.v.bytes.ptr != b.v.bytes.ptr);
    ck_assert(databoxEqual(&d, &b));
    databoxRelease(&d);
    ck_assert_uint_eq(d.type, DATABOX_NULL);
    databoxRelease(&d);
    databoxRelease(NULL);
    /* Release of a box that owns nothing leaves the bytes alone. */
    databox e = databoxBytes(src, 3);
    databoxRelease(&e);
    ck_assert_uint_eq(e.type, DATABOX_NULL);
    databox z = databoxBytes(NULL, 0);
    ck_assert_int_eq(databoxDup(&d, &z), DKSHM_OK);
    ck_assert(!(d.flags & DATABOX_OWNED));
    ck_assert_int_eq(databoxDup(&d, NULL), DKSHM_INVALID);
}
END_TEST

/* ---- in a segment ---------------------------------------------------------
 */

START_TEST(test_store_load) {
    dkshm *s;
    membound *mb;
    testMakeSegment("dbox", 4 * MiB, NULL, &s, &mb);
    size_t base = memboundCurrentAllocationCount(mb);
    static uint8_t big[5000];
    memset(big, 0x5a, sizeof big);
    databox boxes[] = {databoxNull(),
                       databoxBool(true),
                       databoxInt64(-123456),
                       databoxUint64(UINT64_MAX),
                       databoxDouble(3.25),
                       databoxBytes("kv", 2),
                       databoxBytes(big, sizeof big)};
    dkoff offs[7];
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(databoxStore(s, &boxes[i], &offs[i]), DKSHM_OK);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), base + 7);
    static uint8_t buf[8000];
    for (int i = 0; i < 7; i++) {
        databox d;
        size_t need;
        ck_assert_int_eq(databoxLoad(s, offs[i], &d, buf, sizeof buf, &need),
                         DKSHM_OK);
        ck_assert(databoxEqual(&d, &boxes[i]));
        if (d.type == DATABOX_BYTES && d.v.bytes.len)
            ck_assert_ptr_eq(d.v.bytes.ptr, buf);
    }
    databox d;
    size_t need = 0;
    ck_assert_int_eq(databoxLoad(s, offs[6], &d, buf, 10, &need), DKSHM_TOOBIG);
    ck_assert_uint_eq(need, sizeof big);
    /* Bad offsets and damaged encodings. */
    ck_assert_int_eq(databoxLoad(s, 0, &d, buf, sizeof buf, NULL),
                     DKSHM_INVALID);
    ck_assert_int_eq(
        databoxLoad(s, dkshmCapacity(s) + 8, &d, buf, sizeof buf, NULL),
        DKSHM_INVALID);
    ck_assert_int_eq(databoxLoad(s, 16, &d, buf, sizeof buf, NULL),
                     DKSHM_INVALID); /* the header, not the heap */
    uint8_t *p = dkshmPtr(s, offs[5]);
    p[0] = 0x0f;
    ck_assert_int_eq(databoxLoad(s, offs[5], &d, buf, sizeof buf, NULL),
                     DKSHM_CORRUPT);
    /* A length that runs past the end of the segment. */
    dkoff last = dkshmCapacity(s) - 3;
    uint8_t *q = dkshmPtr(s, last);
    q[0] = 0xf6;
    q[1] = 0x7f;
    ck_assert_int_eq(databoxLoad(s, last, &d, buf, sizeof buf, NULL),
                     DKSHM_CORRUPT);
    ck_assert_int_eq(databoxStore(NULL, &boxes[0], &offs[0]), DKSHM_INVALID);
    ck_assert_int_eq(databoxStore(s, NULL, &offs[0]), DKSHM_INVALID);
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(memboundFreeOff(mb, offs[i]), DKSHM_OK);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), base);
    /* Full segment: FULL, nothing allocated. */
    static uint8_t huge[8 * MiB];
    databox h = databoxBytes(huge, sizeof huge);
    dkoff off;
    int rc = databoxStore(s, &h, &off);
    ck_assert(rc == DKSHM_FULL || rc == DKSHM_TOOBIG);
    ck_assert_uint_eq(memboundCurrentAllocationCount(mb), base);
    /* Read-only attachment. */
    dkshm *ro;
    ck_assert_int_eq(dkshmAttach(testSegmentName(), DKSHM_RDONLY, &ro),
                     DKSHM_OK);
    ck_assert_int_eq(databoxStore(ro, &boxes[0], &off), DKSHM_READONLY);
    dkshmDetach(ro);
    testDropSegment(&s, &mb);
}
END_TEST

static Suite *databoxSuite(void) {
    Suite *s = suite_create("databox");
    TCase *tc = testAddCase(s, "values", NULL, NULL, 30);
    tcase_add_test(tc, test_constructors_validate);
    tcase_add_test(tc, test_encoding_sizes);
    tcase_add_test(tc, test_round_trips);
    tcase_add_test(tc, test_encode_toobig);
    tcase_add_test(tc, test_decode_malformed);
    tcase_add_test(tc, test_decode_random_bytes);
    tc = testAddCase(s, "order", NULL, NULL, 30);
    tcase_add_test(tc, test_total_order);
    tcase_add_test(tc, test_order_random_numbers);
    tc = testAddCase(s, "copies", NULL, NULL, 30);
    tcase_add_test(tc, test_copy_dup_release);
    tcase_add_test(tc, test_store_load);
    return s;
}

int main(void) {
    testSetPrefix("db");
    return testRunSuite(databoxSuite());
}
