/* bench/turnload.c — load generator for the turn benchmark (issue 4,
 * "Benchmark"), driven by bench/turns.py.  One thread, epoll, nonblocking
 * sockets, raw HTTP/1.1 keep-alive to 127.0.0.1 only; SSE bodies are
 * de-chunked and parsed as they arrive, so the client adds a few µs at most
 * to the latencies it measures (`floor` mode shows the round-trip floor).
 *
 *   turnload MODE port=P key=K [pid=LOOPD_PID] [name=value ...]
 *
 * modes (all times in seconds, latencies printed in µs):
 *   floor    n=2000 warm=200          sequential GET /healthz on one
 *                                     keep-alive connection: round-trip floor
 *   seq      n=2000 warm=200          one session, one stream: post, wait for
 *                                     turn.completed + session.idled + 201, repeat
 *   conc     sessions=100 warmup=2 duration=10
 *                                     closed loop on every session; /metrics
 *                                     and loopd CPU sampled around the window
 *                                     with every session idle at both ends
 *   streams  idle=10000 live=1000 rate=500 duration=5
 *                                     idle SSE streams on their own sessions
 *                                     (RSS before/after), then live streams
 *                                     with turns posted at `rate` per second
 *                                     (open loop, round robin over the live
 *                                     sessions not busy); delivery latency =
 *                                     POST sent -> input.message on the stream
 *   rate     method=GET path=/healthz body= expect=200 conns=64 rate=15000
 *            warmup=2 duration=10   one request at `rate` per second (open
 *                                     loop) over `conns` connections; latency
 *                                     from each request's scheduled time
 *
 * Output: `RESULT name=value` lines on stdout; errors on stderr.  Exit status
 * 1 if any error was seen (non-2xx, a dropped stream, a gap in a session's
 * event sequence, a turn that failed or did not finish in time), 2 on bad use.
 * Every wait has a deadline (timeout=SECONDS, default 60, per wait).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ basics */

static int g_port;
static const char *g_key;
static int g_pid;
static int g_ep = -1;
static double g_timeout = 60;
static long g_errors, g_err_printed;
static long g_dropped;       /* SSE streams closed by the server */
static long g_gaps;          /* sequence gaps / duplicates on a stream */
static long g_non2xx;        /* non-2xx answers */
static long g_not_started;   /* POST answered with delivery other than started */
static long g_idle_events;   /* events on a stream whose session had no turn */
static long g_turn_failed;   /* turn.failed / turn.cancelled */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void err(const char *fmt, ...)
{
	va_list ap;
	g_errors++;
	if (g_err_printed++ >= 20) {
		if (g_err_printed == 21)
			fprintf(stderr, "turnload: ERROR: (further errors counted, not printed)\n");
		return;
	}
	va_start(ap, fmt);
	fprintf(stderr, "turnload: ERROR: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "turnload: FATAL: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p)
		die("out of memory");
	return p;
}

static void note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "turnload: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* latency samples (seconds) */
typedef struct {
	double *v;
	size_t n, cap;
} samples;

static void sample_add(samples *s, double x)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 4096;
		s->v = xrealloc(s->v, s->cap * sizeof *s->v);
	}
	s->v[s->n++] = x;
}

static int dcmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(samples *s, double p) /* nearest rank, in µs */
{
	if (!s->n)
		return NAN;
	qsort(s->v, s->n, sizeof *s->v, dcmp);
	size_t k = (size_t)ceil(p * s->n);
	if (k < 1)
		k = 1;
	if (k > s->n)
		k = s->n;
	return s->v[k - 1] * 1e6;
}

static void print_lat(const char *name, samples *s)
{
	printf("RESULT %s_n=%zu\n", name, s->n);
	if (!s->n)
		return;
	printf("RESULT %s_p50_us=%.1f\n", name, pct(s, 0.50));
	printf("RESULT %s_p90_us=%.1f\n", name, pct(s, 0.90));
	printf("RESULT %s_p99_us=%.1f\n", name, pct(s, 0.99));
	printf("RESULT %s_p999_us=%.1f\n", name, pct(s, 0.999));
	printf("RESULT %s_max_us=%.1f\n", name, s->v[s->n - 1] * 1e6);
}

/* ------------------------------------------------------------ connections */

enum { C_REQ, C_SSE };

struct sess;
typedef struct conn conn;
typedef void (*resp_cb)(conn *c, int status, const char *body, size_t blen);

struct conn {
	int fd, kind;
	int connecting, wout;
	char *in;
	size_t inlen, incap;
	char *out;
	size_t outlen, outoff, outcap;
	/* request/response */
	int busy;
	resp_cb cb;
	void *ud;
	double t_sched; /* rate mode: when the request was due */
	/* SSE */
	int hdr_done, connected, idle, closing;
	int ch_state;
	size_t ch_left;
	char *line;
	size_t linelen, linecap;
	char evtype[64];
	long evseq;
	long events, comments;
	struct sess *s;
};

static void conn_close(conn *c)
{
	if (c->fd >= 0) {
		epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
		close(c->fd);
	}
	c->fd = -1;
	c->connecting = c->wout = 0;
	c->inlen = c->outlen = c->outoff = 0;
	c->busy = 0;
	c->hdr_done = 0;
}

static void want_out(conn *c, int on)
{
	if (c->wout == on || c->fd < 0)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
	if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
		die("epoll_ctl MOD: %s", strerror(errno));
	c->wout = on;
}

static int conn_open(conn *c)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		err("socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g_port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int r = connect(fd, (struct sockaddr *)&a, sizeof a);
	if (r < 0 && errno != EINPROGRESS) {
		err("connect: %s", strerror(errno));
		close(fd);
		return -1;
	}
	c->fd = fd;
	c->connecting = r < 0;
	c->wout = c->connecting;
	c->inlen = c->outlen = c->outoff = 0;
	c->hdr_done = c->connected = 0;
	c->ch_state = 0;
	c->ch_left = 0;
	c->linelen = 0;
	c->evtype[0] = 0;
	c->evseq = -1;
	struct epoll_event ev = {.events = EPOLLIN | (c->wout ? EPOLLOUT : 0), .data.ptr = c};
	if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl ADD: %s", strerror(errno));
	return 0;
}

static void conn_fail(conn *c, const char *what);

static void flush_out(conn *c)
{
	while (c->outoff < c->outlen) {
		ssize_t w = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
		if (w > 0) {
			c->outoff += (size_t)w;
		} else if (w < 0 && errno == EINTR) {
			continue;
		} else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			want_out(c, 1);
			return;
		} else {
			conn_fail(c, "write");
			return;
		}
	}
	c->outoff = c->outlen = 0;
	want_out(c, 0);
}

static void conn_send(conn *c, const char *data, size_t n)
{
	if (c->outlen + n > c->outcap) {
		c->outcap = c->outlen + n + 1024;
		c->out = xrealloc(c->out, c->outcap);
	}
	memcpy(c->out + c->outlen, data, n);
	c->outlen += n;
	if (!c->connecting)
		flush_out(c);
}

/* ------------------------------------------------------------- sessions */

typedef struct sess {
	char id[80];
	conn post, sse;
	int inflight, got_201, got_input, got_completed, got_idled;
	double t_sent;
	double t_201, t_input; /* when the 201 and input.message arrived (0 not yet) */
	long last_seq;
	long turns;
	int live;
} sess;

static int g_record;          /* record latencies for turns posted now */
static samples g_lat_turn, g_lat_ack, g_lat_deliv, g_lat_fanout;
static long g_done;           /* turns completed (201 + session.idled) */
static long g_done_window;    /* ... while g_window_open */
static int g_window_open;
static long g_posted;
static long g_inflight;
static long g_sse_connected;
static int g_closed_loop;     /* post again as soon as a turn is done */

static void post_turn(sess *s);

static void turn_done(sess *s)
{
	if (!s->got_completed)
		err("session %s: session.idled without turn.completed", s->id);
	s->inflight = 0;
	g_inflight--;
	s->turns++;
	g_done++;
	if (g_window_open)
		g_done_window++;
	if (g_closed_loop)
		post_turn(s);
}

/* The 201 and input.message leave after the same commit: the time from the
 * first of them to reach the client to the stream's frame is the fan-out
 * (0 when the stream was first). */
static void fanout_sample(sess *s)
{
	if (s->t_201 > 0 && s->t_input > 0)
		sample_add(&g_lat_fanout, s->t_input > s->t_201 ? s->t_input - s->t_201 : 0);
}

static void on_post_resp(conn *c, int status, const char *body, size_t blen)
{
	sess *s = c->ud;
	if (status != 201) {
		g_non2xx++;
		err("POST /v1/sessions/%s/messages answered %d: %.*s", s->id, status,
		    (int)(blen > 300 ? 300 : blen), body);
		if (s->inflight) { /* nothing will run: count it done so the loop ends */
			s->got_completed = 1;
			s->inflight = 0;
			g_inflight--;
		}
		return;
	}
	if (!memmem(body, blen, "\"delivery\":\"started\"", 20))
		g_not_started++;
	if (!s->inflight) {
		err("session %s: 201 for a message with no turn in flight", s->id);
		return;
	}
	if (g_record && s->t_sent > 0) {
		s->t_201 = now();
		sample_add(&g_lat_ack, s->t_201 - s->t_sent);
		fanout_sample(s);
	}
	s->got_201 = 1;
	if (s->got_idled)
		turn_done(s);
}

static const char MSG_BODY[] = "{\"message\":{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}";

static void post_turn(sess *s)
{
	char req[1024];
	if (s->inflight)
		return;
	if (s->post.fd < 0 && conn_open(&s->post) < 0)
		return;
	int n = snprintf(req, sizeof req,
			 "POST /v1/sessions/%s/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
			 "Authorization: %s\r\nContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\n\r\n%s",
			 s->id, g_port, g_key, sizeof MSG_BODY - 1, MSG_BODY);
	s->inflight = 1;
	s->got_201 = s->got_input = s->got_completed = s->got_idled = 0;
	s->t_201 = s->t_input = 0;
	g_inflight++;
	g_posted++;
	s->post.busy = 1;
	s->post.cb = on_post_resp;
	s->post.ud = s;
	s->t_sent = g_record ? now() : 0;
	conn_send(&s->post, req, (size_t)n);
}

static void on_event(conn *c, const char *type, long seq)
{
	if (!strcmp(type, "connected")) {
		if (!c->connected) {
			c->connected = 1;
			g_sse_connected++;
		}
		return;
	}
	c->events++;
	sess *s = c->s;
	if (c->idle || !s) {
		g_idle_events++;
		err("event %s on an idle stream", type);
		return;
	}
	if (!strcmp(type, "disconnecting"))
		return; /* the close that follows is reported as a drop */
	if (seq != s->last_seq + 1) {
		g_gaps++;
		err("session %s: event %s has sequence %ld, expected %ld", s->id, type, seq, s->last_seq + 1);
	}
	if (seq > 0)
		s->last_seq = seq;
	if (!s->inflight) {
		err("session %s: event %s with no turn in flight", s->id, type);
		return;
	}
	double t = now();
	if (!strcmp(type, "input.message")) {
		if (!s->got_input && g_record && s->t_sent > 0) {
			sample_add(&g_lat_deliv, t - s->t_sent);
			s->t_input = t;
			fanout_sample(s);
		}
		s->got_input = 1;
	} else if (!strcmp(type, "turn.completed")) {
		if (g_record && s->t_sent > 0)
			sample_add(&g_lat_turn, t - s->t_sent);
		s->got_completed = 1;
	} else if (!strcmp(type, "turn.failed") || !strcmp(type, "turn.cancelled")) {
		g_turn_failed++;
		err("session %s: %s", s->id, type);
		s->got_completed = 1;
	} else if (!strcmp(type, "session.idled")) {
		s->got_idled = 1;
		if (s->got_201)
			turn_done(s);
	}
}

/* ----------------------------------------------------------- HTTP parsing */

static const char *find_hdr_end(const char *p, size_t n)
{
	const char *e = memmem(p, n, "\r\n\r\n", 4);
	return e ? e + 4 : NULL;
}

static int parse_status(const char *p, size_t n)
{
	if (n < 12 || memcmp(p, "HTTP/1.", 7))
		return -1;
	return atoi(p + 9);
}

/* value of header `name` (lower case, with colon) in [p, e), or NULL */
static const char *hdr_val(const char *p, const char *e, const char *name, size_t *vlen)
{
	size_t nl = strlen(name);
	const char *l = memchr(p, '\n', (size_t)(e - p));
	while (l && l + 1 < e) {
		l++;
		if ((size_t)(e - l) > nl && !strncasecmp(l, name, nl)) {
			const char *v = l + nl;
			while (v < e && (*v == ' ' || *v == '\t'))
				v++;
			const char *ve = memchr(v, '\r', (size_t)(e - v));
			if (!ve)
				ve = e;
			*vlen = (size_t)(ve - v);
			return v;
		}
		l = memchr(l, '\n', (size_t)(e - l));
	}
	return NULL;
}

static void req_process(conn *c)
{
	for (;;) {
		const char *he = find_hdr_end(c->in, c->inlen);
		if (!he)
			return;
		int status = parse_status(c->in, c->inlen);
		size_t vl;
		const char *v = hdr_val(c->in, he, "content-length:", &vl);
		if (!v) {
			err("response without Content-Length (status %d)", status);
			conn_close(c);
			return;
		}
		size_t clen = strtoul(v, NULL, 10);
		size_t hl = (size_t)(he - c->in);
		if (c->inlen < hl + clen)
			return;
		const char *cl = hdr_val(c->in, he, "connection:", &vl);
		int close_it = cl && vl >= 5 && !strncasecmp(cl, "close", 5);
		c->busy = 0;
		if (c->cb)
			c->cb(c, status, c->in + hl, clen);
		if (c->fd < 0)
			return;
		memmove(c->in, c->in + hl + clen, c->inlen - hl - clen);
		c->inlen -= hl + clen;
		if (close_it) {
			conn_close(c);
			return;
		}
	}
}

static void sse_line(conn *c)
{
	size_t n = c->linelen;
	char *l = c->line;
	if (n && l[n - 1] == '\r')
		n--;
	l[n] = 0;
	if (n == 0) {
		if (c->evtype[0])
			on_event(c, c->evtype, c->evseq);
		c->evtype[0] = 0;
		c->evseq = -1;
		return;
	}
	if (l[0] == ':') {
		c->comments++;
		return;
	}
	if (!strncmp(l, "event:", 6)) {
		const char *v = l + 6;
		while (*v == ' ')
			v++;
		snprintf(c->evtype, sizeof c->evtype, "%s", v);
	} else if (!strncmp(l, "data:", 5)) {
		/* the envelope's own "sequence" comes before "data" in the JSON */
		const char *q = strstr(l, "\"sequence\":");
		if (q)
			c->evseq = strtol(q + 11, NULL, 10);
	}
}

static void sse_bytes(conn *c, const char *p, size_t n)
{
	while (n) {
		const char *nl = memchr(p, '\n', n);
		size_t k = nl ? (size_t)(nl - p) : n;
		if (c->linelen + k + 1 > c->linecap) {
			c->linecap = (c->linelen + k + 1) * 2;
			if (c->linecap > (8u << 20))
				die("SSE line over 8 MiB");
			c->line = xrealloc(c->line, c->linecap);
		}
		memcpy(c->line + c->linelen, p, k);
		c->linelen += k;
		if (!nl)
			return;
		sse_line(c);
		c->linelen = 0;
		p += k + 1;
		n -= k + 1;
	}
}

static void dechunk(conn *c, const char *p, size_t n)
{
	while (n) {
		switch (c->ch_state) {
		case 0: /* chunk size */
		case 4: /* extension / CR until LF */
			if (*p == '\n') {
				c->ch_state = c->ch_left ? 1 : 5;
			} else if (c->ch_state == 0 && isxdigit((unsigned char)*p)) {
				c->ch_left = c->ch_left * 16 +
					     (size_t)(isdigit((unsigned char)*p) ? *p - '0' : (tolower((unsigned char)*p) - 'a' + 10));
			} else {
				c->ch_state = 4;
			}
			p++;
			n--;
			break;
		case 1: { /* chunk data */
			size_t m = n < c->ch_left ? n : c->ch_left;
			sse_bytes(c, p, m);
			p += m;
			n -= m;
			c->ch_left -= m;
			if (!c->ch_left)
				c->ch_state = 2;
			break;
		}
		case 2: /* CRLF after data */
			if (*p == '\n') {
				c->ch_state = 0;
				c->ch_left = 0;
			}
			p++;
			n--;
			break;
		default: /* 5: after the last chunk */
			return;
		}
	}
}

static void sse_process(conn *c)
{
	if (!c->hdr_done) {
		const char *he = find_hdr_end(c->in, c->inlen);
		if (!he)
			return;
		int status = parse_status(c->in, c->inlen);
		if (status != 200) {
			g_non2xx++;
			err("GET .../sse answered %d: %.*s", status, (int)(c->inlen > 300 ? 300 : c->inlen), c->in);
			c->closing = 1;
			conn_close(c);
			return;
		}
		size_t vl;
		const char *v = hdr_val(c->in, he, "transfer-encoding:", &vl);
		if (!v || vl < 7 || strncasecmp(v, "chunked", 7))
			die("SSE response is not chunked; turnload only reads chunked streams");
		c->hdr_done = 1;
		size_t hl = (size_t)(he - c->in);
		dechunk(c, c->in + hl, c->inlen - hl);
	} else {
		dechunk(c, c->in, c->inlen);
	}
	c->inlen = 0;
}

static void conn_fail(conn *c, const char *what)
{
	if (c->kind == C_SSE) {
		if (!c->closing) {
			g_dropped++;
			err("SSE stream%s%s closed (%s) after %ld events", c->s ? " of " : "",
			    c->s ? c->s->id : "", what, c->events);
		}
		if (c->connected)
			g_sse_connected--;
		c->connected = 0;
	} else if (c->busy) {
		err("connection closed (%s) with a request outstanding", what);
		if (c->ud && ((sess *)c->ud)->inflight && c->cb == on_post_resp) {
			sess *s = c->ud;
			s->inflight = 0;
			g_inflight--;
		}
	}
	conn_close(c);
}

static void handle(conn *c, uint32_t evs)
{
	if (c->fd < 0)
		return;
	if (c->connecting && (evs & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
		int e = 0;
		socklen_t l = sizeof e;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &l);
		if (e) {
			errno = e;
			conn_fail(c, strerror(e));
			return;
		}
		c->connecting = 0;
	}
	if (evs & EPOLLOUT)
		flush_out(c);
	if (c->fd < 0)
		return;
	if (evs & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		if (c->incap - c->inlen < 65536) {
			c->incap = c->inlen + 65536;
			c->in = xrealloc(c->in, c->incap);
		}
		ssize_t r = read(c->fd, c->in + c->inlen, c->incap - c->inlen);
		if (r > 0) {
			c->inlen += (size_t)r;
			if (c->kind == C_SSE)
				sse_process(c);
			else
				req_process(c);
		} else if (r == 0) {
			conn_fail(c, "EOF");
		} else if (errno != EAGAIN && errno != EINTR) {
			conn_fail(c, strerror(errno));
		}
	}
}

/* one epoll round; waits at most `secs` (0: poll).  epoll_pwait2 takes a
 * nanosecond timeout, so an open loop sleeps until its next send instead
 * of spinning on epoll_wait(0) through the last millisecond: a client
 * busy on its whole CPU delays the kernel work (block completions,
 * writeback) that runs there too. */
static void loop_wait(double secs)
{
	struct epoll_event evs[512];
	if (secs < 0)
		secs = 0;
	struct timespec ts = {.tv_sec = (time_t)secs, .tv_nsec = (long)((secs - (time_t)secs) * 1e9)};
	int n = epoll_pwait2(g_ep, evs, 512, &ts, NULL);
	if (n < 0 && errno != EINTR)
		die("epoll_pwait2: %s", strerror(errno));
	for (int i = 0; i < n; i++)
		handle(evs[i].data.ptr, evs[i].events);
}

static void loop_once(int timeout_ms)
{
	loop_wait(timeout_ms / 1000.0);
}

/* run the loop until cond() holds; 0, or -1 on the deadline (an error) */
static int run_until(int (*cond)(void), double secs, const char *what)
{
	double dl = now() + secs;
	while (!cond()) {
		if (now() > dl) {
			err("timed out after %.0f s waiting for %s", secs, what);
			return -1;
		}
		loop_once(10);
	}
	return 0;
}

static void run_for(double secs)
{
	double end = now() + secs;
	for (double t = now(); t < end; t = now())
		loop_once((int)((end - t) * 1000) + 1);
}

/* ----------------------------------------------- blocking helpers, setup */

/* GET path on a fresh blocking connection; returns malloc'd body or NULL */
static char *http_get_blocking(const char *path, int *status)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g_port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		close(fd);
		return NULL;
	}
	char req[512];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: %s\r\nConnection: close\r\n\r\n",
			 path, g_port, g_key);
	if (write(fd, req, (size_t)n) != n) {
		close(fd);
		return NULL;
	}
	size_t len = 0, cap = 65536;
	char *buf = xrealloc(NULL, cap);
	double dl = now() + 10;
	for (;;) {
		if (len + 4096 > cap)
			buf = xrealloc(buf, cap *= 2);
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r <= 0 || now() > dl)
			break;
		len += (size_t)r;
		const char *he = find_hdr_end(buf, len);
		size_t vl;
		const char *v;
		if (he && (v = hdr_val(buf, he, "content-length:", &vl)) &&
		    len >= (size_t)(he - buf) + strtoul(v, NULL, 10))
			break;
	}
	close(fd);
	buf[len] = 0;
	const char *he = find_hdr_end(buf, len);
	if (!he) {
		free(buf);
		return NULL;
	}
	*status = parse_status(buf, len);
	memmove(buf, he, len - (size_t)(he - buf) + 1);
	return buf;
}

typedef struct {
	double commits, ops, stmts, non2xx, reqs;
	int ok;
} metrics;

static metrics read_metrics(void)
{
	metrics m = {0};
	int st = 0;
	char *b = http_get_blocking("/metrics", &st);
	if (!b || st != 200) {
		err("GET /metrics failed (status %d)", st);
		free(b);
		return m;
	}
	for (char *l = b; l && *l;) {
		char *e = strchr(l, '\n');
		if (e)
			*e = 0;
		char *sp = strrchr(l, ' ');
		double v = sp ? strtod(sp + 1, NULL) : 0;
		if (!strncmp(l, "loopd_store_commit_batch_size_count", 35))
			m.commits += v;
		else if (!strncmp(l, "loopd_store_commit_batch_size_sum", 33))
			m.ops += v;
		else if (!strncmp(l, "loopd_store_statements_total", 28))
			m.stmts += v;
		else if (!strncmp(l, "loopd_http_requests_total{", 26)) {
			m.reqs += v;
			if (!strstr(l, "status=\"2"))
				m.non2xx += v;
		}
		l = e ? e + 1 : NULL;
	}
	m.ok = 1;
	free(b);
	return m;
}

static double proc_cpu_s(int pid) /* utime+stime of all threads, seconds */
{
	char p[64], buf[1024];
	snprintf(p, sizeof p, "/proc/%d/stat", pid);
	FILE *f = fopen(p, "r");
	if (!f)
		return NAN;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *q = strrchr(buf, ')');
	if (!q)
		return NAN;
	unsigned long ut = 0, stt = 0;
	/* fields after ')' start at 3 (state); utime is 14, stime 15 */
	if (sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt) != 2)
		return NAN;
	return (double)(ut + stt) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kb(int pid)
{
	char p[64], line[256];
	long kb = -1;
	snprintf(p, sizeof p, "/proc/%d/status", pid);
	FILE *f = fopen(p, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (!strncmp(line, "VmRSS:", 6))
			kb = strtol(line + 6, NULL, 10);
	fclose(f);
	return kb;
}

static double self_cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

/* create n sessions over `par` keep-alive connections */
static sess *g_sess;
static long g_nsess, g_created, g_create_next, g_create_fail;

static void create_next(conn *c);

static void on_create_resp(conn *c, int status, const char *body, size_t blen)
{
	long i = (long)(intptr_t)c->ud;
	if (status != 201) {
		g_non2xx++;
		g_create_fail++;
		err("POST /v1/sessions answered %d: %.*s", status, (int)(blen > 300 ? 300 : blen), body);
	} else {
		const char *p = memmem(body, blen, "\"id\":\"", 6);
		const char *q = p ? memchr(p + 6, '"', blen - (size_t)(p + 6 - body)) : NULL;
		if (!q || q - (p + 6) >= (long)sizeof g_sess[i].id) {
			err("POST /v1/sessions: no id in the answer");
			g_create_fail++;
		} else {
			memcpy(g_sess[i].id, p + 6, (size_t)(q - (p + 6)));
			g_sess[i].id[q - (p + 6)] = 0;
			g_created++;
		}
	}
	create_next(c);
}

static void create_next(conn *c)
{
	static const char req_fmt[] = "POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: %s\r\n"
				      "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
	if (g_create_next >= g_nsess)
		return;
	char req[512];
	int n = snprintf(req, sizeof req, req_fmt, g_port, g_key);
	c->ud = (void *)(intptr_t)g_create_next++;
	c->busy = 1;
	c->cb = on_create_resp;
	conn_send(c, req, (size_t)n);
}

static int cond_created(void) { return g_created + g_create_fail >= g_nsess; }

static void create_sessions(long n, int par)
{
	g_sess = calloc((size_t)n, sizeof *g_sess);
	if (!g_sess)
		die("out of memory");
	g_nsess = n;
	for (long i = 0; i < n; i++) {
		g_sess[i].post.fd = g_sess[i].sse.fd = -1;
		g_sess[i].post.kind = C_REQ;
		g_sess[i].sse.kind = C_SSE;
		g_sess[i].sse.s = &g_sess[i];
	}
	conn *cs = calloc((size_t)par, sizeof *cs);
	for (int i = 0; i < par; i++) {
		cs[i].fd = -1;
		cs[i].kind = C_REQ;
		if (conn_open(&cs[i]) == 0)
			create_next(&cs[i]);
	}
	double t0 = now();
	run_until(cond_created, g_timeout + n / 200.0, "session creation");
	for (int i = 0; i < par; i++)
		conn_close(&cs[i]);
	free(cs);
	if (g_created < n)
		die("created only %ld of %ld sessions", g_created, n);
	note("created %ld sessions in %.2f s", n, now() - t0);
}

static void sse_open(conn *c, const char *sid, int idle)
{
	char req[512];
	c->idle = idle;
	c->closing = 0;
	if (conn_open(c) < 0)
		return;
	int n = snprintf(req, sizeof req,
			 "GET /v1/sessions/%s/sse HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: %s\r\n"
			 "Accept: text/event-stream\r\n\r\n",
			 sid, g_port, g_key);
	conn_send(c, req, (size_t)n);
}

/* open streams for sessions [lo, hi), at most `window` not yet connected */
static long g_want_connected;
static int cond_connected(void) { return g_sse_connected >= g_want_connected; }

static void open_streams(long lo, long hi, int idle, int window)
{
	double t0 = now(), dl = t0 + g_timeout + (hi - lo) / 500.0;
	long base = g_sse_connected, opened = 0;
	while (lo + opened < hi) {
		while (lo + opened < hi && opened - (g_sse_connected - base) < window) {
			sess *s = &g_sess[lo + opened];
			sse_open(&s->sse, s->id, idle);
			opened++;
		}
		loop_once(5);
		if (now() > dl) {
			err("timed out opening SSE streams (%ld of %ld connected)", g_sse_connected - base, hi - lo);
			return;
		}
	}
	g_want_connected = base + (hi - lo);
	run_until(cond_connected, dl - now() > 1 ? dl - now() : 1, "SSE connected frames");
	note("%ld streams connected in %.2f s", g_sse_connected - base, now() - t0);
}

static int cond_idle(void) { return g_inflight == 0; }

/* ------------------------------------------------------------------ modes */

static void mode_floor(long n, long warm)
{
	conn c = {.fd = -1, .kind = C_REQ};
	samples lat = {0};
	char req[256];
	int len = snprintf(req, sizeof req, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", g_port);
	if (conn_open(&c) < 0)
		die("cannot connect");
	for (long i = 0; i < warm + n; i++) {
		double t0 = now();
		c.busy = 1;
		c.cb = NULL;
		conn_send(&c, req, (size_t)len);
		double dl = t0 + g_timeout;
		while (c.busy && c.fd >= 0 && now() < dl)
			loop_once(10);
		if (c.busy)
			die("GET /healthz: no answer");
		if (i >= warm)
			sample_add(&lat, now() - t0);
	}
	print_lat("floor", &lat);
}

static sess *g_one;
static int cond_one_idle(void) { return !g_one->inflight; }

static void mode_seq(long n, long warm)
{
	create_sessions(1, 1);
	g_one = &g_sess[0];
	open_streams(0, 1, 0, 1);
	double c0 = 0, t0 = 0, l0 = 0;
	metrics m0 = {0};
	for (long i = 0; i < warm + n; i++) {
		if (i == warm) {
			m0 = read_metrics();
			c0 = proc_cpu_s(g_pid);
			l0 = self_cpu_s();
			t0 = now();
		}
		g_record = i >= warm;
		post_turn(g_one);
		if (run_until(cond_one_idle, g_timeout, "a turn to finish") < 0)
			break;
	}
	double el = now() - t0;
	double c1 = proc_cpu_s(g_pid), l1 = self_cpu_s();
	metrics m1 = read_metrics();
	printf("RESULT seq_turns=%ld\n", n);
	if (m0.ok && m1.ok && n > 0) {
		printf("RESULT seq_commits_per_turn=%.3f\n", (m1.commits - m0.commits) / n);
		printf("RESULT seq_statements_per_turn=%.2f\n", (m1.stmts - m0.stmts) / n);
		printf("RESULT seq_non2xx_metrics=%.0f\n", m1.non2xx - m0.non2xx);
	}
	printf("RESULT seq_turns_per_s=%.1f\n", n / el);
	printf("RESULT seq_server_cpu_us_per_turn=%.1f\n", (c1 - c0) / n * 1e6);
	printf("RESULT seq_client_cpu_us_per_turn=%.1f\n", (l1 - l0) / n * 1e6);
	print_lat("seq_turn", &g_lat_turn);
	print_lat("seq_ack", &g_lat_ack);
	print_lat("seq_deliv", &g_lat_deliv);
}

static void mode_conc(long ns, double warmup, double dur)
{
	create_sessions(ns, 16);
	open_streams(0, ns, 0, 256);
	/* warm-up */
	g_closed_loop = 1;
	g_record = 0;
	for (long i = 0; i < ns; i++)
		post_turn(&g_sess[i]);
	run_for(warmup);
	g_closed_loop = 0;
	run_until(cond_idle, g_timeout, "warm-up turns to finish");
	/* measured window, every session idle at both ends */
	metrics m0 = read_metrics();
	double c0 = proc_cpu_s(g_pid), l0 = self_cpu_s();
	long d0 = g_done, p0 = g_posted;
	g_record = 1;
	g_closed_loop = 1;
	g_done_window = 0;
	g_window_open = 1;
	double t0 = now();
	for (long i = 0; i < ns; i++)
		post_turn(&g_sess[i]);
	run_for(dur);
	double t1 = now();
	g_window_open = 0;
	long in_window = g_done_window;
	double c1 = proc_cpu_s(g_pid), l1 = self_cpu_s();
	g_closed_loop = 0;
	run_until(cond_idle, g_timeout, "the last turns to finish");
	metrics m1 = read_metrics();
	long posted = g_posted - p0, done = g_done - d0;
	double el = t1 - t0;
	printf("RESULT conc_sessions=%ld\n", ns);
	printf("RESULT conc_seconds=%.3f\n", el);
	printf("RESULT conc_turns=%ld\n", posted);
	printf("RESULT conc_turns_done=%ld\n", done);
	printf("RESULT conc_turns_per_s=%.1f\n", in_window / el);
	printf("RESULT conc_server_cpu_pct=%.1f\n", (c1 - c0) / el * 100);
	printf("RESULT conc_server_cpu_us_per_turn=%.1f\n", (c1 - c0) / (in_window ? in_window : 1) * 1e6);
	printf("RESULT conc_client_cpu_pct=%.1f\n", (l1 - l0) / el * 100);
	if (m0.ok && m1.ok && posted > 0) {
		printf("RESULT conc_commits_per_turn=%.3f\n", (m1.commits - m0.commits) / posted);
		printf("RESULT conc_ops_per_commit=%.2f\n", (m1.ops - m0.ops) / (m1.commits - m0.commits));
		printf("RESULT conc_statements_per_turn=%.2f\n", (m1.stmts - m0.stmts) / posted);
		printf("RESULT conc_http_requests_per_turn=%.3f\n", (m1.reqs - m0.reqs - 1) / posted);
		printf("RESULT conc_non2xx_metrics=%.0f\n", m1.non2xx - m0.non2xx);
	}
	print_lat("conc_turn", &g_lat_turn);
	print_lat("conc_ack", &g_lat_ack);
	print_lat("conc_deliv", &g_lat_deliv);
}

static void mode_streams(long nidle, long nlive, double rate, double dur)
{
	create_sessions(nidle + nlive, 32);
	run_for(1.0); /* let the writer settle */
	long r0 = proc_rss_kb(g_pid);
	open_streams(0, nidle, 1, 512);
	run_for(1.0);
	long r1 = proc_rss_kb(g_pid);
	open_streams(nidle, nidle + nlive, 0, 512);
	run_for(0.5);
	long r2 = proc_rss_kb(g_pid);
	long streams_open = g_sse_connected;
	printf("RESULT streams_idle=%ld\n", nidle);
	printf("RESULT streams_live=%ld\n", nlive);
	printf("RESULT rss_before_kb=%ld\n", r0);
	printf("RESULT rss_idle_kb=%ld\n", r1);
	printf("RESULT rss_live_kb=%ld\n", r2);
	if (nidle)
		printf("RESULT bytes_per_idle_stream=%.0f\n", (double)(r1 - r0) * 1024 / nidle);
	if (nlive)
		printf("RESULT bytes_per_live_stream_open=%.0f\n", (double)(r2 - r1) * 1024 / nlive);
	fflush(stdout);
	/* open loop: `rate` turns/s, round robin over live sessions not busy */
	metrics m0 = read_metrics();
	double c0 = proc_cpu_s(g_pid), l0 = self_cpu_s();
	long p0 = g_posted, skipped = 0, rr = 0;
	g_record = 1;
	double t0 = now(), end = t0 + dur, next = t0;
	while (nlive && now() < end) {
		double t = now();
		while (next <= t) {
			long k;
			for (k = 0; k < nlive && g_sess[nidle + rr].inflight; k++)
				rr = (rr + 1) % nlive;
			if (k == nlive)
				skipped++;
			else
				post_turn(&g_sess[nidle + rr]);
			rr = (rr + 1) % nlive;
			next += 1.0 / rate;
		}
		double wait = next - now();
		loop_wait(wait);
	}
	double t1 = now();
	double c1 = proc_cpu_s(g_pid), l1 = self_cpu_s();
	run_until(cond_idle, g_timeout, "live turns to finish");
	run_for(0.5);
	metrics m1 = read_metrics();
	long r3 = proc_rss_kb(g_pid);
	long posted = g_posted - p0;
	printf("RESULT live_seconds=%.3f\n", t1 - t0);
	printf("RESULT live_turns=%ld\n", posted);
	printf("RESULT live_turns_per_s=%.1f\n", posted / (t1 - t0));
	printf("RESULT live_skipped=%ld\n", skipped);
	printf("RESULT live_server_cpu_pct=%.1f\n", (c1 - c0) / (t1 - t0) * 100);
	printf("RESULT live_client_cpu_pct=%.1f\n", (l1 - l0) / (t1 - t0) * 100);
	if (m0.ok && m1.ok && posted)
		printf("RESULT live_commits_per_turn=%.3f\n", (m1.commits - m0.commits) / posted);
	printf("RESULT rss_after_kb=%ld\n", r3);
	printf("RESULT streams_open_before=%ld\n", streams_open);
	printf("RESULT streams_open_after=%ld\n", g_sse_connected);
	long idle_comments = 0;
	for (long i = 0; i < nidle; i++)
		idle_comments += g_sess[i].sse.comments;
	printf("RESULT idle_heartbeats=%ld\n", idle_comments);
	print_lat("live_deliv", &g_lat_deliv);
	print_lat("live_fanout", &g_lat_fanout);
	print_lat("live_turn", &g_lat_turn);
	print_lat("live_ack", &g_lat_ack);
}

/* rate: plain requests at a fixed rate (open loop) over `conns` keep-alive
 * connections.  Each request has a scheduled send time; its latency runs
 * from that time to the end of its answer, so a server that falls behind
 * is charged for the wait of every request it delayed (no coordinated
 * omission).  A request whose time comes while every connection is busy
 * waits in a backlog for the first one free.  Send times are evenly spaced
 * and the backlog is first in, first out, so it is a count and the time
 * of its oldest request.  Throughput counts the answers that arrive within
 * the measured window, so an overloaded server shows what it managed. */
static char *g_rate_req;
static size_t g_rate_reqlen;
static int g_rate_expect;
static double g_rate_gap;  /* 1 / rate */
static double g_bl_oldest; /* the backlog's first scheduled time */
static size_t g_bl_len, g_bl_max;
static samples g_lat_rate;
static double g_rate_t0, g_rate_t1; /* the measured window */
static long g_rate_sent, g_rate_done, g_rate_done_window;

static void rate_send(conn *c, double t_sched);

static void on_rate_resp(conn *c, int status, const char *body, size_t blen)
{
	double t = now(), ts = c->t_sched;
	if (status != g_rate_expect) {
		g_non2xx++;
		err("%.40s answered %d: %.*s", g_rate_req, status, (int)(blen > 300 ? 300 : blen), body);
	}
	g_rate_done++;
	if (ts >= g_rate_t0 && ts < g_rate_t1) /* latency: requests due in the window */
		sample_add(&g_lat_rate, t - ts);
	if (t >= g_rate_t0 && t < g_rate_t1) /* throughput: answers within it */
		g_rate_done_window++;
	if (g_bl_len) {
		double next = g_bl_oldest;
		g_bl_oldest += g_rate_gap;
		g_bl_len--;
		rate_send(c, next);
	}
}

static void rate_send(conn *c, double t_sched)
{
	c->t_sched = t_sched;
	c->busy = 1;
	c->cb = on_rate_resp;
	g_rate_sent++;
	conn_send(c, g_rate_req, g_rate_reqlen);
}

static void backlog_push(double t)
{
	if (!g_bl_len)
		g_bl_oldest = t;
	if (++g_bl_len > g_bl_max)
		g_bl_max = g_bl_len;
}

static int cond_rate_idle(void) { return g_rate_done >= g_rate_sent && !g_bl_len; }

static void mode_rate(const char *method, const char *path, const char *body, int expect, int nconn,
		      double rate, double warm, double dur)
{
	size_t blen = strlen(body);
	g_rate_req = malloc(1024 + strlen(path) + strlen(g_key) + blen);
	if (!g_rate_req)
		die("out of memory");
	int n = sprintf(g_rate_req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: %s\r\n", method, path,
			g_port, g_key);
	if (blen)
		n += sprintf(g_rate_req + n, "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", blen,
			     body);
	else
		n += sprintf(g_rate_req + n, "\r\n");
	g_rate_reqlen = (size_t)n;
	g_rate_expect = expect;
	g_rate_gap = 1.0 / rate;
	conn *cs = calloc((size_t)nconn, sizeof *cs);
	if (!cs)
		die("out of memory");
	for (int i = 0; i < nconn; i++) {
		cs[i].fd = -1;
		cs[i].kind = C_REQ;
		if (conn_open(&cs[i]) < 0)
			die("cannot connect");
	}
	double t0 = now();
	g_rate_t0 = t0 + warm;
	g_rate_t1 = g_rate_t0 + dur;
	double next = t0, c0 = 0, l0 = 0;
	int measuring = 0;
	int free_at = 0; /* where the search for a free connection starts */
	while (now() < g_rate_t1) {
		double t = now();
		if (!measuring && t >= g_rate_t0) {
			c0 = proc_cpu_s(g_pid);
			l0 = self_cpu_s();
			measuring = 1;
		}
		while (next <= t) {
			int k;
			for (k = 0; k < nconn && (cs[free_at].busy || cs[free_at].fd < 0); k++)
				free_at = (free_at + 1) % nconn;
			if (k == nconn || g_bl_len)
				backlog_push(next);
			else
				rate_send(&cs[free_at], next);
			next += g_rate_gap;
		}
		double wait = next - now();
		loop_wait(wait);
	}
	double c1 = proc_cpu_s(g_pid), l1 = self_cpu_s();
	run_until(cond_rate_idle, g_timeout, "the last answers");
	for (int i = 0; i < nconn; i++)
		conn_close(&cs[i]);
	free(cs);
	printf("RESULT rate_offered_per_s=%.1f\n", rate);
	printf("RESULT rate_done_per_s=%.1f\n", g_rate_done_window / dur);
	printf("RESULT rate_backlog_max=%zu\n", g_bl_max);
	printf("RESULT rate_server_cpu_pct=%.1f\n", (c1 - c0) / dur * 100);
	printf("RESULT rate_client_cpu_pct=%.1f\n", (l1 - l0) / dur * 100);
	if (g_rate_done_window)
		printf("RESULT rate_server_cpu_us_per_req=%.1f\n", (c1 - c0) * 1e6 / g_rate_done_window);
	print_lat("rate", &g_lat_rate);
}

/* ------------------------------------------------------------------- main */

static int g_argc;
static char **g_argv;

static const char *arg(const char *name, const char *def)
{
	size_t n = strlen(name);
	for (int i = 2; i < g_argc; i++)
		if (!strncmp(g_argv[i], name, n) && g_argv[i][n] == '=')
			return g_argv[i] + n + 1;
	return def;
}

static double argd(const char *name, double def)
{
	const char *v = arg(name, NULL);
	if (!v)
		return def;
	char *e;
	double d = strtod(v, &e);
	if (*e || d < 0) {
		fprintf(stderr, "turnload: bad %s=%s\n", name, v);
		exit(2);
	}
	return d;
}

int main(int argc, char **argv)
{
	g_argc = argc;
	g_argv = argv;
	if (argc < 2) {
		fprintf(stderr, "usage: turnload floor|seq|conc|streams|rate port=P key=K [pid=N] [name=value ...]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	prctl(PR_SET_TIMERSLACK, 1UL); /* wake on time for scheduled sends (default slack 50 µs) */
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	g_port = (int)argd("port", 0);
	g_key = arg("key", "");
	g_pid = (int)argd("pid", 0);
	g_timeout = argd("timeout", 60);
	if (!g_port)
		die("port= is required");
	g_ep = epoll_create1(EPOLL_CLOEXEC);
	if (g_ep < 0)
		die("epoll_create1: %s", strerror(errno));
	const char *m = argv[1];
	if (!strcmp(m, "floor"))
		mode_floor((long)argd("n", 2000), (long)argd("warm", 200));
	else if (!strcmp(m, "seq"))
		mode_seq((long)argd("n", 2000), (long)argd("warm", 200));
	else if (!strcmp(m, "conc"))
		mode_conc((long)argd("sessions", 100), argd("warmup", 2), argd("duration", 10));
	else if (!strcmp(m, "streams")) {
		double rate = argd("rate", 500);
		if (rate <= 0)
			die("rate must be > 0");
		mode_streams((long)argd("idle", 10000), (long)argd("live", 1000), rate, argd("duration", 5));
	} else if (!strcmp(m, "rate")) {
		double rate = argd("rate", 15000);
		int nconn = (int)argd("conns", 64);
		if (rate <= 0 || nconn < 1)
			die("rate and conns must be > 0");
		mode_rate(arg("method", "GET"), arg("path", "/healthz"), arg("body", ""), (int)argd("expect", 200),
			  nconn, rate, argd("warmup", 2), argd("duration", 10));
	} else {
		fprintf(stderr, "turnload: unknown mode %s\n", m);
		return 2;
	}
	printf("RESULT errors=%ld\n", g_errors);
	printf("RESULT dropped_streams=%ld\n", g_dropped);
	printf("RESULT sequence_gaps=%ld\n", g_gaps);
	printf("RESULT non2xx=%ld\n", g_non2xx);
	printf("RESULT not_started=%ld\n", g_not_started);
	printf("RESULT idle_stream_events=%ld\n", g_idle_events);
	printf("RESULT turns_failed=%ld\n", g_turn_failed);
	return g_errors ? 1 : 0;
}
