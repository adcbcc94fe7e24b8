/*
 * http_fuzz.c — coverage-guided fuzzing of the request head parser
 * (libFuzzer; `make fuzz-http`).
 *
 * The parser's functions are static in src/http/server.c, so this file
 * includes it and drives it as the server does for bytes a client sent:
 * head_end() finds the head (a CRLF CRLF is added when the input has
 * none), parse_head() parses the request line, target, query and headers
 * or answers the problem, and the request is freed as a finished one.
 * Whatever the bytes, that must run without a sanitizer report, and every
 * answer it sets must be a problem (4xx, or the 501/505 HTTP defines) with
 * a body that is valid UTF-8.  The network suite (tests/api/test_fuzz.py)
 * covers the rest of a request's way through loopd.
 */
#include "../../src/http/server.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct config cfg;
static struct server srv;

static void setup(void)
{
    char prog[] = "http_fuzz";
    char *argv[] = {prog, NULL};
    int rest = 0;
    if (config_load(&cfg, 1, argv, &rest) != 0) abort();
    log_setup(LOG_ERROR, 0);
    srv.cfg = &cfg;
    memcpy(srv.rid_prefix, "fz", 3);
    srv.by_route = xcalloc((size_t)(route_count + 1) * (N_STATUS + 1), sizeof(*srv.by_route));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!srv.cfg) setup();
    char *in = xmalloc(size + 5);
    memcpy(in, data, size);
    size_t n = size;
    char *he = head_end(in, n);
    if (!he) {
        memcpy(in + n, "\r\n\r\n", 4);
        n += 4;
        he = head_end(in, n);
    }
    in[n] = 0;
    struct hconn c;
    memset(&c, 0, sizeof(c));
    c.s = &srv;
    c.fd = -1;
    c.in = in;
    c.in_len = n;
    c.in_cap = size + 5;
    if (he && parse_head(&c, (size_t)(he - in) + 4) != 0) {
        struct req *r = c.r;
        if (!r || !r->resp) abort(); /* refused, but not answered */
        int st = r->status;
        if (st < 400 || (st >= 500 && st != 501 && st != 505)) abort();
        struct resp *p = r->resp;
        if (p->blen && !utf8_valid(p->body, p->blen)) abort();
    }
    if (c.r) req_free(&srv, c.r);
    free(in);
    return 0;
}
