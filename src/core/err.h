/*
 * err.h — the one error vocabulary of loopd (in the manner of curl's
 * CURLcode).  core/ and store/ return an `enum ld_err`; core/err.c maps
 * each code to an HTTP status and problem `code` in switches with no
 * default, so -Wall -Werror catches a code without a mapping; the title is
 * the status's reason phrase (ld_status_reason, also the status line's).  The human
 * detail travels separately as one bounded line.  Codes are never
 * renumbered; retired ones stay as LD_E_OBSOLETEn.
 */
#ifndef LOOPD_ERR_H
#define LOOPD_ERR_H

enum ld_err {
    LD_OK = 0,
    LD_E_BAD_REQUEST = 1,        /* 400: invalid input (detail names the field) */
    LD_E_BAD_JSON = 2,           /* 400: body is not valid JSON */
    LD_E_LIMIT = 3,              /* 400: an input exceeds a limit */
    LD_E_UNAUTHORIZED = 4,       /* 401 */
    LD_E_FORBIDDEN = 5,          /* 403 */
    LD_E_NOT_FOUND = 6,          /* 404 */
    LD_E_METHOD = 7,             /* 405 (Allow header set by the router) */
    LD_E_TIMEOUT = 8,            /* 408: request not received in time */
    LD_E_CONFLICT = 9,           /* 409 */
    LD_E_PRECONDITION = 10,      /* 412: If-Match did not match */
    LD_E_TOO_LARGE = 11,         /* 413: body over the limit */
    LD_E_MEDIA_TYPE = 12,        /* 415 */
    LD_E_UNPROCESSABLE = 13,     /* 422: e.g. Idempotency-Key reused with another body */
    LD_E_HEADERS_TOO_LARGE = 14, /* 431 */
    LD_E_RATE_LIMITED = 15,      /* 429 */
    LD_E_INTERNAL = 16,          /* 500: never leaks internals */
    LD_E_UNAVAILABLE = 17,       /* 503: writer queue full, shutting down */
    LD_E_STORAGE = 18,           /* 500: the store failed (disk full, I/O) */
    LD_E_NOT_IMPLEMENTED = 19,   /* 501: e.g. an unknown Transfer-Encoding */
    LD_E_URI_TOO_LONG = 20,      /* 414: request target over the limit */
    LD_E_VERSION = 21,           /* 505: not HTTP/1.0 or HTTP/1.1 */
    LD_E__COUNT
};

int ld_err_status(enum ld_err e);
const char *ld_err_title(enum ld_err e);  /* = ld_status_reason(ld_err_status(e)) */
const char *ld_status_reason(int status); /* "Unknown" for a status loopd never sends */
const char *ld_err_code(enum ld_err e);   /* stable snake_case code */

#endif
