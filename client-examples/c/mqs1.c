/* MQS1 device signatures: see mqs1.h and shared/spec/mqs1.md. */
#include "mqs1.h"

#include <string.h>

#include <sodium.h>

#define MQS1_VERSION 1
#define MQS1_FLAG_RETAIN 0x01
#define MQS1_MAX_STR16 0xFFFF

static void put_u64be(uint8_t *out, uint64_t value)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)(value & 0xFF);
        value >>= 8;
    }
}

int mqs1_key_from_seed(mqs1_key *key, const uint8_t seed[MQS1_SEED_LEN])
{
    uint8_t digest[crypto_hash_sha256_BYTES];

    if (key == NULL || seed == NULL) {
        return MQS1_ERR_ARG;
    }
    if (crypto_sign_seed_keypair(key->public_key, key->secret_key, seed) != 0 ||
        crypto_hash_sha256(digest, key->public_key, sizeof key->public_key) != 0) {
        return MQS1_ERR_CRYPTO;
    }
    memcpy(key->kid, digest, MQS1_KID_LEN);
    return MQS1_OK;
}

int mqs1_header(uint8_t header[MQS1_HEADER_LEN], const uint8_t kid[MQS1_KID_LEN], bool retain, uint64_t ctr,
                uint64_t ts_ms)
{
    if (header == NULL || kid == NULL || ctr == 0) {
        return MQS1_ERR_ARG;
    }
    header[0] = MQS1_VERSION;
    header[1] = retain ? MQS1_FLAG_RETAIN : 0;
    memcpy(header + 2, kid, MQS1_KID_LEN);
    put_u64be(header + 10, ctr);
    put_u64be(header + 18, ts_ms);
    return MQS1_OK;
}

/* Appends u16be(len) || text; `at` is advanced. The caller checked the room. */
static void put_str16(uint8_t *out, size_t *at, const char *text, size_t text_len)
{
    out[(*at)++] = (uint8_t)(text_len >> 8);
    out[(*at)++] = (uint8_t)(text_len & 0xFF);
    memcpy(out + *at, text, text_len);
    *at += text_len;
}

int mqs1_tbs(uint8_t *out, size_t cap, size_t *len, const uint8_t header[MQS1_HEADER_LEN], const mqs1_message *msg)
{
    size_t id_len, topic_len, at = 0;

    if (out == NULL || len == NULL || header == NULL || msg == NULL || msg->device_id == NULL ||
        msg->topic == NULL || (msg->payload == NULL && msg->payload_len != 0)) {
        return MQS1_ERR_ARG;
    }
    id_len = strlen(msg->device_id);
    topic_len = strlen(msg->topic);
    if (id_len > MQS1_MAX_STR16 || topic_len > MQS1_MAX_STR16) {
        return MQS1_ERR_ARG;
    }
    if (cap < MQS1_TBS_LEN(id_len, topic_len)) {
        return MQS1_ERR_SPACE;
    }
    memcpy(out, MQS1_MAGIC, MQS1_MAGIC_LEN);
    at += MQS1_MAGIC_LEN;
    memcpy(out + at, header, MQS1_HEADER_LEN);
    at += MQS1_HEADER_LEN;
    put_str16(out, &at, msg->device_id, id_len);
    put_str16(out, &at, msg->topic, topic_len);
    /* libsodium accepts a NULL input of length 0; an empty payload hashes as such. */
    if (crypto_hash_sha256(out + at, msg->payload, msg->payload_len) != 0) {
        return MQS1_ERR_CRYPTO;
    }
    *len = at + crypto_hash_sha256_BYTES;
    return MQS1_OK;
}

int mqs1_sign(uint8_t sb[MQS1_SB_LEN], const mqs1_key *key, const mqs1_message *msg, uint64_t ctr, uint64_t ts_ms,
              uint8_t *scratch, size_t scratch_len)
{
    size_t tbs_len;
    int rc;

    if (sb == NULL || key == NULL || msg == NULL) {
        return MQS1_ERR_ARG;
    }
    rc = mqs1_header(sb, key->kid, msg->retain, ctr, ts_ms);
    if (rc == MQS1_OK) {
        rc = mqs1_tbs(scratch, scratch_len, &tbs_len, sb, msg);
    }
    if (rc != MQS1_OK) {
        return rc;
    }
    /* Pure Ed25519 (RFC 8032), as the spec requires: deterministic, so the vectors reproduce. */
    if (crypto_sign_detached(sb + MQS1_HEADER_LEN, NULL, scratch, tbs_len, key->secret_key) != 0) {
        return MQS1_ERR_CRYPTO;
    }
    return MQS1_OK;
}

int mqs1_property_value(char out[MQS1_PROPERTY_VALUE_LEN + 1], const uint8_t sb[MQS1_SB_LEN])
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t at = 0;

    if (out == NULL || sb == NULL) {
        return MQS1_ERR_ARG;
    }
    /* 90 = 30 groups of 3 bytes, each 4 characters: no partial group, no padding. */
    for (size_t i = 0; i < MQS1_SB_LEN; i += 3) {
        uint32_t group = (uint32_t)sb[i] << 16 | (uint32_t)sb[i + 1] << 8 | sb[i + 2];
        out[at++] = alphabet[(group >> 18) & 0x3F];
        out[at++] = alphabet[(group >> 12) & 0x3F];
        out[at++] = alphabet[(group >> 6) & 0x3F];
        out[at++] = alphabet[group & 0x3F];
    }
    out[at] = '\0';
    return MQS1_OK;
}

int mqs1_envelope(uint8_t *out, size_t cap, size_t *len, const uint8_t sb[MQS1_SB_LEN], const uint8_t *payload,
                  size_t payload_len)
{
    if (out == NULL || len == NULL || sb == NULL || (payload == NULL && payload_len != 0)) {
        return MQS1_ERR_ARG;
    }
    if (payload_len > SIZE_MAX - MQS1_ENVELOPE_OVERHEAD || cap < payload_len + MQS1_ENVELOPE_OVERHEAD) {
        return MQS1_ERR_SPACE;
    }
    /* The payload first, with memmove: it may overlap `out` (typically it already sits at
     * out + overhead), and the magic and SB are written only once it has moved. */
    if (payload_len != 0) {
        memmove(out + MQS1_ENVELOPE_OVERHEAD, payload, payload_len);
    }
    memcpy(out, MQS1_MAGIC, MQS1_MAGIC_LEN);
    memcpy(out + MQS1_MAGIC_LEN, sb, MQS1_SB_LEN);
    *len = payload_len + MQS1_ENVELOPE_OVERHEAD;
    return MQS1_OK;
}
