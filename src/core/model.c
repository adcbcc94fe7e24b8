/* model.c — status spellings and the derived `activity` (reference 7.1, 7.4). */
#include "core/model.h"
#include <string.h>

static const char *const db_names[SS__COUNT] = {"started", "active", "idle",
                                                "waiting_for_tool_results", "paused"};
static const char *const wire_names[SS__COUNT] = {"started", "active", "idle",
                                                  "waitingfortoolresults", "paused"};

const char *session_status_db(int s)
{
    return s >= 0 && s < SS__COUNT ? db_names[s] : "started";
}

const char *session_status_wire(int s)
{
    return s >= 0 && s < SS__COUNT ? wire_names[s] : "started";
}

int session_status_parse(const char *s)
{
    for (int i = 0; i < SS__COUNT; i++)
        if (strcmp(s, db_names[i]) == 0 || strcmp(s, wire_names[i]) == 0) return i;
    return -1;
}

const char *session_activity(int status, int outcome)
{
    if (status == SS_ACTIVE || status == SS_WAITING) return "running";
    if (status == SS_PAUSED) return "paused";
    switch (outcome) {
    case TO_COMPLETED:
        return "completed";
    case TO_FAILED:
    case TO_CANCELLED:
        return "failed";
    default:
        return "idle";
    }
}
