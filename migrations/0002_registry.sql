-- sealmq schema 2: the registry's way into the log, the retained index.
--
-- Schema 1 already has `devices`, `device_keys` and `replay_windows`; their
-- columns serve as they are, with these meanings (kept here, where the
-- next reader of the schema looks):
--
-- devices.allow_pub, devices.allow_sub: JSON arrays of MQTT topic filters,
--   each optionally holding the placeholder `{device}` (replaced by the
--   device's own id, matched literally, never as a wildcard). An empty
--   array ('[]', the default) means NO restriction: the device may publish
--   (subscribe) anywhere its policy allows. A non-empty array allows only
--   what one of its patterns covers.
-- devices.password_hash: an Argon2 PHC string, or NULL for no password.
-- device_keys: kid = SHA-256(public_key)[0..8]; keys are revoked
--   (revoked_ms set), never deleted, so a kid can never be registered twice.
-- replay_windows: per key, the highest MQS1 counter accepted and a bitmap
--   of the 64 below it; both u64, counters may use all 64 bits. `seen` is
--   stored as the i64 of the same bits; `highest` with its top bit flipped
--   (u64 0 is i64 min), so SQLite orders it as the u64 it is: the
--   sequencer's upsert only ever moves a window forward. No foreign key to
--   device_keys: the sequencer must never fail a group commit over a window.

-- Registry changes waiting to become kind-2 log records. Only the log's
-- sequencer appends to the log, and the registry is changed by other
-- processes (`sealmq device …`), so a change writes its tables and its
-- encoded records here in one transaction; the sequencer later appends the
-- rows, in seq order, as records and deletes them, again in one
-- transaction. A change is thus logged exactly once, even across crashes.
-- AUTOINCREMENT: seq never reuses a number, so "every row up to seq N" is
-- unambiguous while new rows arrive.
CREATE TABLE registry_outbox (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Encoded record: version 1, kind 2 (the sequencer decodes it again).
    record BLOB    NOT NULL CHECK (length(record) >= 14 AND substr(record, 1, 2) = x'0102')
);

-- A counter bumped by every registry change, in the change's transaction:
-- the broker polls it (one indexed row) to notice changes within a second.
CREATE TABLE registry_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL CHECK (version >= 0)
);
INSERT INTO registry_version (id, version) VALUES (1, 0);

-- The latest retained publish per topic: the log index of its record, whose
-- payload is in `payloads`. Maintained by the sequencer in the append
-- transaction (retained publish with a payload: upsert; with an empty
-- payload, MQTT's "clear retained": delete), so it never disagrees with the
-- log; on restart the broker rebuilds its retained messages from it.
CREATE TABLE retained (
    topic TEXT    PRIMARY KEY,
    idx   INTEGER NOT NULL
) WITHOUT ROWID;
