/*
 * main.c — start-up, the `keys` subcommand, signals and shutdown.
 *
 * Start: options -> data dir (created, 0700) -> store (migrations, writer
 * thread) -> bootstrap (default org, built-ins, first admin key printed
 * once and written to <data-dir>/admin-key, mode 0600) -> HTTP server ->
 * loop.  SIGTERM/SIGINT (read through a signalfd on the loop): stop
 * accepting, let every request that waits for a commit finish (bounded by
 * --shutdown-timeout), flush, exit 0.
 */
#include "api/api.h"
#include "config.h"
#include "core/builtins.h"
#include "engine/engine.h"
#include "core/id.h"
#include "http/server.h"
#include "log.h"
#include "loop.h"
#include "store/store.h"
#include "util/timeutil.h"
#include "version.h"
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

static int g_stop;

static void on_signal(void *ud, uint32_t events)
{
    int fd = *(int *)ud;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof(si)) == sizeof(si))
        g_stop = 1;
}

static int make_dir(const char *dir)
{
    char tmp[600];
    str_copy(tmp, sizeof(tmp), dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0700) && errno != EEXIST) return -1;
            *p = '/';
        }
    if (mkdir(tmp, 0700) && errno != EEXIST) return -1;
    return 0;
}

static void write_admin_key(const char *dir, const char *key)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/admin-key", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        log_warn("cannot write admin key file", "path", path, "err", strerror(errno), NULL);
        return;
    }
    fchmod(fd, 0600);
    dprintf(fd, "%s\n", key);
    fsync(fd);
    close(fd);
}

/* --openai-models a,b -> models the API lists and sessions may pick */
static void register_models(const char *base, const char *list, const char *provider)
{
    if (!*base || !*list) return;
    char tmp[512];
    str_copy(tmp, sizeof(tmp), list);
    char *save = NULL;
    for (char *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        const struct builtin_model *m = model_register(provider, t);
        if (m) log_info("model", "id", m->id, "name", m->name, "provider", provider, NULL);
    }
}

static void print_line(const char *json, void *ud)
{
    (void)ud;
    printf("%s\n", json);
}

static int keys_main(struct config *cfg, int argc, char **argv)
{
    /* loopd keys create|list|revoke [--data-dir D] [--org new|ORG] [--name N] [ID] */
    if (argc < 1 || strcmp(argv[0], "--help") == 0) {
        printf("usage: loopd keys create [--org new|org_…] [--name NAME]\n"
               "       loopd keys list\n"
               "       loopd keys revoke KEY_ID\n"
               "options: --data-dir DIR (default ./data, env LOOPD_DATA_DIR)\n"
               "create prints one JSON line: {\"key\",\"key_id\",\"org_id\",\"user_id\"}; "
               "--org new makes a new org with its own user.\n");
        return argc < 1 ? 2 : 0;
    }
    const char *cmd = argv[0], *org = NULL, *name = "cli", *arg = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--data-dir") == 0 && i + 1 < argc)
            str_copy(cfg->data_dir, sizeof(cfg->data_dir), argv[++i]);
        else if (strcmp(argv[i], "--org") == 0 && i + 1 < argc)
            org = argv[++i];
        else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc)
            name = argv[++i];
        else if (argv[i][0] != '-' && !arg)
            arg = argv[i];
        else {
            fprintf(stderr, "loopd keys: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (strcmp(cmd, "create") && strcmp(cmd, "list") && strcmp(cmd, "revoke")) {
        fprintf(stderr, "loopd keys: unknown command '%s' (create, list or revoke)\n", cmd);
        return 2;
    }
    /* The keys are those of a server's database: a mistyped --data-dir
     * must not create a new database (with an org and an admin key of its
     * own) and answer for it as if it were the server's. */
    char db[600];
    snprintf(db, sizeof(db), "%s/loopd.db", cfg->data_dir);
    if (access(db, F_OK)) {
        fprintf(stderr,
                "loopd keys: no loopd database in %s (%s); start loopd with --data-dir %s "
                "first, or pass the server's --data-dir\n",
                cfg->data_dir, strerror(errno), cfg->data_dir);
        return 1;
    }
    char err[512];
    struct store *st = store_open(cfg->data_dir, err, sizeof(err));
    if (!st) {
        fprintf(stderr, "loopd keys: %s\n", err);
        return 1;
    }
    char boot[128];
    store_bootstrap(st, NULL, boot, sizeof(boot));
    if (boot[0]) write_admin_key(cfg->data_dir, boot);
    int rc = 0;
    if (strcmp(cmd, "create") == 0) {
        char org_id[ID_MAX], user[40], tok[128], kid[ID_MAX];
        str_copy(org_id, sizeof(org_id), DEFAULT_ORG_ID);
        str_copy(user, sizeof(user), DEFAULT_USER_ID);
        if (org && strcmp(org, "new") == 0) {
            if (store_org_create(st, name, org_id, user) != LD_OK) {
                fprintf(stderr, "loopd keys: cannot create the org\n");
                rc = 1;
            }
        } else if (org) {
            char why[128];
            if (id_check("org", org, why, sizeof(why))) {
                fprintf(stderr, "loopd keys: --org: %s\n", why);
                rc = 2;
            }
            str_copy(org_id, sizeof(org_id), org);
        }
        if (!rc) {
            enum ld_err e = store_key_create(st, org_id, user, name, NULL, tok, sizeof(tok), kid);
            if (e == LD_OK)
                printf("{\"key\":\"%s\",\"key_id\":\"%s\",\"org_id\":\"%s\",\"user_id\":\"%s\"}\n",
                       tok, kid, org_id, user);
            else {
                fprintf(stderr, "loopd keys: %s\n",
                        e == LD_E_NOT_FOUND ? "no such org for this user" : "cannot create key");
                rc = 1;
            }
        }
    } else if (strcmp(cmd, "list") == 0) {
        store_key_list(st, print_line, NULL);
    } else { /* revoke */
        if (!arg) {
            fprintf(stderr, "loopd keys revoke: KEY_ID required\n");
            rc = 2;
        } else {
            enum ld_err e = store_key_revoke(st, arg);
            if (e != LD_OK) {
                fprintf(stderr, "loopd keys revoke: %s\n",
                        e == LD_E_NOT_FOUND ? "no such active key" : "storage error");
                rc = 1;
            } else {
                printf("{\"revoked\":\"%s\"}\n", arg);
            }
        }
    }
    store_close(st);
    return rc;
}

/* A key someone chose goes in an Authorization header and must not be
 * guessable: at least 16 visible ASCII characters (evr_pat_ + 48 hex is
 * what loopd makes itself). */
static int bootstrap_key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n < 16 || n > 200) return 0; /* the admin-key file gets a copy of at most 255 */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e) return 0;
    return 1;
}

int main(int argc, char **argv)
{
    struct config cfg;
    int rest = 0;
    int rc = config_load(&cfg, argc, argv, &rest);
    if (rc) return rc > 0 ? 0 : 2;
    if (rest < argc) {
        if (strcmp(argv[rest], "keys") == 0)
            return keys_main(&cfg, argc - rest - 1, argv + rest + 1);
        fprintf(stderr, "loopd: unknown command '%s' (see --help)\n", argv[rest]);
        return 2;
    }
    log_setup(cfg.log_level, cfg.log_json);
    signal(SIGPIPE, SIG_IGN);
    /* Responses of 10-100 KB are built per request: keep freed memory in
     * the heap instead of trimming and re-faulting it on every request
     * (measured: list pages cost 4x the CPU at 64 connections otherwise). */
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
    /* every connection and SSE stream is a descriptor: take all we may */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* block the stop signals before any thread starts, so that every thread
     * inherits the mask and they arrive only through the loop's signalfd */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);

    char err[512];
    int lfd = server_bind(&cfg, err, sizeof(err));
    if (lfd < 0) {
        log_error("cannot start the HTTP server", "err", err, NULL);
        return 1;
    }
    const char *boot = getenv("LOOPD_BOOTSTRAP_KEY");
    if (boot && *boot && !bootstrap_key_ok(boot)) {
        log_error("LOOPD_BOOTSTRAP_KEY must be 16 to 200 visible ASCII characters (no spaces)",
                  NULL);
        return 1;
    }
    if (make_dir(cfg.data_dir)) {
        fprintf(stderr, "loopd: cannot create data dir %s: %s\n", cfg.data_dir, strerror(errno));
        return 1;
    }
    config_log(&cfg);
    struct store *st = store_open(cfg.data_dir, err, sizeof(err));
    if (!st) {
        log_error("cannot open the store", "err", err, NULL);
        return 1;
    }
    store_set_queue_max(st, cfg.max_pending_writes);
    char key[256];
    if (store_bootstrap(st, boot, key, sizeof(key)) != LD_OK) {
        log_error("bootstrap failed", NULL);
        store_close(st);
        return 1;
    }
    if (key[0]) {
        write_admin_key(cfg.data_dir, key);
        if (!boot || !*boot) {
            fprintf(stderr,
                    "\nloopd: created the first admin API key (shown once; also in "
                    "%s/admin-key):\n\n    %s\n\n",
                    cfg.data_dir, key);
        }
    }
    store_idem_expire(st, time_now_us() - (int64_t)24 * 3600 * 1000000);

    struct loop *l = loop_new();
    register_models(cfg.openai_base_url, cfg.openai_models, "openai");
    register_models(cfg.anthropic_base_url, cfg.anthropic_models, "anthropic");
    struct engine *eng = engine_new(st, l, &cfg);
    if (cfg.fault_point) {
        log_warn("fault point enabled (testing only)", NULL);
        engine_set_fault_point((int)cfg.fault_point);
    }
    /* turns a crash left running end as failed before anyone can look */
    if (engine_recover(eng) > 0) store_flush(st);
    struct server *srv = server_start(&cfg, lfd, st, eng, l, err, sizeof(err));
    if (!srv) {
        log_error("cannot start the HTTP server", "err", err, NULL);
        store_close(st);
        return 1;
    }
    loop_add_fd(l, sfd, 0x001 /* EPOLLIN */, on_signal, &sfd);
    log_info("listening", "url", server_base_url(srv), "auth",
             cfg.auth == AUTH_NONE ? "none" : "keys", "version", LOOPD_VERSION, NULL);
    while (!g_stop) {
        loop_run_once(l, -1);
        store_end_reads(st);
    }

    log_info("shutting down", "inflight", "", NULL);
    server_quiesce(srv);
    /* SSE streams end (clients resume elsewhere with their cursor) */
    sse_close_all();
    int64_t deadline = time_mono_us() + cfg.shutdown_timeout * 1000000;
    while ((server_inflight(srv) > 0 || store_pending(st) > 0 || sse_open_streams() > 0) &&
           time_mono_us() < deadline) {
        loop_run_once(l, 50);
        store_end_reads(st);
        sse_close_all(); /* streams opened while draining end too */
    }
    /* let the answers just queued reach their sockets */
    int64_t flush = time_mono_us() + 200000;
    while (time_mono_us() < flush) {
        loop_run_once(l, 20);
        store_end_reads(st);
    }
    server_stop(srv);
    store_close(st);
    sessions_cache_free();
    engine_free(eng);
    loop_free(l);
    close(sfd);
    log_info("stopped", NULL);
    return 0;
}
