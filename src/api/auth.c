/*
 * auth.c — resolves the caller (reference section 4).  In `keys` mode the
 * token comes from Authorization (bare, "Bearer <t>" or "ApiKey <t>", the
 * scheme case-insensitive); it is hashed with SHA-256 and looked up, and
 * the stored hash compared in constant time (store_auth).  X-Org-Id picks
 * the org: malformed 401, not a member 404.  In `none` mode every request
 * is the anonymous user of the default org.
 */
#include "api/api.h"
#include <string.h>
#include <strings.h>

static const char *token_of(const char *h)
{
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "Bearer ", 7) == 0)
        h += 7;
    else if (strncasecmp(h, "ApiKey ", 7) == 0)
        h += 7;
    else if (strchr(h, ' '))
        return NULL; /* another scheme (Basic, …) */
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

int auth_resolve(struct req *r)
{
    const char *org = req_header(r, "X-Org-Id");
    char why[160];
    if (org && id_check("org", org, why, sizeof(why))) {
        reply_problem(r, LD_E_UNAUTHORIZED, "Invalid organization ID format");
        return -1;
    }
    if (r->cfg->auth == AUTH_NONE) {
        enum ld_err e =
            store_principal(r->st, org ? org : DEFAULT_ORG_ID, DEFAULT_USER_ID, &r->who);
        if (e == LD_OK) return 0;
        if (e == LD_E_NOT_FOUND)
            reply_problem(r, LD_E_NOT_FOUND, "Organization not found");
        else
            reply_problem(r, e, "Storage error");
        return -1;
    }
    const char *h = req_header(r, "Authorization");
    if (!h) {
        reply_problem(r, LD_E_UNAUTHORIZED, "Authentication required");
        return -1;
    }
    const char *tok = token_of(h);
    if (!tok || strlen(tok) > 512) {
        reply_problem(r, LD_E_UNAUTHORIZED,
                      "Invalid authorization header: send the API key bare, as 'Bearer <key>' "
                      "or as 'ApiKey <key>'");
        return -1;
    }
    char detail[160];
    enum ld_err e = store_auth(r->st, tok, org, &r->who, detail, sizeof(detail));
    if (e == LD_OK) return 0;
    reply_problem(r, e, "%s", e == LD_E_STORAGE ? "Storage error" : detail);
    return -1;
}
