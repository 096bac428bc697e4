/* toolUtil.c — JSON writer, text tables, parsers and formatters for
 * dkshm-tool (see toolUtil.h).
 *
 * Everything that ends up on the terminal or in JSON may come from a
 * damaged segment, so every string is escaped byte by byte: nothing read
 * from a segment is ever printed raw.
 */
#include "config.h"

#include "toolUtil.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- memory ------------------------------------------------------------- */

static void outOfMemory(void) {
    fputs("dkshm-tool: out of memory\n", stderr);
    exit(3);
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        outOfMemory();
    return p;
}

char *xstrdup(const char *s) {
    char *p = strdup(s);
    if (!p)
        outOfMemory();
    return p;
}

char *xvasprintf(const char *fmt, va_list ap) {
    char *p;
    if (vasprintf(&p, fmt, ap) < 0)
        outOfMemory();
    return p;
}

char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *p = xvasprintf(fmt, ap);
    va_end(ap);
    return p;
}

/* ---- JSON --------------------------------------------------------------- */

void jsonInit(jsonOut *j, FILE *f) {
    memset(j, 0, sizeof *j);
    j->f = f;
    j->first[0] = true;
}

static void jsonIndent(jsonOut *j) {
    fputc('\n', j->f);
    for (int i = 0; i < j->depth; i++)
        fputs("  ", j->f);
}

static void jsonQuote(jsonOut *j, const void *v, size_t n) {
    const unsigned char *p = v;
    fputc('"', j->f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\')
            fprintf(j->f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", j->f);
        else if (c == '\t')
            fputs("\\t", j->f);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(j->f, "\\u%04x", c);
        else
            fputc(c, j->f);
    }
    fputc('"', j->f);
}

/* The separator, indentation and key before a value. */
static void jsonPre(jsonOut *j, const char *key) {
    if (j->depth > 0) {
        if (!j->first[j->depth])
            fputc(',', j->f);
        jsonIndent(j);
    }
    j->first[j->depth] = false;
    if (key) {
        jsonQuote(j, key, strlen(key));
        fputs(": ", j->f);
    }
}

static void jsonOpen(jsonOut *j, const char *key, char c) {
    jsonPre(j, key);
    fputc(c, j->f);
    if (j->depth + 1 < JSON_MAX_DEPTH)
        j->depth++;
    j->first[j->depth] = true;
}

static void jsonClose(jsonOut *j, char c) {
    bool empty = j->first[j->depth];
    if (j->depth > 0)
        j->depth--;
    if (!empty)
        jsonIndent(j);
    fputc(c, j->f);
}

void jsonObjOpen(jsonOut *j, const char *key) {
    jsonOpen(j, key, '{');
}

void jsonObjClose(jsonOut *j) {
    jsonClose(j, '}');
}

void jsonArrOpen(jsonOut *j, const char *key) {
    jsonOpen(j, key, '[');
}

void jsonArrClose(jsonOut *j) {
    jsonClose(j, ']');
}

void jsonStr(jsonOut *j, const char *key, const char *v) {
    if (!v) {
        jsonNull(j, key);
        return;
    }
    jsonStrN(j, key, v, strlen(v));
}

void jsonStrN(jsonOut *j, const char *key, const void *v, size_t n) {
    jsonPre(j, key);
    jsonQuote(j, v, n);
}

void jsonU64(jsonOut *j, const char *key, uint64_t v) {
    jsonPre(j, key);
    fprintf(j->f, "%" PRIu64, v);
}

void jsonI64(jsonOut *j, const char *key, int64_t v) {
    jsonPre(j, key);
    fprintf(j->f, "%" PRId64, v);
}

void jsonDouble(jsonOut *j, const char *key, double v) {
    jsonPre(j, key);
    if (isfinite(v))
        fprintf(j->f, "%.6g", v);
    else
        fputs("null", j->f);
}

void jsonBool(jsonOut *j, const char *key, bool v) {
    jsonPre(j, key);
    fputs(v ? "true" : "false", j->f);
}

void jsonNull(jsonOut *j, const char *key) {
    jsonPre(j, key);
    fputs("null", j->f);
}

void jsonEnd(jsonOut *j) {
    fputc('\n', j->f);
}

/* ---- tables ------------------------------------------------------------- */

void tableInit(table *t, int indent, const char *spec) {
    memset(t, 0, sizeof *t);
    t->indent = indent;
    char *copy = xstrdup(spec), *save = NULL;
    for (char *w = strtok_r(copy, " ", &save); w && t->cols < TABLE_MAX_COLS;
         w = strtok_r(NULL, " ", &save)) {
        t->align[t->cols] = *w == '>' ? '>' : '<';
        if (*w == '<' || *w == '>')
            w++;
        if (strcmp(w, "-") != 0)
            t->header = true;
        t->head[t->cols++] = xstrdup(strcmp(w, "-") == 0 ? "" : w);
    }
    free(copy);
}

void tableCell(table *t, const char *fmt, ...) {
    if (t->cur == 0) {
        if (t->rows == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 16;
            char **c = realloc(t->cells, cap * (size_t)t->cols * sizeof *c);
            if (!c)
                outOfMemory();
            memset(c + t->cap * (size_t)t->cols, 0,
                   (cap - t->cap) * (size_t)t->cols * sizeof *c);
            t->cells = c;
            t->cap = cap;
        }
        t->rows++;
    }
    va_list ap;
    va_start(ap, fmt);
    t->cells[(t->rows - 1) * (size_t)t->cols + (size_t)t->cur] =
        xvasprintf(fmt, ap);
    va_end(ap);
    t->cur = (t->cur + 1) % t->cols;
}

static void tableLine(const table *t, FILE *f, char *const *cells,
                      const size_t *width) {
    fprintf(f, "%*s", t->indent, "");
    for (int c = 0; c < t->cols; c++) {
        bool last = c == t->cols - 1;
        if (t->align[c] == '>')
            fprintf(f, "%*s", (int)width[c], cells[c]);
        else if (last)
            fputs(cells[c], f);
        else
            fprintf(f, "%-*s", (int)width[c], cells[c]);
        if (!last)
            fputs("  ", f);
    }
    fputc('\n', f);
}

void tablePrint(const table *t, FILE *f) {
    size_t width[TABLE_MAX_COLS] = {0};
    for (int c = 0; c < t->cols; c++)
        width[c] = t->header ? strlen(t->head[c]) : 0;
    for (size_t r = 0; r < t->rows; r++)
        for (int c = 0; c < t->cols; c++) {
            const char *s = t->cells[r * (size_t)t->cols + (size_t)c];
            size_t n = s ? strlen(s) : 0;
            if (n > width[c])
                width[c] = n;
        }
    if (t->header)
        tableLine(t, f, t->head, width);
    for (size_t r = 0; r < t->rows; r++) {
        char *row[TABLE_MAX_COLS];
        for (int c = 0; c < t->cols; c++) {
            char *s = t->cells[r * (size_t)t->cols + (size_t)c];
            row[c] = s ? s : "";
        }
        tableLine(t, f, row, width);
    }
}

void tableFree(table *t) {
    for (size_t i = 0; i < t->rows * (size_t)t->cols; i++)
        free(t->cells[i]);
    free(t->cells);
    for (int c = 0; c < t->cols; c++)
        free(t->head[c]);
    memset(t, 0, sizeof *t);
}

/* ---- parsing ------------------------------------------------------------ */

/* Leading decimal digits of S into *V; returns the rest, NULL on overflow
 * or when there is no digit. */
static const char *digits(const char *s, uint64_t *v) {
    uint64_t n = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (n > (UINT64_MAX - d) / 10)
            return NULL;
        n = n * 10 + d;
    }
    if (p == s)
        return NULL;
    *v = n;
    return p;
}

int parseU64(const char *s, uint64_t *out) {
    uint64_t v;
    const char *rest = s ? digits(s, &v) : NULL;
    if (!rest || *rest)
        return -1;
    *out = v;
    return 0;
}

int parseI64(const char *s, int64_t *out) {
    if (!s)
        return -1;
    bool neg = *s == '-';
    if (*s == '-' || *s == '+')
        s++;
    uint64_t v;
    if (parseU64(s, &v) != 0)
        return -1;
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX)
        return -1;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

int parseSize(const char *s, uint64_t *out) {
    uint64_t v;
    const char *rest = s ? digits(s, &v) : NULL;
    if (!rest)
        return -1;
    unsigned shift = 0;
    switch (*rest) {
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    case '\0':
        break;
    default:
        return -1;
    }
    if (shift) {
        rest++;
        if (strcmp(rest, "") != 0 && strcmp(rest, "B") != 0 &&
            strcmp(rest, "b") != 0 && strcmp(rest, "iB") != 0)
            return -1;
    } else if (*rest) {
        return -1;
    }
    if (v == 0 || v > (UINT64_MAX >> shift))
        return -1;
    *out = v << shift;
    return 0;
}

int parseDuration(const char *s, uint64_t *seconds) {
    uint64_t v;
    const char *rest = s ? digits(s, &v) : NULL;
    if (!rest)
        return -1;
    uint64_t unit = 1;
    if (*rest) {
        switch (*rest) {
        case 's':
            unit = 1;
            break;
        case 'm':
            unit = 60;
            break;
        case 'h':
            unit = 3600;
            break;
        case 'd':
            unit = 86400;
            break;
        default:
            return -1;
        }
        if (rest[1])
            return -1;
    }
    if (v > UINT64_MAX / unit)
        return -1;
    *seconds = v * unit;
    return 0;
}

int parseMode(const char *s, uint32_t *out) {
    if (!s || !*s || strlen(s) > 4)
        return -1;
    uint32_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '7')
            return -1;
        v = v * 8 + (uint32_t)(*p - '0');
    }
    if (v > 0777)
        return -1;
    *out = v;
    return 0;
}

/* ---- formatting --------------------------------------------------------- */

const char *fmtBytes(uint64_t v, char *buf) {
    static const char *units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (v < 1024) {
        snprintf(buf, 32, "%" PRIu64 " B", v);
        return buf;
    }
    double d = (double)v / 1024.0;
    int u = 0;
    while (d >= 1024.0 && u < 5) {
        d /= 1024.0;
        u++;
    }
    snprintf(buf, 32, "%.1f %s", d, units[u]);
    return buf;
}

const char *fmtTimeLocal(uint64_t ns, char *buf) {
    if (ns == 0) {
        strcpy(buf, "-");
        return buf;
    }
    time_t t = (time_t)(ns / 1000000000ull);
    struct tm tm;
    if (!localtime_r(&t, &tm) || !strftime(buf, 32, "%Y-%m-%d %H:%M:%S", &tm))
        snprintf(buf, 32, "@%" PRIu64, (uint64_t)(ns / 1000000000u));
    return buf;
}

const char *fmtTimeIso(uint64_t ns, char *buf) {
    buf[0] = '\0';
    if (ns == 0)
        return buf;
    time_t t = (time_t)(ns / 1000000000ull);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm))
        buf[0] = '\0';
    return buf;
}

const char *fmtAge(uint64_t s, char *buf) {
    if (s < 60)
        snprintf(buf, 32, "%" PRIu64 "s", s);
    else if (s < 3600)
        snprintf(buf, 32, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, 32, "%" PRIu64 "h%02" PRIu64 "m", s / 3600,
                 s % 3600 / 60);
    else
        snprintf(buf, 32, "%" PRIu64 "d%02" PRIu64 "h", s / 86400,
                 s % 86400 / 3600);
    return buf;
}

void escapeBytes(const void *p, size_t n, char *out, size_t outLen) {
    const unsigned char *b = p;
    size_t o = 0;
    if (outLen == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        char tmp[8];
        unsigned char c = b[i];
        if (c == '\\' || c == '"')
            snprintf(tmp, sizeof tmp, "\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            snprintf(tmp, sizeof tmp, "\\x%02x", c);
        else
            snprintf(tmp, sizeof tmp, "%c", c);
        size_t len = strlen(tmp);
        if (o + len + 4 > outLen) {
            /* Keep room for "..." so a cut is visible. */
            if (o + 4 <= outLen) {
                memcpy(out + o, "...", 3);
                o += 3;
            }
            break;
        }
        memcpy(out + o, tmp, len);
        o += len;
    }
    out[o] = '\0';
}
