/* toolUtil.h — what dkshm-tool needs besides the library: a JSON writer,
 * aligned text tables, strict parsers for sizes, durations and modes, and
 * formatting of sizes, times and untrusted bytes. Private to tools/.
 *
 * Everything here works on per-process memory only; nothing touches a
 * segment. THREAD SAFETY: none needed (the tool is single-threaded).
 */
#ifndef DKSHM_TOOL_UTIL_H
#define DKSHM_TOOL_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- JSON --------------------------------------------------------------- */

#define JSON_MAX_DEPTH 16

/* Writes one pretty-printed JSON document. Inside an object every value
 * needs a key; inside an array (and at the top) the key must be NULL.
 * Strings are written byte by byte: printable ASCII as is, everything else
 * (control bytes, bytes >= 0x80 of damaged names) as \u00XX, so the output
 * is valid JSON whatever the segment holds. */
typedef struct jsonOut { /* per process */
    FILE *f;
    int depth;
    bool first[JSON_MAX_DEPTH];
} jsonOut;

void jsonInit(jsonOut *j, FILE *f);
void jsonObjOpen(jsonOut *j, const char *key);
void jsonObjClose(jsonOut *j);
void jsonArrOpen(jsonOut *j, const char *key);
void jsonArrClose(jsonOut *j);
void jsonStr(jsonOut *j, const char *key, const char *v); /* NULL: null */
void jsonStrN(jsonOut *j, const char *key, const void *v, size_t n);
void jsonU64(jsonOut *j, const char *key, uint64_t v);
void jsonI64(jsonOut *j, const char *key, int64_t v);
void jsonDouble(jsonOut *j, const char *key, double v);
void jsonBool(jsonOut *j, const char *key, bool v);
void jsonNull(jsonOut *j, const char *key);
/* Ends the document with a newline. */
void jsonEnd(jsonOut *j);

/* ---- aligned tables ----------------------------------------------------- */

#define TABLE_MAX_COLS 12

/* Rows of cells printed with every column as wide as its widest cell.
 * SPEC names the columns, separated by spaces, each prefixed by '<' (left
 * aligned) or '>' (right aligned), e.g. "<NAME >SIZE". A NULL header name
 * ("-" in SPEC) prints no header line. */
typedef struct table { /* per process */
    int cols;
    int indent;
    bool header;
    char align[TABLE_MAX_COLS];
    char *head[TABLE_MAX_COLS];
    char **cells; /* rows * cols, row-major */
    size_t rows, cap;
    int cur; /* cells in the row being built */
} table;

void tableInit(table *t, int indent, const char *spec);
/* Append a cell to the current row; a row is complete after `cols` cells. */
void tableCell(table *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void tablePrint(const table *t, FILE *f);
void tableFree(table *t);

/* ---- parsing (strict: the whole string, no sign, no overflow) ----------- */

/* "4096", "512K", "64M", "2G", "1T" (also "64MB", "64MiB", lower case).
 * Binary multiples. -1 for anything else, zero, or overflow. */
int parseSize(const char *s, uint64_t *out);
/* "30s", "10m", "2h", "1d", "90" (seconds). -1 on garbage or overflow. */
int parseDuration(const char *s, uint64_t *seconds);
/* Octal permission bits, at most 0777: "600", "0644". */
int parseMode(const char *s, uint32_t *out);
/* Decimal unsigned, or signed with an optional '-' / '+'. */
int parseU64(const char *s, uint64_t *out);
int parseI64(const char *s, int64_t *out);

/* ---- formatting --------------------------------------------------------- */

/* "512 B", "1.5 KiB", "64.0 MiB": BUF of at least 32 bytes. */
const char *fmtBytes(uint64_t v, char *buf);
/* Local "2026-11-27 14:24:01", or "-" for 0: BUF of at least 32 bytes. */
const char *fmtTimeLocal(uint64_t ns, char *buf);
/* UTC "2026-11-27T14:24:01Z", or "" for 0: BUF of at least 32 bytes. */
const char *fmtTimeIso(uint64_t ns, char *buf);
/* "3s", "5m12s", "2h03m", "4d02h": BUF of at least 32 bytes. */
const char *fmtAge(uint64_t seconds, char *buf);
/* Bytes as printable ASCII with \\, \" and \xNN escapes, NUL-terminated in
 * OUT (at most OUTLEN - 1 characters; cut short with "..." if needed). */
void escapeBytes(const void *p, size_t n, char *out, size_t outLen);

/* malloc that exits (status 3) on failure: the tool has nothing sensible
 * to do without memory. */
void *xcalloc(size_t n, size_t size);
char *xstrdup(const char *s);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xvasprintf(const char *fmt, va_list ap)
    __attribute__((format(printf, 1, 0)));

#endif
