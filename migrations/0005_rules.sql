-- sealmq schema 5: rules (spec/rules.md).
--
-- Rule installs and removals are made by other processes (`sealmq rule …`),
-- like registry changes: the command checks the rule document (it parses,
-- its expressions compile within the documented limits), writes its kind-3
-- record here and bumps `registry_version` in one transaction; the
-- sequencer appends the rows as records, in seq order, and deletes them in
-- its append transaction, so each change is logged exactly once. Which
-- rules are active is never stored elsewhere: it is a fold over the kind-3
-- records of the log.
CREATE TABLE rule_outbox (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Encoded record: version 1, kind 3 (the sequencer decodes it again).
    record BLOB    NOT NULL CHECK (length(record) >= 13 AND substr(record, 1, 2) = x'0103')
);
