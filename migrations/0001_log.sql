-- sealmq audit log, schema 1.
--
-- The log is append-only: records, blocks and tree hashes can be inserted,
-- never changed or removed (the triggers below). Only stored payload bytes
-- may be deleted; the record that commits to them stays.

-- One row per record; idx is the record's leaf index, contiguous from 0.
-- leaf = SHA-256(0x00 || body), kept so proofs need no rehashing and
-- `audit verify` can name the record whose bytes changed.
CREATE TABLE records (
    idx  INTEGER PRIMARY KEY,
    leaf BLOB    NOT NULL CHECK (length(leaf) = 32),
    body BLOB    NOT NULL
);

-- Application payloads, by record index. Deletable (retention, erasure).
CREATE TABLE payloads (
    idx  INTEGER PRIMARY KEY,
    data BLOB    NOT NULL
);

-- Hashes of complete, aligned subtrees at every fourth level: (level, idx)
-- with level a positive multiple of 4 covers leaves
-- [idx << level, (idx + 1) << level). Level 0 is records.leaf. Any other
-- node is rehashed from at most 8 of the stored hashes below it, so the
-- log keeps about n/15 interior hashes instead of n and a proof reads a
-- few dozen rows. Levels 8, 16, … are the hashes of C2SP tlog-tiles.
-- Written when a block seals the subtree; a complete subtree never
-- changes, so every row is final.
CREATE TABLE tree_nodes (
    level INTEGER NOT NULL CHECK (level >= 4 AND level % 4 = 0),
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Sealed blocks: the header (spec/log.md), its hash and the signed checkpoint.
CREATE TABLE blocks (
    height     INTEGER PRIMARY KEY,
    header     BLOB    NOT NULL,
    hash       BLOB    NOT NULL CHECK (length(hash) = 32),
    tree_size  INTEGER NOT NULL UNIQUE,
    checkpoint TEXT    NOT NULL
);

-- Facts about the log fixed at creation: origin, verifier key.
CREATE TABLE log_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The device registry (used by the broker). Every change to it is also a
-- kind-2 record in the log; these tables are the broker's fast index of it.
CREATE TABLE devices (
    id            TEXT    PRIMARY KEY,
    policy        TEXT    NOT NULL CHECK (policy IN ('signed', 'legacy')),
    password_hash TEXT,
    allow_pub     TEXT    NOT NULL DEFAULT '[]',
    allow_sub     TEXT    NOT NULL DEFAULT '[]',
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);

CREATE TABLE device_keys (
    kid        BLOB    PRIMARY KEY CHECK (length(kid) = 8),
    device_id  TEXT    NOT NULL REFERENCES devices (id),
    public_key BLOB    NOT NULL CHECK (length(public_key) = 32),
    added_ms   INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX device_keys_by_device ON device_keys (device_id);

-- MQS1 replay windows, per key: highest counter seen and a 64-bit bitmap
-- of the counters below it, persisted so a restart reopens no window.
CREATE TABLE replay_windows (
    kid     BLOB    PRIMARY KEY CHECK (length(kid) = 8),
    highest INTEGER NOT NULL,
    seen    INTEGER NOT NULL
);

-- INSERT OR REPLACE deletes the old row without firing DELETE triggers
-- (recursive_triggers is off by default), so refuse the insert itself.
CREATE TRIGGER records_append_only_replace BEFORE INSERT ON records
WHEN EXISTS (SELECT 1 FROM records WHERE idx = NEW.idx)
BEGIN SELECT RAISE(ABORT, 'records are append-only'); END;
CREATE TRIGGER tree_nodes_append_only_replace BEFORE INSERT ON tree_nodes
WHEN EXISTS (SELECT 1 FROM tree_nodes WHERE level = NEW.level AND idx = NEW.idx)
BEGIN SELECT RAISE(ABORT, 'tree hashes are append-only'); END;
CREATE TRIGGER blocks_append_only_replace BEFORE INSERT ON blocks
WHEN EXISTS (SELECT 1 FROM blocks WHERE height = NEW.height OR tree_size = NEW.tree_size)
BEGIN SELECT RAISE(ABORT, 'blocks are append-only'); END;
CREATE TRIGGER log_meta_append_only_replace BEFORE INSERT ON log_meta
WHEN EXISTS (SELECT 1 FROM log_meta WHERE name = NEW.name)
BEGIN SELECT RAISE(ABORT, 'log metadata is fixed at creation'); END;

CREATE TRIGGER records_append_only_update BEFORE UPDATE ON records
BEGIN SELECT RAISE(ABORT, 'records are append-only'); END;
CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
BEGIN SELECT RAISE(ABORT, 'records are append-only'); END;
CREATE TRIGGER tree_nodes_append_only_update BEFORE UPDATE ON tree_nodes
BEGIN SELECT RAISE(ABORT, 'tree hashes are append-only'); END;
CREATE TRIGGER tree_nodes_append_only_delete BEFORE DELETE ON tree_nodes
BEGIN SELECT RAISE(ABORT, 'tree hashes are append-only'); END;
CREATE TRIGGER blocks_append_only_update BEFORE UPDATE ON blocks
BEGIN SELECT RAISE(ABORT, 'blocks are append-only'); END;
CREATE TRIGGER blocks_append_only_delete BEFORE DELETE ON blocks
BEGIN SELECT RAISE(ABORT, 'blocks are append-only'); END;
CREATE TRIGGER log_meta_append_only_update BEFORE UPDATE ON log_meta
BEGIN SELECT RAISE(ABORT, 'log metadata is fixed at creation'); END;
CREATE TRIGGER log_meta_append_only_delete BEFORE DELETE ON log_meta
BEGIN SELECT RAISE(ABORT, 'log metadata is fixed at creation'); END;
