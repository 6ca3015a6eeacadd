-- sealmq schema 11: large payloads as files beside the database.
--
-- A payload of 64 KiB or more is written to `payloads/<idx / 4096>/<idx>`
-- in the data directory and fsynced before the transaction that logs its
-- record commits; its `payloads` row then holds an empty `data` and the
-- file's length in `file_len`. In SQLite a 1 MiB blob was written three
-- times (the WAL, the checkpoint's copy into the database, sqlx's bind
-- copy) and kept the database file from shrinking when erased; as a file
-- it is written once and erasing it frees its space at once.
--
-- The row stays the payload's only claim to be in the log: a file below
-- the log's head with no row (an erasure that stopped between its commit
-- and the unlink) is removed when the log is opened, one past the head (a
-- group that never committed) is overwritten by the next payload file at
-- its index, and every reader checks the bytes against the length here
-- (and `audit verify` against the record's hash).
ALTER TABLE payloads ADD COLUMN file_len INTEGER CHECK (file_len IS NULL OR file_len >= 0);

-- The payload files, for the sweep, backups and the metrics' count and
-- bytes: a covering index of file rows only, so none of them scans the
-- (much larger) rest of the table.
CREATE INDEX payload_files ON payloads (idx, file_len) WHERE file_len IS NOT NULL;
