/* worker-pool.c — a prefork pool that shares its state through dkshm.
 *
 *   worker-pool [--workers N] [--jobs N] [--db-limit N] [--name /NAME] [--keep]
 *
 * The parent creates a named segment holding:
 *   "jobs"      a multilist: the job queue the parent feeds;
 *   "counters"  a multidict: request counters per user and per worker;
 *   "sessions"  a multidict in cache mode: a session per user, with a TTL;
 *   "db"        an OSRegulate: at most --db-limit workers "in the database".
 * It forks N workers that pop jobs until the queue is shut down. For each
 * job a worker counts the request, looks up (or creates) the user's
 * session, and does its "database" step while holding a permit. At the end
 * the parent checks that every count adds up — requests, per-user and
 * per-worker totals, no more than --db-limit workers ever in the database —
 * and that every structure passes its check, prints the totals, and removes
 * the segment unless --keep (then inspect it with `dkshm-tool info NAME`).
 *
 * Build against an installed dkshm:
 *   cc worker-pool.c $(pkg-config --cflags --libs dkshm) -o worker-pool
 */
#include <dkshm.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define USERS 16
#define MAX_WORKERS 64

typedef struct job { /* an item of the "jobs" queue */
    uint64_t id;
    uint32_t user;
    uint32_t pad;
} job;

typedef struct pool { /* per process: the shared structures, opened */
    dkshm *s;
    multilist *jobs;
    multidict *counters;
    multidict *sessions;
    OSRegulate *db;
} pool;

static int fail(const char *what, int rc) {
    fprintf(stderr, "worker-pool: %s: %s\n", what, dkshmStrerror(rc));
    return 1;
}

static int incr(multidict *d, const char *key, int64_t by, int64_t *now) {
    return multidictIncr(d, key, strlen(key), by, now);
}

static int64_t counter(multidict *d, const char *key) {
    int64_t v = 0;
    size_t len;
    if (multidictGet(d, key, strlen(key), &v, sizeof v, &len) != DKSHM_OK)
        return 0;
    return v;
}

/* Open (creating when CREATE) the pool's structures in S. */
static int openPool(dkshm *s, bool create, uint32_t dbLimit, pool *p) {
    uint32_t f = create ? MULTIDICT_CREATE : 0;
    multilistOptions lo = {.maxItems = 256};
    multidictOptions co = {0};
    multidictOptions so = {.maxBytes = 1u << 20};
    OSRegulateOptions ro = {.maxHolders = dbLimit};
    int rc;
    p->s = s;
    if ((rc = multilistOpen(s, "jobs", &lo, create ? MULTILIST_CREATE : 0,
                            &p->jobs)) != DKSHM_OK)
        return fail("open jobs", rc);
    if ((rc = multidictOpen(s, "counters", &co, f, &p->counters)) != DKSHM_OK)
        return fail("open counters", rc);
    if ((rc = multidictOpen(s, "sessions", &so, f, &p->sessions)) != DKSHM_OK)
        return fail("open sessions", rc);
    if ((rc = OSRegulateOpen(s, "db", &ro, create ? OSREGULATE_CREATE : 0,
                             &p->db)) != DKSHM_OK)
        return fail("open db", rc);
    return 0;
}

static void closePool(pool *p) {
    multilistClose(p->jobs);
    multidictClose(p->counters);
    multidictClose(p->sessions);
    OSRegulateClose(p->db);
}

static int doJob(pool *p, int me, const job *j, uint32_t dbLimit) {
    char key[64];
    int rc;
    if ((rc = incr(p->counters, "requests", 1, NULL)) != DKSHM_OK)
        return fail("count request", rc);
    snprintf(key, sizeof key, "user:%u", j->user);
    if ((rc = incr(p->counters, key, 1, NULL)) != DKSHM_OK)
        return fail("count user", rc);

    /* The session cache: a hit, or a new session that lives 2 s. */
    char sess[64], val[64];
    size_t vlen;
    snprintf(sess, sizeof sess, "session:%u", j->user);
    rc = multidictGet(p->sessions, sess, strlen(sess), val, sizeof val, &vlen);
    if (rc == DKSHM_OK) {
        incr(p->counters, "session-hits", 1, NULL);
    } else if (rc == DKSHM_NOTFOUND) {
        int n = snprintf(val, sizeof val, "user %u, opened by pid %d",
                         j->user, (int)getpid());
        if ((rc = multidictSetTTL(p->sessions, sess, strlen(sess), val,
                                  (size_t)n, 2000)) != DKSHM_OK)
            return fail("open session", rc);
        incr(p->counters, "session-misses", 1, NULL);
    } else {
        return fail("session lookup", rc);
    }

    /* The "database": at most dbLimit workers in it at once. */
    if ((rc = OSRegulateAcquire(p->db, 0)) != DKSHM_OK)
        return fail("db permit", rc);
    int64_t inDb = 0;
    incr(p->counters, "db:now", 1, &inDb);
    if (inDb > (int64_t)dbLimit)
        incr(p->counters, "db:over-limit", 1, NULL);
    usleep(50);
    incr(p->counters, "db:now", -1, NULL);
    OSRegulateRelease(p->db);

    snprintf(key, sizeof key, "worker:%d", me);
    return incr(p->counters, key, 1, NULL) == DKSHM_OK ? 0 : 1;
}

static int worker(dkshm *s, int me, uint32_t dbLimit) {
    pool p;
    if (openPool(s, false, dbLimit, &p) != 0)
        return 1;
    int status = 0;
    for (;;) {
        job j;
        size_t len;
        int rc = multilistPop(p.jobs, MULTILIST_HEAD, &j, sizeof j, &len,
                              MULTILIST_FOREVER);
        if (rc == DKSHM_SHUTDOWN)
            break; /* drained and shut down: the pool is closing */
        if (rc != DKSHM_OK || len != sizeof j) {
            status = fail("pop job", rc);
            break;
        }
        if (doJob(&p, me, &j, dbLimit) != 0) {
            status = 1;
            break;
        }
    }
    closePool(&p);
    return status;
}

int main(int argc, char **argv) {
    int workers = 4;
    long jobs = 5000;
    uint32_t dbLimit = 2;
    bool keep = false;
    char name[DKSHM_NAME_MAX + 1];
    snprintf(name, sizeof name, "/dkshm-pool-%d", (int)getpid());
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--workers") && i + 1 < argc)
            workers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--jobs") && i + 1 < argc)
            jobs = atol(argv[++i]);
        else if (!strcmp(argv[i], "--db-limit") && i + 1 < argc)
            dbLimit = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--name") && i + 1 < argc)
            snprintf(name, sizeof name, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--keep"))
            keep = true;
        else {
            fprintf(stderr, "usage: worker-pool [--workers N] [--jobs N] "
                            "[--db-limit N] [--name /NAME] [--keep]\n");
            return 2;
        }
    }
    if (workers < 1 || workers > MAX_WORKERS || jobs < 1 || dbLimit < 1 ||
        dkshmValidateName(name) != DKSHM_OK) {
        fprintf(stderr, "worker-pool: workers 1..%d, jobs >= 1, db-limit >= "
                        "1, and a name like /pool\n",
                MAX_WORKERS);
        return 2;
    }

    dkshm *s;
    int rc = dkshmCreate(name, 64u << 20, NULL, &s);
    if (rc != DKSHM_OK)
        return fail(name, rc);
    pool p;
    if (openPool(s, true, dbLimit, &p) != 0)
        return 1;
    printf("segment %s: %d workers, %ld jobs, %u in the database at once\n",
           name, workers, jobs, dbLimit);
    fflush(stdout);

    pid_t pids[MAX_WORKERS];
    for (int i = 0; i < workers; i++) {
        pids[i] = fork();
        if (pids[i] < 0)
            return fail("fork", DKSHM_SYSTEM);
        if (pids[i] == 0) {
            /* Leave the process table cleanly: a worker that just exits
             * stays listed as dead until someone reaps it. */
            int st = worker(s, i, dbLimit);
            dkshmDetach(s);
            _exit(st);
        }
    }
    for (long n = 0; n < jobs; n++) {
        job j = {.id = (uint64_t)n, .user = (uint32_t)(n % USERS)};
        /* Blocks while the queue is full: the workers set the pace. */
        if ((rc = multilistPush(p.jobs, MULTILIST_TAIL, &j, sizeof j,
                                MULTILIST_FOREVER)) != DKSHM_OK)
            return fail("push job", rc);
    }
    multilistShutdown(p.jobs); /* workers drain the rest, then stop */
    int failed = 0;
    for (int i = 0; i < workers; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }

    /* Everything must add up. */
    char key[64], why[160] = "";
    int64_t users = 0, perWorker = 0;
    for (int u = 0; u < USERS; u++) {
        snprintf(key, sizeof key, "user:%d", u);
        users += counter(p.counters, key);
    }
    for (int i = 0; i < workers; i++) {
        snprintf(key, sizeof key, "worker:%d", i);
        int64_t n = counter(p.counters, key);
        printf("worker %2d (pid %d): %" PRId64 " jobs\n", i, (int)pids[i], n);
        perWorker += n;
    }
    int64_t requests = counter(p.counters, "requests");
    int64_t hits = counter(p.counters, "session-hits");
    int64_t misses = counter(p.counters, "session-misses");
    int64_t over = counter(p.counters, "db:over-limit");
    OSRegulateStats rs;
    OSRegulateGetStats(p.db, &rs);
    uint64_t left = 1;
    multilistCount(p.jobs, &left);
    int checks = multidictCheck(p.counters, why, sizeof why);
    if (checks == DKSHM_OK)
        checks = multidictCheck(p.sessions, why, sizeof why);
    if (checks == DKSHM_OK)
        checks = multilistCheck(p.jobs, why, sizeof why);
    if (checks == DKSHM_OK)
        checks = OSRegulateCheck(p.db, why, sizeof why);
    if (checks == DKSHM_OK)
        checks = memboundCheck(memboundForSegment(s), why, sizeof why);

    printf("requests %" PRId64 " of %ld; per user %" PRId64 "; per worker %" PRId64
           "\n",
           requests, jobs, users, perWorker);
    printf("sessions: %" PRId64 " hits, %" PRId64 " misses; database permits "
           "%" PRIu64 ", over the limit %" PRId64 " times; queue left %" PRIu64
           "\n",
           hits, misses, rs.acquired, over, left);
    printf("checks: %s%s%s\n", dkshmErrName(checks), *why ? ": " : "", why);
    bool ok = failed == 0 && requests == jobs && users == jobs &&
              perWorker == jobs && hits + misses == jobs &&
              rs.acquired == (uint64_t)jobs && over == 0 && left == 0 &&
              rs.held == 0 && checks == DKSHM_OK;
    closePool(&p);
    if (keep)
        printf("kept %s: try `dkshm-tool info %s`\n", name, name);
    else
        dkshmUnlink(name);
    dkshmDetach(s);
    printf("%s\n", ok ? "worker-pool: OK, every count adds up"
                      : "worker-pool: FAILED, counts do not add up");
    return ok ? 0 : 1;
}
