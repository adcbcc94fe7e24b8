/* log.c — structured log lines (logfmt or JSON) written with one write(2). */
#include "log.h"
#include "util/buf.h"
#include "util/timeutil.h"
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

static int g_level = LOG_INFO;
static int g_json = 0;

void log_setup(int level, int json)
{
    g_level = level;
    g_json = json;
}

int log_enabled(int level)
{
    return level >= g_level;
}

static const char *level_name(int l)
{
    switch (l) {
    case LOG_DEBUG:
        return "debug";
    case LOG_INFO:
        return "info";
    case LOG_WARN:
        return "warn";
    default:
        return "error";
    }
}

static void logfmt_val(struct buf *b, const char *v)
{
    int quote = *v == 0;
    for (const char *p = v; *p; p++)
        if (*p == ' ' || *p == '"' || *p == '=' || (unsigned char)*p < 0x20) quote = 1;
    if (!quote) {
        buf_puts(b, v);
        return;
    }
    buf_json_str(b, v); /* JSON escaping is valid logfmt quoting */
}

void log_kv(int level, const char *msg, ...)
{
    if (level < g_level) return;
    char ts[40];
    time_format(time_now_us(), ts, sizeof(ts));
    struct buf b;
    buf_init(&b, 8192);
    va_list ap;
    va_start(ap, msg);
    if (g_json) {
        buf_puts(&b, "{\"ts\":\"");
        buf_puts(&b, ts);
        buf_puts(&b, "\",\"level\":\"");
        buf_puts(&b, level_name(level));
        buf_puts(&b, "\",\"msg\":");
        buf_json_str(&b, msg);
        const char *k;
        while ((k = va_arg(ap, const char *))) {
            const char *v = va_arg(ap, const char *);
            buf_putc(&b, ',');
            buf_json_str(&b, k);
            buf_putc(&b, ':');
            buf_json_str(&b, v ? v : "");
        }
        buf_putc(&b, '}');
    } else {
        buf_puts(&b, "ts=");
        buf_puts(&b, ts);
        buf_puts(&b, " level=");
        buf_puts(&b, level_name(level));
        buf_puts(&b, " msg=");
        logfmt_val(&b, msg);
        const char *k;
        while ((k = va_arg(ap, const char *))) {
            const char *v = va_arg(ap, const char *);
            buf_putc(&b, ' ');
            buf_puts(&b, k);
            buf_putc(&b, '=');
            logfmt_val(&b, v ? v : "");
        }
    }
    va_end(ap);
    if (b.overflow) {
        buf_reset(&b);
        buf_puts(&b, "level=error msg=\"log line too long\"");
    }
    buf_putc(&b, '\n');
    ssize_t w = write(2, b.data, b.len);
    (void)w;
    buf_free(&b);
}
