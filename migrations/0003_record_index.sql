-- sealmq schema 3: the search index behind the HTTP API's record search.
--
-- Derived data, not part of what the log proves: it is rebuilt from
-- `records` and may be dropped at any time (the log then re-indexes on
-- open). The sequencer fills it for each block in the block's sealing
-- transaction, so exactly the sealed records are searchable, and on open
-- it catches up with records sealed before this table existed.
--
-- Device ids and topics are stored once each in `index_names` and
-- referenced by number, so an indexed record costs a few dozen bytes
-- however long its topic is.
CREATE TABLE index_names (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);

-- One row per sealed record. kind: 1 publish, 2 registry event. at_ms:
-- received_ms (kind 1) or at_ms (kind 2). topic: NULL for kind 2.
CREATE TABLE record_index (
    idx    INTEGER PRIMARY KEY,
    kind   INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    device INTEGER NOT NULL, -- index_names.id
    topic  INTEGER          -- index_names.id
);
CREATE INDEX record_index_by_device ON record_index (device, idx);
CREATE INDEX record_index_by_topic ON record_index (topic, idx) WHERE topic IS NOT NULL;
CREATE INDEX record_index_by_time ON record_index (at_ms, idx);
