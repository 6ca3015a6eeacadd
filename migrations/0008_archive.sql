-- sealmq schema 8: archives of sealed history (C2SP tlog-tiles directories).
--
-- `sealmq archive --below SIZE DIR` writes records [0, tree_size) to a
-- static tlog-tiles directory, verifies it against the log, and only then
-- removes those records' rows, payloads and search index rows here, in one
-- transaction that first inserts its row below. What stays below the
-- archived size: kind-2 and kind-3 records (the registry and rule history
-- the broker folds), records that are current retained messages (with
-- their payloads), every `tree_nodes` row, and in `kept_leaves` the leaf
-- hashes of each 16-leaf group that holds a checkpoint boundary, which
-- inclusion proofs of later records and consistency proofs from every
-- checkpoint need (every other node below the archived size is rebuilt
-- from `tree_nodes`, stored every fourth level).

-- One row per archive run; the largest tree_size is the archived size.
-- checkpoint: the signed note of that size, as written to the archive.
-- records, bytes: rows and bytes (record bodies and payloads) removed.
CREATE TABLE archives (
    tree_size   INTEGER PRIMARY KEY CHECK (tree_size > 0),
    checkpoint  TEXT    NOT NULL,
    records     INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    archived_ms INTEGER NOT NULL
);

-- Leaf hashes (level 0 of the tree) whose records rows were archived.
CREATE TABLE kept_leaves (
    idx  INTEGER PRIMARY KEY,
    leaf BLOB    NOT NULL CHECK (length(leaf) = 32)
);

CREATE TRIGGER archives_append_only_replace BEFORE INSERT ON archives
WHEN EXISTS (SELECT 1 FROM archives WHERE tree_size >= NEW.tree_size)
BEGIN SELECT RAISE(ABORT, 'archives only ever extend'); END;
CREATE TRIGGER archives_append_only_update BEFORE UPDATE ON archives
BEGIN SELECT RAISE(ABORT, 'archives are append-only'); END;
CREATE TRIGGER archives_append_only_delete BEFORE DELETE ON archives
BEGIN SELECT RAISE(ABORT, 'archives are append-only'); END;
CREATE TRIGGER kept_leaves_append_only_replace BEFORE INSERT ON kept_leaves
WHEN EXISTS (SELECT 1 FROM kept_leaves WHERE idx = NEW.idx)
BEGIN SELECT RAISE(ABORT, 'kept leaf hashes are append-only'); END;
CREATE TRIGGER kept_leaves_append_only_update BEFORE UPDATE ON kept_leaves
BEGIN SELECT RAISE(ABORT, 'kept leaf hashes are append-only'); END;
CREATE TRIGGER kept_leaves_append_only_delete BEFORE DELETE ON kept_leaves
BEGIN SELECT RAISE(ABORT, 'kept leaf hashes are append-only'); END;

-- Records stay append-only, except below the archived size: an archive run
-- records its size above first, in the same transaction as its deletes.
DROP TRIGGER records_append_only_delete;
CREATE TRIGGER records_append_only_delete BEFORE DELETE ON records
WHEN OLD.idx >= (SELECT coalesce(max(tree_size), 0) FROM archives)
BEGIN SELECT RAISE(ABORT, 'records are append-only (only archived records may be removed)'); END;
