/*
 * log.h — one line per event, logfmt (default) or JSON, to stderr.  Fields
 * are given as alternating key/value C strings ending in NULL.  Thread-safe
 * (each line is one write(2)).
 */
#ifndef LOOPD_LOG_H
#define LOOPD_LOG_H
#include "config.h"

void log_setup(int level, int json);
int log_enabled(int level);
/* log_kv(LOG_INFO, "request", "rid", rid, "status", "200", NULL) */
void log_kv(int level, const char *msg, ...);
#define log_info(msg, ...) log_kv(LOG_INFO, msg, __VA_ARGS__)
#define log_warn(msg, ...) log_kv(LOG_WARN, msg, __VA_ARGS__)
#define log_error(msg, ...) log_kv(LOG_ERROR, msg, __VA_ARGS__)

#endif
