/* test_util_sha256.c — SHA-256 against the FIPS 180-4 example vectors, the
 * padding boundaries, incremental updates, and the constant-time compare. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util/sha256.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ABC448 "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
#define ABC896                                                                                     \
    "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmno" \
    "p"                                                                                            \
    "qrsmnopqrstnopqrstu"

/* digest of p via sha256_init/update/final, as lowercase hex */
static void digest_hex(const void *p, size_t n, char out[65])
{
    struct sha256 s;
    unsigned char d[32];
    sha256_init(&s);
    sha256_update(&s, p, n);
    sha256_final(&s, d);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void check_vector(const char *msg, const char *want)
{
    char got[65];
    sha256_hex(msg, strlen(msg), got);
    assert_string_equal(got, want);
    digest_hex(msg, strlen(msg), got);
    assert_string_equal(got, want);
}

static void test_empty(void **state)
{
    check_vector("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_abc(void **state)
{
    check_vector("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_448_bits(void **state)
{
    assert_int_equal(strlen(ABC448), 56);
    check_vector(ABC448, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_896_bits(void **state)
{
    assert_int_equal(strlen(ABC896), 112);
    check_vector(ABC896, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

/* One million 'a', fed in chunks of odd sizes that straddle block edges. */
static void test_million_a_incremental(void **state)
{
    static const size_t sizes[] = {1, 3, 7, 63, 65, 127, 129, 1000, 4093, 17};
    char chunk[4096];
    memset(chunk, 'a', sizeof(chunk));
    struct sha256 s;
    sha256_init(&s);
    size_t left = 1000000, k = 0;
    while (left) {
        size_t n = sizes[k++ % (sizeof(sizes) / sizeof(sizes[0]))];
        if (n > sizeof(chunk)) n = sizeof(chunk);
        if (n > left) n = left;
        sha256_update(&s, chunk, n);
        left -= n;
    }
    unsigned char d[32];
    sha256_final(&s, d);
    char hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Lengths around the 55/56/64-byte padding edges (reference: Python's
 * hashlib.sha256(b"a" * n)). */
static void test_padding_boundaries(void **state)
{
    static const struct {
        size_t n;
        const char *hex;
    } v[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
        {119, "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb"},
        {120, "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c"},
    };
    char msg[128];
    memset(msg, 'a', sizeof(msg));
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char got[65];
        sha256_hex(msg, v[i].n, got);
        assert_string_equal(got, v[i].hex);
        /* byte-at-a-time must agree with one-shot */
        struct sha256 s;
        unsigned char d[32];
        sha256_init(&s);
        for (size_t j = 0; j < v[i].n; j++)
            sha256_update(&s, msg + j, 1);
        sha256_final(&s, d);
        for (int b = 0; b < 32; b++)
            snprintf(got + 2 * b, 3, "%02x", d[b]);
        assert_string_equal(got, v[i].hex);
    }
}

/* sha256_final's bytes are the big-endian digest; sha256_hex is its hex. */
static void test_final_bytes_match_hex(void **state)
{
    struct sha256 s;
    unsigned char d[32];
    sha256_init(&s);
    sha256_update(&s, "abc", 3);
    sha256_final(&s, d);
    assert_int_equal(d[0], 0xba);
    assert_int_equal(d[1], 0x78);
    assert_int_equal(d[30], 0x15);
    assert_int_equal(d[31], 0xad);
}

/* A zero-length update changes nothing; a reused context starts afresh
 * after sha256_init. */
static void test_zero_update_and_reinit(void **state)
{
    struct sha256 s;
    unsigned char d1[32], d2[32];
    sha256_init(&s);
    sha256_update(&s, "ab", 2);
    sha256_update(&s, "", 0);
    sha256_update(&s, "c", 1);
    sha256_final(&s, d1);
    sha256_init(&s);
    sha256_update(&s, "abc", 3);
    sha256_final(&s, d2);
    assert_memory_equal(d1, d2, 32);
}

static void test_hex_is_lowercase_and_terminated(void **state)
{
    char out[66];
    memset(out, 'X', sizeof(out));
    sha256_hex("abc", 3, out);
    assert_int_equal(out[64], '\0');
    assert_int_equal(out[65], 'X'); /* writes exactly 65 bytes */
    for (int i = 0; i < 64; i++)
        assert_true((out[i] >= '0' && out[i] <= '9') || (out[i] >= 'a' && out[i] <= 'f'));
}

static void test_ct_equal(void **state)
{
    const char a[] = "0123456789abcdef0123456789abcdef";
    char b[sizeof(a)];
    memcpy(b, a, sizeof(a));
    assert_true(ct_equal(a, b, 32));
    b[31] ^= 1; /* differ only in the last byte */
    assert_false(ct_equal(a, b, 32));
    assert_true(ct_equal(a, b, 31)); /* ...which a shorter compare does not see */
    memcpy(b, a, sizeof(a));
    b[0] = 'x';
    assert_false(ct_equal(a, b, 32));
    memcpy(b, a, sizeof(a));
    b[16] = (char)(a[16] ^ 0x80); /* only the high bit differs */
    assert_false(ct_equal(a, b, 32));
    assert_true(ct_equal(a, "zzz", 0));
}

/* The use in auth: compare hex digests of two keys. */
static void test_ct_equal_digests(void **state)
{
    char h1[65], h2[65], h3[65];
    sha256_hex("key-1", 5, h1);
    sha256_hex("key-1", 5, h2);
    sha256_hex("key-2", 5, h3);
    assert_true(ct_equal(h1, h2, 64));
    assert_false(ct_equal(h1, h3, 64));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_abc),
        cmocka_unit_test(test_448_bits),
        cmocka_unit_test(test_896_bits),
        cmocka_unit_test(test_million_a_incremental),
        cmocka_unit_test(test_padding_boundaries),
        cmocka_unit_test(test_final_bytes_match_hex),
        cmocka_unit_test(test_zero_update_and_reinit),
        cmocka_unit_test(test_hex_is_lowercase_and_terminated),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_ct_equal_digests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
