/*
 * model.h — the records that pass between api/, core/ and store/.  Strings
 * are owned by the request's arena.  A NULL optional field is "unset" and is
 * omitted from JSON; JSON-valued fields hold canonical compact JSON text.
 */
#ifndef LOOPD_MODEL_H
#define LOOPD_MODEL_H
#include "core/id.h"
#include <stdint.h>

/* Session status as stored (reference 7.1). */
enum session_status {
    SS_STARTED,
    SS_ACTIVE,
    SS_IDLE,
    SS_WAITING, /* waiting_for_tool_results; wire: waitingfortoolresults */
    SS_PAUSED,
    SS__COUNT
};
/* Outcome of the last finished turn, for `activity` (reference 7.4). */
enum turn_outcome { TO_NONE, TO_COMPLETED, TO_FAILED, TO_CANCELLED };

const char *session_status_db(int s);    /* "waiting_for_tool_results" */
const char *session_status_wire(int s);  /* "waitingfortoolresults" */
int session_status_parse(const char *s); /* either spelling; -1 if unknown */
const char *session_activity(int status, int outcome);

/* The caller, resolved by auth. */
struct principal {
    char user_id[40]; /* hyphenated UUID */
    char org_id[ID_MAX];
    char principal_id[ID_MAX]; /* principal_<hex> of user in org */
    int is_admin;
};

struct session_rec {
    char id[ID_MAX];
    char org_id[ID_MAX];
    char workspace_id[ID_MAX];
    char harness_id[ID_MAX];
    char agent_id[ID_MAX]; /* "" = none */
    char owner_principal_id[ID_MAX];
    char owner_user_id[40];                                       /* resolved_owner_user_id */
    char model_id[ID_MAX];                                        /* "" = none */
    char agent_identity_id[ID_MAX];                               /* "" = none */
    const char *title, *goal, *locale, *preview, *output_preview; /* NULL = unset */
    const char *tags;                                             /* JSON array, always set */
    const char *extra;         /* JSON object of create-time fields, "{}" if none */
    const char *features;      /* JSON array or NULL */
    const char *singleton_key; /* chat sessions: "<org>/<user>", else NULL */
    int status;                /* enum session_status */
    int outcome;               /* enum turn_outcome */
    char source[16];
    int64_t created_at, updated_at, started_at, last_activity_at; /* µs; 0 = unset */
    int64_t in_tokens, out_tokens, cache_read_tokens, cache_creation_tokens;
    int64_t version;      /* bumped by every change; the ETag */
    int pinned;           /* for the caller; -1 = not known */
    char turn_id[ID_MAX]; /* the running turn, "" if none */
};

/* PATCH: NULL/0 = leave unchanged. */
struct session_patch {
    const char *title, *tags, *locale, *goal;
    int set_identity; /* 1: agent_identity_id given (may be "") */
    const char *agent_identity_id;
    const char *if_match; /* ",v1,v2,": the versions If-Match names; NULL = any */
    int64_t now;
};

struct session_filter {
    const char *agent_id;
    const char *search; /* case-insensitive title substring */
    int status_mask;    /* bit per enum session_status; 0 = any */
    int outcome_mask;   /* bit per enum turn_outcome for idle sessions; 0 = any */
    int64_t created_after, created_before; /* 0 = unbounded */
    int order_activity;                    /* 1: last_activity_at DESC */
    int pinned;                            /* 1: only the caller's pinned, -1: unpinned, 0: all */
    long offset, limit;
};

struct session_stats {
    int64_t total, n[SS__COUNT];
};

struct agent_rec {
    char id[ID_MAX];
    char org_id[ID_MAX];
    char harness_id[ID_MAX];
    char default_model_id[ID_MAX]; /* "" = none */
    const char *name, *display_name, *description, *system_prompt;
    const char *tags;  /* JSON array */
    const char *extra; /* JSON object: capabilities, tools, initial_files, ... */
    int archived;
    int64_t created_at, updated_at, archived_at;
    int64_t version;
    int64_t session_count; /* -1 = not counted */
};

struct harness_rec {
    char id[ID_MAX];
    char org_id[ID_MAX];
    char parent_id[ID_MAX];
    char default_model_id[ID_MAX];
    const char *name, *display_name, *description, *system_prompt;
    const char *capabilities; /* JSON array of {ref, config?} */
    const char *tags;         /* JSON array */
    int is_built_in;
    int64_t created_at, updated_at;
    int64_t session_count;
};

#endif
