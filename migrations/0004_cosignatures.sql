-- sealmq schema 4: cosignatures this log's witnesses returned (C2SP
-- tlog-witness, tlog-cosignature).
--
-- Not part of what the log proves: each row is a witness's signature line
-- on the checkpoint of `tree_size`, kept so the log can serve its
-- checkpoints with their cosignatures and ask each witness for a
-- consistency proof from the size it last cosigned. A restored copy of the
-- database holds older rows; the witnesses themselves, not this table, are
-- what catches that (the broker asks them on start).
CREATE TABLE cosignatures (
    witness     TEXT    NOT NULL, -- the witness's vkey
    tree_size   INTEGER NOT NULL,
    line        TEXT    NOT NULL, -- the signature line, newline included
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (witness, tree_size)
) WITHOUT ROWID;
CREATE INDEX cosignatures_by_size ON cosignatures (tree_size);
