/*
 * MQS1 device signatures (shared/spec/mqs1.md) for microcontrollers.
 *
 * Builds the 90-byte signature block (SB) of one PUBLISH, signed with
 * Ed25519 (libsodium), and both of its carriers: the MQTT 5 user property
 * value (base64url, 120 characters) and the MQTT 3.1.1 payload envelope
 * ("MQS1" || SB || payload). No heap: every buffer is the caller's, and the
 * only stack use beyond a few words is libsodium's own.
 *
 * The MQTT transport is the application's (esp-mqtt, PubSubClient, ...):
 * see client-examples/DEVICES.md.
 */
#ifndef MQS1_H
#define MQS1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MQS1_SEED_LEN 32
#define MQS1_PUBLIC_KEY_LEN 32
#define MQS1_KID_LEN 8
/* ver, flags, kid, ctr, ts_ms: the part of the SB that is itself signed. */
#define MQS1_HEADER_LEN 26
#define MQS1_SIG_LEN 64
#define MQS1_SB_LEN (MQS1_HEADER_LEN + MQS1_SIG_LEN)
/* 90 bytes are exactly 120 base64 characters: never any padding. */
#define MQS1_PROPERTY_VALUE_LEN 120
#define MQS1_PROPERTY_NAME "mqs1"
#define MQS1_MAGIC "MQS1"
#define MQS1_MAGIC_LEN 4
#define MQS1_ENVELOPE_OVERHEAD (MQS1_MAGIC_LEN + MQS1_SB_LEN)
/*
 * Bytes signed: "MQS1" || header || u16 len || device id || u16 len || topic
 * || SHA-256(payload). Size a scratch buffer for mqs1_sign with this, from
 * the longest device id and topic the device uses (in bytes of UTF-8).
 */
#define MQS1_TBS_LEN(device_id_len, topic_len) (MQS1_MAGIC_LEN + MQS1_HEADER_LEN + 2 + (device_id_len) + 2 + (topic_len) + 32)

/* Results: 0 is success. */
#define MQS1_OK 0
/* A bad argument: counter 0, a string longer than 65535 bytes, a NULL pointer. */
#define MQS1_ERR_ARG (-1)
/* The caller's buffer is too small. */
#define MQS1_ERR_SPACE (-2)
/* libsodium failed (not initialised: call sodium_init() first). */
#define MQS1_ERR_CRYPTO (-3)

/* A device key: what crypto_sign_seed_keypair makes of the 32-byte seed. */
typedef struct {
    uint8_t secret_key[64]; /* libsodium's form: seed || public key */
    uint8_t public_key[MQS1_PUBLIC_KEY_LEN];
    uint8_t kid[MQS1_KID_LEN]; /* SHA-256(public key)[0..8] */
} mqs1_key;

/* One PUBLISH as signed. */
typedef struct {
    const char *device_id; /* NUL-terminated UTF-8: the device's MQTT client id */
    const char *topic;     /* NUL-terminated UTF-8: the full topic name */
    const uint8_t *payload; /* the application payload (never the envelope); may be NULL when payload_len is 0 */
    size_t payload_len;
    bool retain; /* must equal the PUBLISH's retain flag */
} mqs1_message;

/* Derives the key pair and kid from the 32-byte seed (`sealmq device keygen`'s .key, hex-decoded). */
int mqs1_key_from_seed(mqs1_key *key, const uint8_t seed[MQS1_SEED_LEN]);

/* Writes SB[0..26]: ver 1, flags (bit 0 = retain), kid, ctr (>= 1), ts_ms (0 = no clock). */
int mqs1_header(uint8_t header[MQS1_HEADER_LEN], const uint8_t kid[MQS1_KID_LEN], bool retain, uint64_t ctr,
                uint64_t ts_ms);

/* Writes the bytes signed for `header` and `msg` into out[0..cap]; their length into *len. */
int mqs1_tbs(uint8_t *out, size_t cap, size_t *len, const uint8_t header[MQS1_HEADER_LEN], const mqs1_message *msg);

/*
 * Signs `msg` with counter `ctr` and device time `ts_ms`, writing the SB.
 * `scratch` holds the bytes signed while signing: at least
 * MQS1_TBS_LEN(strlen(device_id), strlen(topic)) bytes.
 *
 * The counter must be stored durably BEFORE the message it signs is sent,
 * and never reused (DEVICES.md, counters).
 */
int mqs1_sign(uint8_t sb[MQS1_SB_LEN], const mqs1_key *key, const mqs1_message *msg, uint64_t ctr, uint64_t ts_ms,
              uint8_t *scratch, size_t scratch_len);

/* The MQTT 5 carrier: the value of user property "mqs1", 120 characters and a NUL. */
int mqs1_property_value(char out[MQS1_PROPERTY_VALUE_LEN + 1], const uint8_t sb[MQS1_SB_LEN]);

/*
 * The envelope carrier (MQTT 3.1.1): out = "MQS1" || SB || payload, its
 * length (payload_len + 94) into *len. `payload` may already sit at
 * out + MQS1_ENVELOPE_OVERHEAD (it is moved, not copied), which saves a
 * second buffer: read the sensor into out + 94, sign, then wrap in place.
 */
int mqs1_envelope(uint8_t *out, size_t cap, size_t *len, const uint8_t sb[MQS1_SB_LEN], const uint8_t *payload,
                  size_t payload_len);

#endif
