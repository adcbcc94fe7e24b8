/* err.c — the single mapping from ld_err to HTTP status, title and code.
 * The switches have no default case on purpose (see err.h). */
#include "core/err.h"

int ld_err_status(enum ld_err e)
{
    switch (e) {
    case LD_OK:
        return 200;
    case LD_E_BAD_REQUEST:
        return 400;
    case LD_E_BAD_JSON:
        return 400;
    case LD_E_LIMIT:
        return 400;
    case LD_E_UNAUTHORIZED:
        return 401;
    case LD_E_FORBIDDEN:
        return 403;
    case LD_E_NOT_FOUND:
        return 404;
    case LD_E_METHOD:
        return 405;
    case LD_E_TIMEOUT:
        return 408;
    case LD_E_CONFLICT:
        return 409;
    case LD_E_PRECONDITION:
        return 412;
    case LD_E_TOO_LARGE:
        return 413;
    case LD_E_MEDIA_TYPE:
        return 415;
    case LD_E_UNPROCESSABLE:
        return 422;
    case LD_E_HEADERS_TOO_LARGE:
        return 431;
    case LD_E_RATE_LIMITED:
        return 429;
    case LD_E_INTERNAL:
        return 500;
    case LD_E_UNAVAILABLE:
        return 503;
    case LD_E_STORAGE:
        return 500;
    case LD_E_NOT_IMPLEMENTED:
        return 501;
    case LD_E_URI_TOO_LONG:
        return 414;
    case LD_E_VERSION:
        return 505;
    case LD_E__COUNT:
        break;
    }
    return 500;
}

/* RFC 9110 reason phrases (429 from RFC 6585, 431 likewise) */
const char *ld_status_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    }
    return "Unknown";
}

/* a problem's title is its status's reason phrase */
const char *ld_err_title(enum ld_err e)
{
    return ld_status_reason(ld_err_status(e));
}

const char *ld_err_code(enum ld_err e)
{
    switch (e) {
    case LD_OK:
        return "ok";
    case LD_E_BAD_REQUEST:
        return "bad_request";
    case LD_E_BAD_JSON:
        return "invalid_json";
    case LD_E_LIMIT:
        return "limit_exceeded";
    case LD_E_UNAUTHORIZED:
        return "unauthorized";
    case LD_E_FORBIDDEN:
        return "forbidden";
    case LD_E_NOT_FOUND:
        return "not_found";
    case LD_E_METHOD:
        return "method_not_allowed";
    case LD_E_TIMEOUT:
        return "request_timeout";
    case LD_E_CONFLICT:
        return "conflict";
    case LD_E_PRECONDITION:
        return "precondition_failed";
    case LD_E_TOO_LARGE:
        return "payload_too_large";
    case LD_E_MEDIA_TYPE:
        return "unsupported_media_type";
    case LD_E_UNPROCESSABLE:
        return "unprocessable";
    case LD_E_HEADERS_TOO_LARGE:
        return "headers_too_large";
    case LD_E_RATE_LIMITED:
        return "rate_limited";
    case LD_E_INTERNAL:
        return "internal_error";
    case LD_E_UNAVAILABLE:
        return "unavailable";
    case LD_E_STORAGE:
        return "internal_error";
    case LD_E_NOT_IMPLEMENTED:
        return "not_implemented";
    case LD_E_URI_TOO_LONG:
        return "uri_too_long";
    case LD_E_VERSION:
        return "http_version_not_supported";
    case LD_E__COUNT:
        break;
    }
    return "internal_error";
}
