/*
 * limits.h — every cap loopd enforces, in one place (in the manner of
 * sqliteLimit.h).  Each limit has a name, a default and the reason for it.
 * Defaults that an operator may change are also rows of the option table in
 * config.c; the LD_MAX_* values here are hard bounds that no flag can exceed.
 */
#ifndef LOOPD_LIMITS_H
#define LOOPD_LIMITS_H

/* Request body.  Upstream's framework default is 2 MiB; 1 MiB covers a 1 MiB
 * system prompt only just, so the default is 2 MiB.  The hard bound is
 * 16 MiB: a message of N bytes takes about 2N of its request's arena (the
 * text, then the stored message) and 4N of the batch that stores it, and
 * the arena is capped (LD_ARENA_MAX, past it loopd aborts).  It was 64 MiB
 * with a 64 MiB arena: a 40 MB message crashed a server run with
 * --max-body 64 MiB. */
#define LD_DEFAULT_MAX_BODY (2u * 1024 * 1024)
#define LD_MAX_BODY_BOUND (16u * 1024 * 1024)

/* Request headers in all (names + values); the request line may add
 * 8 KiB (http/server.c).  The hard bound keeps a connection's input buffer
 * small. */
#define LD_DEFAULT_MAX_HEADER (16u * 1024)
#define LD_MAX_HEADER_BOUND (64u * 1024)

/* Total time to receive one request (headers and body), in seconds.  A
 * deadline, not an idle timer: a client that trickles bytes is cut off. */
#define LD_DEFAULT_REQUEST_TIMEOUT 30
/* Idle keep-alive connections are closed after this many seconds. */
#define LD_DEFAULT_IDLE_TIMEOUT 75

#define LD_DEFAULT_MAX_CONNECTIONS 10000
#define LD_DEFAULT_MAX_CONNECTIONS_PER_IP 1000

/* JSON nesting depth accepted in request bodies (jansson allows 2048). */
#define LD_MAX_JSON_DEPTH 64

/* Session fields (reference section 22 suggests 255 / 100). */
#define LD_DEFAULT_MAX_TITLE 255
#define LD_DEFAULT_MAX_TAGS 100
#define LD_DEFAULT_MAX_TAG_LEN 255
#define LD_MAX_GOAL (64u * 1024)
#define LD_MAX_SYSTEM_PROMPT (1u * 1024 * 1024)
#define LD_MAX_INITIAL_FILES 100
#define LD_MAX_INITIAL_FILES_BYTES (5u * 1024 * 1024)
#define LD_MAX_LOCALE 64
#define LD_MAX_CAPABILITIES 250
#define LD_MAX_TOOLS 50
#define LD_MAX_TOOL_NAME 64
#define LD_MAX_TOOL_DESCRIPTION 1024
#define LD_MAX_TOOL_PARAMS (10u * 1024)
#define LD_MAX_NAME 64
#define LD_MAX_DISPLAY_NAME 255
#define LD_MAX_DESCRIPTION (10u * 1024)
#define LD_MAX_IDEMPOTENCY_KEY 255

/* Pagination. */
#define LD_PAGE_DEFAULT 20
#define LD_PAGE_MAX 100
#define LD_SEARCH_MAX 255

/* Response buffers: an answer that echoes the largest body (a message) with
 * its envelope; lists and logs past 4 MiB are streamed, not buffered. */
#define LD_MAX_RESPONSE (LD_MAX_BODY_BOUND + 4u * 1024 * 1024)
/* One piece of a streamed answer (reply_stream): pieces hold whole items
 * (a message up to the response bound) and stop growing past 256 KiB. */
#define LD_MAX_STREAM_PIECE (LD_MAX_RESPONSE + 1024u * 1024)
#define LD_STREAM_PIECE_TARGET (256u * 1024)
/* A page of events read from the store stops early past this many bytes
 * of bodies (an event may be as big as the largest body). */
#define LD_EVENTS_PAGE_BYTES (8u * 1024 * 1024)
/* A list page past this many bytes is streamed (api.h, list_page). */
#define LD_LIST_BUFFERED (4u * 1024 * 1024)
/* GET /v1/sessions/{id} keeps answers up to this size (sessions.c): 1,024
 * of them at most, so 8 MiB at worst; a typical session renders to 2.2 KB */
#define LD_GET_CACHE_BODY_MAX (8u * 1024)
/* room reserved for a session's JSON before it is rendered: one allocation
 * instead of four doublings from 256 bytes (a session renders to ~2.2 KB);
 * with the NUL the buffer holds, one 4 KiB block (4,096 made it 8 KiB) */
#define LD_SESSION_RENDER_HINT 4095u
/* and list pages up to this size, 64 of them: 16 MiB at worst (a page of
 * 20 sessions is 86 KB) */
#define LD_LIST_CACHE_BODY_MAX (256u * 1024)

/* What a savepoint's sub-journal holds in memory (one allocation) before
 * it goes on in a temporary file (store_open): 29 pages.  Under 128 KiB:
 * the spill writes it to the file in one call, and SQLite's unix VFS
 * fails a write of 128 KiB or more as SQLITE_FULL (seen at 512 KiB). */
#define LD_STMT_JOURNAL_MEM (120 * 1024)
/* Writer queue: past this many queued writes, 503 + Retry-After. */
#define LD_WRITER_QUEUE_MAX 65536
/* Most operations committed in one transaction (group commit). */
#define LD_WRITER_BATCH_MAX 512

/* Per-request (and per-batch) arena: hard cap on what one may allocate;
 * past it loopd aborts, as on a bug.  The largest user of it is a message
 * of the largest body: the batch that stores it holds the message, the
 * event's data, its body and the stored message (4 copies, measured with
 * a 16 MiB message); 6 leave room. */
#define LD_ARENA_MAX (6u * LD_MAX_BODY_BOUND)

#endif
