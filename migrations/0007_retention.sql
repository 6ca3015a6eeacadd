-- sealmq schema 7: payload erasure requests (retention and `sealmq erase`).
--
-- Erasing a payload deletes its `payloads` row; the record, which commits
-- to the payload's hash, stays, and so does every proof. Each erasure is
-- logged as an ordinary kind-1 record from `$sealmq/erasure` on
-- `$SYS/sealmq/erasure` (payload: what was erased, as JSON), in the same
-- transaction as the deletes. Only the sequencer writes the log, and
-- `sealmq erase` runs in another process while a broker serves, so a
-- request is queued here; the broker's retention task polls this table,
-- has the sequencer carry the request out in bounded batches and deletes
-- the row in the transaction of the last batch.
CREATE TABLE erasure_outbox (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The request, as JSON (sealmq_audit::store::ErasureSpec).
    request   TEXT    NOT NULL CHECK (json_valid(request)),
    queued_ms INTEGER NOT NULL
);
