/* dkshmTool.c — dkshm-tool: inspect, watch, check, reap, dump, create and
 * remove dkshm segments from the shell (man/dkshm-tool.1).
 *
 *   dkshm-tool list | info | top | check | reap | dump | create | rm ...
 *   dkshm-tool get | set | del | incr ...   (with containers/multidict)
 *
 * READ-ONLY. The reading commands (list, info, top, check, dump, get and
 * reap --dry-run) attach with DKSHM_RDONLY: the segment is mapped PROT_READ
 * and the tool cannot write a byte of it, so it takes no lock either. What it
 * reads may be changing under it: it reads the directory through its
 * seqlock, copies the tables before checking them, and repeats a check
 * that found problems while the part they are in was changing (the
 * allocator has no seqlock: a change is seen as a change of a hash of its
 * metadata). Containers are opened read-only through their own API and
 * check themselves optimistically; the ownership check (every allocation
 * owned by exactly one container, name or in-flight list) is believed only
 * from an attempt during which nothing moved: the allocator, the tables,
 * the containers' statistics and the processes' operation counters.
 *
 * CHANGES. reap attaches read-write only when there is something to reap
 * (a dead process, or an OSRegulate's permits that dead holders keep);
 * set, del and incr attach read-write; create and rm make and remove
 * segments. Everything else goes through the library's API.
 *
 * UNTRUSTED INPUT. Everything read from a segment may be damaged or
 * hostile. Attaching validates the header; the tool bounds every offset it
 * follows itself and escapes every byte it prints. A file truncated while
 * mapped raises SIGBUS on the next access: the work on each segment runs
 * under a SIGBUS guard (sigsetjmp) that turns it into exit status 3 (or a
 * skipped segment for list and reap). Output is rendered only after the
 * data is gathered, so a fault never leaves half a JSON document.
 *
 * EXIT STATUS, for every command: 0 success; 1 check found problems, or
 * reap found (with --dry-run) or left something to do; 2 usage error; 3 the
 * segment cannot be opened or created, or the operation failed on it; 4 the
 * object or key was not found.
 *
 * The tool links the library's internal convenience build: it reads the
 * segment layout (segmentInternal.h) for check, info and reap, and the
 * allocator's lock state and allocations (memboundInternal.h).
 */
#include "config.h"

#include "membound.h"
#include "memboundInternal.h"
#include "segmentInternal.h"
#include "seqlock.h"
#include "toolUtil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

/* The containers: their figures in info, their checks and ownership walks
 * in check (the ...Internal.h headers), their contents in dump, and the
 * multidict commands (get, set, del, incr). */
#include "OSRegulate.h"
#include "multiarray.h"
#include "multiarrayInternal.h"
#include "multidict.h"
#include "multidictInternal.h"
#include "multilist.h"
#include "multilistInternal.h"
#include "multimap.h"
#include "multimapInternal.h"
#define HAVE_MULTIDICT 1

#define SHM_DIR "/dev/shm"

enum {
    EXIT_OK = 0,
    EXIT_PROBLEMS = 1,
    EXIT_USAGE = 2,
    EXIT_OPEN = 3,
    EXIT_NOTFOUND = 4,
};

/* Container types known by name (dkshm's own types are below
 * DKSHM_TYPE_USER). */
static const char *const typeNames[] = {
    NULL, "multidict", "multimap", "multilist", "multiarray", "OSRegulate",
};
#define KNOWN_TYPES (sizeof typeNames / sizeof typeNames[0])

static const char *progName = "dkshm-tool";

/* ---- the SIGBUS guard --------------------------------------------------- */

/* A segment file truncated (or a tmpfs that ran out of pages) while mapped
 * raises SIGBUS on access. Work on a segment runs inside guarded(): the
 * handler jumps back out and the segment is reported as unreadable. The
 * fault may have hit inside memboundForSegment with the library's handle
 * table lock held: from then on the allocator is not used again and no
 * handle is detached (detaching takes that lock); the process exits
 * without running exit handlers. */
static sigjmp_buf faultJump;
static volatile sig_atomic_t faultArmed;
static bool allocatorPoisoned;

/* Temporary buffers of the guarded work: a fault jumps over their frees,
 * so they are registered here and freed after one. */
static void **scratch;
static size_t nScratch, capScratch;

static void scratchTrack(void *p) {
    if (nScratch == capScratch) {
        size_t cap = capScratch ? 2 * capScratch : 16;
        void **v = realloc(scratch, cap * sizeof *v);
        if (!v) {
            fputs("dkshm-tool: out of memory\n", stderr);
            exit(3);
        }
        scratch = v;
        capScratch = cap;
    }
    scratch[nScratch++] = p;
}

static void scratchForget(void *p) {
    for (size_t i = nScratch; i-- > 0;)
        if (scratch[i] == p) {
            scratch[i] = scratch[--nScratch];
            return;
        }
}

static void *scratchCalloc(size_t n, size_t size) {
    void *p = xcalloc(n, size);
    scratchTrack(p);
    return p;
}

/* realloc for a scratch buffer (P NULL or from scratchCalloc/Realloc);
 * NULL (P still valid) on failure. */
static void *scratchRealloc(void *p, size_t size) {
    if (p)
        scratchForget(p);
    void *q = realloc(p, size ? size : 1);
    scratchTrack(q ? q : p);
    return q;
}

static void scratchFree(void *p) {
    if (!p)
        return;
    scratchForget(p);
    free(p);
}

static void scratchFreeAll(void) {
    for (size_t i = 0; i < nScratch; i++)
        free(scratch[i]);
    nScratch = 0;
}

static void onFault(int sig) {
    if (faultArmed) {
        faultArmed = 0;
        siglongjmp(faultJump, sig);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void installFaultHandler(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = onFault;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}

/* Run FN(CTX); false if it faulted. */
static bool guarded(void (*fn)(void *), void *ctx) {
    if (sigsetjmp(faultJump, 1) != 0) {
        faultArmed = 0;
        /* The fault may have hit inside the library with a lock of its
         * own held (the allocator's handle table): stay away from it. */
        allocatorPoisoned = true;
        scratchFreeAll();
        return false;
    }
    faultArmed = 1;
    fn(ctx);
    faultArmed = 0;
    return true;
}

typedef struct attachCtx {
    const char *name;
    uint32_t flags;
    dkshm *s;
    int rc;
} attachCtx;

static void attachFn(void *ctx) {
    attachCtx *a = ctx;
    a->rc = dkshmAttach(a->name, a->flags, &a->s);
}

/* dkshmAttach under the guard (a read-write attach writes the process
 * table). CORRUPT with *FAULTED if the segment faulted; BUSY for a
 * read-write attach after a fault (the library may hold a lock). */
static int attachGuarded(const char *name, uint32_t flags, dkshm **out,
                         bool *faulted) {
    *faulted = false;
    *out = NULL;
    if (!(flags & DKSHM_RDONLY) && allocatorPoisoned)
        return DKSHM_BUSY;
    attachCtx a = {.name = name, .flags = flags};
    if (!guarded(attachFn, &a)) {
        *faulted = true;
        return DKSHM_CORRUPT;
    }
    *out = a.s;
    return a.rc;
}

static void detachFn(void *ctx) {
    dkshmDetach(ctx);
}

/* Detach (under the guard: a read-write handle clears its table slot),
 * unless a fault may have left a lock of the library held (detaching takes
 * it): then handles are left to the process's exit. */
static void detachAfter(dkshm *s) {
    if (!s || allocatorPoisoned)
        return;
    guarded(detachFn, s);
}

/* The allocator of S, or NULL (errno set) if it has none, is damaged, or
 * cannot be used any more in this process. */
static membound *allocatorOf(dkshm *s) {
    if (allocatorPoisoned) {
        errno = EAGAIN;
        return NULL;
    }
    if (__atomic_load_n(&s->hdr->allocRoot, __ATOMIC_ACQUIRE) == 0) {
        errno = ENOENT;
        return NULL;
    }
    return memboundForSegment(s);
}

static const char *allocatorError(int e) {
    switch (e) {
    case ENOENT:
        return "not set up yet";
    case EPROTO:
        return "of another allocator version";
    case EIO:
        return "damaged";
    case EAGAIN:
        return "not read (an earlier segment changed under the tool)";
    default:
        return strerror(e);
    }
}

static const char *faultText =
    "segment changed while being read (truncated or out of memory)";

/* ---- arguments ---------------------------------------------------------- */

typedef struct optSpec {
    const char *name; /* without the leading "--" */
    bool hasArg;
} optSpec;

#define MAX_POS 8
#define MAX_OPTS 12

typedef struct args { /* per process */
    const char *pos[MAX_POS];
    int npos;
    const char *val[MAX_OPTS];
    bool set[MAX_OPTS];
    bool help;
} args;

typedef struct command {
    const char *name;
    int (*run)(const struct command *c, int argc, char **argv);
    const char *usage;   /* after "dkshm-tool NAME " */
    const char *summary; /* one line */
    const char *help;    /* the options, one per line */
} command;

static void usageHint(const command *c) {
    fprintf(stderr, "usage: %s %s %s\n", progName, c->name, c->usage);
    fprintf(stderr, "Try '%s %s --help'.\n", progName, c->name);
}

static void printHelp(const command *c) {
    printf("usage: %s %s %s\n\n%s\n", progName, c->name, c->usage, c->summary);
    if (c->help && *c->help)
        printf("\n%s", c->help);
}

static bool isNumber(const char *s) {
    if (*s == '-' || *s == '+')
        s++;
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* Split ARGV (argv[0] is the command) into positionals and options of
 * SPECS. Options may come anywhere; "--" ends them; "-5" is a positional
 * (a negative delta). Returns -1 to go on, or an exit status: 0 after
 * printing --help, EXIT_USAGE after a message. */
static int parseArgs(const command *c, int argc, char **argv,
                     const optSpec *specs, int nspecs, int minPos, int maxPos,
                     args *a) {
    memset(a, 0, sizeof *a);
    bool optsDone = false;
    for (int i = 1; i < argc; i++) {
        const char *w = argv[i];
        if (!optsDone && strcmp(w, "--") == 0) {
            optsDone = true;
            continue;
        }
        if (!optsDone && (strcmp(w, "--help") == 0 || strcmp(w, "-h") == 0)) {
            a->help = true;
            continue;
        }
        if (!optsDone && w[0] == '-' && w[1] != '\0' && !isNumber(w)) {
            if (w[1] != '-') {
                fprintf(stderr, "%s %s: unknown option '%s'\n", progName,
                        c->name, w);
                usageHint(c);
                return EXIT_USAGE;
            }
            const char *name = w + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            int k = 0;
            for (; k < nspecs; k++)
                if (strlen(specs[k].name) == len &&
                    strncmp(specs[k].name, name, len) == 0)
                    break;
            if (k == nspecs) {
                fprintf(stderr, "%s %s: unknown option '--%.*s'\n", progName,
                        c->name, (int)len, name);
                usageHint(c);
                return EXIT_USAGE;
            }
            if (specs[k].hasArg) {
                if (eq)
                    a->val[k] = eq + 1;
                else if (i + 1 < argc)
                    a->val[k] = argv[++i];
                else {
                    fprintf(stderr, "%s %s: option '--%s' needs a value\n",
                            progName, c->name, specs[k].name);
                    usageHint(c);
                    return EXIT_USAGE;
                }
            } else if (eq) {
                fprintf(stderr, "%s %s: option '--%s' takes no value\n",
                        progName, c->name, specs[k].name);
                usageHint(c);
                return EXIT_USAGE;
            }
            a->set[k] = true;
            continue;
        }
        if (a->npos >= MAX_POS || a->npos >= maxPos) {
            fprintf(stderr, "%s %s: unexpected argument '%s'\n", progName,
                    c->name, w);
            usageHint(c);
            return EXIT_USAGE;
        }
        a->pos[a->npos++] = w;
    }
    if (a->help) {
        printHelp(c);
        return EXIT_OK;
    }
    if (a->npos < minPos) {
        fprintf(stderr, "%s %s: missing argument\n", progName, c->name);
        usageHint(c);
        return EXIT_USAGE;
    }
    return -1;
}

/* "name" or "/name" to "/name" in OUT; EXIT_USAGE (after a message) when
 * it is not a valid segment name. */
static int segmentName(const command *c, const char *in, char *out) {
    size_t n = strlen(in);
    if (n + 2 > DKSHM_NAME_MAX + 1) {
        fprintf(stderr, "%s %s: invalid segment name (too long)\n", progName,
                c->name);
        return EXIT_USAGE;
    }
    snprintf(out, DKSHM_NAME_MAX + 1, "%s%s", in[0] == '/' ? "" : "/", in);
    if (dkshmValidateName(out) != DKSHM_OK) {
        char esc[96];
        escapeBytes(in, strlen(in), esc, sizeof esc);
        fprintf(stderr,
                "%s %s: invalid segment name \"%s\" (want [A-Za-z0-9._-], "
                "at most %d characters)\n",
                progName, c->name, esc, DKSHM_NAME_MAX - 1);
        return EXIT_USAGE;
    }
    return -1;
}

/* ---- opening and diagnosing --------------------------------------------- */

/* Why NAME is not a usable segment, in more words than the error code:
 * reads (never writes) the start of the file. */
static void diagnose(const char *name, int rc, char *why, size_t len) {
    why[0] = '\0';
    if (rc != DKSHM_CORRUPT && rc != DKSHM_VERSION)
        return;
    int fd = shm_open(name, O_RDONLY | O_NONBLOCK, 0);
    if (fd < 0)
        return;
    struct stat st;
    dkHeader h;
    memset(&h, 0, sizeof h);
    ssize_t got = -1;
    bool statted = fstat(fd, &st) == 0;
    if (statted && S_ISREG(st.st_mode) && st.st_size > 0)
        got = pread(fd, &h, sizeof h, 0);
    close(fd);
    if (!statted)
        return;
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, len, "not a regular file");
        return;
    }
    if (st.st_size == 0) {
        snprintf(why, len, "empty file");
        return;
    }
    if (got < 0)
        return;
    if (got < (ssize_t)sizeof h) {
        snprintf(why, len, "file too small for a header (%zd bytes)", got);
        return;
    }
    if (h.magic != DK_MAGIC) {
        snprintf(why, len, "no dkshm magic: not a dkshm segment");
        return;
    }
    if (h.layoutVersion != DK_LAYOUT_VERSION) {
        snprintf(why, len, "layout version %" PRIu32 ", this tool reads %u",
                 h.layoutVersion, DK_LAYOUT_VERSION);
        return;
    }
    if (h.format != DK_FORMAT) {
        snprintf(why, len,
                 "format word 0x%08" PRIx32 ", this build uses 0x%08" PRIx32
                 " (other byte order, word size or lock kind)",
                 h.format, (uint32_t)DK_FORMAT);
        return;
    }
    if (h.initState != DK_INIT_READY) {
        snprintf(why, len,
                 "not initialised (creator pid %" PRIu32 " died during "
                 "creation?)",
                 h.initPid);
        return;
    }
    if (h.checksum != XXH3_64bits(&h, offsetof(dkHeader, checksum))) {
        snprintf(why, len, "header checksum mismatch");
        return;
    }
    if ((uint64_t)st.st_size != h.capacity) {
        snprintf(why, len,
                 "header says %" PRIu64 " bytes, the file has %" PRIu64,
                 h.capacity, (uint64_t)st.st_size);
        return;
    }
    snprintf(why, len, "inconsistent layout in the header");
}

/* One line on stderr: "dkshm-tool CMD: NAME: message: detail". */
static void reportOpenError(const command *c, const char *name, int rc,
                            const char *detail) {
    fprintf(stderr, "%s %s: %s: %s%s%s\n", progName, c->name, name,
            dkshmStrerror(rc), detail && *detail ? ": " : "",
            detail ? detail : "");
}

/* With --json, a failure is a JSON document too. */
static void jsonError(const char *name, int rc, const char *detail,
                      int status) {
    jsonOut j;
    jsonInit(&j, stdout);
    jsonObjOpen(&j, NULL);
    jsonStr(&j, "segment", name);
    jsonStr(&j, "error", dkshmErrName(rc));
    jsonStr(&j, "message", dkshmStrerror(rc));
    if (detail && *detail)
        jsonStr(&j, "detail", detail);
    jsonU64(&j, "exitStatus", (uint64_t)status);
    jsonObjClose(&j);
    jsonEnd(&j);
}

/* Attach NAME; EXIT_OPEN after a one-line reason (and a JSON error with
 * JSON) on failure, -1 on success. */
static int openSegment(const command *c, const char *name, uint32_t flags,
                       bool json, dkshm **out) {
    bool faulted;
    int rc = attachGuarded(name, flags, out, &faulted);
    if (rc == DKSHM_OK)
        return -1;
    char why[192];
    if (faulted)
        snprintf(why, sizeof why, "%s", faultText);
    else
        diagnose(name, rc, why, sizeof why);
    reportOpenError(c, name, rc, why);
    if (json)
        jsonError(name, rc, why, EXIT_OPEN);
    return EXIT_OPEN;
}

/* ---- names of things ---------------------------------------------------- */

static const char *typeName(uint32_t type, char *buf) {
    if (type >= DKSHM_TYPE_USER)
        snprintf(buf, 32, "user(%" PRIu32 ")", type);
    else if (type > 0 && type < KNOWN_TYPES)
        snprintf(buf, 32, "%s", typeNames[type]);
    else
        snprintf(buf, 32, "unknown(%" PRIu32 ")", type);
    return buf;
}

static const char *typeKind(uint32_t type) {
    if (type >= DKSHM_TYPE_USER)
        return "user";
    if (type > 0 && type < KNOWN_TYPES)
        return typeNames[type];
    return "unknown";
}

static const char *stateName(uint32_t state) {
    switch (state) {
    case DKSHM_PROC_FREE:
        return "free";
    case DKSHM_PROC_CLAIMING:
        return "claiming";
    case DKSHM_PROC_LIVE:
        return "live";
    case DKSHM_PROC_DEAD:
        return "dead";
    default:
        return "invalid";
    }
}

static const char *userName(uint32_t uid, char *buf) {
    struct passwd *pw = getpwuid((uid_t)uid);
    if (pw && pw->pw_name)
        escapeBytes(pw->pw_name, strlen(pw->pw_name), buf, 32);
    else
        snprintf(buf, 32, "%" PRIu32, uid);
    return buf;
}

static const char *modeString(uint32_t mode, char *buf) {
    snprintf(buf, 8, "%04o", mode & 07777);
    return buf;
}

static void jsonTime(jsonOut *j, const char *key, const char *nsKey,
                     uint64_t ns) {
    char buf[32];
    if (ns)
        jsonStr(j, key, fmtTimeIso(ns, buf));
    else
        jsonNull(j, key);
    jsonU64(j, nsKey, ns);
}

static void jsonFlags(jsonOut *j, uint32_t flags) {
    jsonArrOpen(j, "flags");
    if (flags & DKSHM_EPHEMERAL)
        jsonStr(j, NULL, "ephemeral");
    if (flags & ~DKSHM_EPHEMERAL)
        jsonU64(j, NULL, flags & ~DKSHM_EPHEMERAL);
    jsonArrClose(j);
}

/* ---- gathering what a segment holds -------------------------------------- */

/* Copy LEN bytes (a multiple of 8, 8-aligned) with word loads. */
static void copyWords(void *dst, const void *src, size_t len) {
    const uint64_t *s = src;
    uint64_t *d = dst;
    for (size_t i = 0; i < len / 8; i++)
        d[i] = __atomic_load_n(&s[i], __ATOMIC_ACQUIRE);
}

/* Apply the undo log U, newest record first, to META, a copy of the first
 * LEN bytes of a segment of SEGSIZE bytes: what the recovery of a dead
 * holder will do, done to the copy. Records outside the copy are skipped.
 * False, with WHY, if the log is damaged (recovery will refuse it). */
static bool undoApply(uint8_t *meta, uint64_t len, uint64_t segSize,
                      const dkUndo *u, char *why, size_t whyLen) {
    uint32_t n = u->count;
    if (n > u->cap) {
        snprintf(why, whyLen,
                 "undo log claims %" PRIu32 " records, capacity %" PRIu32, n,
                 u->cap);
        return false;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint64_t at = u->rec[i].at;
        unsigned width = (unsigned)(at >> 56);
        uint64_t off = at & ((1ull << 56) - 1);
        if ((width != 1 && width != 4 && width != 8) || off == 0 ||
            off >= segSize || width > segSize - off || (off & (width - 1))) {
            snprintf(why, whyLen,
                     "undo record %" PRIu32 " (width %u, offset 0x%" PRIx64
                     ") points outside the segment: recovery will refuse it",
                     i, width, off);
            return false;
        }
    }
    for (uint32_t i = n; i-- > 0;) {
        uint64_t at = u->rec[i].at, old = u->rec[i].old;
        unsigned width = (unsigned)(at >> 56);
        uint64_t off = at & ((1ull << 56) - 1);
        if (off + width > len)
            continue;
        if (width == 1) {
            uint8_t v = (uint8_t)old;
            memcpy(meta + off, &v, 1);
        } else if (width == 4) {
            uint32_t v = (uint32_t)old;
            memcpy(meta + off, &v, 4);
        } else {
            memcpy(meta + off, &old, 8);
        }
    }
    return true;
}

typedef struct procData { /* per process */
    dkshmProcInfo p;
    bool alive; /* LIVE or CLAIMING and the process exists */
    uint64_t held[DK_HELD_MAX];
    uint32_t nheld; /* locks with an undo log it holds (recorded) */
} procData;

typedef struct objData { /* per process */
    dkshmObjectInfo o;
    bool sized; /* the root is a live allocation of this size */
    uint64_t bytes; /* of the root block */
    /* Containers: of opening it and reading its statistics. */
    int statRc;
    bool counted;       /* count and dataBytes are known */
    uint64_t count;     /* entries, items, elements; permits out */
    uint64_t dataBytes; /* bytes of its data, as its statistics count them */
    union {
        multidictStats md;
        multimapStats mm;
        multilistStats ml;
        multiarrayStats ma;
        OSRegulateStats os;
    } st;
    uint32_t lockedShards, deadShards; /* multidict shards locked now */
} objData;

typedef struct lockData { /* per process */
    char name[112];
    dkoff off;
    int rc; /* of the inspection */
    fastMutexState st;
} lockData;

enum { ALLOC_NONE, ALLOC_OK, ALLOC_ERR };

typedef struct segData { /* per process */
    char name[DKSHM_NAME_MAX + 1];
    dkshmInfo info;
    uint32_t pageSize;
    dkoff procTable, directory, allocRoot;
    int alloc; /* ALLOC_... */
    int allocErrno;
    memboundStats ms;
    procData *procs;
    size_t nprocs;
    uint32_t live, dead;
    objData *objs;
    size_t nobjs;
    int objRc;
    bool objWriterDead; /* objRc BUSY because a dead writer left it so */
    lockData *locks;
    int nlocks, capLocks;
} segData;

static void segDataFree(segData *d) {
    free(d->procs);
    free(d->objs);
    free(d->locks);
    memset(d, 0, sizeof *d);
}

static bool procAlive(const dkshmProcInfo *p) {
    if (p->state == DKSHM_PROC_LIVE)
        return p->alive;
    if (p->state == DKSHM_PROC_CLAIMING) /* attaching right now */
        return dkProcAlive(p->pid, 0);
    return false;
}

/* The processes of S (all of them, with the locks each holds). */
static int gatherProcs(dkshm *s, segData *d) {
    uint32_t max = s->hdr->maxProcs;
    size_t n = 0;
    dkshmProcInfo *tmp = scratchCalloc(max, sizeof *tmp);
    int rc = dkshmProcList(s, tmp, max, &n);
    if (rc != DKSHM_OK) {
        scratchFree(tmp);
        return rc;
    }
    if (n > max)
        n = max;
    d->procs = xcalloc(n, sizeof *d->procs);
    d->nprocs = n;
    d->live = d->dead = 0;
    for (size_t i = 0; i < n; i++) {
        procData *p = &d->procs[i];
        p->p = tmp[i];
        p->alive = procAlive(&tmp[i]);
        if (p->alive)
            d->live++;
        else
            d->dead++;
        if (tmp[i].slot < max) {
            const dkProcSlot *slot = dkSlotAt(s, tmp[i].slot);
            for (int k = 0; k < DK_HELD_MAX; k++) {
                uint64_t off =
                    __atomic_load_n(&slot->held[k], __ATOMIC_RELAXED);
                /* An entry may be stale (its holder died between release
                 * and clearing it): only a lock whose word names this
                 * slot is held. */
                if (!off || (off & 7) || !dkRangeOk(s, off, sizeof(fastMutex)))
                    continue;
                const fastMutex *m = dkPtr(s, off);
                uint32_t w =
                    __atomic_load_n(&m->word, __ATOMIC_RELAXED) & DK_ID_MASK;
                if (w && !(w & DK_ID_RAWPID) &&
                    (w & ((1u << DK_ID_SLOT_BITS) - 1)) == tmp[i].slot)
                    p->held[p->nheld++] = off;
            }
        }
    }
    scratchFree(tmp);
    return DKSHM_OK;
}

/* The library's read-only directory readers give up (BUSY) after a short
 * spin while the directory's sequence word is odd. A live writer finishes
 * soon, so they are asked again for up to about a second, unless nobody
 * alive holds the lock a few times in a row. Then either its holder died
 * mid-change (BUSY: only a read-write process can roll it back), or the
 * lock is free: the word was left odd by a writer that died and whose
 * change a reaper rolled back without repairing the word, and the
 * directory is consistent: it is read here directly. */
#define DIR_BUSY_TRIES 200
#define DIR_STUCK_TRIES 3

/* Whether nobody alive holds the directory lock. */
static bool dirNobodyAlive(dkshm *s) {
    fastMutexState st;
    return fastMutexInspect(s, &s->hdr->dirLock, &st) == DKSHM_OK &&
           (!st.held || st.ownerDead);
}

/* The live entries of the directory, read directly from a copy of the
 * tables, while nobody alive holds its lock and neither the lock word nor
 * the sequence word moves. A dead holder's change is rolled back in the
 * copy, as its recovery will do. BUSY when that cannot be had, CORRUPT if
 * the dead holder's undo log is damaged. */
static int listDirect(dkshm *s, dkshmObjectInfo *out, size_t max,
                      size_t *count) {
    const dkHeader *h = s->hdr;
    uint64_t len = h->heap;
    uint32_t n = h->maxObjects;
    if (len < sizeof(dkHeader) || !dkRangeOk(s, 8, len - 8) || len & 7 ||
        h->directory + (uint64_t)n * sizeof(dkDirEntry) > len)
        return DKSHM_CORRUPT;
    if (!dirNobodyAlive(s))
        return DKSHM_BUSY;
    uint32_t seq = __atomic_load_n(&h->dirSeq, __ATOMIC_ACQUIRE);
    uint32_t word = __atomic_load_n(&h->dirLock.word, __ATOMIC_ACQUIRE);
    uint8_t *meta = scratchCalloc(1, len);
    copyWords(meta, s->base, len);
    int rc = DKSHM_OK;
    if (__atomic_load_n(&h->dirLock.word, __ATOMIC_ACQUIRE) != word ||
        __atomic_load_n(&h->dirSeq, __ATOMIC_ACQUIRE) != seq)
        rc = DKSHM_BUSY;
    char why[160];
    const dkHeader *sh = (const dkHeader *)meta;
    if (rc == DKSHM_OK && word != 0 &&
        !undoApply(meta, len, s->size, (const dkUndo *)sh->dirUndo, why,
                   sizeof why))
        rc = DKSHM_CORRUPT;
    size_t found = 0;
    const dkDirEntry *dir = (const dkDirEntry *)(meta + sh->directory);
    for (uint32_t i = 0; rc == DKSHM_OK && i < n; i++) {
        const dkDirEntry *e = &dir[i];
        if (e->type == 0)
            continue;
        if (found < max) {
            dkshmObjectInfo *o = &out[found];
            memcpy(o->name, e->name, sizeof o->name);
            o->name[DKSHM_OBJNAME_MAX] = '\0';
            o->type = e->type;
            o->root = e->root;
            o->createTimeNs = e->createTimeNs;
        }
        found++;
    }
    scratchFree(meta);
    if (rc == DKSHM_OK)
        *count = found;
    return rc;
}

static int listObjects(dkshm *s, dkshmObjectInfo *out, size_t max,
                       size_t *count) {
    int rc = DKSHM_BUSY, stuck = 0;
    for (int i = 0; i < DIR_BUSY_TRIES && rc == DKSHM_BUSY; i++) {
        rc = dkshmObjectList(s, out, max, count);
        if (rc != DKSHM_BUSY)
            break;
        stuck = dirNobodyAlive(s) ? stuck + 1 : 0;
        if (stuck >= DIR_STUCK_TRIES) {
            rc = listDirect(s, out, max, count);
            if (rc != DKSHM_BUSY || dirNobodyAlive(s))
                break;
        }
        usleep(i < 10 ? 100 : 5000);
    }
    return rc;
}

static int findObject(dkshm *s, const char *name, uint32_t *type, dkoff *root) {
    int rc = DKSHM_BUSY, stuck = 0;
    for (int i = 0; i < DIR_BUSY_TRIES && rc == DKSHM_BUSY; i++) {
        rc = dkshmObjectFind(s, name, type, root);
        if (rc != DKSHM_BUSY)
            break;
        stuck = dirNobodyAlive(s) ? stuck + 1 : 0;
        if (stuck < DIR_STUCK_TRIES) {
            usleep(i < 10 ? 100 : 5000);
            continue;
        }
        size_t max = s->hdr->maxObjects, n = 0;
        dkshmObjectInfo *all = scratchCalloc(max, sizeof *all);
        rc = listDirect(s, all, max, &n);
        if (rc == DKSHM_OK) {
            rc = DKSHM_NOTFOUND;
            for (size_t k = 0; k < n && k < max; k++)
                if (strcmp(all[k].name, name) == 0) {
                    *type = all[k].type;
                    *root = all[k].root;
                    rc = DKSHM_OK;
                    break;
                }
        }
        scratchFree(all);
        if (rc != DKSHM_BUSY || dirNobodyAlive(s))
            break;
        usleep(5000);
    }
    return rc;
}

#ifdef HAVE_MULTIDICT
/* multidictOpen, retried like the directory readers while it says BUSY. */
static int openDict(dkshm *s, const char *name, uint32_t flags,
                    multidict **out) {
    int rc = DKSHM_BUSY, stuck = 0;
    for (int i = 0; i < DIR_BUSY_TRIES && rc == DKSHM_BUSY; i++) {
        rc = multidictOpen(s, name, NULL, flags, out);
        if (rc != DKSHM_BUSY)
            break;
        stuck = dirNobodyAlive(s) ? stuck + 1 : 0;
        if (stuck >= DIR_STUCK_TRIES)
            break;
        usleep(i < 10 ? 100 : 5000);
    }
    return rc;
}
#endif

/* ---- containers, opened read-only --------------------------------------- */

static bool isContainer(uint32_t type) {
    return type >= MULTIDICT_TYPE && type <= OSREGULATE_TYPE;
}

typedef struct contHandle { /* per process: a container of any type */
    uint32_t type;
    union {
        multidict *md;
        multimap *mm;
        multilist *ml;
        multiarray *ma;
        OSRegulate *os;
    } h;
} contHandle;

static int contOpenOnce(dkshm *s, const char *name, contHandle *c) {
    multiarrayOptions ao = {0};
    switch (c->type) {
    case MULTIDICT_TYPE:
        return multidictOpen(s, name, NULL, 0, &c->h.md);
    case MULTIMAP_TYPE:
        return multimapOpen(s, name, NULL, 0, &c->h.mm);
    case MULTILIST_TYPE:
        return multilistOpen(s, name, NULL, 0, &c->h.ml);
    case MULTIARRAY_TYPE:
        return multiarrayOpen(s, name, &ao, 0, &c->h.ma);
    case OSREGULATE_TYPE:
        return OSRegulateOpen(s, name, NULL, 0, &c->h.os);
    default:
        return DKSHM_TYPE;
    }
}

/* Open the container NAME of type TYPE (no creation), retried while the
 * directory is busy, like the directory readers. */
static int contOpen(dkshm *s, const char *name, uint32_t type,
                    contHandle *c) {
    memset(c, 0, sizeof *c);
    c->type = type;
    int rc = DKSHM_BUSY, stuck = 0;
    for (int i = 0; i < DIR_BUSY_TRIES && rc == DKSHM_BUSY; i++) {
        rc = contOpenOnce(s, name, c);
        if (rc != DKSHM_BUSY)
            break;
        stuck = dirNobodyAlive(s) ? stuck + 1 : 0;
        if (stuck >= DIR_STUCK_TRIES)
            break;
        usleep(i < 10 ? 100 : 5000);
    }
    return rc;
}

static void contClose(contHandle *c) {
    switch (c->type) {
    case MULTIDICT_TYPE:
        multidictClose(c->h.md);
        break;
    case MULTIMAP_TYPE:
        multimapClose(c->h.mm);
        break;
    case MULTILIST_TYPE:
        multilistClose(c->h.ml);
        break;
    case MULTIARRAY_TYPE:
        multiarrayClose(c->h.ma);
        break;
    case OSREGULATE_TYPE:
        OSRegulateClose(c->h.os);
        break;
    default:
        break;
    }
    memset(c, 0, sizeof *c);
}

/* The statistics of container O (count, bytes and the per-type figures). */
static void containerFigures(dkshm *s, objData *o) {
    contHandle c;
    o->statRc = contOpen(s, o->o.name, o->o.type, &c);
    if (o->statRc != DKSHM_OK)
        return;
    switch (o->o.type) {
    case MULTIDICT_TYPE:
        o->statRc = multidictGetStats(c.h.md, &o->st.md);
        if (o->statRc != DKSHM_OK)
            break;
        o->count = o->st.md.count;
        o->dataBytes = o->st.md.bytes + o->st.md.tableBytes;
        for (uint32_t i = 0; i < o->st.md.shards; i++) {
            multidictShardStats sh;
            if (multidictGetShardStats(c.h.md, i, &sh) != DKSHM_OK)
                break;
            o->lockedShards += sh.locked;
            o->deadShards += sh.locked && sh.ownerDead;
        }
        break;
    case MULTIMAP_TYPE:
        o->statRc = multimapGetStats(c.h.mm, &o->st.mm);
        o->count = o->st.mm.count;
        o->dataBytes =
            o->st.mm.nodeBytes + o->st.mm.entryBytes + o->st.mm.keyBytes;
        break;
    case MULTILIST_TYPE:
        o->statRc = multilistGetStats(c.h.ml, &o->st.ml);
        o->count = o->st.ml.count;
        o->dataBytes = o->st.ml.bytes;
        break;
    case MULTIARRAY_TYPE:
        o->statRc = multiarrayGetStats(c.h.ma, &o->st.ma);
        o->count = o->st.ma.count;
        o->dataBytes = o->st.ma.blockBytes;
        break;
    default:
        o->statRc = OSRegulateGetStats(c.h.os, &o->st.os);
        o->count = o->st.os.held;
        o->dataBytes = o->bytes;
        break;
    }
    o->counted = o->statRc == DKSHM_OK;
    contClose(&c);
}

/* The directory of S; *RC gets BUSY when a dead writer left it mid-change
 * (a read-only reader cannot recover it). */
static void gatherObjects(dkshm *s, segData *d, membound *m) {
    size_t max = s->hdr->maxObjects, n = 0;
    objData *objs = NULL;
    dkshmObjectInfo *tmp = scratchCalloc(max, sizeof *tmp);
    d->objRc = listObjects(s, tmp, max, &n);
    d->objWriterDead = d->objRc == DKSHM_BUSY && dirNobodyAlive(s);
    if (d->objRc == DKSHM_OK) {
        if (n > max)
            n = max;
        objs = xcalloc(n, sizeof *objs);
        for (size_t i = 0; i < n; i++) {
            objs[i].o = tmp[i];
            size_t sz = 0;
            if (m && memboundUsableSize(m, tmp[i].root, &sz) == DKSHM_OK) {
                objs[i].sized = true;
                objs[i].bytes = sz;
            }
            if (isContainer(tmp[i].type))
                containerFigures(s, &objs[i]);
        }
    } else {
        n = 0;
    }
    scratchFree(tmp);
    d->objs = objs;
    d->nobjs = n;
}

static lockData *addLock(segData *d, const char *name, dkoff off) {
    if (d->nlocks == d->capLocks) {
        int cap = d->capLocks ? 2 * d->capLocks : 8;
        lockData *v = realloc(d->locks, (size_t)cap * sizeof *v);
        if (!v) {
            fputs("dkshm-tool: out of memory\n", stderr);
            exit(EXIT_OPEN);
        }
        d->locks = v;
        d->capLocks = cap;
    }
    lockData *l = &d->locks[d->nlocks++];
    memset(l, 0, sizeof *l);
    snprintf(l->name, sizeof l->name, "%s", name);
    l->off = off;
    return l;
}

/* The object whose root block holds offset OFF (where containers keep
 * their locks), or NULL. */
static const objData *objectAt(const segData *d, dkoff off) {
    for (size_t i = 0; i < d->nobjs; i++) {
        const objData *o = &d->objs[i];
        if (o->sized && off >= o->o.root && off - o->o.root < o->bytes)
            return o;
    }
    return NULL;
}

static void gatherLocks(dkshm *s, segData *d, membound *m) {
    d->nlocks = 0;
    lockData *l = addLock(d, "directory", offsetof(dkHeader, dirLock));
    l->rc = fastMutexInspect(s, &s->hdr->dirLock, &l->st);
    l = addLock(d, "allocator-init", offsetof(dkHeader, initLock));
    l->rc = fastMutexInspect(s, &s->hdr->initLock, &l->st);
    if (m) {
        /* The lock is the control block's first word. */
        l = addLock(d, "allocator", d->allocRoot);
        l->rc = memboundLockState(m, &l->st);
    }
    /* Every other lock (with an undo log) that a dead process holds: the
     * locks of containers, named after the object whose root holds them. */
    for (size_t i = 0; i < d->nprocs; i++) {
        const procData *p = &d->procs[i];
        if (p->alive)
            continue;
        for (uint32_t k = 0; k < p->nheld; k++) {
            dkoff off = p->held[k];
            bool seen = false;
            for (int j = 0; j < d->nlocks && !seen; j++)
                seen = d->locks[j].off == off;
            if (seen || !dkRangeOk(s, off, sizeof(fastMutex)))
                continue;
            const objData *o = objectAt(d, off);
            char name[112], esc[96];
            if (o) {
                escapeBytes(o->o.name, strlen(o->o.name), esc, sizeof esc);
                snprintf(name, sizeof name, "%s \"%s\" +0x%" PRIx64,
                         typeKind(o->o.type), esc, off - o->o.root);
            } else {
                snprintf(name, sizeof name, "lock@0x%" PRIx64, off);
            }
            l = addLock(d, name, off);
            l->rc = fastMutexInspect(s, dkPtr(s, off), &l->st);
        }
    }
}

/* What a lock at OFF is called, for the process lists. */
static const char *lockName(const segData *d, dkoff off, char *buf) {
    for (int i = 0; i < d->nlocks; i++)
        if (d->locks[i].off == off)
            return d->locks[i].name;
    snprintf(buf, 32, "lock@0x%" PRIx64, off);
    return buf;
}

enum { GATHER_LIST = 0, GATHER_FULL = 1 };

typedef struct gatherCtx {
    dkshm *s;
    segData *d;
    int what;
    int rc;
} gatherCtx;

static void gatherFn(void *ctx) {
    gatherCtx *g = ctx;
    dkshm *s = g->s;
    segData *d = g->d;
    snprintf(d->name, sizeof d->name, "%s", dkshmName(s));
    g->rc = dkshmGetInfo(s, &d->info);
    if (g->rc != DKSHM_OK)
        return;
    d->pageSize = s->hdr->pageSize;
    d->procTable = s->hdr->procTable;
    d->directory = s->hdr->directory;
    d->allocRoot = __atomic_load_n(&s->hdr->allocRoot, __ATOMIC_ACQUIRE);
    membound *m = allocatorOf(s);
    if (m) {
        int rc = memboundGetStats(m, &d->ms);
        d->alloc = rc == DKSHM_OK ? ALLOC_OK : ALLOC_ERR;
        d->allocErrno = EIO;
    } else {
        d->alloc = errno == ENOENT ? ALLOC_NONE : ALLOC_ERR;
        d->allocErrno = errno;
    }
    g->rc = gatherProcs(s, d);
    if (g->rc != DKSHM_OK || g->what == GATHER_LIST)
        return;
    gatherObjects(s, d, m);
    gatherLocks(s, d, m);
}

/* Fill D from S under the fault guard. DKSHM_OK, an error of the library,
 * or DKSHM_CORRUPT if the segment faulted under us (*FAULTED). */
static int gather(dkshm *s, segData *d, int what, bool *faulted) {
    gatherCtx g = {.s = s, .d = d, .what = what, .rc = DKSHM_OK};
    *faulted = !guarded(gatherFn, &g);
    return *faulted ? DKSHM_CORRUPT : g.rc;
}

/* ---- list ---------------------------------------------------------------- */

typedef struct skipped { /* per process */
    char *name;
    char *reason;
    const char *code;
} skipped;

static int compareNames(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names of every entry of /dev/shm, sorted. */
static char **shmEntries(size_t *count) {
    size_t n = 0, cap = 16;
    char **v = xcalloc(cap, sizeof *v);
    DIR *dir = opendir(SHM_DIR);
    if (dir) {
        struct dirent *e;
        while ((e = readdir(dir)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            if (n == cap) {
                cap *= 2;
                char **t = realloc(v, cap * sizeof *v);
                if (!t) {
                    free(v);
                    v = NULL;
                    break;
                }
                v = t;
            }
            v[n++] = xstrdup(e->d_name);
        }
        closedir(dir);
    }
    if (!v) {
        fputs("dkshm-tool: out of memory\n", stderr);
        exit(EXIT_OPEN);
    }
    qsort(v, n, sizeof *v, compareNames);
    *count = n;
    return v;
}

/* Whether /dev/shm/ENTRY may be a segment; otherwise why not, in WHY. */
static bool candidate(const char *entry, char *name, char *why, size_t len) {
    struct stat st;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", SHM_DIR, entry);
    if (lstat(path, &st) != 0) {
        snprintf(why, len, "%s", strerror(errno));
        return false;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(why, len, "not a regular file");
        return false;
    }
    if (strlen(entry) + 1 > DKSHM_NAME_MAX) {
        snprintf(why, len, "name too long for a dkshm segment");
        return false;
    }
    snprintf(name, DKSHM_NAME_MAX + 1, "/%s", entry);
    if (dkshmValidateName(name) != DKSHM_OK) {
        snprintf(why, len, "not a valid dkshm segment name");
        return false;
    }
    return true;
}

static void addSkipped(skipped **v, size_t *n, const char *name,
                       const char *code, const char *reason) {
    *v = realloc(*v, (*n + 1) * sizeof **v);
    if (!*v) {
        fputs("dkshm-tool: out of memory\n", stderr);
        exit(EXIT_OPEN);
    }
    (*v)[*n].name = xstrdup(name);
    (*v)[*n].reason = xstrdup(reason);
    (*v)[*n].code = code;
    (*n)++;
}

/* Attach the candidate NAME read-only and gather D (GATHER_LIST or FULL);
 * false with CODE and WHY when it is not a usable segment. */
static bool scanSegment(const char *name, int what, segData *d,
                        const char **code, char *why, size_t len) {
    dkshm *s;
    bool faulted;
    int rc = attachGuarded(name, DKSHM_RDONLY, &s, &faulted);
    if (rc != DKSHM_OK) {
        char detail[192];
        if (faulted)
            snprintf(detail, sizeof detail, "%s", faultText);
        else
            diagnose(name, rc, detail, sizeof detail);
        snprintf(why, len, "%s%s%s", dkshmStrerror(rc), *detail ? ": " : "",
                 detail);
        *code = dkshmErrName(rc);
        return false;
    }
    rc = gather(s, d, what, &faulted);
    detachAfter(s);
    if (rc != DKSHM_OK) {
        snprintf(why, len, "%s", faulted ? faultText : dkshmStrerror(rc));
        *code = dkshmErrName(rc);
        segDataFree(d);
        return false;
    }
    return true;
}

static int cmdList(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"json", false}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 1, 0, 0, &a);
    if (st >= 0)
        return st;
    bool json = a.set[0];
    size_t nent;
    char **ent = shmEntries(&nent);
    segData *segs = xcalloc(nent, sizeof *segs);
    size_t nseg = 0, nskip = 0;
    skipped *skip = NULL;
    for (size_t i = 0; i < nent; i++) {
        char name[DKSHM_NAME_MAX + 1], why[256];
        const char *code = "NOTSEGMENT";
        if (!candidate(ent[i], name, why, sizeof why)) {
            char full[300];
            snprintf(full, sizeof full, "%s/%s", SHM_DIR, ent[i]);
            addSkipped(&skip, &nskip, full, code, why);
            continue;
        }
        if (scanSegment(name, GATHER_LIST, &segs[nseg], &code, why,
                        sizeof why)) {
            nseg++;
        } else {
            char full[300];
            snprintf(full, sizeof full, "%s/%s", SHM_DIR, ent[i]);
            addSkipped(&skip, &nskip, full, code, why);
        }
    }
    if (json) {
        jsonOut j;
        jsonInit(&j, stdout);
        jsonObjOpen(&j, NULL);
        jsonArrOpen(&j, "segments");
        for (size_t i = 0; i < nseg; i++) {
            const segData *d = &segs[i];
            char buf[32];
            jsonObjOpen(&j, NULL);
            jsonStr(&j, "name", d->name);
            jsonU64(&j, "capacity", d->info.capacity);
            jsonU64(&j, "residentBytes", d->info.residentBytes);
            jsonU64(&j, "usedBytes", d->alloc == ALLOC_OK ? d->ms.used : 0);
            jsonU64(&j, "allocations",
                    d->alloc == ALLOC_OK ? d->ms.allocations : 0);
            jsonStr(&j, "allocator",
                    d->alloc == ALLOC_OK ? "ok"
                                         : allocatorError(d->allocErrno));
            jsonU64(&j, "liveProcesses", d->live);
            jsonU64(&j, "deadProcesses", d->dead);
            jsonU64(&j, "objects", d->info.objects);
            jsonU64(&j, "ownerUid", d->info.fileUid);
            jsonStr(&j, "owner", userName(d->info.fileUid, buf));
            jsonStr(&j, "mode", modeString(d->info.fileMode, buf));
            jsonTime(&j, "created", "createdNs", d->info.createTimeNs);
            jsonFlags(&j, d->info.flags);
            jsonObjClose(&j);
        }
        jsonArrClose(&j);
        jsonU64(&j, "skippedCount", nskip);
        jsonArrOpen(&j, "skipped");
        for (size_t i = 0; i < nskip; i++) {
            jsonObjOpen(&j, NULL);
            jsonStr(&j, "name", skip[i].name);
            jsonStr(&j, "error", skip[i].code);
            jsonStr(&j, "reason", skip[i].reason);
            jsonObjClose(&j);
        }
        jsonArrClose(&j);
        jsonObjClose(&j);
        jsonEnd(&j);
    } else {
        table t;
        tableInit(&t, 0,
                  "<NAME >CAPACITY >RESIDENT >USED >LIVE >DEAD <OWNER "
                  "<MODE <CREATED <FLAGS");
        for (size_t i = 0; i < nseg; i++) {
            const segData *d = &segs[i];
            char b1[32], b2[32], b3[32], b4[32];
            tableCell(&t, "%s", d->name);
            tableCell(&t, "%s", fmtBytes(d->info.capacity, b1));
            tableCell(&t, "%s", fmtBytes(d->info.residentBytes, b2));
            if (d->alloc == ALLOC_OK)
                tableCell(&t, "%s", fmtBytes(d->ms.used, b3));
            else
                tableCell(&t, "%s", d->alloc == ALLOC_NONE ? "0 B" : "?");
            tableCell(&t, "%" PRIu32, d->live);
            tableCell(&t, "%" PRIu32, d->dead);
            tableCell(&t, "%s", userName(d->info.fileUid, b4));
            tableCell(&t, "%s", modeString(d->info.fileMode, b1));
            tableCell(&t, "%s", fmtTimeLocal(d->info.createTimeNs, b2));
            tableCell(&t, "%s",
                      (d->info.flags & DKSHM_EPHEMERAL) ? "ephemeral" : "-");
        }
        if (nseg)
            tablePrint(&t, stdout);
        tableFree(&t);
        printf("%zu segment%s", nseg, nseg == 1 ? "" : "s");
        if (nskip)
            printf(", %zu other file%s in %s skipped", nskip,
                   nskip == 1 ? "" : "s", SHM_DIR);
        printf("\n");
        for (size_t i = 0; i < nskip; i++)
            printf("  skipped %s: %s\n", skip[i].name, skip[i].reason);
    }
    for (size_t i = 0; i < nseg; i++)
        segDataFree(&segs[i]);
    free(segs);
    for (size_t i = 0; i < nskip; i++) {
        free(skip[i].name);
        free(skip[i].reason);
    }
    free(skip);
    for (size_t i = 0; i < nent; i++)
        free(ent[i]);
    free(ent);
    return EXIT_OK;
}

/* ---- info ---------------------------------------------------------------- */

static void formatWord(uint32_t f, char *buf, size_t len) {
    unsigned order = f & 0xff, word = (f >> 8) & 0xff, kind = (f >> 16) & 0xff,
             lock = f >> 24;
    snprintf(buf, len,
             "0x%08" PRIx32 " (%s-endian, %u-bit, lock kind %u, %u-byte locks)",
             f,
             order == 1   ? "little"
             : order == 2 ? "big"
                          : "?",
             word * 8, kind, lock);
}

static void jsonLock(jsonOut *j, const lockData *l) {
    jsonObjOpen(j, NULL);
    jsonStr(j, "name", l->name);
    jsonU64(j, "offset", l->off);
    if (l->rc != DKSHM_OK) {
        jsonStr(j, "error", dkshmErrName(l->rc));
    } else {
        jsonBool(j, "held", l->st.held);
        if (l->st.held) {
            jsonU64(j, "ownerPid", l->st.ownerPid);
            jsonBool(j, "ownerDead", l->st.ownerDead);
            jsonBool(j, "waiters", l->st.waiters);
        }
        jsonU64(j, "undoRecords", l->st.undoRecords);
        jsonU64(j, "recoveries", l->st.recoveries);
    }
    jsonObjClose(j);
}

/* The figures of container O, under its type's name. */
static void jsonContainer(jsonOut *j, const objData *o) {
    jsonObjOpen(j, typeKind(o->o.type));
    if (o->statRc != DKSHM_OK) {
        jsonStr(j, "error", dkshmErrName(o->statRc));
        jsonStr(j, "message", dkshmStrerror(o->statRc));
        jsonObjClose(j);
        return;
    }
    switch (o->o.type) {
    case MULTIDICT_TYPE: {
        const multidictStats *m = &o->st.md;
        jsonU64(j, "entries", m->count);
        jsonU64(j, "entryBytes", m->bytes);
        jsonU64(j, "tableBytes", m->tableBytes);
        jsonU64(j, "maxBytes", m->maxBytes);
        jsonU64(j, "shards", m->shards);
        jsonDouble(j, "maxLoad", m->maxLoad);
        jsonU64(j, "minShardCount", m->minShardCount);
        jsonU64(j, "maxShardCount", m->maxShardCount);
        jsonU64(j, "slots", m->slots);
        jsonU64(j, "tombstones", m->tombstones);
        jsonU64(j, "evictions", m->evictions);
        jsonU64(j, "expirations", m->expirations);
        jsonU64(j, "resizes", m->resizes);
        jsonU64(j, "recoveries", m->recoveries);
        jsonU64(j, "lockedShards", o->lockedShards);
        jsonU64(j, "deadOwnerShards", o->deadShards);
        break;
    }
    case MULTIMAP_TYPE: {
        const multimapStats *m = &o->st.mm;
        jsonU64(j, "entries", m->count);
        jsonStr(j, "keyMode",
                m->keyMode == MULTIMAP_KEYS_INT64 ? "int64" : "bytes");
        jsonU64(j, "height", m->height);
        jsonU64(j, "leaves", m->leaves);
        jsonU64(j, "inner", m->inner);
        jsonU64(j, "nodeBytes", m->nodeBytes);
        jsonU64(j, "entryBytes", m->entryBytes);
        jsonU64(j, "keyBlocks", m->keyBlocks);
        jsonU64(j, "keyBytes", m->keyBytes);
        jsonU64(j, "recoveries", m->recoveries);
        break;
    }
    case MULTILIST_TYPE: {
        const multilistStats *m = &o->st.ml;
        jsonU64(j, "items", m->count);
        jsonU64(j, "itemBytes", m->bytes);
        jsonU64(j, "maxItems", m->maxItems);
        jsonU64(j, "maxItemBytes", m->maxItemBytes);
        jsonU64(j, "pushes", m->pushes);
        jsonU64(j, "pops", m->pops);
        jsonU64(j, "popWaiters", m->popWaiters);
        jsonU64(j, "pushWaiters", m->pushWaiters);
        jsonU64(j, "cachedNodes", m->cachedNodes);
        jsonU64(j, "cachedBytes", m->cachedBytes);
        jsonU64(j, "recoveries", m->recoveries);
        jsonBool(j, "shutdown", m->shutdown);
        break;
    }
    case MULTIARRAY_TYPE: {
        const multiarrayStats *m = &o->st.ma;
        jsonU64(j, "elements", m->count);
        jsonU64(j, "elemSize", m->elemSize);
        jsonU64(j, "capacity", m->capacity);
        jsonU64(j, "blockBytes", m->blockBytes);
        jsonU64(j, "rebuilds", m->rebuilds);
        jsonU64(j, "recoveries", m->recoveries);
        break;
    }
    default: {
        const OSRegulateStats *m = &o->st.os;
        jsonU64(j, "maxHolders", m->maxHolders);
        jsonU64(j, "held", m->held);
        jsonU64(j, "deadHeld", m->deadHeld);
        jsonU64(j, "ratePerSec", m->ratePerSec);
        jsonU64(j, "burst", m->burst);
        jsonU64(j, "tokens", m->tokens);
        jsonU64(j, "acquired", m->acquired);
        jsonU64(j, "reclaimed", m->reclaimed);
        jsonU64(j, "rateDenied", m->rateDenied);
        break;
    }
    }
    jsonObjClose(j);
}

/* A line about container O for the text view of info. */
static void containerText(const objData *o, char *buf, size_t len) {
    char b1[32], b2[32];
    if (o->statRc != DKSHM_OK) {
        snprintf(buf, len, "unreadable: %s", dkshmStrerror(o->statRc));
        return;
    }
    switch (o->o.type) {
    case MULTIDICT_TYPE: {
        const multidictStats *m = &o->st.md;
        int n = snprintf(buf, len,
                         "%" PRIu64 " entries (%s), %" PRIu32
                         " shards, max load %.2f",
                         m->count, fmtBytes(m->bytes, b1), m->shards,
                         m->maxLoad);
        if (m->maxBytes && n > 0 && (size_t)n < len)
            n += snprintf(buf + n, len - (size_t)n, ", cache of %s",
                          fmtBytes(m->maxBytes, b2));
        if (o->deadShards && n > 0 && (size_t)n < len)
            snprintf(buf + n, len - (size_t)n,
                     ", %" PRIu32 " SHARDS LOCKED BY DEAD processes",
                     o->deadShards);
        break;
    }
    case MULTIMAP_TYPE: {
        const multimapStats *m = &o->st.mm;
        snprintf(buf, len,
                 "%" PRIu64 " entries, %s keys, height %" PRIu32 ", %" PRIu64
                 " leaves, %" PRIu64 " inner nodes",
                 m->count,
                 m->keyMode == MULTIMAP_KEYS_INT64 ? "int64" : "bytes",
                 m->height, m->leaves, m->inner);
        break;
    }
    case MULTILIST_TYPE: {
        const multilistStats *m = &o->st.ml;
        snprintf(buf, len,
                 "%" PRIu64 " items (%s)%s, %" PRIu64 " pushed, %" PRIu64
                 " popped, waiters: %" PRIu32 " pop, %" PRIu32 " push%s",
                 m->count, fmtBytes(m->bytes, b1),
                 m->maxItems ? " bounded" : "", m->pushes, m->pops,
                 m->popWaiters, m->pushWaiters,
                 m->shutdown ? ", shut down" : "");
        break;
    }
    case MULTIARRAY_TYPE: {
        const multiarrayStats *m = &o->st.ma;
        snprintf(buf, len,
                 "%" PRIu64 " elements of %" PRIu64 " bytes, room for %" PRIu64,
                 m->count, m->elemSize, m->capacity);
        break;
    }
    default: {
        const OSRegulateStats *m = &o->st.os;
        int n = 0;
        if (m->maxHolders)
            n = snprintf(buf, len,
                         "%" PRIu32 " of %" PRIu32 " permits out (%" PRIu32
                         " held by the dead), %" PRIu64 " acquired, %" PRIu64
                         " reclaimed from the dead",
                         m->held, m->maxHolders, m->deadHeld, m->acquired,
                         m->reclaimed);
        if (m->ratePerSec && n >= 0 && (size_t)n < len)
            snprintf(buf + n, len - (size_t)n,
                     "%srate %" PRIu64 "/s, burst %" PRIu32 ", %" PRIu64
                     " tokens, %" PRIu64 " denied",
                     n ? "; " : "", m->ratePerSec, m->burst, m->tokens,
                     m->rateDenied);
        break;
    }
    }
}

static void infoJson(const segData *d) {
    char buf[128];
    jsonOut j;
    jsonInit(&j, stdout);
    jsonObjOpen(&j, NULL);
    jsonStr(&j, "name", d->name);
    jsonObjOpen(&j, "header");
    jsonU64(&j, "layoutVersion", d->info.layoutVersion);
    jsonU64(&j, "format", d->info.format);
    formatWord(d->info.format, buf, sizeof buf);
    jsonStr(&j, "formatText", buf);
    jsonU64(&j, "capacity", d->info.capacity);
    jsonU64(&j, "creatorUid", d->info.creatorUid);
    jsonU64(&j, "creatorPid", d->info.creatorPid);
    jsonTime(&j, "created", "createdNs", d->info.createTimeNs);
    jsonFlags(&j, d->info.flags);
    jsonU64(&j, "maxProcs", d->info.maxProcs);
    jsonU64(&j, "maxObjects", d->info.maxObjects);
    jsonU64(&j, "pageSize", d->pageSize);
    jsonObjClose(&j);
    jsonObjOpen(&j, "layout");
    jsonU64(&j, "procTable", d->procTable);
    jsonU64(&j, "directory", d->directory);
    jsonU64(&j, "heap", d->info.heapOffset);
    jsonU64(&j, "heapSize", d->info.heapSize);
    jsonObjClose(&j);
    jsonObjOpen(&j, "file");
    jsonStr(&j, "mode", modeString(d->info.fileMode, buf));
    jsonU64(&j, "ownerUid", d->info.fileUid);
    jsonStr(&j, "owner", userName(d->info.fileUid, buf));
    jsonObjClose(&j);
    jsonU64(&j, "residentBytes", d->info.residentBytes);
    if (d->alloc == ALLOC_OK) {
        const memboundStats *m = &d->ms;
        jsonObjOpen(&j, "allocator");
        jsonU64(&j, "capacity", m->capacity);
        jsonU64(&j, "used", m->used);
        jsonU64(&j, "free", m->free);
        jsonU64(&j, "allocations", m->allocations);
        jsonU64(&j, "largestFree", m->largestFree);
        jsonU64(&j, "slabSlack", m->slabSlack);
        jsonU64(&j, "metadata", m->metadata);
        jsonDouble(&j, "fragmentation", m->fragmentation);
        jsonU64(&j, "badFrees", m->badFrees);
        jsonU64(&j, "fullErrors", m->fullErrors);
        jsonU64(&j, "pageSize", m->pageSize);
        jsonArrOpen(&j, "classes");
        for (uint32_t i = 0; i < m->classes && i < MEMBOUND_CLASSES; i++) {
            jsonObjOpen(&j, NULL);
            jsonU64(&j, "size", m->cls[i].size);
            jsonU64(&j, "slabPages", m->cls[i].slabs);
            jsonU64(&j, "used", m->cls[i].used);
            jsonU64(&j, "free", m->cls[i].free);
            jsonObjClose(&j);
        }
        jsonArrClose(&j);
        jsonObjClose(&j);
    } else {
        jsonNull(&j, "allocator");
        jsonStr(&j, "allocatorState", allocatorError(d->allocErrno));
    }
    jsonU64(&j, "liveProcesses", d->live);
    jsonU64(&j, "deadProcesses", d->dead);
    jsonArrOpen(&j, "processes");
    for (size_t i = 0; i < d->nprocs; i++) {
        const procData *p = &d->procs[i];
        jsonObjOpen(&j, NULL);
        jsonU64(&j, "slot", p->p.slot);
        jsonU64(&j, "pid", p->p.pid);
        jsonU64(&j, "uid", p->p.uid);
        jsonStr(&j, "state", stateName(p->p.state));
        jsonBool(&j, "alive", p->alive);
        jsonTime(&j, "attached", "attachedNs", p->p.attachTimeNs);
        jsonU64(&j, "inflight", p->p.inflight);
        jsonU64(&j, "readLocks", p->p.readLocks);
        jsonArrOpen(&j, "heldLocks");
        for (uint32_t k = 0; k < p->nheld; k++)
            jsonStr(&j, NULL, lockName(d, p->held[k], buf));
        jsonArrClose(&j);
        jsonObjClose(&j);
    }
    jsonArrClose(&j);
    if (d->objRc == DKSHM_OK) {
        jsonArrOpen(&j, "objects");
        for (size_t i = 0; i < d->nobjs; i++) {
            const objData *o = &d->objs[i];
            jsonObjOpen(&j, NULL);
            jsonStr(&j, "name", o->o.name);
            jsonU64(&j, "type", o->o.type);
            jsonStr(&j, "typeName", typeKind(o->o.type));
            jsonU64(&j, "root", o->o.root);
            if (o->sized)
                jsonU64(&j, "rootBytes", o->bytes);
            else
                jsonNull(&j, "rootBytes");
            if (o->counted)
                jsonU64(&j, "count", o->count);
            else
                jsonNull(&j, "count");
            if (o->counted || (!isContainer(o->o.type) && o->sized))
                jsonU64(&j, "bytes", o->counted ? o->dataBytes : o->bytes);
            else
                jsonNull(&j, "bytes");
            jsonTime(&j, "created", "createdNs", o->o.createTimeNs);
            if (isContainer(o->o.type))
                jsonContainer(&j, o);
            jsonObjClose(&j);
        }
        jsonArrClose(&j);
    } else {
        jsonNull(&j, "objects");
        jsonStr(&j, "objectsError", dkshmStrerror(d->objRc));
    }
    jsonArrOpen(&j, "locks");
    for (int i = 0; i < d->nlocks; i++)
        jsonLock(&j, &d->locks[i]);
    jsonArrClose(&j);
    uint64_t deadLocks = 0;
    for (int i = 0; i < d->nlocks; i++)
        if (d->locks[i].rc == DKSHM_OK && d->locks[i].st.held &&
            d->locks[i].st.ownerDead)
            deadLocks++;
    jsonU64(&j, "deadOwnerLocks", deadLocks);
    jsonObjClose(&j);
    jsonEnd(&j);
}

static void infoText(const segData *d) {
    char b1[128], b2[64], b3[256];
    table t;
    tableInit(&t, 0, "<- <-");
    tableCell(&t, "segment");
    tableCell(&t, "%s", d->name);
    tableCell(&t, "layout");
    formatWord(d->info.format, b1, sizeof b1);
    tableCell(&t, "version %" PRIu32 ", format %s", d->info.layoutVersion, b1);
    tableCell(&t, "capacity");
    tableCell(&t, "%s (%" PRIu64 " bytes)", fmtBytes(d->info.capacity, b1),
              d->info.capacity);
    tableCell(&t, "resident");
    tableCell(&t, "%s (%" PRIu64 " bytes)", fmtBytes(d->info.residentBytes, b1),
              d->info.residentBytes);
    tableCell(&t, "created");
    tableCell(&t, "%s by uid %" PRIu32 " (%s), pid %" PRIu32,
              fmtTimeLocal(d->info.createTimeNs, b1), d->info.creatorUid,
              userName(d->info.creatorUid, b2), d->info.creatorPid);
    tableCell(&t, "file");
    tableCell(&t, "mode %s, owner %s", modeString(d->info.fileMode, b1),
              userName(d->info.fileUid, b2));
    tableCell(&t, "flags");
    tableCell(&t, "%s", (d->info.flags & DKSHM_EPHEMERAL) ? "ephemeral" : "-");
    tableCell(&t, "tables");
    tableCell(&t,
              "%" PRIu32 " process slots at 0x%" PRIx64 ", %" PRIu32
              " directory entries at 0x%" PRIx64 ", heap at 0x%" PRIx64 " (%s)",
              d->info.maxProcs, d->procTable, d->info.maxObjects, d->directory,
              d->info.heapOffset, fmtBytes(d->info.heapSize, b1));
    tablePrint(&t, stdout);
    tableFree(&t);

    printf("\nallocator\n");
    if (d->alloc == ALLOC_OK) {
        const memboundStats *m = &d->ms;
        tableInit(&t, 2, "<- <-");
        tableCell(&t, "capacity");
        tableCell(&t, "%s", fmtBytes(m->capacity, b1));
        tableCell(&t, "used");
        tableCell(&t, "%s in %" PRIu64 " allocation%s", fmtBytes(m->used, b1),
                  m->allocations, m->allocations == 1 ? "" : "s");
        tableCell(&t, "free");
        tableCell(&t, "%s", fmtBytes(m->free, b1));
        tableCell(&t, "largest free");
        tableCell(&t, "%s", fmtBytes(m->largestFree, b1));
        tableCell(&t, "fragmentation");
        tableCell(&t, "%.1f%%", m->fragmentation * 100.0);
        tableCell(&t, "slab slack");
        tableCell(&t, "%s", fmtBytes(m->slabSlack, b1));
        tableCell(&t, "metadata");
        tableCell(&t, "%s", fmtBytes(m->metadata, b1));
        if (m->badFrees || m->fullErrors) {
            tableCell(&t, "errors");
            tableCell(&t, "%" PRIu64 " bad frees, %" PRIu64 " full",
                      m->badFrees, m->fullErrors);
        }
        tablePrint(&t, stdout);
        tableFree(&t);
        tableInit(&t, 4, ">CLASS >PAGES >USED >FREE");
        size_t shown = 0;
        for (uint32_t i = 0; i < m->classes && i < MEMBOUND_CLASSES; i++) {
            if (!m->cls[i].slabs && !m->cls[i].used)
                continue;
            tableCell(&t, "%" PRIu32, m->cls[i].size);
            tableCell(&t, "%" PRIu64, m->cls[i].slabs);
            tableCell(&t, "%" PRIu64, m->cls[i].used);
            tableCell(&t, "%" PRIu64, m->cls[i].free);
            shown++;
        }
        if (shown) {
            printf("  size classes in use\n");
            tablePrint(&t, stdout);
        }
        tableFree(&t);
    } else {
        printf("  %s\n", allocatorError(d->allocErrno));
    }

    printf("\nprocesses (%" PRIu32 " live, %" PRIu32 " dead)\n", d->live,
           d->dead);
    if (d->nprocs) {
        tableInit(&t, 2,
                  ">SLOT >PID >UID <STATE <ATTACHED >INFLIGHT >READLOCKS "
                  "<HOLDS");
        for (size_t i = 0; i < d->nprocs; i++) {
            const procData *p = &d->procs[i];
            tableCell(&t, "%" PRIu32, p->p.slot);
            tableCell(&t, "%" PRIu32, p->p.pid);
            tableCell(&t, "%" PRIu32, p->p.uid);
            tableCell(&t, "%s",
                      p->alive                        ? stateName(p->p.state)
                      : p->p.state == DKSHM_PROC_DEAD ? "dead (reaping)"
                                                      : "dead");
            tableCell(&t, "%s", fmtTimeLocal(p->p.attachTimeNs, b1));
            tableCell(&t, "%" PRIu32, p->p.inflight);
            tableCell(&t, "%" PRIu32, p->p.readLocks);
            b3[0] = '\0';
            for (uint32_t k = 0; k < p->nheld; k++) {
                size_t n = strlen(b3);
                snprintf(b3 + n, sizeof b3 - n, "%s%s", n ? "," : "",
                         lockName(d, p->held[k], b2));
            }
            tableCell(&t, "%s", *b3 ? b3 : "-");
        }
        tablePrint(&t, stdout);
        tableFree(&t);
    }

    if (d->objRc == DKSHM_OK) {
        printf("\nobjects (%zu)\n", d->nobjs);
        if (d->nobjs) {
            tableInit(&t, 2,
                      "<NAME <TYPE >ROOT >COUNT >BYTES <CREATED <CONTENTS");
            for (size_t i = 0; i < d->nobjs; i++) {
                const objData *o = &d->objs[i];
                char esc[160], what[256];
                escapeBytes(o->o.name, strlen(o->o.name), esc, sizeof esc);
                tableCell(&t, "%s", esc);
                tableCell(&t, "%s", typeName(o->o.type, b1));
                tableCell(&t, "0x%" PRIx64, o->o.root);
                if (o->counted)
                    tableCell(&t, "%" PRIu64, o->count);
                else
                    tableCell(&t, "-");
                if (o->counted || (!isContainer(o->o.type) && o->sized))
                    tableCell(&t, "%s",
                              fmtBytes(o->counted ? o->dataBytes : o->bytes,
                                       b1));
                else
                    tableCell(&t, "?");
                tableCell(&t, "%s", fmtTimeLocal(o->o.createTimeNs, b2));
                if (isContainer(o->o.type))
                    containerText(o, what, sizeof what);
                else
                    snprintf(what, sizeof what, "-");
                tableCell(&t, "%s", what);
            }
            tablePrint(&t, stdout);
            tableFree(&t);
        }
    } else {
        printf("\nobjects: %s%s\n", dkshmStrerror(d->objRc),
               d->objWriterDead ? " (left mid-change by a process that died: "
                                  "'dkshm-tool reap' recovers it)"
                                : " (kept changing)");
    }

    printf("\nlocks\n");
    tableInit(&t, 2, "<- <-");
    for (int i = 0; i < d->nlocks; i++) {
        const lockData *l = &d->locks[i];
        tableCell(&t, "%s", l->name);
        if (l->rc != DKSHM_OK)
            tableCell(&t, "unreadable: %s", dkshmStrerror(l->rc));
        else if (!l->st.held && !l->st.recoveries)
            tableCell(&t, "free");
        else if (!l->st.held)
            tableCell(&t,
                      "free (taken over from a dead owner %" PRIu32 " time%s)",
                      l->st.recoveries, l->st.recoveries == 1 ? "" : "s");
        else if (l->st.ownerDead)
            tableCell(&t,
                      "HELD BY DEAD pid %" PRIu32 ", %" PRIu32
                      " undo record%s: recovered by the next locker or "
                      "'dkshm-tool reap'",
                      l->st.ownerPid, l->st.undoRecords,
                      l->st.undoRecords == 1 ? "" : "s");
        else
            tableCell(&t, "held by pid %" PRIu32 "%s", l->st.ownerPid,
                      l->st.waiters ? " (waiters)" : "");
    }
    tablePrint(&t, stdout);
    tableFree(&t);
}

static int cmdInfo(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"json", false}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 1, 1, 1, &a);
    if (st >= 0)
        return st;
    bool json = a.set[0];
    char name[DKSHM_NAME_MAX + 1];
    if ((st = segmentName(c, a.pos[0], name)) >= 0)
        return st;
    dkshm *s;
    if ((st = openSegment(c, name, DKSHM_RDONLY, json, &s)) >= 0)
        return st;
    segData d;
    memset(&d, 0, sizeof d);
    bool faulted;
    int rc = gather(s, &d, GATHER_FULL, &faulted);
    detachAfter(s);
    if (rc != DKSHM_OK) {
        reportOpenError(c, name, rc, faulted ? faultText : "");
        if (json)
            jsonError(name, rc, faulted ? faultText : "", EXIT_OPEN);
        segDataFree(&d);
        return EXIT_OPEN;
    }
    if (json)
        infoJson(&d);
    else
        infoText(&d);
    segDataFree(&d);
    return EXIT_OK;
}

/* ---- check --------------------------------------------------------------- */

enum { ISSUE_PROBLEM, ISSUE_WARNING, ISSUE_UNCHECKED };

/* What an issue is about: the tables (header, process table, directory,
 * read through the directory's seqlock), the allocator (read without any
 * consistency guarantee: a busy allocator can look broken), or the
 * containers and the ownership of blocks (each container checks itself
 * optimistically; who owns which block is only known while nothing moves
 * blocks between owners). */
enum { AREA_TABLES, AREA_ALLOC, AREA_CONTAINERS, AREAS };

typedef struct issue { /* per process */
    int kind;
    int area;
    char *where;
    char *what;
} issue;

typedef struct issues { /* per process */
    issue *v;
    size_t n, cap;
    size_t count[3];
    int area; /* of the issues added now */
} issues;

static void addIssue(issues *l, int kind, const char *where, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));

static void addIssue(issues *l, int kind, const char *where, const char *fmt,
                     ...) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        issue *v = realloc(l->v, cap * sizeof *v);
        if (!v) {
            fputs("dkshm-tool: out of memory\n", stderr);
            exit(EXIT_OPEN);
        }
        l->v = v;
        l->cap = cap;
    }
    va_list ap;
    va_start(ap, fmt);
    l->v[l->n].kind = kind;
    l->v[l->n].area = l->area;
    l->v[l->n].where = xstrdup(where);
    l->v[l->n].what = xvasprintf(fmt, ap);
    va_end(ap);
    l->n++;
    l->count[kind]++;
}

static void issuesFree(issues *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].where);
        free(l->v[i].what);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Something that owns a block: an in-flight entry, a directory root, or a
 * container (one of the blocks its walk reaches). */
enum { OWN_INFLIGHT, OWN_ROOT, OWN_BLOCK };

typedef struct owner { /* per process */
    dkoff off;
    int what;       /* OWN_... */
    uint32_t slot;  /* in-flight: the process slot */
    uint32_t entry; /* root, block: the directory entry */
    dkoff group;    /* root, block: the object's root (its identity) */
    uint64_t bytes; /* block: the bytes it needs (0: unknown) */
    int kind;       /* block: what it is in its container */
} owner;

static int compareOwners(const void *a, const void *b) {
    const owner *x = a, *y = b;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return x->what - y->what;
}

/* Append O to *V (N entries): the array doubles at powers of two. */
static bool pushOwner(owner **v, size_t *n, owner o) {
    if (*n == 0 || (*n >= 8 && (*n & (*n - 1)) == 0)) {
        owner *w = scratchRealloc(*v, (*n ? 2 * *n : 8) * sizeof *w);
        if (!w)
            return false;
        *v = w;
    }
    (*v)[(*n)++] = o;
    return true;
}

typedef struct allocation { /* per process */
    dkoff off;
    uint64_t size;
} allocation;

typedef struct offList { /* per process: live allocations, in order */
    allocation *v;
    size_t n, cap;
} offList;

static int collectAllocation(void *ctx, dkoff off, uint64_t size) {
    offList *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 1024;
        allocation *v = scratchRealloc(l->v, cap * sizeof *v);
        if (!v)
            return DKSHM_SYSTEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (allocation){off, size};
    return 0;
}

/* The index of the allocation at OFF, or -1. */
static ssize_t findAllocation(const offList *l, dkoff off) {
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (l->v[mid].off == off)
            return (ssize_t)mid;
        if (l->v[mid].off < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static bool isAllocation(const offList *l, dkoff off) {
    return findAllocation(l, off) >= 0;
}

typedef struct checkCtx { /* per process: one attempt */
    dkshm *s;
    issues out;
    bool tablesChanged; /* the tables changed while we looked */
    bool allocChanged;  /* the allocator changed while we looked */
    uint32_t slots;     /* process slots checked */
    uint32_t objects;
    bool allocChecked;
    uint64_t allocations;
    bool contChanged;   /* a container changed while we looked */
    uint32_t containers; /* containers checked */
    bool ownership;     /* every allocation was matched to its owner */
    uint64_t leaks, leakBytes;
    /* Gathered on the way for the ownership check. */
    offList live;       /* live allocations (allocator walked) */
    bool liveOk;
    bool walkIncomplete; /* a container's blocks could not all be walked */
    bool userObjects;    /* objects whose blocks the tool cannot walk */
    bool deadLocks;      /* a dead process holds a lock: mid-operation */
    bool liveProcs;      /* a live process is attached */
    uint64_t leakSig;    /* of the leaks' offsets */
} checkCtx;

static uint64_t pidMax(void) {
    static uint64_t cached;
    if (cached)
        return cached;
    cached = 4194304; /* the kernel's limit when /proc does not say */
    FILE *f = fopen("/proc/sys/kernel/pid_max", "r");
    if (f) {
        unsigned long long v;
        if (fscanf(f, "%llu", &v) == 1 && v > 0)
            cached = v;
        fclose(f);
    }
    return cached;
}

static uint64_t roundUpTo(uint64_t v, uint64_t to) {
    return (v + to - 1) / to * to;
}

/* The fixed header fields, re-validated from the mapping. False if the
 * tables cannot be trusted (then nothing else is checked). */
static bool checkHeaderFields(checkCtx *c, const dkHeader *h) {
    dkshm *s = c->s;
    issues *o = &c->out;
    bool ok = true;
    if (h->magic != DK_MAGIC) {
        addIssue(o, ISSUE_PROBLEM, "header", "magic 0x%016" PRIx64 " is wrong",
                 h->magic);
        return false;
    }
    if (h->layoutVersion != DK_LAYOUT_VERSION || h->format != DK_FORMAT) {
        addIssue(o, ISSUE_PROBLEM, "header",
                 "layout version %" PRIu32 " format 0x%08" PRIx32
                 ", expected %u and 0x%08" PRIx32,
                 h->layoutVersion, h->format, DK_LAYOUT_VERSION,
                 (uint32_t)DK_FORMAT);
        return false;
    }
    uint64_t sum = XXH3_64bits(h, offsetof(dkHeader, checksum));
    if (sum != h->checksum) {
        addIssue(o, ISSUE_PROBLEM, "header",
                 "checksum 0x%016" PRIx64 " does not match the fixed fields "
                 "(0x%016" PRIx64 ")",
                 h->checksum, sum);
        ok = false;
    }
    struct stat st;
    if (h->capacity != s->size) {
        addIssue(o, ISSUE_PROBLEM, "header",
                 "capacity %" PRIu64 " differs from the mapping (%" PRIu64
                 " bytes)",
                 h->capacity, s->size);
        ok = false;
    } else if (s->fd >= 0 && fstat(s->fd, &st) == 0 &&
               (uint64_t)st.st_size != h->capacity) {
        addIssue(o, ISSUE_PROBLEM, "header",
                 "capacity %" PRIu64 " but the file now has %" PRIu64 " bytes",
                 h->capacity, (uint64_t)st.st_size);
        ok = false;
    }
    uint64_t ps = h->pageSize;
    if (ps < 4096 || (ps & (ps - 1)) || ps > (1u << 24)) {
        addIssue(o, ISSUE_PROBLEM, "header", "page size %" PRIu64 " invalid",
                 ps);
        return false;
    }
    if (h->maxProcs == 0 || h->maxProcs > DKSHM_MAX_PROCS ||
        h->maxObjects == 0 || h->maxObjects > DKSHM_MAX_OBJECTS) {
        addIssue(o, ISSUE_PROBLEM, "header",
                 "%" PRIu32 " process slots, %" PRIu32
                 " directory entries: out of range",
                 h->maxProcs, h->maxObjects);
        return false;
    }
    if (h->flags & ~DKSHM_EPHEMERAL) {
        addIssue(o, ISSUE_PROBLEM, "header", "unknown flags 0x%" PRIx32,
                 h->flags);
        ok = false;
    }
    uint64_t procTable = ps;
    uint64_t directory =
        roundUpTo(procTable + (uint64_t)h->maxProcs * sizeof(dkProcSlot), ps);
    uint64_t heap =
        roundUpTo(directory + (uint64_t)h->maxObjects * sizeof(dkDirEntry), ps);
    if (h->procTable != procTable || h->directory != directory ||
        h->heap != heap || h->capacity < heap ||
        h->heapSize != h->capacity - heap || h->capacity % ps) {
        addIssue(o, ISSUE_PROBLEM, "header",
                 "layout (process table 0x%" PRIx64 ", directory 0x%" PRIx64
                 ", heap 0x%" PRIx64 " + %" PRIu64
                 ") does not follow from its sizes",
                 h->procTable, h->directory, h->heap, h->heapSize);
        return false;
    }
    if (h->initState != DK_INIT_READY) {
        addIssue(o, ISSUE_PROBLEM, "header",
                 "init state 0x%08" PRIx32 " is not READY", h->initState);
        ok = false;
    }
    return ok && h->capacity == s->size;
}

/* Roll the snapshot META (the bytes [0, heap)) back by the undo log U, as
 * the next locker would. False (and a problem) when the log is damaged. */
static bool virtualRollback(checkCtx *c, uint8_t *meta, uint64_t len,
                            const dkUndo *u, const char *where) {
    char why[160];
    if (undoApply(meta, len, c->s->size, u, why, sizeof why))
        return true;
    addIssue(&c->out, ISSUE_PROBLEM, where, "%s", why);
    return false;
}

/* The process table and in-flight lists of the snapshot. */
static void checkProcs(checkCtx *c, const dkHeader *h, const uint8_t *meta,
                       owner **owners, size_t *nowners) {
    issues *o = &c->out;
    const dkProcSlot *tab = (const dkProcSlot *)(meta + h->procTable);
    for (uint32_t i = 0; i < h->maxProcs; i++) {
        const dkProcSlot *p = &tab[i];
        char where[64];
        uint64_t w = p->word;
        uint32_t state = (uint32_t)(w >> 32), pid = (uint32_t)w;
        snprintf(where, sizeof where, "process slot %" PRIu32, i);
        c->slots++;
        if (w == 0) {
            for (int k = 0; k < DK_INFLIGHT_MAX; k++)
                if (dkInflightIsBlock(p->inflight[k]))
                    addIssue(o, ISSUE_PROBLEM, where,
                             "free, but its in-flight list holds 0x%" PRIx64
                             " (leaked block)",
                             p->inflight[k]);
            continue;
        }
        snprintf(where, sizeof where,
                 "process slot %" PRIu32 " (pid %" PRIu32 ")", i, pid);
        if (state == DKSHM_PROC_FREE) {
            addIssue(o, ISSUE_PROBLEM, where, "state free with a pid set");
            continue;
        }
        if (state > DKSHM_PROC_DEAD) {
            addIssue(o, ISSUE_PROBLEM, where, "invalid state %" PRIu32, state);
            continue;
        }
        if (pid == 0 || pid > pidMax()) {
            addIssue(o, ISSUE_PROBLEM, where,
                     "pid out of range (pid_max %" PRIu64 ")", pidMax());
            continue;
        }
        bool alive = state == DKSHM_PROC_LIVE ? dkProcAlive(pid, p->startTime)
                     : state == DKSHM_PROC_CLAIMING ? dkProcAlive(pid, 0)
                                                    : false;
        if (state == DKSHM_PROC_DEAD)
            addIssue(o, ISSUE_WARNING, where,
                     "reaping started and did not finish ('dkshm-tool reap' "
                     "finishes it)");
        else if (!alive)
            addIssue(o, ISSUE_WARNING, where,
                     "process is dead and not reaped yet ('dkshm-tool reap')");
        if (alive)
            c->liveProcs = true;
        for (int k = 0; k < DK_INFLIGHT_MAX; k++) {
            dkoff off = p->inflight[k];
            /* A claim or held mark, not a block: reaping drops it. */
            if (!dkInflightIsBlock(off))
                continue;
            if (off < h->heap || off >= h->heap + h->heapSize) {
                addIssue(o, ISSUE_PROBLEM, where,
                         "in-flight entry %d: 0x%" PRIx64
                         " is outside the heap",
                         k, off);
                continue;
            }
            pushOwner(owners, nowners,
                      (owner){.off = off, .what = OWN_INFLIGHT, .slot = i});
        }
        for (int k = 0; k < DKSHM_READ_SLOTS; k++) {
            uint64_t e = p->rdHold[k];
            uint64_t off = (e >> 20) * 8;
            if ((e & 0xfffff) && (off == 0 || off + 8 > h->capacity))
                addIssue(o, ISSUE_PROBLEM, where,
                         "read hold %d names offset 0x%" PRIx64
                         " outside the segment",
                         k, off);
        }
        for (int k = 0; k < DK_HELD_MAX; k++) {
            uint64_t off = p->held[k];
            if (off && (off & 7 || off + sizeof(fastMutex) > h->capacity)) {
                addIssue(o, ISSUE_PROBLEM, where,
                         "held-lock entry %d: 0x%" PRIx64
                         " is not a lock inside the segment",
                         k, off);
                continue;
            }
            /* A dead process still named by the lock it recorded: its
             * operation is half done until recovery rolls it back. */
            if (off && !alive && dkRangeOk(c->s, off, sizeof(fastMutex))) {
                const fastMutex *m = dkPtr(c->s, off);
                uint32_t lw = __atomic_load_n(&m->word, __ATOMIC_RELAXED) &
                              DK_ID_MASK;
                if (lw && !(lw & DK_ID_RAWPID) &&
                    (lw & ((1u << DK_ID_SLOT_BITS) - 1)) == i)
                    c->deadLocks = true;
            }
        }
    }
}

typedef struct nameRef { /* per process */
    const char *name;
    uint32_t entry;
} nameRef;

static int compareNameRefs(const void *a, const void *b) {
    const nameRef *x = a, *y = b;
    int r = strcmp(x->name, y->name);
    return r ? r : (x->entry < y->entry ? -1 : 1);
}

/* The directory of the snapshot. */
static void checkDirectory(checkCtx *c, const dkHeader *h, const uint8_t *meta,
                           owner **owners, size_t *nowners) {
    issues *o = &c->out;
    const dkHeader *sh = (const dkHeader *)meta;
    const dkDirEntry *dir = (const dkDirEntry *)(meta + h->directory);
    nameRef *names = scratchCalloc(h->maxObjects, sizeof *names);
    size_t nnames = 0;
    uint32_t live = 0;
    for (uint32_t i = 0; i < h->maxObjects; i++) {
        const dkDirEntry *e = &dir[i];
        char where[160], esc[128];
        snprintf(where, sizeof where, "directory entry %" PRIu32, i);
        if (e->type == 0) {
            if (e->root != 0)
                addIssue(o, ISSUE_PROBLEM, where,
                         "free entry with root 0x%" PRIx64 " set", e->root);
            continue;
        }
        live++;
        const char *nul = memchr(e->name, '\0', sizeof e->name);
        if (!nul) {
            escapeBytes(e->name, sizeof e->name, esc, sizeof esc);
            addIssue(o, ISSUE_PROBLEM, where,
                     "name \"%s\" is not NUL-terminated", esc);
        } else if (dkshmValidateObjectName(e->name) != DKSHM_OK) {
            escapeBytes(e->name, (size_t)(nul - e->name), esc, sizeof esc);
            addIssue(o, ISSUE_PROBLEM, where, "invalid name \"%s\"", esc);
        } else {
            snprintf(where, sizeof where,
                     "directory entry %" PRIu32 " (\"%s\")", i, e->name);
            names[nnames++] = (nameRef){e->name, i};
        }
        if (e->root < h->heap || e->root >= h->heap + h->heapSize)
            addIssue(o, ISSUE_PROBLEM, where,
                     "root 0x%" PRIx64 " is outside the heap [0x%" PRIx64
                     ", 0x%" PRIx64 ")",
                     e->root, h->heap, h->heap + h->heapSize);
        else
            pushOwner(owners, nowners,
                      (owner){.off = e->root,
                              .what = OWN_ROOT,
                              .entry = i,
                              .group = e->root});
        if (!isContainer(e->type))
            c->userObjects = true;
        if (e->type < DKSHM_TYPE_USER && !isContainer(e->type))
            addIssue(o, ISSUE_WARNING, where,
                     "unknown dkshm type %" PRIu32
                     " (made by a newer version?): not checked",
                     e->type);
    }
    c->objects = live;
    if (sh->objects != live)
        addIssue(o, ISSUE_PROBLEM, "header",
                 "object count is %" PRIu32 " but the directory holds %" PRIu32,
                 sh->objects, live);
    qsort(names, nnames, sizeof *names, compareNameRefs);
    for (size_t i = 1; i < nnames; i++)
        if (strcmp(names[i - 1].name, names[i].name) == 0) {
            char where[160];
            snprintf(where, sizeof where,
                     "directory entry %" PRIu32 " (\"%s\")", names[i].entry,
                     names[i].name);
            addIssue(o, ISSUE_PROBLEM, where,
                     "name also bound by entry %" PRIu32, names[i - 1].entry);
        }
    scratchFree(names);
}

/* A hash of the allocator's metadata (control block, undo log, page
 * tables): read-only, the allocator can only be checked without its lock,
 * so the check is believed only if this did not move meanwhile. The undo
 * log's records are rewritten by every operation, so even an allocation
 * and a free that restore every counter change the hash. */
static uint64_t allocatorHash(dkshm *s, membound *m, dkoff root) {
    memboundStats st;
    int rc = memboundGetStats(m, &st);
    uint64_t len = rc == DKSHM_OK ? st.metadata : 0;
    if (!dkRangeOk(s, root, len))
        len = 0;
    return XXH3_64bits(dkPtr(s, root), len) ^ st.used ^ st.allocations;
}

/* The allocator: its own check, its lock and undo log, and that every
 * in-flight entry is a live allocation. */
static void checkAllocatorLocked(checkCtx *c, const dkHeader *sh,
                                 const owner *owners, size_t nowners,
                                 membound *m);

static void checkAllocator(checkCtx *c, const dkHeader *sh, const owner *owners,
                           size_t nowners) {
    issues *o = &c->out;
    dkshm *s = c->s;
    dkoff root = sh->allocRoot;
    o->area = AREA_ALLOC;
    if (root == 0) {
        for (size_t i = 0; i < nowners; i++)
            if (owners[i].what == OWN_INFLIGHT) {
                char where[64];
                snprintf(where, sizeof where, "process slot %" PRIu32,
                         owners[i].slot);
                addIssue(o, ISSUE_PROBLEM, where,
                         "block 0x%" PRIx64
                         " in flight, but the segment has no allocator",
                         owners[i].off);
            }
        return;
    }
    if (root < sh->heap || root >= sh->heap + sh->heapSize || (root & 63)) {
        addIssue(o, ISSUE_PROBLEM, "allocator",
                 "control block offset 0x%" PRIx64 " is not inside the heap",
                 root);
        return;
    }
    membound *m = allocatorOf(s);
    if (!m) {
        addIssue(o, ISSUE_PROBLEM, "allocator", "cannot be opened: %s",
                 allocatorError(errno));
        o->area = AREA_TABLES;
        return;
    }
    uint64_t before = allocatorHash(s, m, root);
    checkAllocatorLocked(c, sh, owners, nowners, m);
    if (allocatorHash(s, m, root) != before)
        c->allocChanged = true;
    o->area = AREA_TABLES;
}

static void checkAllocatorLocked(checkCtx *c, const dkHeader *sh,
                                 const owner *owners, size_t nowners,
                                 membound *m) {
    issues *o = &c->out;
    (void)sh;
    fastMutexState ls;
    int rc = memboundLockState(m, &ls);
    bool deadOwner = rc == DKSHM_OK && ls.held && ls.ownerDead;
    if (deadOwner)
        c->deadLocks = true;
    if (rc != DKSHM_OK)
        addIssue(o, ISSUE_PROBLEM, "allocator lock", "unreadable: %s",
                 dkshmStrerror(rc));
    else if (deadOwner)
        addIssue(o, ISSUE_WARNING, "allocator lock",
                 "held by dead pid %" PRIu32 " with %" PRIu32
                 " undo records: the next locker or 'dkshm-tool reap' rolls "
                 "its operation back",
                 ls.ownerPid, ls.undoRecords);
    else if (!ls.held && ls.undoRecords)
        addIssue(o, ISSUE_PROBLEM, "allocator lock",
                 "free, but its undo log holds %" PRIu32
                 " records (an operation nobody will roll back)",
                 ls.undoRecords);
    else if (ls.held)
        c->allocChanged = true; /* a live process works on it */
    char why[256] = "";
    rc = memboundCheck(m, why, sizeof why);
    c->allocChecked = true;
    if (rc != DKSHM_OK) {
        if (deadOwner)
            addIssue(o, ISSUE_WARNING, "allocator",
                     "%s (in the middle of the dead holder's operation, "
                     "which recovery rolls back)",
                     *why ? why : dkshmStrerror(rc));
        else
            addIssue(o, ISSUE_PROBLEM, "allocator", "%s",
                     *why ? why : dkshmStrerror(rc));
        return;
    }
    offList live = {0};
    rc = memboundForEachAllocation(m, collectAllocation, &live);
    if (rc != DKSHM_OK) {
        addIssue(o, ISSUE_PROBLEM, "allocator", "walk failed: %s",
                 dkshmStrerror(rc));
        scratchFree(live.v);
        return;
    }
    c->allocations = live.n;
    c->live = live;
    c->liveOk = true;
    for (size_t i = 0; i < nowners; i++) {
        if (owners[i].what != OWN_INFLIGHT ||
            isAllocation(&live, owners[i].off))
            continue;
        char where[64];
        snprintf(where, sizeof where, "process slot %" PRIu32, owners[i].slot);
        addIssue(o, ISSUE_PROBLEM, where,
                 "in-flight block 0x%" PRIx64 " is not a live allocation",
                 owners[i].off);
    }
}

/* The escaped name of directory entry ENTRY of the snapshot. */
static const char *entryName(const uint8_t *meta, const dkHeader *h,
                             uint32_t entry, char *esc, size_t len) {
    const dkDirEntry *e = (const dkDirEntry *)(meta + h->directory) + entry;
    const char *nul = memchr(e->name, '\0', sizeof e->name);
    escapeBytes(e->name, nul ? (size_t)(nul - e->name) : sizeof e->name, esc,
                len);
    return esc;
}

static const char *blockKindName(uint32_t type, int kind) {
    switch (type) {
    case MULTIDICT_TYPE:
        return kind == MULTIDICT_BLOCK_ROOT    ? "root"
               : kind == MULTIDICT_BLOCK_TABLE ? "shard table"
                                               : "entry";
    case MULTIMAP_TYPE:
        return kind == MULTIMAP_BLOCK_HEADER ? "header"
               : kind == MULTIMAP_BLOCK_NODE ? "node"
               : kind == MULTIMAP_BLOCK_KEY  ? "separator key"
                                             : "entry";
    case MULTILIST_TYPE:
        return kind == MULTILIST_BLOCK_ROOT   ? "root"
               : kind == MULTILIST_BLOCK_NODE ? "node"
                                              : "cached node";
    case MULTIARRAY_TYPE:
        return kind == MULTIARRAY_BLOCK_ROOT ? "root" : "element block";
    default:
        return "root";
    }
}

/* "in flight in slot N", "object \"X\"" or "the TYPE-block of object \"X\"":
 * who O is, for a message. */
static void ownerText(const checkCtx *c, const uint8_t *meta,
                      const dkHeader *h, const owner *o, char *buf,
                      size_t len) {
    (void)c;
    char esc[128];
    if (o->what == OWN_INFLIGHT) {
        snprintf(buf, len, "in flight in slot %" PRIu32, o->slot);
        return;
    }
    const dkDirEntry *e = (const dkDirEntry *)(meta + h->directory) + o->entry;
    entryName(meta, h, o->entry, esc, sizeof esc);
    if (o->what == OWN_ROOT)
        snprintf(buf, len, "bound to object \"%s\"", esc);
    else
        snprintf(buf, len, "%s of %s \"%s\"", blockKindName(e->type, o->kind),
                 typeKind(e->type), esc);
}

/* One block, one owner: no block in two in-flight lists, in flight and
 * bound to a name or part of a container at once, or part of two
 * containers. Owners of one object (its directory root and the blocks its
 * walk reaches; two names bound to one root) are one owner. */
static void checkOwners(checkCtx *c, const uint8_t *meta, const dkHeader *h,
                        owner *owners, size_t n) {
    if (n < 2)
        return;
    qsort(owners, n, sizeof *owners, compareOwners);
    for (size_t i = 1; i < n; i++) {
        const owner *a = &owners[i - 1], *b = &owners[i];
        if (a->off != b->off)
            continue;
        if (a->what != OWN_INFLIGHT && b->what != OWN_INFLIGHT &&
            a->group == b->group)
            continue;
        if (a->what == OWN_INFLIGHT && b->what == OWN_INFLIGHT &&
            a->slot == b->slot)
            continue;
        char where[64], ta[192], tb[192];
        snprintf(where, sizeof where, "block 0x%" PRIx64, a->off);
        c->out.area = a->what == OWN_BLOCK || b->what == OWN_BLOCK
                          ? AREA_CONTAINERS
                          : AREA_TABLES;
        int kind = c->out.area == AREA_CONTAINERS && c->deadLocks
                       ? ISSUE_WARNING
                       : ISSUE_PROBLEM;
        if (a->what == OWN_INFLIGHT && b->what == OWN_INFLIGHT) {
            addIssue(&c->out, kind, where,
                     "in the in-flight lists of slots %" PRIu32 " and %" PRIu32,
                     a->slot, b->slot);
        } else {
            /* The object first: "bound to object "x" and in flight in
             * slot 3". */
            const owner *x = a->what == OWN_INFLIGHT ? b : a;
            const owner *y = x == a ? b : a;
            ownerText(c, meta, h, x, ta, sizeof ta);
            ownerText(c, meta, h, y, tb, sizeof tb);
            addIssue(&c->out, kind, where, "%s and %s%s", ta, tb,
                     kind == ISSUE_WARNING
                         ? " (a dead process's interrupted operation, which "
                           "recovery rolls back, may explain it)"
                         : "");
        }
    }
    c->out.area = AREA_TABLES;
}

/* What a container's walk reports, before it joins the owners. */
typedef struct blockList { /* per process */
    owner *v;
    size_t n;
    int rc; /* of growing the list */
} blockList;

static int collectBlock(void *ctx, dkoff off, uint64_t bytes, int kind) {
    blockList *l = ctx;
    if (!pushOwner(&l->v, &l->n,
                   (owner){.off = off, .what = OWN_BLOCK, .bytes = bytes,
                           .kind = kind})) {
        l->rc = DKSHM_SYSTEM;
        return DKSHM_SYSTEM;
    }
    return 0;
}

/* A summary of container C's statistics that changes when its contents
 * do (fields that move with the clock left out). */
static uint64_t contFingerprint(contHandle *c) {
    uint64_t v[12] = {0};
    switch (c->type) {
    case MULTIDICT_TYPE: {
        multidictStats st;
        if (multidictGetStats(c->h.md, &st) == DKSHM_OK) {
            v[0] = st.count, v[1] = st.bytes, v[2] = st.tableBytes;
            v[3] = st.slots, v[4] = st.tombstones, v[5] = st.evictions;
            v[6] = st.expirations, v[7] = st.resizes, v[8] = st.recoveries;
        }
        break;
    }
    case MULTIMAP_TYPE: {
        multimapStats st;
        if (multimapGetStats(c->h.mm, &st) == DKSHM_OK) {
            v[0] = st.count, v[1] = st.height, v[2] = st.leaves;
            v[3] = st.inner, v[4] = st.nodeBytes, v[5] = st.entryBytes;
            v[6] = st.keyBlocks, v[7] = st.keyBytes, v[8] = st.recoveries;
        }
        break;
    }
    case MULTILIST_TYPE: {
        multilistStats st;
        if (multilistGetStats(c->h.ml, &st) == DKSHM_OK) {
            v[0] = st.count, v[1] = st.bytes, v[2] = st.pushes;
            v[3] = st.pops, v[4] = st.cachedNodes, v[5] = st.cachedBytes;
            v[6] = st.recoveries, v[7] = st.shutdown;
        }
        break;
    }
    case MULTIARRAY_TYPE: {
        multiarrayStats st;
        if (multiarrayGetStats(c->h.ma, &st) == DKSHM_OK) {
            v[0] = st.count, v[1] = st.capacity, v[2] = st.blockBytes;
            v[3] = st.rebuilds, v[4] = st.recoveries;
        }
        break;
    }
    default: {
        OSRegulateStats st;
        if (OSRegulateGetStats(c->h.os, &st) == DKSHM_OK) {
            v[0] = st.held, v[1] = st.acquired, v[2] = st.reclaimed;
            v[3] = st.rateDenied;
        }
        break;
    }
    }
    return XXH3_64bits(v, sizeof v);
}

/* Container C's own check: OK, or an error with WHY. */
static int contCheck(contHandle *c, char *why, size_t len) {
    switch (c->type) {
    case MULTIDICT_TYPE:
        return multidictCheck(c->h.md, why, len);
    case MULTIMAP_TYPE:
        return multimapCheck(c->h.mm, why, len);
    case MULTILIST_TYPE:
        return multilistCheck(c->h.ml, why, len);
    case MULTIARRAY_TYPE:
        return multiarrayCheck(c->h.ma, why, len);
    default:
        return OSRegulateCheck(c->h.os, why, len);
    }
}

/* The blocks of container C (root ROOT), into L. */
static int contWalk(contHandle *c, dkoff root, blockList *l) {
    switch (c->type) {
    case MULTIDICT_TYPE:
        return multidictForEachBlock(c->h.md, collectBlock, l);
    case MULTIMAP_TYPE:
        return multimapForEachBlock(c->h.mm, collectBlock, l);
    case MULTILIST_TYPE:
        return multilistForEachBlock(c->h.ml, collectBlock, l);
    case MULTIARRAY_TYPE:
        return multiarrayForEachBlock(c->h.ma, collectBlock, l);
    default:
        /* A regulator is its root block. */
        return collectBlock(l, root, 0, 1);
    }
}

static dkoff contRootOff(contHandle *c, dkoff root) {
    switch (c->type) {
    case MULTIDICT_TYPE:
        return multidictRootOff(c->h.md);
    case MULTIMAP_TYPE:
        return multimapRootOff(c->h.mm);
    case MULTILIST_TYPE:
        return multilistRootOff(c->h.ml);
    case MULTIARRAY_TYPE:
        return multiarrayRootOff(c->h.ma);
    default:
        return root; /* OSRegulate does not say */
    }
}

static int compareOwnerOffs(const void *a, const void *b) {
    const owner *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Every container of the snapshot's directory: its own check (opened
 * read-only, which checks optimistically), then the walk of its blocks,
 * which become owners. */
static void checkContainers(checkCtx *c, const dkHeader *h,
                            const uint8_t *meta, owner **owners,
                            size_t *nowners) {
    issues *o = &c->out;
    dkshm *s = c->s;
    const dkDirEntry *dir = (const dkDirEntry *)(meta + h->directory);
    o->area = AREA_CONTAINERS;
    for (uint32_t i = 0; i < h->maxObjects; i++) {
        const dkDirEntry *e = &dir[i];
        if (!isContainer(e->type) ||
            !memchr(e->name, '\0', sizeof e->name) ||
            dkshmValidateObjectName(e->name) != DKSHM_OK ||
            e->root < h->heap || e->root >= h->heap + h->heapSize)
            continue; /* the directory's check reported it */
        char where[160];
        snprintf(where, sizeof where, "%s \"%s\"", typeNames[e->type],
                 e->name);
        contHandle ch;
        int rc = contOpen(s, e->name, e->type, &ch);
        if (rc != DKSHM_OK) {
            c->walkIncomplete = true;
            if (rc == DKSHM_NOTFOUND || rc == DKSHM_TYPE)
                c->tablesChanged = true; /* gone or replaced meanwhile */
            else if (rc == DKSHM_CORRUPT || rc == DKSHM_VERSION)
                addIssue(o, ISSUE_PROBLEM, where,
                         "cannot be opened: %s (its root block at 0x%" PRIx64
                         " is damaged)",
                         dkshmStrerror(rc), e->root);
            else {
                if (rc == DKSHM_BUSY)
                    c->contChanged = true;
                addIssue(o, ISSUE_WARNING, where,
                         "cannot be opened: %s: not checked",
                         dkshmStrerror(rc));
            }
            continue;
        }
        if (contRootOff(&ch, e->root) != e->root) {
            /* The name was bound to another root since the snapshot. */
            c->tablesChanged = true;
            c->walkIncomplete = true;
            contClose(&ch);
            continue;
        }
        c->containers++;
        uint64_t before = contFingerprint(&ch);
        char why[256] = "";
        rc = contCheck(&ch, why, sizeof why);
        if (rc == DKSHM_CORRUPT)
            addIssue(o, c->deadLocks ? ISSUE_WARNING : ISSUE_PROBLEM, where,
                     "%s%s", *why ? why : "damaged",
                     c->deadLocks ? " (a dead process holds a lock: recovery "
                                    "may repair it; 'dkshm-tool reap')"
                                  : "");
        else if (rc == DKSHM_BUSY) {
            c->contChanged = true;
            addIssue(o, ISSUE_WARNING, where,
                     "kept changing, or is locked by a dead process not "
                     "recovered yet ('dkshm-tool reap'): not checked");
        } else if (rc != DKSHM_OK)
            addIssue(o, ISSUE_WARNING, where, "not checked: %s",
                     *why ? why : dkshmStrerror(rc));
        blockList bl = {0};
        rc = contWalk(&ch, e->root, &bl);
        if (rc != DKSHM_OK || bl.rc != DKSHM_OK) {
            c->walkIncomplete = true;
            if (rc == DKSHM_BUSY)
                c->contChanged = true;
            if (rc != DKSHM_CORRUPT || c->out.count[ISSUE_PROBLEM] == 0)
                addIssue(o, ISSUE_WARNING, where,
                         "its blocks could not all be walked (%s): "
                         "ownership not checked",
                         dkshmStrerror(bl.rc ? bl.rc : rc));
        } else {
            /* A read-only walk may be retried by the container and
             * report a block again: once per object. */
            qsort(bl.v, bl.n, sizeof *bl.v, compareOwnerOffs);
            for (size_t k = 0; k < bl.n; k++) {
                if (k && bl.v[k].off == bl.v[k - 1].off)
                    continue;
                owner w = bl.v[k];
                w.entry = i;
                w.group = e->root;
                pushOwner(owners, nowners, w);
            }
        }
        scratchFree(bl.v);
        if (contFingerprint(&ch) != before)
            c->contChanged = true;
        contClose(&ch);
    }
    o->area = AREA_TABLES;
}

/* Every live allocation owned (RECOVERY.md section 1): a block nobody owns
 * is a leak; a container block must be a live allocation large enough.
 * OWNERS is sorted by offset. */
static void checkLeaks(checkCtx *c, const uint8_t *meta, const dkHeader *h,
                       const owner *owners, size_t n) {
    issues *o = &c->out;
    if (!c->liveOk)
        return;
    o->area = AREA_CONTAINERS;
    if (c->walkIncomplete) {
        addIssue(o, ISSUE_WARNING, "ownership",
                 "not every container could be walked: leaks not looked for");
        o->area = AREA_TABLES;
        return;
    }
    c->ownership = true;
    const offList *live = &c->live;
    const char *maybe =
        c->deadLocks
            ? " (a dead process's interrupted operation, which recovery "
              "rolls back, may own it: 'dkshm-tool reap')"
        : c->userObjects ? " (an application object, whose blocks the tool "
                           "cannot walk, may own it)"
        /* A block from a plain memboundAlloc is owned by the process that
         * holds its address: no walk sees that owner, and two quiet looks
         * at a process that keeps such blocks find the same ones. */
        : c->liveProcs ? " (unless one of the live processes attached holds "
                         "it from a plain memboundAlloc)"
                       : "";
    int kind = *maybe ? ISSUE_WARNING : ISSUE_PROBLEM;
    for (size_t i = 0; i < n; i++) {
        const owner *w = &owners[i];
        if (w->what != OWN_BLOCK || (i && owners[i - 1].off == w->off &&
                                     owners[i - 1].what == OWN_BLOCK))
            continue;
        ssize_t k = findAllocation(live, w->off);
        char where[64], who[192];
        snprintf(where, sizeof where, "block 0x%" PRIx64, w->off);
        ownerText(c, meta, h, w, who, sizeof who);
        if (k < 0)
            addIssue(o, c->deadLocks ? ISSUE_WARNING : ISSUE_PROBLEM, where,
                     "%s, but not a live allocation", who);
        else if (w->bytes > live->v[k].size)
            addIssue(o, c->deadLocks ? ISSUE_WARNING : ISSUE_PROBLEM, where,
                     "%s needs %" PRIu64 " bytes, its allocation has %" PRIu64,
                     who, w->bytes, live->v[k].size);
    }
    /* Allocations in order, owners in order: one merge. An owner inside
     * an allocation (an application root bound to an interior offset)
     * owns it too. */
    size_t j = 0, shown = 0;
    for (size_t i = 0; i < live->n; i++) {
        const allocation *a = &live->v[i];
        while (j < n && owners[j].off < a->off)
            j++;
        if (j < n && owners[j].off - a->off < a->size)
            continue;
        c->leaks++;
        c->leakBytes += a->size;
        c->leakSig = c->leakSig * 1099511628211ull + a->off;
        if (shown++ < 16) {
            char where[64];
            snprintf(where, sizeof where, "block 0x%" PRIx64, a->off);
            addIssue(o, kind, where,
                     "live allocation of %" PRIu64
                     " bytes owned by no container, object or in-flight "
                     "list: leaked%s",
                     a->size, maybe);
        }
    }
    if (shown > 16)
        addIssue(o, kind, "allocator",
                 "%zu more leaked allocations (%" PRIu64 " leaked blocks, "
                 "%" PRIu64 " bytes in all)%s",
                 shown - 16, c->leaks, c->leakBytes, maybe);
    o->area = AREA_TABLES;
}

/* The words of the process table that say who is attached and what it
 * holds in flight: compared before and after to see change. */
static uint64_t procFingerprint(dkshm *s, const dkHeader *h) {
    const dkProcSlot *tab = (const dkProcSlot *)(s->base + h->procTable);
    uint64_t acc = 0;
    for (uint32_t i = 0; i < h->maxProcs; i++) {
        acc = acc * 1099511628211ull +
              __atomic_load_n(&tab[i].word, __ATOMIC_RELAXED);
        for (int k = 0; k < DK_INFLIGHT_MAX; k++)
            acc = acc * 31 +
                  __atomic_load_n(&tab[i].inflight[k], __ATOMIC_RELAXED);
    }
    return acc;
}

/* What every attached process has done: the sum of the counters that
 * grow with each change (allocations and frees, and with WRITES the
 * containers' writes). The
 * allocator's own change detection can miss an allocation and a free that
 * restore its metadata word for word; these only grow. */
static uint64_t activity(dkshm *s, bool writes) {
    uint64_t sum = 0;
    for (uint32_t i = 0; i < s->maxProcs; i++) {
        const dkProcSlot *p = dkSlotAt(s, i);
        sum += __atomic_load_n(&p->counters[DKSHM_CTR_ALLOCS],
                               __ATOMIC_RELAXED) +
               __atomic_load_n(&p->counters[DKSHM_CTR_FREES],
                               __ATOMIC_RELAXED);
        if (writes)
            sum += __atomic_load_n(&p->counters[DKSHM_CTR_WRITES],
                                   __ATOMIC_RELAXED);
    }
    return sum;
}

#define SNAPSHOT_TRIES 2000

static void checkFn(void *ctx) {
    checkCtx *c = ctx;
    dkshm *s = c->s;
    dkHeader h;
    memset(&h, 0, sizeof h);
    copyWords(&h, s->hdr, sizeof h);
    if (!checkHeaderFields(c, &h)) {
        addIssue(&c->out, ISSUE_WARNING, "segment",
                 "header invalid: tables not checked");
        return;
    }
    uint64_t finger = procFingerprint(s, &h);
    uint64_t act = activity(s, true), allocAct = activity(s, false);
    size_t allocBefore = 0, usedBefore = 0;
    membound *m0 = h.allocRoot ? allocatorOf(s) : NULL;
    if (m0) {
        allocBefore = memboundCurrentAllocationCount(m0);
        usedBefore = memboundBytesUsed(m0);
    }

    /* A consistent copy of [0, heap): header, process table, directory. */
    uint8_t *meta = scratchCalloc(1, h.heap);
    bool consistent = false, deadWriter = false;
    fastMutexState dl;
    memset(&dl, 0, sizeof dl);
    uint32_t seq0 = __atomic_load_n(&s->hdr->dirSeq, __ATOMIC_ACQUIRE);
    for (int tries = 0; tries < SNAPSHOT_TRIES && !consistent; tries++) {
        uint32_t seq = __atomic_load_n(&s->hdr->dirSeq, __ATOMIC_ACQUIRE);
        if (seq & 1) {
            if (fastMutexInspect(s, &s->hdr->dirLock, &dl) == DKSHM_OK &&
                (!dl.held || dl.ownerDead)) {
                /* Nobody alive is changing it: what is there stays. */
                copyWords(meta, s->base, h.heap);
                deadWriter = dl.held;
                consistent =
                    __atomic_load_n(&s->hdr->dirSeq, __ATOMIC_ACQUIRE) == seq;
                if (!dl.held && consistent)
                    addIssue(&c->out, ISSUE_WARNING, "directory",
                             "sequence word odd (0x%" PRIx32
                             ") with its lock free: left so by a writer "
                             "that died and was rolled back; consistent, "
                             "but read-only readers of the library see the "
                             "directory busy until the next change",
                             seq);
                continue;
            }
            usleep(tries < 100 ? 10 : 1000);
            continue;
        }
        copyWords(meta, s->base, h.heap);
        consistent = !dkSeqReadRetry(&s->hdr->dirSeq, seq);
    }
    if (__atomic_load_n(&s->hdr->dirSeq, __ATOMIC_ACQUIRE) != seq0)
        c->tablesChanged = true;
    const dkHeader *sh = (const dkHeader *)meta;
    owner *owners = NULL;
    size_t nowners = 0;
    if (!consistent) {
        addIssue(&c->out, ISSUE_WARNING, "directory",
                 "changed throughout the check (pid %" PRIu32
                 " holds its lock): not checked",
                 dl.ownerPid);
        c->tablesChanged = true;
        scratchFree(meta);
        return;
    }

    /* The directory lock, its undo log and sequence word. */
    const dkUndo *du = (const dkUndo *)sh->dirUndo;
    if (sh->dirLock.undo != offsetof(dkHeader, dirUndo))
        addIssue(&c->out, ISSUE_PROBLEM, "directory lock",
                 "undo log offset 0x%" PRIx64 ", expected 0x%zx",
                 sh->dirLock.undo, offsetof(dkHeader, dirUndo));
    if (du->cap != DK_DIR_UNDO_RECS)
        addIssue(&c->out, ISSUE_PROBLEM, "directory undo log",
                 "capacity %" PRIu32 ", expected %u", du->cap,
                 DK_DIR_UNDO_RECS);
    fastMutexInspect(s, &s->hdr->dirLock, &dl);
    uint32_t lockWord = sh->dirLock.word & DK_ID_MASK;
    if (lockWord && !(lockWord & DK_ID_RAWPID) &&
        (lockWord & ((1u << DK_ID_SLOT_BITS) - 1)) >= h.maxProcs)
        addIssue(&c->out, ISSUE_PROBLEM, "directory lock",
                 "owner id 0x%" PRIx32 " names a slot past the table",
                 lockWord);
    if (sh->dirLock.word == 0 && du->count != 0)
        addIssue(&c->out, ISSUE_PROBLEM, "directory lock",
                 "free, but its undo log holds %" PRIu32
                 " records (an operation nobody will roll back)",
                 du->count);
    if (deadWriter || (dl.held && dl.ownerDead)) {
        addIssue(&c->out, ISSUE_WARNING, "directory lock",
                 "held by dead pid %" PRIu32 " with %" PRIu32
                 " undo records: checked as it will be once rolled back",
                 dl.ownerPid, du->count);
        virtualRollback(c, meta, h.heap, du, "directory undo log");
    } else if (dl.held) {
        c->tablesChanged = true;
    }
    if (sh->objects > h.maxObjects)
        addIssue(&c->out, ISSUE_PROBLEM, "header",
                 "object count %" PRIu32 " exceeds the %" PRIu32 " entries",
                 sh->objects, h.maxObjects);

    fastMutexState il;
    if (fastMutexInspect(s, &s->hdr->initLock, &il) == DKSHM_OK && il.held &&
        il.ownerDead)
        addIssue(&c->out, ISSUE_WARNING, "allocator-init lock",
                 "held by dead pid %" PRIu32
                 ": the next process that sets the allocator up recovers it",
                 il.ownerPid);

    checkProcs(c, &h, meta, &owners, &nowners);
    checkDirectory(c, &h, meta, &owners, &nowners);
    checkAllocator(c, sh, owners, nowners);
    c->out.area = AREA_TABLES;
    if (deadWriter || (dl.held && dl.ownerDead))
        c->deadLocks = true;
    checkContainers(c, &h, meta, &owners, &nowners);
    checkOwners(c, meta, &h, owners, nowners);
    checkLeaks(c, meta, &h, owners, nowners);
    scratchFree(owners);
    scratchFree(meta);
    scratchFree(c->live.v);
    c->live = (offList){0};

    if (procFingerprint(s, &h) != finger)
        c->tablesChanged = true;
    if (activity(s, true) != act)
        c->contChanged = true;
    if (activity(s, false) != allocAct)
        c->allocChanged = true;
    if (m0 && (memboundCurrentAllocationCount(m0) != allocBefore ||
               memboundBytesUsed(m0) != usedBefore))
        c->allocChanged = true;
}

/* Attempts before the findings about an area that changed during every
 * attempt are reported as inconclusive. */
#define CHECK_ATTEMPTS 12

static const char *issueKinds[] = {"problem", "warning", "unchecked"};

static void checkRender(const char *name, const checkCtx *c, int attempts,
                        bool json) {
    const issues *l = &c->out;
    if (json) {
        jsonOut j;
        jsonInit(&j, stdout);
        jsonObjOpen(&j, NULL);
        jsonStr(&j, "segment", name);
        jsonBool(&j, "ok", l->count[ISSUE_PROBLEM] == 0);
        static const char *keys[] = {"problems", "warnings", "unchecked"};
        for (int k = 0; k < 3; k++) {
            jsonArrOpen(&j, keys[k]);
            for (size_t i = 0; i < l->n; i++) {
                if (l->v[i].kind != k)
                    continue;
                jsonObjOpen(&j, NULL);
                jsonStr(&j, "where", l->v[i].where);
                jsonStr(&j, "what", l->v[i].what);
                jsonObjClose(&j);
            }
            jsonArrClose(&j);
        }
        jsonObjOpen(&j, "checked");
        jsonU64(&j, "processSlots", c->slots);
        jsonU64(&j, "objects", c->objects);
        jsonBool(&j, "allocator", c->allocChecked);
        jsonU64(&j, "allocations", c->allocations);
        jsonU64(&j, "containers", c->containers);
        jsonBool(&j, "ownership", c->ownership);
        jsonObjClose(&j);
        jsonU64(&j, "leakedBlocks", c->leaks);
        jsonU64(&j, "leakedBytes", c->leakBytes);
        jsonU64(&j, "attempts", (uint64_t)attempts);
        jsonObjClose(&j);
        jsonEnd(&j);
        return;
    }
    if (l->n) {
        table t;
        tableInit(&t, 2, "<- <- <-");
        for (size_t i = 0; i < l->n; i++) {
            tableCell(&t, "%s", issueKinds[l->v[i].kind]);
            tableCell(&t, "%s:", l->v[i].where);
            tableCell(&t, "%s", l->v[i].what);
        }
        tablePrint(&t, stdout);
        tableFree(&t);
    }
    printf("%s: %s: %zu problem%s, %zu warning%s; checked header, %" PRIu32
           " process slots, %" PRIu32 " object%s",
           name, l->count[ISSUE_PROBLEM] ? "FAILED" : "OK",
           l->count[ISSUE_PROBLEM], l->count[ISSUE_PROBLEM] == 1 ? "" : "s",
           l->count[ISSUE_WARNING], l->count[ISSUE_WARNING] == 1 ? "" : "s",
           c->slots, c->objects, c->objects == 1 ? "" : "s");
    if (c->allocChecked)
        printf(", allocator (%" PRIu64 " allocation%s)", c->allocations,
               c->allocations == 1 ? "" : "s");
    if (c->containers)
        printf(", %" PRIu32 " container%s", c->containers,
               c->containers == 1 ? "" : "s");
    if (c->ownership)
        printf(", ownership");
    if (l->count[ISSUE_UNCHECKED])
        printf("; %zu object%s not checked", l->count[ISSUE_UNCHECKED],
               l->count[ISSUE_UNCHECKED] == 1 ? "" : "s");
    printf("\n");
}

static int cmdCheck(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"json", false}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 1, 1, 1, &a);
    if (st >= 0)
        return st;
    bool json = a.set[0];
    char name[DKSHM_NAME_MAX + 1];
    if ((st = segmentName(c, a.pos[0], name)) >= 0)
        return st;
    dkshm *s;
    if ((st = openSegment(c, name, DKSHM_RDONLY, json, &s)) >= 0)
        return st;
    /* Each area's findings are taken from the first attempt during which
     * it did not change; an area busy in every attempt is reported with
     * its problems turned into warnings. */
    checkCtx cc, result;
    memset(&result, 0, sizeof result);
    bool haveArea[AREAS] = {false, false, false};
    /* A live process may hold a block between two calls that no walk can
     * see (a plain memboundAlloc): with live processes attached, leaks
     * are believed when two quiet attempts some time apart find the same
     * ones. */
    uint64_t leakSig = 0;
    bool haveLeakSig = false;
    int attempt = 0;
    for (;;) {
        attempt++;
        memset(&cc, 0, sizeof cc);
        cc.s = s;
        if (!guarded(checkFn, &cc)) {
            issuesFree(&cc.out);
            issuesFree(&result.out);
            detachAfter(s);
            reportOpenError(c, name, DKSHM_CORRUPT, faultText);
            if (json)
                jsonError(name, DKSHM_CORRUPT, faultText, EXIT_OPEN);
            return EXIT_OPEN;
        }
        /* Who owns a block is only known while no block moves: any
         * change casts doubt on the containers' area. */
        bool changed[AREAS] = {cc.tablesChanged, cc.allocChanged,
                               cc.contChanged || cc.allocChanged ||
                                   cc.tablesChanged};
        bool confirming = false;
        if (!changed[AREA_CONTAINERS] && cc.liveProcs && cc.leaks &&
            !haveArea[AREA_CONTAINERS]) {
            if (!haveLeakSig || leakSig != cc.leakSig) {
                changed[AREA_CONTAINERS] = true;
                confirming = true;
            }
            leakSig = cc.leakSig;
            haveLeakSig = true;
        }
        bool last = attempt == CHECK_ATTEMPTS;
        if (attempt == 1 && cc.out.count[ISSUE_PROBLEM] == 0) {
            result = cc;
            break;
        }
        bool done = true;
        for (int area = 0; area < AREAS; area++) {
            if (haveArea[area])
                continue;
            if (changed[area] && !last) {
                done = false;
                continue;
            }
            for (size_t i = 0; i < cc.out.n; i++) {
                const issue *v = &cc.out.v[i];
                if (v->area != area)
                    continue;
                result.out.area = area;
                if (changed[area] && v->kind == ISSUE_PROBLEM)
                    addIssue(&result.out, ISSUE_WARNING, v->where,
                             "inconclusive (%s changed during every "
                             "attempt): %s",
                             area == AREA_ALLOC        ? "the allocator"
                             : area == AREA_CONTAINERS ? "the containers"
                                                       : "the tables",
                             v->what);
                else
                    addIssue(&result.out, v->kind, v->where, "%s", v->what);
            }
            haveArea[area] = true;
        }
        result.slots = cc.slots;
        result.objects = cc.objects;
        result.allocChecked = cc.allocChecked;
        result.allocations = cc.allocations;
        result.containers = cc.containers;
        result.ownership = cc.ownership;
        result.leaks = cc.leaks;
        result.leakBytes = cc.leakBytes;
        issuesFree(&cc.out);
        if (done)
            break;
        /* Something changed while we looked: look again. */
        usleep(confirming ? 100000u : 5000u * (unsigned)attempt);
    }
    cc = result;
    detachAfter(s);
    checkRender(name, &cc, attempt, json);
    int status = cc.out.count[ISSUE_PROBLEM] ? EXIT_PROBLEMS : EXIT_OK;
    issuesFree(&cc.out);
    return status;
}

/* ---- reap ---------------------------------------------------------------- */

typedef struct reapReg { /* per process: an OSRegulate of a reaped segment */
    char name[DKSHM_OBJNAME_MAX + 1];
    uint32_t deadHeld; /* permits of dead holders when scanned */
    uint32_t released; /* given back by OSRegulateReclaim */
    bool tried;        /* OSRegulateReclaim was called */
    int rc;            /* of opening it and reclaiming */
} reapReg;

typedef struct reapSeg { /* per process */
    char name[DKSHM_NAME_MAX + 1];
    bool skipped;
    int rc;
    char reason[256];
    uint32_t live;
    procData *dead; /* dead processes before */
    size_t ndead;
    bool *gone; /* dead[i] was reaped */
    size_t reaped, remaining;
    bool ephemeral;
    uint64_t ageSec;
    bool orphan;
    const char *orphanWhy;
    bool unlinked;
    int unlinkRc;
    int attachRc;    /* of the read-write attach that reaps */
    dkoff allocRoot; /* to name the allocator's lock */
    lockData *locks; /* the locks dead processes hold, named as info does */
    int nlocks;
    reapReg *regs; /* its OSRegulates with a holder limit */
    size_t nregs;
    uint64_t deadPermits; /* their permits held by the dead, when scanned */
    uint64_t released;    /* permits given back */
    bool reclaimFailed;   /* a regulator could not be reclaimed */
} reapSeg;

typedef struct reapOpts { /* per process */
    bool dryRun, orphans, haveAge;
    uint64_t olderThan; /* seconds */
} reapOpts;

typedef struct reapScanCtx {
    dkshm *s;
    reapSeg *r;
    const reapOpts *o;
    segData d;
    int rc;
} reapScanCtx;

static void reapScanFn(void *ctx) {
    reapScanCtx *g = ctx;
    reapSeg *r = g->r;
    dkshmInfo info;
    g->rc = dkshmGetInfo(g->s, &info);
    if (g->rc != DKSHM_OK)
        return;
    g->rc = gatherProcs(g->s, &g->d);
    if (g->rc != DKSHM_OK)
        return;
    r->live = g->d.live;
    r->allocRoot = __atomic_load_n(&g->s->hdr->allocRoot, __ATOMIC_ACQUIRE);
    r->ephemeral = (info.flags & DKSHM_EPHEMERAL) != 0;
    uint64_t now = dkRealNs();
    r->ageSec = info.createTimeNs && now > info.createTimeNs
                    ? (now - info.createTimeNs) / 1000000000ull
                    : 0;
    r->dead = xcalloc(g->d.dead, sizeof *r->dead);
    r->gone = xcalloc(g->d.dead, sizeof *r->gone);
    r->ndead = 0;
    for (size_t i = 0; i < g->d.nprocs; i++)
        if (!g->d.procs[i].alive)
            r->dead[r->ndead++] = g->d.procs[i];
    /* The objects: the regulators whose permits dead holders keep, and
     * the names of the container locks dead processes hold (as info
     * names them). A directory that cannot be read leaves both unknown. */
    membound *m = allocatorOf(g->s);
    gatherObjects(g->s, &g->d, m);
    gatherLocks(g->s, &g->d, m);
    r->locks = g->d.locks;
    r->nlocks = g->d.nlocks;
    g->d.locks = NULL;
    g->d.nlocks = g->d.capLocks = 0;
    r->regs = xcalloc(g->d.nobjs ? g->d.nobjs : 1, sizeof *r->regs);
    for (size_t i = 0; i < g->d.nobjs; i++) {
        const objData *o = &g->d.objs[i];
        if (o->o.type != OSREGULATE_TYPE || o->statRc != DKSHM_OK ||
            o->st.os.maxHolders == 0)
            continue;
        reapReg *x = &r->regs[r->nregs++];
        snprintf(x->name, sizeof x->name, "%s", o->o.name);
        x->deadHeld = o->st.os.deadHeld;
        r->deadPermits += x->deadHeld;
    }
    if (g->o->orphans && r->live == 0) {
        if (r->ephemeral) {
            r->orphan = true;
            r->orphanWhy = "ephemeral";
        } else if (g->o->haveAge && r->ageSec >= g->o->olderThan) {
            r->orphan = true;
            r->orphanWhy = "older than the limit";
        }
    }
}

typedef struct reapAfterCtx {
    dkshm *s;
    reapSeg *r;
    segData d; /* the table afterwards */
    int rc;
} reapAfterCtx;

/* Give back the permits dead holders keep in each regulator of R. */
static void reapRegulators(dkshm *s, reapSeg *r) {
    for (size_t i = 0; i < r->nregs; i++) {
        reapReg *x = &r->regs[i];
        contHandle c;
        x->tried = true;
        x->rc = contOpen(s, x->name, OSREGULATE_TYPE, &c);
        if (x->rc != DKSHM_OK) {
            r->reclaimFailed = true;
            continue;
        }
        x->rc = OSRegulateReclaim(c.h.os, &x->released);
        contClose(&c);
        if (x->rc != DKSHM_OK)
            r->reclaimFailed = true;
        r->released += x->released;
    }
}

/* After the read-write attach (which reaps) and dkshmReap: which of the
 * dead processes are gone from the table; then the regulators' permits
 * of dead holders. */
static void reapAfterFn(void *ctx) {
    reapAfterCtx *g = ctx;
    reapSeg *r = g->r;
    size_t reaped = 0;
    g->rc = dkshmReap(g->s, &reaped);
    if (g->rc != DKSHM_OK)
        return;
    segData *d = &g->d;
    g->rc = gatherProcs(g->s, d);
    if (g->rc != DKSHM_OK)
        return;
    r->reaped = r->remaining = 0;
    for (size_t i = 0; i < r->ndead; i++) {
        bool still = false;
        for (size_t k = 0; k < d->nprocs; k++)
            if (d->procs[k].p.slot == r->dead[i].p.slot &&
                d->procs[k].p.pid == r->dead[i].p.pid && !d->procs[k].alive)
                still = true;
        r->gone[i] = !still;
        if (still)
            r->remaining++;
        else
            r->reaped++;
    }
    reapRegulators(g->s, r);
}

static void reapOne(const char *name, const reapOpts *o, reapSeg *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    dkshm *s;
    bool faulted;
    int rc = attachGuarded(name, DKSHM_RDONLY, &s, &faulted);
    if (rc != DKSHM_OK) {
        char detail[192];
        if (faulted)
            snprintf(detail, sizeof detail, "%s", faultText);
        else
            diagnose(name, rc, detail, sizeof detail);
        r->skipped = true;
        r->rc = rc;
        snprintf(r->reason, sizeof r->reason, "%s%s%s", dkshmStrerror(rc),
                 *detail ? ": " : "", detail);
        return;
    }
    reapScanCtx g = {.s = s, .r = r, .o = o};
    bool ok = guarded(reapScanFn, &g);
    segDataFree(&g.d);
    detachAfter(s);
    if (!ok || g.rc != DKSHM_OK) {
        r->skipped = true;
        r->rc = ok ? g.rc : DKSHM_CORRUPT;
        snprintf(r->reason, sizeof r->reason, "%s",
                 ok ? dkshmStrerror(g.rc) : faultText);
        return;
    }
    if (o->dryRun)
        return;
    if (r->orphan) {
        r->unlinkRc = dkshmUnlink(name);
        r->unlinked = r->unlinkRc == DKSHM_OK;
        return;
    }
    /* Permits of dead holders outlive the holders' slots (an attach may
     * have reaped those already): they alone are a reason to reap. */
    if (r->ndead == 0 && r->deadPermits == 0)
        return;
    /* Attaching read-write reaps the dead already; dkshmReap then makes
     * sure, and the table afterwards says what went. */
    r->attachRc = attachGuarded(name, 0, &s, &faulted);
    if (r->attachRc != DKSHM_OK) {
        r->remaining = r->ndead;
        return;
    }
    reapAfterCtx a = {.s = s, .r = r};
    ok = guarded(reapAfterFn, &a);
    segDataFree(&a.d);
    detachAfter(s);
    if (!ok || a.rc != DKSHM_OK) {
        r->attachRc = ok ? a.rc : DKSHM_CORRUPT;
        r->remaining = r->ndead;
        r->reaped = 0;
    }
}

static void reapSegFree(reapSeg *r) {
    free(r->dead);
    free(r->gone);
    free(r->locks);
    free(r->regs);
}

/* The name of the lock at OFF in R: as info names it (the directory, the
 * allocator's, a container's by its object, e.g. multilist "jobs" +0x40),
 * else by its offset. */
static const char *lockLabel(const reapSeg *r, dkoff off, char *buf) {
    for (int i = 0; i < r->nlocks; i++)
        if (r->locks[i].off == off)
            return r->locks[i].name;
    if (off == offsetof(dkHeader, dirLock))
        return "directory";
    if (off == offsetof(dkHeader, initLock))
        return "allocator-init";
    if (r->allocRoot && off == r->allocRoot)
        return "allocator";
    snprintf(buf, 32, "lock@0x%" PRIx64, off);
    return buf;
}

/* Locks a dead process was recorded holding, as text. */
static void heldText(const reapSeg *r, const procData *p, char *buf,
                     size_t len) {
    buf[0] = '\0';
    for (uint32_t k = 0; k < p->nheld; k++) {
        size_t n = strlen(buf);
        char tmp[32];
        snprintf(buf + n, len - n, "%s%s", n ? ", " : "",
                 lockLabel(r, p->held[k], tmp));
    }
}

static void reapRender(const reapSeg *v, size_t n, const reapOpts *o,
                       bool json) {
    if (json) {
        jsonOut j;
        jsonInit(&j, stdout);
        jsonObjOpen(&j, NULL);
        jsonBool(&j, "dryRun", o->dryRun);
        jsonBool(&j, "orphans", o->orphans);
        if (o->haveAge)
            jsonU64(&j, "olderThanSeconds", o->olderThan);
        jsonArrOpen(&j, "segments");
        for (size_t i = 0; i < n; i++) {
            const reapSeg *r = &v[i];
            if (r->skipped)
                continue;
            jsonObjOpen(&j, NULL);
            jsonStr(&j, "name", r->name);
            jsonU64(&j, "liveProcesses", r->live);
            jsonBool(&j, "ephemeral", r->ephemeral);
            jsonU64(&j, "ageSeconds", r->ageSec);
            jsonArrOpen(&j, "deadProcesses");
            for (size_t k = 0; k < r->ndead; k++) {
                const procData *p = &r->dead[k];
                jsonObjOpen(&j, NULL);
                jsonU64(&j, "slot", p->p.slot);
                jsonU64(&j, "pid", p->p.pid);
                jsonStr(&j, "state", stateName(p->p.state));
                jsonBool(&j, "alive", false);
                jsonU64(&j, "inflight", p->p.inflight);
                jsonU64(&j, "readLocks", p->p.readLocks);
                jsonArrOpen(&j, "heldLocks");
                for (uint32_t h = 0; h < p->nheld; h++) {
                    char tmp[32];
                    jsonStr(&j, NULL, lockLabel(r, p->held[h], tmp));
                }
                jsonArrClose(&j);
                if (!o->dryRun && !r->orphan)
                    jsonBool(&j, "reaped", r->gone[k]);
                jsonObjClose(&j);
            }
            jsonArrClose(&j);
            jsonU64(&j, "reaped", r->reaped);
            jsonU64(&j, "remaining", o->dryRun ? r->ndead : r->remaining);
            jsonArrOpen(&j, "regulators");
            for (size_t k = 0; k < r->nregs; k++) {
                const reapReg *x = &r->regs[k];
                jsonObjOpen(&j, NULL);
                jsonStr(&j, "name", x->name);
                jsonU64(&j, "deadHeld", x->deadHeld);
                if (!o->dryRun && !r->orphan)
                    jsonU64(&j, "released", x->released);
                if (x->tried && x->rc != DKSHM_OK)
                    jsonStr(&j, "error", dkshmStrerror(x->rc));
                jsonObjClose(&j);
            }
            jsonArrClose(&j);
            jsonU64(&j, "deadHeldPermits", r->deadPermits);
            if (!o->dryRun && !r->orphan)
                jsonU64(&j, "permitsReleased", r->released);
            if (r->attachRc != DKSHM_OK)
                jsonStr(&j, "error", dkshmStrerror(r->attachRc));
            jsonBool(&j, "orphan", r->orphan);
            if (r->orphan)
                jsonStr(&j, "orphanReason", r->orphanWhy);
            jsonBool(&j, "unlinked", r->unlinked);
            if (r->orphan && !o->dryRun && !r->unlinked)
                jsonStr(&j, "unlinkError", dkshmStrerror(r->unlinkRc));
            jsonObjClose(&j);
        }
        jsonArrClose(&j);
        size_t nskip = 0;
        for (size_t i = 0; i < n; i++)
            nskip += v[i].skipped;
        jsonU64(&j, "skippedCount", nskip);
        jsonArrOpen(&j, "skipped");
        for (size_t i = 0; i < n; i++) {
            if (!v[i].skipped)
                continue;
            jsonObjOpen(&j, NULL);
            jsonStr(&j, "name", v[i].name);
            jsonStr(&j, "error", dkshmErrName(v[i].rc));
            jsonStr(&j, "reason", v[i].reason);
            jsonObjClose(&j);
        }
        jsonArrClose(&j);
        jsonObjClose(&j);
        jsonEnd(&j);
        return;
    }
    bool any = false;
    const char *would = o->dryRun ? "would " : "";
    for (size_t i = 0; i < n; i++) {
        const reapSeg *r = &v[i];
        if (r->skipped)
            continue;
        char age[32];
        if (r->orphan) {
            any = true;
            if (o->dryRun || r->unlinked)
                printf("%s: %sunlink%s (%s, %s old, no live process)\n",
                       r->name, would, o->dryRun ? "" : "ed", r->orphanWhy,
                       fmtAge(r->ageSec, age));
            else
                printf("%s: could not unlink: %s\n", r->name,
                       dkshmStrerror(r->unlinkRc));
            continue;
        }
        for (size_t k = 0; k < r->ndead; k++) {
            const procData *p = &r->dead[k];
            char held[4096];
            heldText(r, p, held, sizeof held);
            any = true;
            bool done = !o->dryRun && r->gone[k];
            printf("%s: %s pid %" PRIu32 " (slot %" PRIu32 "): %" PRIu32
                   " in-flight block%s%s%s\n",
                   r->name,
                   o->dryRun ? "would reap"
                   : done    ? "reaped"
                             : "could not reap",
                   p->p.pid, p->p.slot, p->p.inflight,
                   p->p.inflight == 1 ? "" : "s",
                   !*held      ? ""
                   : o->dryRun ? ", would recover its locks: "
                   : done      ? ", recovered its locks: "
                               : ", holds locks: ",
                   held);
        }
        for (size_t k = 0; k < r->nregs; k++) {
            const reapReg *x = &r->regs[k];
            char esc[4 * DKSHM_OBJNAME_MAX + 8];
            escapeBytes(x->name, strlen(x->name), esc, sizeof esc);
            if (o->dryRun || !x->tried) {
                if (!x->deadHeld)
                    continue;
                any = true;
                printf("%s: %s %" PRIu32 " permit%s of OSRegulate \"%s\" "
                       "held by dead processes\n",
                       r->name, o->dryRun ? "would release" : "did not release",
                       x->deadHeld, x->deadHeld == 1 ? "" : "s", esc);
            } else if (x->rc != DKSHM_OK) {
                any = true;
                printf("%s: could not release the permits of OSRegulate "
                       "\"%s\": %s\n",
                       r->name, esc, dkshmStrerror(x->rc));
            } else if (x->released || x->deadHeld) {
                any = true;
                printf("%s: released %" PRIu32 " permit%s of OSRegulate "
                       "\"%s\" held by dead processes\n",
                       r->name, x->released, x->released == 1 ? "" : "s", esc);
            }
        }
        if (r->attachRc != DKSHM_OK)
            printf("%s: could not reap: %s\n", r->name,
                   dkshmStrerror(r->attachRc));
    }
    if (!any)
        printf("nothing to %s\n", o->dryRun ? "do" : "reap");
    size_t nskip = 0;
    for (size_t i = 0; i < n; i++)
        nskip += v[i].skipped;
    if (nskip && n > 1)
        printf("%zu other file%s in %s skipped (not usable dkshm "
               "segments)\n",
               nskip, nskip == 1 ? "" : "s", SHM_DIR);
}

static int cmdReap(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"json", false},
                                    {"dry-run", false},
                                    {"orphans", false},
                                    {"older-than", true}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 4, 0, 1, &a);
    if (st >= 0)
        return st;
    bool json = a.set[0];
    reapOpts o = {.dryRun = a.set[1], .orphans = a.set[2]};
    if (a.set[3]) {
        if (!o.orphans) {
            fprintf(stderr, "%s reap: --older-than needs --orphans\n",
                    progName);
            usageHint(c);
            return EXIT_USAGE;
        }
        if (parseDuration(a.val[3], &o.olderThan) != 0) {
            fprintf(stderr,
                    "%s reap: invalid duration '%s' (want e.g. 30s, 10m, "
                    "2h, 1d)\n",
                    progName, a.val[3]);
            return EXIT_USAGE;
        }
        o.haveAge = true;
    }
    reapSeg *v;
    size_t n = 0;
    if (a.npos == 1) {
        char name[DKSHM_NAME_MAX + 1];
        if ((st = segmentName(c, a.pos[0], name)) >= 0)
            return st;
        v = xcalloc(1, sizeof *v);
        reapOne(name, &o, &v[0]);
        n = 1;
        if (v[0].skipped) {
            fprintf(stderr, "%s reap: %s: %s\n", progName, name, v[0].reason);
            if (json)
                jsonError(name, v[0].rc, v[0].reason, EXIT_OPEN);
            reapSegFree(&v[0]);
            free(v);
            return EXIT_OPEN;
        }
    } else {
        size_t nent;
        char **ent = shmEntries(&nent);
        v = xcalloc(nent, sizeof *v);
        for (size_t i = 0; i < nent; i++) {
            char name[DKSHM_NAME_MAX + 1], why[256];
            if (!candidate(ent[i], name, why, sizeof why)) {
                v[n].skipped = true;
                v[n].rc = DKSHM_CORRUPT;
                snprintf(v[n].name, sizeof v[n].name, "%.*s",
                         DKSHM_NAME_MAX - 1, ent[i]);
                snprintf(v[n].reason, sizeof v[n].reason, "%s", why);
                n++;
                continue;
            }
            reapOne(name, &o, &v[n++]);
        }
        for (size_t i = 0; i < nent; i++)
            free(ent[i]);
        free(ent);
    }
    reapRender(v, n, &o, json);
    bool todo = false, left = false;
    for (size_t i = 0; i < n; i++) {
        if (v[i].skipped)
            continue;
        if (v[i].ndead || v[i].orphan || v[i].deadPermits)
            todo = true;
        if (v[i].remaining || (v[i].orphan && !v[i].unlinked) ||
            v[i].attachRc != DKSHM_OK || v[i].reclaimFailed)
            left = true;
    }
    for (size_t i = 0; i < n; i++)
        reapSegFree(&v[i]);
    free(v);
    if (o.dryRun)
        return todo ? EXIT_PROBLEMS : EXIT_OK;
    return left ? EXIT_PROBLEMS : EXIT_OK;
}

/* ---- dump ---------------------------------------------------------------- */

#define DUMP_DEFAULT_LIMIT 64
#define DUMP_MAX_LIMIT (16u << 20)

/* Bytes of each key, value, item or element copied out and shown. */
#define DUMP_VALUE_MAX 1024

typedef struct dumpItem { /* per process: one entry of a container */
    uint64_t index;
    bool hasKey, intKey;
    int64_t ikey;
    uint8_t *key, *val; /* the first DUMP_VALUE_MAX bytes */
    size_t klen, vlen;  /* bytes copied */
    size_t kfull, vfull; /* their whole lengths */
} dumpItem;

typedef struct dumpObj { /* per process */
    dkshmObjectInfo o;
    bool sized;
    uint64_t bytes;
    uint8_t *data; /* the first `shown` bytes of the root, for user types */
    size_t shown;
    const char *note;
    /* Containers. */
    int contRc;       /* of opening it and reading its contents */
    uint64_t count;   /* entries in all */
    dumpItem *items;  /* the first ones, in order */
    size_t nitems, capItems;
    bool unsteady;    /* a list that kept changing while it was read */
    uint32_t elemSize;
    OSRegulateStats os;
} dumpObj;

typedef struct dumpCtx {
    dkshm *s;
    const char *object; /* NULL: all */
    size_t limit;
    dumpObj *objs;
    size_t n;
    int rc;
} dumpCtx;

static uint8_t *copyOut(const void *p, size_t n, size_t *copied) {
    size_t k = n < DUMP_VALUE_MAX ? n : DUMP_VALUE_MAX;
    uint8_t *b = xcalloc(k ? k : 1, 1);
    if (k)
        memcpy(b, p, k);
    *copied = k;
    return b;
}

static void dumpItemsFree(dumpObj *d) {
    for (size_t i = 0; i < d->nitems; i++) {
        free(d->items[i].key);
        free(d->items[i].val);
    }
    free(d->items);
    d->items = NULL;
    d->nitems = d->capItems = 0;
}

static dumpItem *dumpAdd(dumpObj *d) {
    if (d->nitems == d->capItems) {
        size_t cap = d->capItems ? 2 * d->capItems : 16;
        dumpItem *v = realloc(d->items, cap * sizeof *v);
        if (!v) {
            fputs("dkshm-tool: out of memory\n", stderr);
            exit(EXIT_OPEN);
        }
        d->items = v;
        d->capItems = cap;
    }
    dumpItem *it = &d->items[d->nitems];
    memset(it, 0, sizeof *it);
    it->index = d->nitems++;
    return it;
}

typedef struct dumpIter { /* per process */
    dumpObj *d;
    size_t limit;
    dkshm *s;
    bool intKeys;
} dumpIter;

/* multidictIterate / multimapIterate callback. */
static bool dumpPair(void *ctx, const void *key, size_t klen,
                     const void *value, size_t vlen) {
    dumpIter *g = ctx;
    if (g->d->nitems >= g->limit)
        return false;
    dumpItem *it = dumpAdd(g->d);
    it->hasKey = true;
    if (g->intKeys && klen == sizeof(int64_t)) {
        it->intKey = true;
        memcpy(&it->ikey, key, sizeof it->ikey);
    }
    it->key = copyOut(key, klen, &it->klen);
    it->kfull = klen;
    it->val = copyOut(value, vlen, &it->vlen);
    it->vfull = vlen;
    return true;
}

/* multilistForEachItem callback. */
static int dumpListItem(void *ctx, uint64_t index, const void *item,
                        size_t len) {
    dumpIter *g = ctx;
    dumpItem *it = dumpAdd(g->d);
    it->index = index;
    it->val = copyOut(item, len, &it->vlen);
    it->vfull = len;
    return 0;
}

#define DUMP_TRIES 50
/* How long a container's reads are retried while they say BUSY: a read-
 * only multidict read waits up to 5 s for a slow writer on every try, and
 * fifty tries of that is no answer. */
#define DUMP_BUSY_NS (2ull * 1000000000ull)

/* The contents of container D (its first LIMIT entries). */
static void dumpContainer(dkshm *s, dumpObj *d, size_t limit) {
    contHandle c;
    d->contRc = contOpen(s, d->o.name, d->o.type, &c);
    if (d->contRc != DKSHM_OK)
        return;
    dumpIter g = {.d = d, .limit = limit, .s = s};
    int rc = DKSHM_OK;
    switch (d->o.type) {
    case MULTIDICT_TYPE: {
        /* A damaged shard is CORRUPT at once (said as "unreadable"); BUSY
         * (writers, or a dead one a read-only handle cannot recover) is
         * retried, for DUMP_BUSY_NS at most. */
        uint64_t until = dkNowNs() + DUMP_BUSY_NS;
        for (int i = 0; i < DUMP_TRIES; i++) {
            dumpItemsFree(d);
            rc = multidictIterate(c.h.md, dumpPair, &g);
            if (rc != DKSHM_BUSY || dkNowNs() > until)
                break;
            usleep(i < 10 ? 100 : 5000);
        }
        if (rc == DKSHM_OK)
            rc = multidictCount(c.h.md, &d->count);
        break;
    }
    case MULTIMAP_TYPE: {
        uint32_t mode = MULTIMAP_KEYS_BYTES;
        multimapKeyMode(c.h.mm, &mode);
        g.intKeys = mode == MULTIMAP_KEYS_INT64;
        for (int i = 0; i < DUMP_TRIES; i++) {
            dumpItemsFree(d);
            rc = multimapIterate(c.h.mm, NULL, 0, 0, dumpPair, &g);
            if (rc != DKSHM_BUSY)
                break;
            usleep(i < 10 ? 100 : 5000);
        }
        if (rc == DKSHM_OK)
            rc = multimapCount(c.h.mm, &d->count);
        break;
    }
    case MULTILIST_TYPE:
        /* The walk takes no lock: the list says BUSY when a push or pop
         * came in meanwhile (or a change is left uncommitted). */
        d->unsteady = true;
        for (int i = 0; i < DUMP_TRIES && d->unsteady; i++) {
            dumpItemsFree(d);
            rc = multilistForEachItem(c.h.ml, dumpListItem, &g, limit);
            d->unsteady = rc == DKSHM_BUSY;
            if (rc == DKSHM_BUSY)
                usleep(i < 10 ? 100 : 2000);
        }
        if (d->unsteady)
            rc = DKSHM_OK; /* what the last walk saw, said to be unsteady */
        if (rc == DKSHM_OK)
            rc = multilistCount(c.h.ml, &d->count);
        break;
    case MULTIARRAY_TYPE: {
        size_t es = 0;
        if ((rc = multiarrayElemSize(c.h.ma, &es)) != DKSHM_OK ||
            (rc = multiarrayCount(c.h.ma, &d->count)) != DKSHM_OK)
            break;
        d->elemSize = (uint32_t)es;
        uint8_t *elem = scratchCalloc(1, es ? es : 1);
        for (uint64_t i = 0; i < d->count && d->nitems < limit; i++) {
            rc = DKSHM_BUSY;
            for (int k = 0; k < DUMP_TRIES && rc == DKSHM_BUSY; k++) {
                rc = multiarrayGet(c.h.ma, i, elem);
                if (rc == DKSHM_BUSY)
                    usleep(k < 10 ? 100 : 5000);
            }
            if (rc == DKSHM_NOTFOUND) { /* shrunk meanwhile */
                rc = DKSHM_OK;
                break;
            }
            if (rc != DKSHM_OK)
                break;
            dumpItem *it = dumpAdd(d);
            it->index = i;
            it->val = copyOut(elem, es, &it->vlen);
            it->vfull = es;
        }
        scratchFree(elem);
        break;
    }
    default:
        rc = OSRegulateGetStats(c.h.os, &d->os);
        d->count = d->os.held;
        break;
    }
    d->contRc = rc;
    contClose(&c);
}

static void dumpFn(void *ctx) {
    dumpCtx *g = ctx;
    dkshm *s = g->s;
    size_t max = s->hdr->maxObjects, n = 0;
    dkshmObjectInfo *tmp = scratchCalloc(max, sizeof *tmp);
    if (g->object) {
        uint32_t type;
        dkoff root;
        g->rc = findObject(s, g->object, &type, &root);
        if (g->rc == DKSHM_OK) {
            snprintf(tmp[0].name, sizeof tmp[0].name, "%s", g->object);
            tmp[0].type = type;
            tmp[0].root = root;
            n = 1;
        }
    } else {
        g->rc = listObjects(s, tmp, max, &n);
        if (n > max)
            n = max;
    }
    if (g->rc != DKSHM_OK) {
        scratchFree(tmp);
        return;
    }
    membound *m = allocatorOf(s);
    g->objs = xcalloc(n, sizeof *g->objs);
    g->n = n;
    for (size_t i = 0; i < n; i++) {
        dumpObj *d = &g->objs[i];
        d->o = tmp[i];
        size_t sz = 0;
        if (m && memboundUsableSize(m, d->o.root, &sz) == DKSHM_OK) {
            d->sized = true;
            d->bytes = sz;
        }
        if (isContainer(d->o.type)) {
            dumpContainer(s, d, g->limit);
            continue;
        }
        if (d->o.type < DKSHM_TYPE_USER) {
            d->note = "unknown dkshm type: contents not dumped";
            continue;
        }
        if (!d->sized) {
            d->note = m ? "root is not the start of a live allocation: size "
                          "unknown, not dumped"
                        : "no allocator: size unknown, not dumped";
            continue;
        }
        size_t want = d->bytes < g->limit ? (size_t)d->bytes : g->limit;
        /* A live allocation lies inside the heap; check anyway. */
        if (!dkRangeOk(s, d->o.root, want)) {
            d->note = "root outside the segment";
            continue;
        }
        d->data = xcalloc(want ? want : 1, 1);
        memcpy(d->data, dkPtr(s, d->o.root), want);
        d->shown = want;
    }
    scratchFree(tmp);
}

/* "text" escaped, with "... (N bytes)" when only part was copied. */
static char *escapedValue(const uint8_t *p, size_t n, size_t full) {
    size_t tl = 4 * n + 48;
    char *t = xcalloc(tl, 1);
    escapeBytes(p, n, t, tl);
    if (n < full) {
        size_t k = strlen(t);
        snprintf(t + k, tl - k, "\"... (%zu bytes)", full);
        return t;
    }
    size_t k = strlen(t);
    snprintf(t + k, tl - k, "\"");
    return t;
}

/* One entry of a container, as text. */
static void dumpItemText(const dumpObj *d, const dumpItem *it, FILE *f) {
    char *v = escapedValue(it->val, it->vlen, it->vfull);
    if (it->intKey) {
        fprintf(f, "    %" PRId64 " = \"%s", it->ikey, v);
    } else if (it->hasKey) {
        char *k = escapedValue(it->key, it->klen, it->kfull);
        fprintf(f, "    \"%s = \"%s", k, v);
        free(k);
    } else {
        fprintf(f, "    [%" PRIu64 "] \"%s", it->index, v);
    }
    if (it->vfull == sizeof(int64_t) && it->vlen == sizeof(int64_t) &&
        d->o.type != MULTIARRAY_TYPE) {
        int64_t iv;
        memcpy(&iv, it->val, sizeof iv);
        fprintf(f, " (int64 %" PRId64 ")", iv);
    }
    fputc('\n', f);
    free(v);
}

static void dumpItemJson(jsonOut *j, const dumpObj *d, const dumpItem *it) {
    jsonObjOpen(j, NULL);
    if (it->intKey)
        jsonI64(j, "key", it->ikey);
    else if (it->hasKey) {
        jsonStrN(j, "key", it->key, it->klen);
        if (it->klen < it->kfull)
            jsonU64(j, "keyLength", it->kfull);
    } else
        jsonU64(j, "index", it->index);
    jsonStrN(j, "value", it->val, it->vlen);
    jsonU64(j, "length", it->vfull);
    if (it->vlen < it->vfull)
        jsonBool(j, "truncated", true);
    if (it->vfull == sizeof(int64_t) && it->vlen == sizeof(int64_t) &&
        d->o.type != MULTIARRAY_TYPE) {
        int64_t iv;
        memcpy(&iv, it->val, sizeof iv);
        jsonI64(j, "int64", iv);
    }
    jsonObjClose(j);
}

static const char *countNoun(uint32_t type, uint64_t n) {
    switch (type) {
    case MULTILIST_TYPE:
        return n == 1 ? "item" : "items";
    case MULTIARRAY_TYPE:
        return n == 1 ? "element" : "elements";
    default:
        return n == 1 ? "entry" : "entries";
    }
}

static void hexLines(const uint8_t *p, size_t n, FILE *f) {
    for (size_t off = 0; off < n; off += 16) {
        fprintf(f, "    %08zx  ", off);
        for (size_t i = 0; i < 16; i++) {
            if (off + i < n)
                fprintf(f, "%02x ", p[off + i]);
            else
                fputs("   ", f);
            if (i == 7)
                fputc(' ', f);
        }
        fputs(" |", f);
        for (size_t i = 0; i < 16 && off + i < n; i++) {
            uint8_t c = p[off + i];
            fputc(c >= 0x20 && c < 0x7f ? c : '.', f);
        }
        fputs("|\n", f);
    }
}

static int cmdDump(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"json", false}, {"limit", true}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 2, 1, 2, &a);
    if (st >= 0)
        return st;
    bool json = a.set[0];
    uint64_t limit = DUMP_DEFAULT_LIMIT;
    if (a.set[1] &&
        (parseU64(a.val[1], &limit) != 0 || limit > DUMP_MAX_LIMIT)) {
        fprintf(stderr, "%s dump: invalid --limit '%s' (0..%u)\n", progName,
                a.val[1], DUMP_MAX_LIMIT);
        return EXIT_USAGE;
    }
    char name[DKSHM_NAME_MAX + 1];
    if ((st = segmentName(c, a.pos[0], name)) >= 0)
        return st;
    if (a.npos == 2 && dkshmValidateObjectName(a.pos[1]) != DKSHM_OK) {
        fprintf(stderr,
                "%s dump: invalid object name (1..%d printable characters, "
                "no spaces)\n",
                progName, DKSHM_OBJNAME_MAX);
        return EXIT_USAGE;
    }
    dkshm *s;
    if ((st = openSegment(c, name, DKSHM_RDONLY, json, &s)) >= 0)
        return st;
    dumpCtx g = {.s = s,
                 .object = a.npos == 2 ? a.pos[1] : NULL,
                 .limit = (size_t)limit};
    bool ok = guarded(dumpFn, &g);
    bool stuck = ok && g.rc == DKSHM_BUSY && dirNobodyAlive(s);
    detachAfter(s);
    int status = EXIT_OK;
    if (!ok || g.rc != DKSHM_OK) {
        int rc = ok ? g.rc : DKSHM_CORRUPT;
        const char *detail =
            !ok ? faultText
            : rc == DKSHM_BUSY && stuck
                ? "the directory was left mid-change by a process that "
                  "died ('dkshm-tool reap' recovers it)"
            : rc == DKSHM_BUSY     ? "the directory kept changing"
            : rc == DKSHM_NOTFOUND ? a.pos[1]
                                   : "";
        status = rc == DKSHM_NOTFOUND ? EXIT_NOTFOUND : EXIT_OPEN;
        if (rc == DKSHM_NOTFOUND)
            fprintf(stderr, "%s dump: %s: object \"%s\" not found\n", progName,
                    name, a.pos[1]);
        else
            reportOpenError(c, name, rc, detail);
        if (json)
            jsonError(name, rc, detail, status);
    } else if (json) {
        jsonOut j;
        jsonInit(&j, stdout);
        jsonObjOpen(&j, NULL);
        jsonStr(&j, "segment", name);
        jsonU64(&j, "limit", limit);
        jsonArrOpen(&j, "objects");
        for (size_t i = 0; i < g.n; i++) {
            const dumpObj *d = &g.objs[i];
            jsonObjOpen(&j, NULL);
            jsonStr(&j, "name", d->o.name);
            jsonU64(&j, "type", d->o.type);
            jsonStr(&j, "typeName", typeKind(d->o.type));
            jsonU64(&j, "root", d->o.root);
            if (d->sized)
                jsonU64(&j, "bytes", d->bytes);
            else
                jsonNull(&j, "bytes");
            if (d->data) {
                char *hex = xcalloc(2 * d->shown + 1, 1);
                for (size_t k = 0; k < d->shown; k++)
                    snprintf(hex + 2 * k, 3, "%02x", d->data[k]);
                size_t tl = 4 * d->shown + 8;
                char *text = xcalloc(tl, 1);
                escapeBytes(d->data, d->shown, text, tl);
                jsonU64(&j, "shown", d->shown);
                jsonStr(&j, "hex", hex);
                jsonStr(&j, "text", text);
                jsonBool(&j, "truncated", d->shown < d->bytes);
                free(hex);
                free(text);
            }
            if (isContainer(d->o.type) && d->contRc != DKSHM_OK) {
                jsonStr(&j, "error", dkshmErrName(d->contRc));
                jsonStr(&j, "message", dkshmStrerror(d->contRc));
            } else if (d->o.type == OSREGULATE_TYPE) {
                jsonObjOpen(&j, "state");
                jsonU64(&j, "maxHolders", d->os.maxHolders);
                jsonU64(&j, "held", d->os.held);
                jsonU64(&j, "deadHeld", d->os.deadHeld);
                jsonU64(&j, "ratePerSec", d->os.ratePerSec);
                jsonU64(&j, "burst", d->os.burst);
                jsonU64(&j, "tokens", d->os.tokens);
                jsonU64(&j, "acquired", d->os.acquired);
                jsonU64(&j, "reclaimed", d->os.reclaimed);
                jsonU64(&j, "rateDenied", d->os.rateDenied);
                jsonObjClose(&j);
            } else if (isContainer(d->o.type)) {
                jsonU64(&j, "count", d->count);
                if (d->o.type == MULTIARRAY_TYPE)
                    jsonU64(&j, "elemSize", d->elemSize);
                jsonArrOpen(&j, "items");
                for (size_t k = 0; k < d->nitems; k++)
                    dumpItemJson(&j, d, &d->items[k]);
                jsonArrClose(&j);
                jsonBool(&j, "more", d->count > d->nitems);
                if (d->unsteady)
                    jsonBool(&j, "consistent", false);
            }
            if (d->note)
                jsonStr(&j, "note", d->note);
            jsonObjClose(&j);
        }
        jsonArrClose(&j);
        jsonObjClose(&j);
        jsonEnd(&j);
    } else {
        if (g.n == 0)
            printf("%s: no objects\n", name);
        for (size_t i = 0; i < g.n; i++) {
            const dumpObj *d = &g.objs[i];
            char esc[160], tb[32];
            escapeBytes(d->o.name, strlen(d->o.name), esc, sizeof esc);
            printf("%s  %s  root 0x%" PRIx64, esc, typeName(d->o.type, tb),
                   d->o.root);
            if (d->sized)
                printf("  %" PRIu64 " bytes", d->bytes);
            if (isContainer(d->o.type) && d->contRc == DKSHM_OK &&
                d->o.type != OSREGULATE_TYPE) {
                printf("  %" PRIu64 " %s", d->count,
                       countNoun(d->o.type, d->count));
                if (d->o.type == MULTIARRAY_TYPE)
                    printf(" of %" PRIu32 " bytes", d->elemSize);
            }
            printf("\n");
            if (isContainer(d->o.type) && d->contRc != DKSHM_OK)
                printf("    (unreadable: %s)\n", dkshmStrerror(d->contRc));
            else if (d->o.type == OSREGULATE_TYPE) {
                if (d->os.maxHolders)
                    printf("    permits: %" PRIu32 " of %" PRIu32
                           " out (%" PRIu32 " held by dead processes), %" PRIu64
                           " acquired, %" PRIu64
                           " reclaimed from dead holders\n",
                           d->os.held, d->os.maxHolders, d->os.deadHeld,
                           d->os.acquired, d->os.reclaimed);
                if (d->os.ratePerSec)
                    printf("    rate: %" PRIu64 " per second, burst %" PRIu32
                           ", %" PRIu64 " tokens now, %" PRIu64 " denied\n",
                           d->os.ratePerSec, d->os.burst, d->os.tokens,
                           d->os.rateDenied);
            } else if (isContainer(d->o.type)) {
                for (size_t k = 0; k < d->nitems; k++)
                    dumpItemText(d, &d->items[k], stdout);
                if (d->count > d->nitems)
                    printf("    ... %" PRIu64 " more (--limit N shows more)\n",
                           d->count - d->nitems);
                if (d->unsteady)
                    printf("    (the list kept changing while it was read: "
                           "the items may be from different moments)\n");
            }
            if (d->data) {
                hexLines(d->data, d->shown, stdout);
                if (d->shown < d->bytes)
                    printf("    ... %" PRIu64 " more bytes (--limit N shows "
                           "more)\n",
                           d->bytes - d->shown);
            }
            if (d->note)
                printf("    (%s)\n", d->note);
        }
    }
    for (size_t i = 0; i < g.n; i++) {
        free(g.objs[i].data);
        dumpItemsFree(&g.objs[i]);
    }
    free(g.objs);
    return status;
}

/* ---- top ---------------------------------------------------------------- */

/* Each refresh takes a sample of the process table (the per-process
 * counters), the segment's figures and the allocator's, and shows the
 * rates between it and the sample before. A process is known by (slot,
 * pid, attach time): one that took over a reused slot starts from zero
 * instead of from its predecessor's counters. */

typedef struct topProc { /* per process */
    uint32_t slot, pid, state;
    uint64_t attachNs;
    bool alive;
    uint64_t ctr[DKSHM_COUNTERS];
} topProc;

typedef struct topSample { /* per process */
    uint64_t monoNs, realNs;
    dkshmInfo info;
    bool haveAlloc;
    uint64_t used, allocations;
    topProc *p;
    size_t n;
    uint32_t live, dead;
} topSample;

typedef struct topSampleCtx {
    dkshm *s;
    topSample *t;
    int rc;
} topSampleCtx;

static void topSampleFn(void *ctx) {
    topSampleCtx *g = ctx;
    dkshm *s = g->s;
    topSample *t = g->t;
    g->rc = dkshmGetInfo(s, &t->info);
    if (g->rc != DKSHM_OK)
        return;
    membound *m = allocatorOf(s);
    memboundStats ms;
    t->haveAlloc = m && memboundGetStats(m, &ms) == DKSHM_OK;
    if (t->haveAlloc) {
        t->used = ms.used;
        t->allocations = ms.allocations;
    }
    uint32_t max = s->maxProcs;
    size_t n = 0;
    dkshmProcInfo *tmp = scratchCalloc(max, sizeof *tmp);
    g->rc = dkshmProcList(s, tmp, max, &n);
    if (g->rc == DKSHM_OK) {
        if (n > max)
            n = max;
        t->p = xcalloc(n, sizeof *t->p);
        t->n = n;
        for (size_t i = 0; i < n; i++) {
            topProc *p = &t->p[i];
            p->slot = tmp[i].slot;
            p->pid = tmp[i].pid;
            p->state = tmp[i].state;
            p->attachNs = tmp[i].attachTimeNs;
            p->alive = procAlive(&tmp[i]);
            memcpy(p->ctr, tmp[i].counters, sizeof p->ctr);
            if (p->alive)
                t->live++;
            else
                t->dead++;
        }
    }
    scratchFree(tmp);
    t->monoNs = dkNowNs();
    t->realNs = dkRealNs();
}

static void topSampleFree(topSample *t) {
    free(t->p);
    memset(t, 0, sizeof *t);
}

/* Rates of one process between two samples. */
typedef struct topRates { /* per process */
    double reads, writes, waits, allocs, frees;
    double avgWaitUs; /* average lock wait in the interval, -1: none */
    int64_t held;     /* allocated - freed bytes, since it attached */
} topRates;

static const topProc *topFind(const topSample *t, const topProc *p) {
    if (!t)
        return NULL;
    for (size_t i = 0; i < t->n; i++)
        if (t->p[i].slot == p->slot && t->p[i].pid == p->pid &&
            t->p[i].attachNs == p->attachNs)
            return &t->p[i];
    return NULL;
}

static void topRatesOf(const topSample *prev, const topSample *cur,
                       const topProc *p, topRates *r) {
    static const uint64_t zero[DKSHM_COUNTERS];
    const topProc *q = topFind(prev, p);
    const uint64_t *a = q ? q->ctr : zero, *b = p->ctr;
    double dt = prev && cur->monoNs > prev->monoNs
                    ? (double)(cur->monoNs - prev->monoNs) / 1e9
                    : 1.0;
    uint64_t d[DKSHM_COUNTERS];
    for (int k = 0; k < DKSHM_COUNTERS; k++)
        d[k] = b[k] >= a[k] ? b[k] - a[k] : 0;
    r->reads = (double)d[DKSHM_CTR_READS] / dt;
    r->writes = (double)d[DKSHM_CTR_WRITES] / dt;
    r->waits = (double)d[DKSHM_CTR_LOCK_WAITS] / dt;
    r->allocs = (double)d[DKSHM_CTR_ALLOCS] / dt;
    r->frees = (double)d[DKSHM_CTR_FREES] / dt;
    r->avgWaitUs = d[DKSHM_CTR_LOCK_WAITS]
                       ? (double)d[DKSHM_CTR_LOCK_WAIT_NS] /
                             (double)d[DKSHM_CTR_LOCK_WAITS] / 1e3
                       : -1.0;
    r->held = (int64_t)(b[DKSHM_CTR_ALLOC_BYTES] - b[DKSHM_CTR_FREE_BYTES]);
}

/* "12", "3.4k", "5.6M": a rate in at most 6 characters. */
static const char *fmtRate(double v, char *buf) {
    if (v < 9999.5)
        snprintf(buf, 32, "%.0f", v);
    else if (v < 999.5e3)
        snprintf(buf, 32, "%.1fk", v / 1e3);
    else
        snprintf(buf, 32, "%.1fM", v / 1e6);
    return buf;
}

static const char *fmtSigned(int64_t v, char *buf) {
    char tmp[32];
    fmtBytes(v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v, tmp);
    snprintf(buf, 32, "%s%.30s", v < 0 ? "-" : "", tmp);
    return buf;
}

static const char *fmtWait(double us, char *buf) {
    if (us < 0)
        snprintf(buf, 32, "-");
    else if (us < 1000)
        snprintf(buf, 32, "%.1fus", us);
    else if (us < 1e6)
        snprintf(buf, 32, "%.1fms", us / 1e3);
    else
        snprintf(buf, 32, "%.2fs", us / 1e6);
    return buf;
}

/* One refresh as text into F; at most MAXROWS processes (0: all). */
static void topText(const char *name, const topSample *prev,
                    const topSample *cur, double interval, int maxRows,
                    FILE *f) {
    char b1[32], b2[32], b3[32], b4[32], b5[32];
    topRates tot = {0};
    tot.avgWaitUs = -1;
    uint64_t tw = 0, twNs = 0;
    for (size_t i = 0; i < cur->n; i++) {
        topRates r;
        topRatesOf(prev, cur, &cur->p[i], &r);
        tot.reads += r.reads;
        tot.writes += r.writes;
        tot.waits += r.waits;
        tot.allocs += r.allocs;
        tot.frees += r.frees;
        const topProc *q = topFind(prev, &cur->p[i]);
        tw += cur->p[i].ctr[DKSHM_CTR_LOCK_WAITS] -
              (q ? q->ctr[DKSHM_CTR_LOCK_WAITS] : 0);
        twNs += cur->p[i].ctr[DKSHM_CTR_LOCK_WAIT_NS] -
                (q ? q->ctr[DKSHM_CTR_LOCK_WAIT_NS] : 0);
    }
    if (tw)
        tot.avgWaitUs = (double)twNs / (double)tw / 1e3;
    fprintf(f, "%s  %s  every %.3gs\n", name, fmtTimeLocal(cur->realNs, b1),
            interval);
    if (cur->haveAlloc)
        fprintf(f,
                "capacity %s, used %s (%.1f%%) in %" PRIu64
                " allocations, resident %s\n",
                fmtBytes(cur->info.capacity, b1), fmtBytes(cur->used, b2),
                cur->info.heapSize
                    ? 100.0 * (double)cur->used / (double)cur->info.heapSize
                    : 0.0,
                cur->allocations, fmtBytes(cur->info.residentBytes, b3));
    else
        fprintf(f, "capacity %s, no allocator, resident %s\n",
                fmtBytes(cur->info.capacity, b1),
                fmtBytes(cur->info.residentBytes, b3));
    fprintf(f,
            "%" PRIu32 " objects, %zu processes (%" PRIu32 " live, %" PRIu32
            " dead)\n",
            cur->info.objects, cur->n, cur->live, cur->dead);
    fprintf(f,
            "per second: %s reads, %s writes, %s lock waits (avg %s), %s "
            "allocs, %s frees\n\n",
            fmtRate(tot.reads, b1), fmtRate(tot.writes, b2),
            fmtRate(tot.waits, b3), fmtWait(tot.avgWaitUs, b4),
            fmtRate(tot.allocs, b5), fmtRate(tot.frees, b5 + 0));
    table t;
    tableInit(&t, 0,
              ">SLOT >PID <STATE >READS/s >WRITES/s >WAITS/s >AVGWAIT "
              ">ALLOCS/s >FREES/s >HELD");
    size_t shown = 0;
    for (size_t i = 0; i < cur->n; i++) {
        if (maxRows > 0 && shown >= (size_t)maxRows)
            break;
        const topProc *p = &cur->p[i];
        topRates r;
        topRatesOf(prev, cur, p, &r);
        tableCell(&t, "%" PRIu32, p->slot);
        tableCell(&t, "%" PRIu32, p->pid);
        tableCell(&t, "%s", p->alive ? "alive" : "dead");
        tableCell(&t, "%s", fmtRate(r.reads, b1));
        tableCell(&t, "%s", fmtRate(r.writes, b1));
        tableCell(&t, "%s", fmtRate(r.waits, b1));
        tableCell(&t, "%s", fmtWait(r.avgWaitUs, b1));
        tableCell(&t, "%s", fmtRate(r.allocs, b1));
        tableCell(&t, "%s", fmtRate(r.frees, b1));
        tableCell(&t, "%s", fmtSigned(r.held, b1));
        shown++;
    }
    tablePrint(&t, f);
    tableFree(&t);
    if (shown < cur->n)
        fprintf(f, "... %zu more processes\n", cur->n - shown);
}

static void topJson(const char *name, const topSample *prev,
                    const topSample *cur, uint64_t iteration, FILE *f) {
    char buf[32];
    jsonOut j;
    jsonInit(&j, f);
    jsonObjOpen(&j, NULL);
    jsonStr(&j, "segment", name);
    jsonU64(&j, "iteration", iteration);
    jsonStr(&j, "time", fmtTimeIso(cur->realNs, buf));
    jsonU64(&j, "timeNs", cur->realNs);
    jsonDouble(&j, "intervalSeconds",
               prev ? (double)(cur->monoNs - prev->monoNs) / 1e9 : 0.0);
    jsonU64(&j, "capacity", cur->info.capacity);
    if (cur->haveAlloc) {
        jsonU64(&j, "used", cur->used);
        jsonU64(&j, "allocations", cur->allocations);
    } else {
        jsonNull(&j, "used");
        jsonNull(&j, "allocations");
    }
    jsonU64(&j, "residentBytes", cur->info.residentBytes);
    jsonU64(&j, "objects", cur->info.objects);
    jsonU64(&j, "liveProcesses", cur->live);
    jsonU64(&j, "deadProcesses", cur->dead);
    jsonArrOpen(&j, "processes");
    static const char *ctrNames[DKSHM_COUNTERS] = {
        "reads",  "writes", "lockWaits",  "lockWaitNs",
        "allocs", "frees",  "allocBytes", "freeBytes"};
    for (size_t i = 0; i < cur->n; i++) {
        const topProc *p = &cur->p[i];
        topRates r;
        topRatesOf(prev, cur, p, &r);
        jsonObjOpen(&j, NULL);
        jsonU64(&j, "slot", p->slot);
        jsonU64(&j, "pid", p->pid);
        jsonBool(&j, "alive", p->alive);
        jsonStr(&j, "state", stateName(p->state));
        jsonU64(&j, "attachedNs", p->attachNs);
        jsonDouble(&j, "readsPerSec", r.reads);
        jsonDouble(&j, "writesPerSec", r.writes);
        jsonDouble(&j, "lockWaitsPerSec", r.waits);
        if (r.avgWaitUs >= 0)
            jsonDouble(&j, "avgLockWaitUs", r.avgWaitUs);
        else
            jsonNull(&j, "avgLockWaitUs");
        jsonDouble(&j, "allocsPerSec", r.allocs);
        jsonDouble(&j, "freesPerSec", r.frees);
        jsonI64(&j, "heldBytes", r.held);
        jsonObjOpen(&j, "counters");
        for (int k = 0; k < DKSHM_COUNTERS; k++)
            jsonU64(&j, ctrNames[k], p->ctr[k]);
        jsonObjClose(&j);
        jsonObjClose(&j);
    }
    jsonArrClose(&j);
    jsonObjClose(&j);
}

/* The pretty JSON writer's output on one line: its only raw newlines are
 * the ones it puts between values (strings escape theirs), each followed
 * by indentation. */
static void printOneLine(const char *p, size_t n, FILE *f) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            while (i + 1 < n && p[i + 1] == ' ')
                i++;
            continue;
        }
        fputc(p[i], f);
    }
    fputc('\n', f);
}

/* Interval: seconds with an optional fraction, 0.01 to 86400. */
static int parseInterval(const char *s, uint64_t *ns) {
    uint64_t whole = 0, frac = 0, scale = 1000000000ull;
    const char *p = s;
    if (!*p)
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        whole = whole * 10 + (uint64_t)(*p - '0');
        if (whole > 86400)
            return -1;
    }
    if (p == s && *p != '.')
        return -1;
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9'))
            return -1;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (scale >= 10) {
                scale /= 10;
                frac += (uint64_t)(*p - '0') * scale;
            }
        }
    }
    if (*p)
        return -1;
    uint64_t v = whole * 1000000000ull + frac;
    if (v < 10000000ull || v > 86400ull * 1000000000ull)
        return -1;
    *ns = v;
    return 0;
}

/* The terminal: raw (no echo, keys one by one) while the live view runs,
 * restored on every way out. */
static struct termios topSaved;
static volatile sig_atomic_t topRawOn, topAltOn, topStop;

static void topRestore(void) {
    if (topRawOn) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &topSaved);
        topRawOn = 0;
    }
    if (topAltOn) {
        /* Show the cursor, leave the alternate screen. */
        static const char seq[] = "\x1b[?25h\x1b[?1049l";
        ssize_t w = write(STDOUT_FILENO, seq, sizeof seq - 1);
        (void)w;
        topAltOn = 0;
    }
}

static void onTopSignal(int sig) {
    topStop = sig;
}

static void topTerminal(bool screen, bool keys) {
    atexit(topRestore);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = onTopSignal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    if (keys && tcgetattr(STDIN_FILENO, &topSaved) == 0) {
        struct termios raw = topSaved;
        /* Ctrl-C arrives as a byte (ISIG off) and quits like q. */
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO | ISIG | IEXTEN);
        raw.c_iflag &= ~(tcflag_t)(IXON | ICRNL);
        raw.c_cc[VMIN] = 1;
        raw.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0)
            topRawOn = 1;
    }
    if (screen) {
        fputs("\x1b[?1049h\x1b[?25l", stdout);
        fflush(stdout);
        topAltOn = 1;
    }
}

/* Wait until monotonic time DEADLINE, reading keys if KEYS: true to go on,
 * false to quit (q, Q, Ctrl-C, or a signal). */
static bool topWait(uint64_t deadline, bool keys) {
    for (;;) {
        if (topStop)
            return false;
        uint64_t now = dkNowNs();
        if (now >= deadline)
            return true;
        uint64_t ms = (deadline - now + 999999) / 1000000;
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        int r = poll(keys ? &pfd : NULL, keys ? 1 : 0,
                     ms > 1000 ? 1000 : (int)ms);
        if (r > 0 && (pfd.revents & (POLLIN | POLLHUP))) {
            char ch;
            ssize_t got = read(STDIN_FILENO, &ch, 1);
            if (got <= 0)
                keys = false; /* end of input: only signals stop us now */
            else if (ch == 'q' || ch == 'Q' || ch == 3)
                return false;
        }
    }
}

static int cmdTop(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {
        {"json", false}, {"interval", true}, {"iterations", true}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 3, 1, 1, &a);
    if (st >= 0)
        return st;
    bool json = a.set[0];
    uint64_t intervalNs = 1000000000ull, iterations = 0;
    if (a.set[1] && parseInterval(a.val[1], &intervalNs) != 0) {
        fprintf(stderr,
                "%s top: invalid --interval '%s' (seconds, e.g. 1, 0.5; "
                "0.01 to 86400)\n",
                progName, a.val[1]);
        return EXIT_USAGE;
    }
    if (a.set[2] && (parseU64(a.val[2], &iterations) != 0 || iterations == 0)) {
        fprintf(stderr, "%s top: invalid --iterations '%s' (1 or more)\n",
                progName, a.val[2]);
        return EXIT_USAGE;
    }
    char name[DKSHM_NAME_MAX + 1];
    if ((st = segmentName(c, a.pos[0], name)) >= 0)
        return st;
    dkshm *s;
    if ((st = openSegment(c, name, DKSHM_RDONLY, json, &s)) >= 0)
        return st;
    bool tty = !json && isatty(STDOUT_FILENO);
    bool keys = tty && isatty(STDIN_FILENO);
    topTerminal(tty, keys);
    topSample prev, cur;
    memset(&prev, 0, sizeof prev);
    topSampleCtx g = {.s = s, .t = &prev};
    int status = EXIT_OK;
    bool ok = guarded(topSampleFn, &g);
    uint64_t start = dkNowNs();
    for (uint64_t it = 1; ok && g.rc == DKSHM_OK; it++) {
        if (!topWait(start + it * intervalNs, keys))
            break;
        memset(&cur, 0, sizeof cur);
        g.t = &cur;
        ok = guarded(topSampleFn, &g);
        if (!ok || g.rc != DKSHM_OK) {
            topSampleFree(&cur);
            break;
        }
        if (json) {
            char *buf = NULL;
            size_t len = 0;
            FILE *mf = open_memstream(&buf, &len);
            if (!mf) {
                status = EXIT_OPEN;
                break;
            }
            topJson(name, &prev, &cur, it, mf);
            fclose(mf);
            printOneLine(buf, len, stdout);
            free(buf);
        } else {
            int rows = 0;
            struct winsize ws;
            if (tty) {
                fputs("\x1b[H\x1b[2J", stdout);
                if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 &&
                    ws.ws_row > 9)
                    rows = ws.ws_row - 8;
            } else if (it > 1) {
                fputc('\n', stdout);
            }
            topText(name, &prev, &cur, (double)intervalNs / 1e9, rows,
                    stdout);
            if (tty)
                fputs(keys ? "\n(q quits)" : "", stdout);
        }
        if (fflush(stdout) != 0 || ferror(stdout)) {
            status = EXIT_OPEN;
            topSampleFree(&cur);
            break;
        }
        topSampleFree(&prev);
        prev = cur;
        if (iterations && it >= iterations)
            break;
    }
    topSampleFree(&prev);
    topRestore();
    if (!ok || g.rc != DKSHM_OK) {
        int rc = ok ? g.rc : DKSHM_CORRUPT;
        reportOpenError(c, name, rc, ok ? "" : faultText);
        if (json)
            jsonError(name, rc, ok ? "" : faultText, EXIT_OPEN);
        status = EXIT_OPEN;
    }
    detachAfter(s);
    return status;
}

/* ---- create and rm --------------------------------------------------------
 */

typedef struct createCtx {
    const char *name;
    uint64_t size;
    const dkshmOptions *opt;
    int rc;
    int allocErrno; /* setting the allocator up failed */
    dkshmInfo info;
} createCtx;

static void createFn(void *ctx) {
    createCtx *g = ctx;
    dkshm *s;
    g->rc = dkshmCreate(g->name, g->size, g->opt, &s);
    if (g->rc != DKSHM_OK)
        return;
    /* Set the allocator up now, so the segment is complete (and `info`
     * shows its figures) before anyone uses it. */
    if (!memboundForSegment(s))
        g->allocErrno = errno ? errno : EIO;
    dkshmGetInfo(s, &g->info);
    dkshmDetach(s);
}

static int cmdCreate(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"size", true},
                                    {"mode", true},
                                    {"ephemeral", false},
                                    {"max-procs", true},
                                    {"max-objects", true}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 5, 1, 1, &a);
    if (st >= 0)
        return st;
    char name[DKSHM_NAME_MAX + 1];
    if ((st = segmentName(c, a.pos[0], name)) >= 0)
        return st;
    if (!a.set[0]) {
        fprintf(stderr, "%s create: --size is required\n", progName);
        usageHint(c);
        return EXIT_USAGE;
    }
    uint64_t size;
    if (parseSize(a.val[0], &size) != 0 || size < DKSHM_MIN_CAPACITY ||
        size > DKSHM_MAX_CAPACITY) {
        fprintf(stderr,
                "%s create: invalid size '%s' (want 256K to 64T: a number "
                "with an optional K, M, G or T suffix)\n",
                progName, a.val[0]);
        return EXIT_USAGE;
    }
    dkshmOptions opt = {0};
    if (a.set[1] && (parseMode(a.val[1], &opt.mode) != 0 || opt.mode == 0)) {
        fprintf(stderr, "%s create: invalid mode '%s' (octal, e.g. 600)\n",
                progName, a.val[1]);
        return EXIT_USAGE;
    }
    if (a.set[2])
        opt.flags |= DKSHM_EPHEMERAL;
    uint64_t v;
    if (a.set[3]) {
        if (parseU64(a.val[3], &v) != 0 || v == 0 || v > DKSHM_MAX_PROCS) {
            fprintf(stderr, "%s create: invalid --max-procs '%s' (1..%u)\n",
                    progName, a.val[3], DKSHM_MAX_PROCS);
            return EXIT_USAGE;
        }
        opt.maxProcs = (uint32_t)v;
    }
    if (a.set[4]) {
        if (parseU64(a.val[4], &v) != 0 || v == 0 || v > DKSHM_MAX_OBJECTS) {
            fprintf(stderr, "%s create: invalid --max-objects '%s' (1..%u)\n",
                    progName, a.val[4], DKSHM_MAX_OBJECTS);
            return EXIT_USAGE;
        }
        opt.maxObjects = (uint32_t)v;
    }
    createCtx g = {.name = name, .size = size, .opt = &opt};
    if (!guarded(createFn, &g)) {
        /* Someone shrank the new file under us. */
        reportOpenError(c, name, DKSHM_CORRUPT, faultText);
        dkshmUnlink(name);
        return EXIT_OPEN;
    }
    int rc = g.rc;
    if (rc == DKSHM_INVALID) {
        fprintf(stderr,
                "%s create: %s: %s is too small for its process table and "
                "directory\n",
                progName, name, a.val[0]);
        return EXIT_USAGE;
    }
    if (rc != DKSHM_OK) {
        reportOpenError(c, name, rc, "");
        return EXIT_OPEN;
    }
    if (g.allocErrno) {
        dkshmUnlink(name);
        fprintf(stderr, "%s create: %s: setting up the allocator: %s\n",
                progName, name,
                g.allocErrno == ENOMEM ? "no room in " SHM_DIR
                                       : strerror(g.allocErrno));
        return EXIT_OPEN;
    }
    char b[32], m[8];
    printf("created %s: %s, mode %s%s\n", name, fmtBytes(g.info.capacity, b),
           modeString(g.info.fileMode, m),
           (g.info.flags & DKSHM_EPHEMERAL) ? ", ephemeral" : "");
    return EXIT_OK;
}

static int cmdRm(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"force", false}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 1, 1, 1, &a);
    if (st >= 0)
        return st;
    bool force = a.set[0];
    char name[DKSHM_NAME_MAX + 1];
    if ((st = segmentName(c, a.pos[0], name)) >= 0)
        return st;
    dkshm *s;
    bool faulted;
    int rc = attachGuarded(name, DKSHM_RDONLY, &s, &faulted);
    uint32_t live = 0;
    if (rc == DKSHM_OK) {
        segData d;
        memset(&d, 0, sizeof d);
        rc = gather(s, &d, GATHER_LIST, &faulted);
        live = d.live;
        segDataFree(&d);
        detachAfter(s);
    }
    if (rc != DKSHM_OK && (rc == DKSHM_NOTFOUND || !force)) {
        char why[192];
        if (faulted)
            snprintf(why, sizeof why, "%s", faultText);
        else
            diagnose(name, rc, why, sizeof why);
        reportOpenError(c, name, rc, why);
        if (rc == DKSHM_CORRUPT || rc == DKSHM_VERSION)
            fprintf(stderr,
                    "%s rm: not removing what may not be a dkshm segment; "
                    "--force removes it anyway\n",
                    progName);
        return EXIT_OPEN;
    }
    rc = dkshmUnlink(name);
    if (rc != DKSHM_OK) {
        reportOpenError(c, name, rc, "");
        return EXIT_OPEN;
    }
    printf("removed %s\n", name);
    if (live)
        fprintf(stderr,
                "%s rm: note: %" PRIu32 " live process%s still attached: "
                "the memory is freed when the last one detaches\n",
                progName, live, live == 1 ? " is" : "es are");
    return EXIT_OK;
}

/* ---- get, set, del, incr (multidict) ------------------------------------- */

#ifdef HAVE_MULTIDICT

typedef struct openDictCtx {
    dkshm *s;
    const char *name;
    uint32_t flags;
    multidict *md;
    int rc;
} openDictCtx;

static void openDictFn(void *ctx) {
    openDictCtx *o = ctx;
    o->rc = openDict(o->s, o->name, o->flags, &o->md);
}

/* Open DICT of segment NAME for the edit commands: an exit status after a
 * message, or -1 with *S and *MD. CREATE makes the multidict if absent. */
static int openDictFor(const command *c, const char *name, const char *dict,
                       bool readOnly, bool create, bool json, dkshm **s,
                       multidict **md) {
    if (dkshmValidateObjectName(dict) != DKSHM_OK) {
        fprintf(stderr,
                "%s %s: invalid multidict name (1..%d printable characters, "
                "no spaces)\n",
                progName, c->name, DKSHM_OBJNAME_MAX);
        return EXIT_USAGE;
    }
    int st = openSegment(c, name, readOnly ? DKSHM_RDONLY : 0, json, s);
    if (st >= 0)
        return st;
    openDictCtx o = {
        .s = *s, .name = dict, .flags = create ? MULTIDICT_CREATE : 0};
    bool ok = guarded(openDictFn, &o);
    int rc = ok ? o.rc : DKSHM_CORRUPT;
    if (rc == DKSHM_OK) {
        *md = o.md;
        return -1;
    }
    detachAfter(*s);
    if (!ok) {
        reportOpenError(c, name, rc, faultText);
        if (json)
            jsonError(name, rc, faultText, EXIT_OPEN);
        return EXIT_OPEN;
    }
    if (rc == DKSHM_NOTFOUND || rc == DKSHM_TYPE) {
        fprintf(stderr, "%s %s: %s: %s \"%s\"\n", progName, c->name, name,
                rc == DKSHM_TYPE ? "not a multidict:" : "no multidict", dict);
        if (json)
            jsonError(name, rc, dict, EXIT_NOTFOUND);
        return EXIT_NOTFOUND;
    }
    reportOpenError(c, name, rc, "opening the multidict");
    if (json)
        jsonError(name, rc, "opening the multidict", EXIT_OPEN);
    return EXIT_OPEN;
}

/* The status and message for a failed multidict call. */
static int dictFailed(const command *c, const char *name, const char *key,
                      int rc, bool json) {
    char esc[160];
    escapeBytes(key, strlen(key), esc, sizeof esc);
    int status = rc == DKSHM_NOTFOUND ? EXIT_NOTFOUND : EXIT_OPEN;
    if (rc == DKSHM_NOTFOUND)
        fprintf(stderr, "%s %s: %s: key \"%s\" not found\n", progName, c->name,
                name, esc);
    else
        fprintf(stderr, "%s %s: %s: key \"%s\": %s\n", progName, c->name, name,
                esc,
                rc == DKSHM_TYPE ? "the value is not an 8-byte integer"
                                 : dkshmStrerror(rc));
    if (json)
        jsonError(name, rc, key, status);
    return status;
}

typedef struct getCtx {
    multidict *md;
    const char *key;
    uint8_t *value;
    size_t vlen;
    int rc;
} getCtx;

static void getFn(void *ctx) {
    getCtx *g = ctx;
    size_t klen = strlen(g->key), need = 0;
    g->rc = DKSHM_BUSY;
    for (int i = 0; i < DIR_BUSY_TRIES; i++) {
        g->rc = multidictGet(g->md, g->key, klen, g->value, g->vlen, &need);
        if (g->rc == DKSHM_OK) {
            g->vlen = need;
            return;
        }
        if (g->rc == DKSHM_TOOBIG && need > g->vlen) {
            /* Ask again with room for it (it may grow meanwhile). */
            scratchFree(g->value);
            g->value = scratchCalloc(1, need);
            g->vlen = need;
            continue;
        }
        if (g->rc != DKSHM_BUSY)
            return;
        usleep(i < 10 ? 100 : 5000);
    }
}

static int cmdGet(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {
        {"json", false}, {"raw", false}, {"int", false}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 3, 3, 3, &a);
    if (st >= 0)
        return st;
    bool json = a.set[0], raw = a.set[1], asInt = a.set[2];
    if (json + raw + asInt > 1) {
        fprintf(stderr, "%s get: --json, --raw and --int exclude each other\n",
                progName);
        return EXIT_USAGE;
    }
    const char *key = a.pos[2];
    if (!*key) {
        fprintf(stderr, "%s get: empty key\n", progName);
        return EXIT_USAGE;
    }
    char name[DKSHM_NAME_MAX + 1];
    if ((st = segmentName(c, a.pos[0], name)) >= 0)
        return st;
    dkshm *s;
    multidict *md;
    if ((st = openDictFor(c, name, a.pos[1], true, false, json, &s, &md)) >= 0)
        return st;
    getCtx g = {.md = md, .key = key};
    bool ok = guarded(getFn, &g);
    uint8_t *value = g.value;
    scratchForget(value);
    multidictClose(md);
    detachAfter(s);
    if (!ok || g.rc != DKSHM_OK) {
        free(value);
        if (!ok) {
            reportOpenError(c, name, DKSHM_CORRUPT, faultText);
            if (json)
                jsonError(name, DKSHM_CORRUPT, faultText, EXIT_OPEN);
            return EXIT_OPEN;
        }
        return dictFailed(c, name, key, g.rc, json);
    }
    int64_t iv = 0;
    if (g.vlen == sizeof iv)
        memcpy(&iv, value, sizeof iv);
    if (json) {
        jsonOut j;
        jsonInit(&j, stdout);
        jsonObjOpen(&j, NULL);
        jsonStr(&j, "segment", name);
        jsonStr(&j, "dict", a.pos[1]);
        jsonStr(&j, "key", key);
        jsonU64(&j, "length", g.vlen);
        jsonStrN(&j, "value", value, g.vlen);
        char *hex = xcalloc(2 * g.vlen + 1, 1);
        for (size_t k = 0; k < g.vlen; k++)
            snprintf(hex + 2 * k, 3, "%02x", value[k]);
        jsonStr(&j, "hex", hex);
        free(hex);
        if (g.vlen == sizeof iv)
            jsonI64(&j, "int64", iv);
        jsonObjClose(&j);
        jsonEnd(&j);
    } else if (raw) {
        fwrite(value, 1, g.vlen, stdout);
    } else if (asInt) {
        if (g.vlen != sizeof iv) {
            fprintf(stderr,
                    "%s get: the value is %zu bytes, not an 8-byte "
                    "integer\n",
                    progName, g.vlen);
            free(value);
            return EXIT_USAGE;
        }
        printf("%" PRId64 "\n", iv);
    } else {
        size_t tl = 4 * g.vlen + 8;
        char *text = xcalloc(tl, 1);
        escapeBytes(value, g.vlen, text, tl);
        printf("%s\n", text);
        free(text);
    }
    free(value);
    return EXIT_OK;
}

/* The edit commands: one multidict call on a read-write attachment. */
enum { EDIT_SET, EDIT_DEL, EDIT_INCR };

typedef struct editCtx {
    multidict *md;
    int op;
    const char *key;
    const void *value;
    size_t vlen;
    uint64_t ttlMs;
    int64_t delta, result;
    int rc;
} editCtx;

static void editFn(void *ctx) {
    editCtx *e = ctx;
    size_t klen = strlen(e->key);
    switch (e->op) {
    case EDIT_SET:
        e->rc = multidictPut(e->md, e->key, klen, e->value, e->vlen, e->ttlMs,
                             MULTIDICT_SET);
        break;
    case EDIT_DEL:
        e->rc = multidictDelete(e->md, e->key, klen);
        break;
    default:
        e->rc = multidictIncr(e->md, e->key, klen, e->delta, &e->result);
        break;
    }
}

static int runEdit(const command *c, const char *segArg, const char *dict,
                   editCtx *e, bool create) {
    if (!*e->key) {
        fprintf(stderr, "%s %s: empty key\n", progName, c->name);
        return EXIT_USAGE;
    }
    if (strlen(e->key) > MULTIDICT_KEY_MAX) {
        fprintf(stderr, "%s %s: key longer than %u bytes\n", progName, c->name,
                MULTIDICT_KEY_MAX);
        return EXIT_USAGE;
    }
    char name[DKSHM_NAME_MAX + 1];
    int st = segmentName(c, segArg, name);
    if (st >= 0)
        return st;
    dkshm *s;
    if ((st = openDictFor(c, name, dict, false, create, false, &s, &e->md)) >=
        0)
        return st;
    bool ok = guarded(editFn, e);
    multidictClose(e->md);
    detachAfter(s);
    if (!ok) {
        reportOpenError(c, name, DKSHM_CORRUPT, faultText);
        return EXIT_OPEN;
    }
    if (e->rc != DKSHM_OK)
        return dictFailed(c, name, e->key, e->rc, false);
    if (e->op == EDIT_INCR)
        printf("%" PRId64 "\n", e->result);
    return EXIT_OK;
}

static int cmdSet(const command *c, int argc, char **argv) {
    static const optSpec specs[] = {{"ttl", true}, {"int", false}};
    args a;
    int st = parseArgs(c, argc, argv, specs, 2, 4, 4, &a);
    if (st >= 0)
        return st;
    editCtx e = {.op = EDIT_SET,
                 .key = a.pos[2],
                 .value = a.pos[3],
                 .vlen = strlen(a.pos[3])};
    if (a.set[0]) {
        uint64_t sec;
        if (parseDuration(a.val[0], &sec) != 0 || sec == 0 ||
            sec > UINT64_MAX / 1000) {
            fprintf(stderr,
                    "%s set: invalid --ttl '%s' (seconds, or with s, m, h, "
                    "d; more than 0)\n",
                    progName, a.val[0]);
            return EXIT_USAGE;
        }
        e.ttlMs = sec * 1000;
    }
    int64_t iv;
    if (a.set[1]) {
        if (parseI64(a.pos[3], &iv) != 0) {
            fprintf(stderr, "%s set: '%s' is not a 64-bit integer\n", progName,
                    a.pos[3]);
            return EXIT_USAGE;
        }
        e.value = &iv;
        e.vlen = sizeof iv;
    }
    return runEdit(c, a.pos[0], a.pos[1], &e, true);
}

static int cmdDel(const command *c, int argc, char **argv) {
    args a;
    int st = parseArgs(c, argc, argv, NULL, 0, 3, 3, &a);
    if (st >= 0)
        return st;
    editCtx e = {.op = EDIT_DEL, .key = a.pos[2]};
    return runEdit(c, a.pos[0], a.pos[1], &e, false);
}

static int cmdIncr(const command *c, int argc, char **argv) {
    args a;
    int st = parseArgs(c, argc, argv, NULL, 0, 3, 4, &a);
    if (st >= 0)
        return st;
    editCtx e = {.op = EDIT_INCR, .key = a.pos[2], .delta = 1};
    if (a.npos == 4 && parseI64(a.pos[3], &e.delta) != 0) {
        fprintf(stderr, "%s incr: DELTA '%s' is not a 64-bit integer\n",
                progName, a.pos[3]);
        return EXIT_USAGE;
    }
    return runEdit(c, a.pos[0], a.pos[1], &e, true);
}
#endif

/* ---- main ---------------------------------------------------------------- */

static const command commands[] = {
    {"list", cmdList, "[--json]",
     "List every dkshm segment in " SHM_DIR
     ": capacity, resident and used memory, live and dead processes, owner,\n"
     "mode and creation time. Other files are skipped (and counted).",
     "  --json   one JSON document on stdout\n"},
    {"info", cmdInfo, "NAME [--json]",
     "Show a segment: its header, resident memory, allocator figures (per\n"
     "size class), attached processes, named objects (type, count, bytes,\n"
     "and per container type its figures) and lock states, with the locks\n"
     "dead processes still hold.",
     "  --json   one JSON document on stdout\n"},
    {"top", cmdTop, "NAME [--interval SECONDS] [--iterations N] [--json]",
     "A live view of a segment, refreshed every interval: per process the\n"
     "operations, lock waits and allocations per second and the bytes it\n"
     "holds; the segment's capacity, use, resident memory, objects and\n"
     "processes. q or Ctrl-C quits. When standard output is not a terminal,\n"
     "one plain snapshot per interval.",
     "  --interval SECONDS   time between refreshes (default 1; 0.5 etc.)\n"
     "  --iterations N       stop after N refreshes\n"
     "  --json               one JSON document per refresh, one per line\n"},
    {"check", cmdCheck, "NAME [--json]",
     "Verify every invariant the tool can reach: header, process table,\n"
     "directory, allocator, undo logs, every container's own check, and\n"
     "that every allocation has exactly one owner (an allocation owned by\n"
     "nothing is a leak). Prints each problem with where it is; exit status\n"
     "1 if there is any.",
     "  --json   one JSON document on stdout\n"},
    {"reap", cmdReap,
     "[NAME] [--dry-run] [--orphans [--older-than DURATION]] [--json]",
     "Release the dead processes of one segment, or of all: their table\n"
     "slots, the locks they held (rolled back), their in-flight blocks and\n"
     "the OSRegulate permits they held.\n"
     "With --orphans, also unlink segments marked ephemeral, or older than\n"
     "DURATION, that no live process has attached.",
     "  --dry-run               only say what would be done (exit 1 if "
     "anything)\n"
     "  --orphans               also remove orphaned segments\n"
     "  --older-than DURATION   with --orphans: any segment this old "
     "(30s, 10m, 2h, 1d)\n"
     "  --json                  one JSON document on stdout\n"},
    {"dump", cmdDump, "NAME [OBJECT] [--json] [--limit N]",
     "Show the named objects of a segment (or one) and their contents: the\n"
     "entries of multidicts and multimaps, the items of multilists (head\n"
     "first), the elements of multiarrays, the state of OSRegulates, and\n"
     "the first bytes of application objects as a hex dump. Non-printable\n"
     "bytes are escaped.",
     "  --limit N   entries per container, bytes per application object\n"
     "              (default 64)\n"
     "  --json      one JSON document on stdout\n"},
    {"create", cmdCreate,
     "NAME --size SIZE [--mode OCTAL] [--ephemeral] [--max-procs N] "
     "[--max-objects N]",
     "Create a segment (and set its allocator up).",
     "  --size SIZE        capacity: bytes, or with K, M, G, T (256K..64T)\n"
     "  --mode OCTAL       permission bits (default 600)\n"
     "  --ephemeral        'reap --orphans' may remove it once unused\n"
     "  --max-procs N      process-table slots (default 128, at most 1024)\n"
     "  --max-objects N    directory entries (default 256, at most 65536)\n"},
    {"rm", cmdRm, "NAME [--force]",
     "Remove a segment's name; attached processes keep their mapping.",
     "  --force   remove the file even if it is not a valid dkshm segment\n"},
#ifdef HAVE_MULTIDICT
    {"get", cmdGet, "NAME DICT KEY [--json | --raw | --int]",
     "Print the value of KEY in the multidict DICT (read-only), escaped:\n"
     "printable bytes as they are, others as \\xNN.",
     "  --raw    the value's bytes as they are, no newline\n"
     "  --int    an 8-byte value as a signed integer (as incr stores it)\n"
     "  --json   one JSON document on stdout (value, hex, int64)\n"},
    {"set", cmdSet, "NAME DICT KEY VALUE [--ttl SECONDS] [--int]",
     "Store VALUE under KEY in the multidict DICT, creating DICT if absent.",
     "  --ttl SECONDS   the entry expires after that long (also 10m, 2h, 1d)\n"
     "  --int           store VALUE as an 8-byte integer (for incr)\n"},
    {"del", cmdDel, "NAME DICT KEY", "Remove KEY from the multidict DICT.", ""},
    {"incr", cmdIncr, "NAME DICT KEY [DELTA]",
     "Add DELTA (default 1, may be negative) to the 8-byte integer under KEY\n"
     "in the multidict DICT, creating both if absent; print the new value.",
     ""},
#endif
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void mainUsage(FILE *f) {
    fprintf(f, "usage: %s COMMAND [ARGS]   (%s COMMAND --help for more)\n\n",
            progName, progName);
    fprintf(f, "commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-7s %s\n", commands[i].name, commands[i].usage);
    fprintf(f, "\nNAME is a segment name, with or without the leading '/'.\n"
               "exit status: 0 success, 1 problems found (check) or left to do "
               "(reap),\n2 usage error, 3 segment cannot be opened, 4 not "
               "found.\n");
}

int main(int argc, char **argv) {
    installFaultHandler();
    if (argc < 2) {
        mainUsage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        mainUsage(stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("dkshm-tool (dkshm) %s, segment layout version %u\n",
               dkshmVersion(), DK_LAYOUT_VERSION);
        return EXIT_OK;
    }
    if (strcmp(cmd, "help") == 0) {
        if (argc == 2) {
            mainUsage(stdout);
            return EXIT_OK;
        }
        cmd = argv[2];
        for (size_t i = 0; i < NCOMMANDS; i++)
            if (strcmp(commands[i].name, cmd) == 0) {
                printHelp(&commands[i]);
                return EXIT_OK;
            }
    }
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, cmd) == 0) {
            int st = commands[i].run(&commands[i], argc - 1, argv + 1);
            if (fflush(stdout) != 0 && st == EXIT_OK)
                st = EXIT_OPEN;
            /* A fault inside the allocator's handle setup may have left
             * the library's table lock held and a handle half-built: the
             * exit handlers (leak checkers among them) must not run into
             * that state. */
            if (allocatorPoisoned) {
                fflush(stderr);
                _exit(st);
            }
            return st;
        }
    char esc[64];
    escapeBytes(cmd, strlen(cmd), esc, sizeof esc);
    fprintf(stderr, "%s: unknown command '%s'\n", progName, esc);
    mainUsage(stderr);
    return EXIT_USAGE;
}
