-- sealmq schema 10: revocations from peer gateways (`[registry] peers`).
--
-- Every gateway follows each configured peer's log for its key revocations
-- (kind-2 KeyRevoked records) only, with the checks of following a primary
-- (migration 0009): a revocation only refuses more, so any gateway of the
-- trusted set may send one. One row per peer log, by its origin (a log's
-- name; the vkey names it too). Like registry_follow, a row is written in
-- the same transaction as each revocation it causes, so a crash neither
-- applies a peer's record twice nor skips one.
--
-- origin:     the peer log's origin (the name in its verifier key).
-- vkey:       its verifier key; another key for the same origin is refused.
-- active:     1 while the broker runs with this peer in `[registry] peers`.
-- tree_size, root, checkpoint: the peer's signed checkpoint accepted last
--             (size 0, the empty root and no note before the first); a
--             later one is accepted only with a consistency proof from it.
-- scanned:    every revocation in the peer's log below this index is applied.
-- last_applied: the index of the last revocation applied, if any.
-- applied:    how many of the peer's revocations were applied.
CREATE TABLE registry_peers (
    origin       TEXT    PRIMARY KEY,
    vkey         TEXT    NOT NULL,
    active       INTEGER NOT NULL CHECK (active IN (0, 1)),
    tree_size    INTEGER NOT NULL CHECK (tree_size >= 0),
    root         BLOB    NOT NULL CHECK (length(root) = 32),
    checkpoint   TEXT,
    scanned      INTEGER NOT NULL CHECK (scanned >= 0 AND scanned <= tree_size),
    last_applied INTEGER CHECK (last_applied IS NULL OR last_applied < scanned),
    applied      INTEGER NOT NULL DEFAULT 0 CHECK (applied >= 0),
    updated_ms   INTEGER NOT NULL
) WITHOUT ROWID;

-- As for registry_follow: a peer's position only moves forward, and a row
-- keeps the key it was created with.
CREATE TRIGGER registry_peers_forward_only BEFORE UPDATE ON registry_peers
WHEN NEW.vkey <> OLD.vkey OR NEW.origin <> OLD.origin OR NEW.tree_size < OLD.tree_size
    OR NEW.scanned < OLD.scanned OR NEW.applied < OLD.applied
BEGIN SELECT RAISE(ABORT, 'registry_peers only moves forward, with its own key'); END;
