-- sealmq schema 9: following a primary registry log (`[registry] follow`).
--
-- A follower gateway applies the primary's kind-2 records to its own
-- registry (and so logs them itself, through registry_outbox). This row is
-- where it is in the primary's log. It is written in the same transaction
-- as each registry change it causes, so a crash neither applies a primary
-- record twice nor skips one: a record at an index below `scanned` was
-- applied (or found to change nothing here), one at or above it was not.
--
-- vkey:       the primary log's verifier key (its origin is the key's name).
-- active:     1 while the broker runs with `[registry] follow`; while it is
--             1, local `sealmq device` changes of keys and policies are
--             refused (they would diverge from the primary).
-- tree_size, root, checkpoint: the primary's signed checkpoint accepted
--             last (size 0, the empty root and no note before the first);
--             a later one is accepted only with a consistency proof from it.
-- scanned:    every kind-2 record of the primary below this index is applied.
-- last_applied: the index of the last kind-2 record applied, if any.
-- applied:    how many of the primary's kind-2 records were applied.
CREATE TABLE registry_follow (
    id           INTEGER PRIMARY KEY CHECK (id = 1),
    vkey         TEXT    NOT NULL,
    active       INTEGER NOT NULL CHECK (active IN (0, 1)),
    tree_size    INTEGER NOT NULL CHECK (tree_size >= 0),
    root         BLOB    NOT NULL CHECK (length(root) = 32),
    checkpoint   TEXT,
    scanned      INTEGER NOT NULL CHECK (scanned >= 0 AND scanned <= tree_size),
    last_applied INTEGER CHECK (last_applied IS NULL OR last_applied < scanned),
    applied      INTEGER NOT NULL DEFAULT 0 CHECK (applied >= 0),
    updated_ms   INTEGER NOT NULL
);

-- The accepted checkpoint and the scan only move forward for one primary: a
-- bug (or a hand edit) cannot quietly make the follower apply records again.
CREATE TRIGGER registry_follow_forward_only BEFORE UPDATE ON registry_follow
WHEN NEW.vkey = OLD.vkey AND (NEW.tree_size < OLD.tree_size OR NEW.scanned < OLD.scanned OR NEW.applied < OLD.applied)
BEGIN SELECT RAISE(ABORT, 'registry_follow only moves forward'); END;
