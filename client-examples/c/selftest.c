/*
 * Reproduces the spec's MQS1 vectors (shared/spec/vectors/mqs1.json) with
 * mqs1.c, byte for byte: key and kid, TBS, signature block, property value
 * and envelope of every case; and checks that every must_fail case does not
 * verify. Runs on the build host, not the device.
 *
 *     selftest [PATH/TO/mqs1.json]
 *
 * Prints one line per vector and "N passed, M failed"; exit 0 only if all pass.
 * The JSON reader below knows just enough JSON for the vector file.
 */
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "mqs1.h"

#define DEFAULT_VECTORS "../../../shared/spec/vectors/mqs1.json"
#define TEXT_MAX 1024

static char json[256 * 1024];
static int failures_in_vector;

/* ---- a small JSON reader: each function takes a pointer to a value and returns NULL on malformed input ---- */

static const char *skip_ws(const char *p)
{
    while (p != NULL && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) {
        p++;
    }
    return p;
}

/* The first character after the value at p. */
static const char *skip_value(const char *p)
{
    p = skip_ws(p);
    if (p == NULL) {
        return NULL;
    }
    if (*p == '"') {
        for (p++; *p != '"'; p++) {
            if (*p == '\0' || (*p == '\\' && *++p == '\0')) {
                return NULL;
            }
        }
        return p + 1;
    }
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = skip_ws(p + 1);
        if (*p == close) {
            return p + 1;
        }
        for (;;) {
            if (close == '}') {
                p = skip_ws(skip_value(p)); /* the member name */
                if (p == NULL || *p != ':') {
                    return NULL;
                }
                p++;
            }
            p = skip_ws(skip_value(p));
            if (p == NULL) {
                return NULL;
            }
            if (*p == close) {
                return p + 1;
            }
            if (*p != ',') {
                return NULL;
            }
            p++;
        }
    }
    /* A number, true, false or null. */
    const char *start = p;
    while (*p != '\0' && strchr(",}] \n\r\t", *p) == NULL) {
        p++;
    }
    return p == start ? NULL : p;
}

/* Decodes the string at p into out (NUL-terminated); \u escapes only for ASCII, enough for the vectors. */
static int string_value(const char *p, char *out, size_t cap)
{
    size_t n = 0;

    p = skip_ws(p);
    if (p == NULL || *p++ != '"') {
        return 0;
    }
    for (; *p != '"'; p++) {
        char c = *p;
        if (c == '\0' || n + 1 >= cap) {
            return 0;
        }
        if (c == '\\') {
            c = *++p;
            if (c == 'n') {
                c = '\n';
            } else if (c == 't') {
                c = '\t';
            } else if (c == 'u') {
                unsigned code;
                if (sscanf(p + 1, "%4x", &code) != 1 || code == 0 || code > 0x7F) {
                    return 0;
                }
                c = (char)code;
                p += 4;
            } else if (c != '"' && c != '\\' && c != '/') {
                return 0;
            }
        }
        out[n++] = c;
    }
    out[n] = '\0';
    return 1;
}

/* The value of member `name` of the object at p. */
static const char *member(const char *p, const char *name)
{
    char key[TEXT_MAX];

    p = skip_ws(p);
    if (p == NULL || *p != '{') {
        return NULL;
    }
    p = skip_ws(p + 1);
    while (p != NULL && *p == '"') {
        if (!string_value(p, key, sizeof key)) {
            return NULL;
        }
        p = skip_ws(skip_value(p));
        if (p == NULL || *p != ':') {
            return NULL;
        }
        p = skip_ws(p + 1);
        if (strcmp(key, name) == 0) {
            return p;
        }
        p = skip_ws(skip_value(p));
        if (p == NULL || *p != ',') {
            return NULL;
        }
        p = skip_ws(p + 1);
    }
    return NULL;
}

/* Element i of the array at p. */
static const char *element(const char *p, size_t i)
{
    p = skip_ws(p);
    if (p == NULL || *p != '[') {
        return NULL;
    }
    p = skip_ws(p + 1);
    if (*p == ']') {
        return NULL;
    }
    for (; i > 0; i--) {
        p = skip_ws(skip_value(p));
        if (p == NULL || *p != ',') {
            return NULL;
        }
        p = skip_ws(p + 1);
    }
    return p;
}

static int u64_value(const char *p, uint64_t *out)
{
    unsigned long long value;
    int used = 0;

    p = skip_ws(p);
    if (p == NULL || *p < '0' || *p > '9' || sscanf(p, "%llu%n", &value, &used) != 1) {
        return 0;
    }
    *out = value;
    return 1;
}

static int bool_value(const char *p, bool *out)
{
    p = skip_ws(p);
    if (p != NULL && strncmp(p, "true", 4) == 0) {
        *out = true;
        return 1;
    }
    if (p != NULL && strncmp(p, "false", 5) == 0) {
        *out = false;
        return 1;
    }
    return 0;
}

static int hex_value(const char *p, uint8_t *out, size_t cap, size_t *len)
{
    char text[2 * TEXT_MAX + 1];

    return string_value(p, text, sizeof text) &&
           sodium_hex2bin(out, cap, text, strlen(text), NULL, len, NULL) == 0 && *len * 2 == strlen(text);
}

/* ---- checks ---- */

static void fail(const char *vector, const char *what)
{
    printf("FAILED %s: %s\n", vector, what);
    failures_in_vector++;
}

static void expect_rc(const char *vector, const char *what, int got, int want)
{
    if (got != want) {
        printf("FAILED %s: %s returned %d, expected %d\n", vector, what, got, want);
        failures_in_vector++;
    }
}

/* Compares bytes with the hex string at p (a vector field). */
static void expect_hex(const char *vector, const char *field, const char *p, const uint8_t *got, size_t got_len)
{
    uint8_t want[TEXT_MAX];
    char got_hex[2 * TEXT_MAX + 1];
    size_t want_len;

    if (!hex_value(p, want, sizeof want, &want_len)) {
        printf("FAILED %s: the vector's %s is missing or not hex\n", vector, field);
        failures_in_vector++;
        return;
    }
    if (got_len != want_len || memcmp(got, want, got_len) != 0) {
        sodium_bin2hex(got_hex, sizeof got_hex, got, got_len < TEXT_MAX ? got_len : TEXT_MAX);
        printf("FAILED %s: %s differs\n  got  %s\n", vector, field, got_hex);
        failures_in_vector++;
    }
}

/* A case's PUBLISH, read from the vector object at p; strings live in the caller's buffers. */
typedef struct {
    char device_id[TEXT_MAX];
    char topic[TEXT_MAX];
    uint8_t payload[TEXT_MAX];
    mqs1_message msg;
    uint64_t ctr, ts_ms;
} publish;

/* Reads the fields present at p over what `pub` already holds (a must_fail case overrides a few). */
static int read_publish(const char *p, publish *pub)
{
    const char *v;

    if ((v = member(p, "device_id")) != NULL && !string_value(v, pub->device_id, sizeof pub->device_id)) {
        return 0;
    }
    if ((v = member(p, "topic")) != NULL && !string_value(v, pub->topic, sizeof pub->topic)) {
        return 0;
    }
    if ((v = member(p, "payload_hex")) != NULL &&
        !hex_value(v, pub->payload, sizeof pub->payload, &pub->msg.payload_len)) {
        return 0;
    }
    if ((v = member(p, "retain")) != NULL && !bool_value(v, &pub->msg.retain)) {
        return 0;
    }
    if ((v = member(p, "ctr")) != NULL && !u64_value(v, &pub->ctr)) {
        return 0;
    }
    if ((v = member(p, "ts_ms")) != NULL && !u64_value(v, &pub->ts_ms)) {
        return 0;
    }
    pub->msg.device_id = pub->device_id;
    pub->msg.topic = pub->topic;
    pub->msg.payload = pub->payload;
    return 1;
}

static void check_key(const char *vectors, const mqs1_key *key)
{
    expect_hex("key", "device_public_key", member(vectors, "device_public_key"), key->public_key,
               sizeof key->public_key);
    expect_hex("key", "kid", member(vectors, "kid"), key->kid, sizeof key->kid);
}

static void check_case(const char *name, const char *c, const mqs1_key *key)
{
    publish pub = {0};
    uint8_t header[MQS1_HEADER_LEN], tbs[MQS1_TBS_LEN(TEXT_MAX, TEXT_MAX)], sb[MQS1_SB_LEN];
    uint8_t envelope[MQS1_ENVELOPE_OVERHEAD + TEXT_MAX];
    char value[MQS1_PROPERTY_VALUE_LEN + 1], want_value[TEXT_MAX], want_name[TEXT_MAX];
    const char *property = member(c, "user_property");
    size_t tbs_len, envelope_len;

    if (!read_publish(c, &pub)) {
        fail(name, "the case is malformed");
        return;
    }
    expect_rc(name, "mqs1_header", mqs1_header(header, key->kid, pub.msg.retain, pub.ctr, pub.ts_ms), MQS1_OK);
    expect_rc(name, "mqs1_tbs", mqs1_tbs(tbs, sizeof tbs, &tbs_len, header, &pub.msg), MQS1_OK);
    expect_hex(name, "tbs", member(c, "tbs"), tbs, tbs_len);

    /* The scratch buffer sized exactly as the header says is enough; one byte less is not. */
    size_t need = MQS1_TBS_LEN(strlen(pub.device_id), strlen(pub.topic));
    expect_rc(name, "mqs1_sign with a short scratch", mqs1_sign(sb, key, &pub.msg, pub.ctr, pub.ts_ms, tbs, need - 1),
              MQS1_ERR_SPACE);
    expect_rc(name, "mqs1_sign", mqs1_sign(sb, key, &pub.msg, pub.ctr, pub.ts_ms, tbs, need), MQS1_OK);
    expect_hex(name, "signature_block", member(c, "signature_block"), sb, sizeof sb);

    expect_rc(name, "mqs1_property_value", mqs1_property_value(value, sb), MQS1_OK);
    if (!string_value(member(property, "name"), want_name, sizeof want_name) ||
        strcmp(want_name, MQS1_PROPERTY_NAME) != 0) {
        fail(name, "user_property.name is not " MQS1_PROPERTY_NAME);
    }
    if (!string_value(member(property, "value"), want_value, sizeof want_value) || strcmp(value, want_value) != 0) {
        printf("FAILED %s: user_property.value differs\n  got  %s\n", name, value);
        failures_in_vector++;
    }

    expect_rc(name, "mqs1_envelope", mqs1_envelope(envelope, sizeof envelope, &envelope_len, sb, pub.payload,
                                                   pub.msg.payload_len),
              MQS1_OK);
    expect_hex(name, "envelope_payload", member(c, "envelope_payload"), envelope, envelope_len);
    /* In place: the payload already where the envelope puts it. */
    memset(envelope, 0, sizeof envelope);
    memcpy(envelope + MQS1_ENVELOPE_OVERHEAD, pub.payload, pub.msg.payload_len);
    expect_rc(name, "mqs1_envelope in place",
              mqs1_envelope(envelope, sizeof envelope, &envelope_len, sb, envelope + MQS1_ENVELOPE_OVERHEAD,
                            pub.msg.payload_len),
              MQS1_OK);
    expect_hex(name, "envelope_payload (in place)", member(c, "envelope_payload"), envelope, envelope_len);
    expect_rc(name, "mqs1_envelope into a short buffer",
              mqs1_envelope(envelope, MQS1_ENVELOPE_OVERHEAD + pub.msg.payload_len - 1, &envelope_len, sb,
                            pub.payload, pub.msg.payload_len),
              MQS1_ERR_SPACE);
    expect_rc(name, "mqs1_sign with counter 0", mqs1_sign(sb, key, &pub.msg, 0, pub.ts_ms, tbs, sizeof tbs),
              MQS1_ERR_ARG);
}

/*
 * What a verifier does with a PUBLISH: rebuild the TBS from the SB's kid, ctr
 * and ts_ms and from the PUBLISH itself (its retain bit included), then check
 * the SB's signature over it.
 */
static int verifies(const publish *pub, const uint8_t sb[MQS1_SB_LEN], const mqs1_key *key)
{
    uint8_t header[MQS1_HEADER_LEN], tbs[MQS1_TBS_LEN(TEXT_MAX, TEXT_MAX)];
    size_t tbs_len;

    memcpy(header, sb, MQS1_HEADER_LEN);
    header[1] = pub->msg.retain ? 1 : 0;
    return mqs1_tbs(tbs, sizeof tbs, &tbs_len, header, &pub->msg) == MQS1_OK &&
           crypto_sign_verify_detached(sb + MQS1_HEADER_LEN, tbs, tbs_len, key->public_key) == 0;
}

static void check_must_fail(const char *name, const char *cases, const char *bad, const mqs1_key *key)
{
    publish pub = {0};
    uint64_t which;
    uint8_t sb[MQS1_SB_LEN];
    size_t sb_len;
    const char *original;

    if (!u64_value(member(bad, "case"), &which) || (original = element(cases, (size_t)which)) == NULL ||
        !read_publish(original, &pub) || !hex_value(member(original, "signature_block"), sb, sizeof sb, &sb_len) ||
        sb_len != sizeof sb) {
        fail(name, "the must_fail case or the case it changes is malformed");
        return;
    }
    /* The unchanged PUBLISH verifies, so a failure below is the change's doing. */
    if (!verifies(&pub, sb, key)) {
        fail(name, "the unchanged case does not verify");
    }
    if (!read_publish(bad, &pub)) {
        fail(name, "the must_fail case is malformed");
        return;
    }
    if (verifies(&pub, sb, key)) {
        fail(name, "verifies, but must fail");
    }
}

static int finish(const char *name, int *passed, int *failed)
{
    printf("%s %s\n", failures_in_vector ? "failed" : "ok", name);
    *(failures_in_vector ? failed : passed) += 1;
    failures_in_vector = 0;
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : DEFAULT_VECTORS;
    const char *cases, *must_fail, *p;
    uint8_t seed[MQS1_SEED_LEN];
    size_t seed_len, n_read;
    mqs1_key key;
    char name[TEXT_MAX + 64], why[TEXT_MAX];
    int passed = 0, failed = 0;
    FILE *file;

    if (sodium_init() < 0) {
        fprintf(stderr, "selftest: libsodium failed to initialise\n");
        return 2;
    }
    file = fopen(path, "rb");
    if (file == NULL) {
        perror(path);
        return 2;
    }
    n_read = fread(json, 1, sizeof json - 1, file);
    fclose(file);
    json[n_read] = '\0';
    if (skip_value(json) == NULL || !hex_value(member(json, "device_seed"), seed, sizeof seed, &seed_len) ||
        seed_len != sizeof seed || (cases = member(json, "cases")) == NULL ||
        (must_fail = member(json, "must_fail")) == NULL) {
        fprintf(stderr, "selftest: %s is not the MQS1 vector file (or is longer than %zu bytes)\n", path,
                sizeof json - 1);
        return 2;
    }
    expect_rc("key", "mqs1_key_from_seed", mqs1_key_from_seed(&key, seed), MQS1_OK);
    check_key(json, &key);
    finish("key", &passed, &failed);

    size_t n_cases = 0, n_must_fail = 0;
    for (; (p = element(cases, n_cases)) != NULL; n_cases++) {
        snprintf(name, sizeof name, "case %zu", n_cases);
        check_case(name, p, &key);
        finish(name, &passed, &failed);
    }
    for (; (p = element(must_fail, n_must_fail)) != NULL; n_must_fail++) {
        if (!string_value(member(p, "why"), why, sizeof why)) {
            snprintf(why, sizeof why, "?");
        }
        snprintf(name, sizeof name, "must_fail %zu (%s)", n_must_fail, why);
        check_must_fail(name, cases, p, &key);
        finish(name, &passed, &failed);
    }
    printf("%s: %zu cases, %zu must_fail cases\n", path, n_cases, n_must_fail);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && n_cases > 0 ? 0 : 1;
}
