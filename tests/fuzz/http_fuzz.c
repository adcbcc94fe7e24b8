/*
 * http_fuzz.c — coverage-guided fuzzing of the request head parser
 * (libFuzzer; `make fuzz-http`).
 *
 * The parser's functions are static in src/http/server.c, so this file
 * includes it and drives it as the server does for bytes a client sent:
 * head_end() finds the head (a CRLF CRLF is added when the input has
 * none), parse_head() parses the request line, target, query and headers
 * or answers the problem, the bytes after the head go to take_body() in
 * small pieces (Content-Length or chunked framing), and the request is
 * freed as a finished one.  Whatever the bytes, that must run without a
 * sanitizer report, no body past --max-body may be taken, and every answer
 * it sets must be a problem (4xx, or the 501/505 HTTP defines) with a body
 * that is valid UTF-8.  The network suite (tests/api/test_fuzz.py)
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
    int got = he ? parse_head(&c, (size_t)(he - in) + 4) : 1;
    if (got == 0) {
        /* the bytes after the head are its body, taken as they would arrive:
         * in pieces of 1-16 bytes (the first input byte decides) */
        consume(&c, (size_t)(he - in) + 4);
        size_t rest = c.in_len, off = 0, step = 1 + (size ? data[0] % 16 : 0);
        char *src = xmalloc(rest + 1);
        memcpy(src, c.in, rest);
        c.in_len = 0;
        int done = 0;
        do {
            size_t k = rest - off < step ? rest - off : step;
            memcpy(c.in + c.in_len, src + off, k);
            c.in_len += k;
            off += k;
            done = take_body(&c);
        } while (done == 0 && off < rest);
        free(src);
        if (done < 0)
            got = -1;
        else if (c.r->body.len > (size_t)cfg.max_body)
            abort(); /* a body past the limit was taken */
    }
    if (got < 0) {
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
