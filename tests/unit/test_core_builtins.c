/* test_core_builtins.c — built-in harnesses and models, and the mapping
 * from capabilities to the features a session advertises. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/builtins.h"
#include "core/id.h"
#include <jansson.h>
#include <stdio.h>
#include <string.h>

static const struct builtin_harness *harness(const char *name)
{
    for (int i = 0; i < builtin_harness_count; i++)
        if (strcmp(builtin_harnesses[i].name, name) == 0) return &builtin_harnesses[i];
    fail_msg("no built-in harness named '%s'", name);
    return NULL;
}

/* features_json(seen) as a string; "" when it writes nothing */
static void features_text(unsigned seen, char *out, size_t n)
{
    struct buf b;
    buf_init(&b, 4096);
    int rc = features_json(seen, &b);
    assert_false(b.overflow);
    if (rc) {
        assert_non_null(b.data);
        snprintf(out, n, "%s", b.data);
    } else {
        assert_int_equal(b.len, 0); /* nothing written */
        snprintf(out, n, "%s", "");
    }
    buf_free(&b);
}

static void test_generic_features(void **state)
{
    unsigned seen = 0;
    features_add(harness("generic")->capabilities, &seen);
    char s[256];
    features_text(seen, s, sizeof(s));
    assert_string_equal(s, "[\"file_system\",\"secrets\",\"key_value\"]");
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), 3);
    assert_string_equal(json_string_value(json_array_get(j, 0)), "file_system");
    assert_string_equal(json_string_value(json_array_get(j, 1)), "secrets");
    assert_string_equal(json_string_value(json_array_get(j, 2)), "key_value");
    json_decref(j);
}

static void test_base_has_none(void **state)
{
    unsigned seen = 0;
    features_add(harness("base")->capabilities, &seen);
    assert_int_equal(seen, 0);
    struct buf b;
    buf_init(&b, 64);
    assert_int_equal(features_json(seen, &b), 0);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

/* seen carries across calls (parent then child) and features never repeat. */
static void test_features_accumulate_without_duplicates(void **state)
{
    const struct builtin_harness *chat = harness("platform-chat");
    assert_non_null(chat->parent);
    unsigned seen = 0;
    features_add(harness(chat->parent)->capabilities, &seen);
    features_add(chat->capabilities, &seen);
    features_add(harness("generic")->capabilities, &seen);
    char s[256];
    features_text(seen, s, sizeof(s));
    assert_string_equal(s, "[\"file_system\",\"secrets\",\"key_value\"]");
}

/* The output order is fixed by the feature table, not by the input order. */
static void test_features_order_and_mapping(void **state)
{
    unsigned seen = 0;
    features_add("[{\"ref\":\"openui\"},{\"ref\":\"e2b\"},{\"ref\":\"session_sql_database\"},"
                 "{\"ref\":\"session_schedule\"},{\"ref\":\"session_storage\"},"
                 "{\"ref\":\"virtual_bash\"}]",
                 &seen);
    char s[512];
    features_text(seen, s, sizeof(s));
    assert_string_equal(s, "[\"file_system\",\"secrets\",\"key_value\",\"schedules\","
                           "\"sql_database\",\"leased_resources\",\"openui\"]");

    seen = 0;
    features_add("[{\"ref\":\"web_fetch\"},{\"ref\":\"current_time\"},{\"ref\":\"mcp:x\"}]", &seen);
    assert_int_equal(seen, 0);
}

/* Junk input adds nothing and does not crash. */
static void test_features_bad_input(void **state)
{
    unsigned seen = 0;
    features_add("not json", &seen);
    features_add("{}", &seen);
    features_add("[1,\"x\",{\"ref\":5},{\"noref\":\"virtual_bash\"},{\"ref\":\"nope\"}]", &seen);
    features_add("[]", &seen);
    assert_int_equal(seen, 0);
    seen = 4; /* bits already set survive */
    features_add("[{\"ref\":\"virtual_bash\"}]", &seen);
    char s[256];
    features_text(seen, s, sizeof(s));
    assert_string_equal(s, "[\"file_system\",\"key_value\"]");
}

/* Lists alike in length and in their first and last 32 bytes (what picks
 * the cache's slot), not in the middle: each gets its own features, in
 * either order. */
static void test_features_lists_alike_at_both_ends(void **state)
{
    const char *a =
        "[{\"ref\":\"web_fetch\"},{\"ref\":\"current_time\"},{\"ref\":\"session_schedule\"},"
        "{\"ref\":\"web_fetch\"},{\"ref\":\"current_time\"}]";
    const char *b =
        "[{\"ref\":\"web_fetch\"},{\"ref\":\"current_time\"},{\"ref\":\"docker_container\"},"
        "{\"ref\":\"web_fetch\"},{\"ref\":\"current_time\"}]";
    size_t n = strlen(a);
    assert_int_equal(strlen(b), n);
    assert_memory_equal(a, b, 32);
    assert_memory_equal(a + n - 32, b + n - 32, 32);
    for (int round = 0; round < 2; round++) {
        unsigned sa = 0, sb = 0;
        if (round == 0) {
            features_add(a, &sa);
            features_add(b, &sb);
        } else {
            features_add(b, &sb);
            features_add(a, &sa);
        }
        char s[256];
        features_text(sa, s, sizeof(s));
        assert_string_equal(s, "[\"schedules\"]");
        features_text(sb, s, sizeof(s));
        assert_string_equal(s, "[\"leased_resources\"]");
    }
}

static void test_capability_known(void **state)
{
    assert_true(capability_known("session_file_system"));
    assert_true(capability_known("virtual_bash"));
    assert_true(capability_known("platform_docs"));
    assert_true(capability_known("mcp:abc"));
    assert_true(capability_known("mcp:a"));
    assert_false(capability_known("nope"));
    assert_false(capability_known("mcp:"));
    assert_false(capability_known("mcp"));
    assert_false(capability_known(""));
    assert_false(capability_known("MCP:abc"));
    assert_false(capability_known("Session_file_system"));
    assert_false(capability_known("session_file_system "));
    assert_false(capability_known("session_file"));
}

/* Every built-in is self-consistent: its capabilities are known, its JSON
 * parses, its parent exists, its fixed ID is a valid harness ID. */
static void test_builtin_harnesses_consistent(void **state)
{
    assert_true(builtin_harness_count >= 3);
    for (int i = 0; i < builtin_harness_count; i++) {
        const struct builtin_harness *h = &builtin_harnesses[i];
        assert_non_null(h->name);
        assert_non_null(h->display_name);
        assert_non_null(h->system_prompt);
        json_t *caps = json_loads(h->capabilities, 0, NULL);
        if (!json_is_array(caps)) fail_msg("%s: capabilities not a JSON array", h->name);
        size_t k;
        json_t *c;
        json_array_foreach(caps, k, c)
        {
            const char *ref = json_string_value(json_object_get(c, "ref"));
            if (!ref || !capability_known(ref))
                fail_msg("%s: unknown capability %s", h->name, ref ? ref : "(none)");
        }
        json_decref(caps);
        json_t *tags = json_loads(h->tags, 0, NULL);
        if (!json_is_array(tags)) fail_msg("%s: tags not a JSON array", h->name);
        json_decref(tags);
        if (h->parent) harness(h->parent);
        char why[128];
        if (id_check("harness", h->default_org_id, why, sizeof(why)))
            fail_msg("%s: %s", h->name, why);
        for (int j = 0; j < i; j++) {
            assert_string_not_equal(builtin_harnesses[j].name, h->name);
            assert_string_not_equal(builtin_harnesses[j].default_org_id, h->default_org_id);
        }
    }
}

static void test_models(void **state)
{
    const struct builtin_model *m = model_find(DEFAULT_MODEL_ID);
    assert_non_null(m);
    assert_string_equal(m->id, DEFAULT_MODEL_ID);
    assert_non_null(m->name);
    assert_non_null(m->provider);
    char why[128];
    assert_int_equal(id_check("model", DEFAULT_MODEL_ID, why, sizeof(why)), 0);
    assert_null(model_find("model_00000000000000000000000000000000"));
    assert_null(model_find(""));
    assert_null(model_find("llmsim")); /* found by ID, not by name */
    for (int i = 0; i < builtin_model_count; i++)
        assert_ptr_equal(model_find(builtin_models[i].id), &builtin_models[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generic_features),
        cmocka_unit_test(test_base_has_none),
        cmocka_unit_test(test_features_accumulate_without_duplicates),
        cmocka_unit_test(test_features_order_and_mapping),
        cmocka_unit_test(test_features_bad_input),
        cmocka_unit_test(test_features_lists_alike_at_both_ends),
        cmocka_unit_test(test_capability_known),
        cmocka_unit_test(test_builtin_harnesses_consistent),
        cmocka_unit_test(test_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
