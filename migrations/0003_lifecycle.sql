-- 0003_lifecycle: the model lifecycle (issue 13) and bounded start attempts
-- (issue 15).
--  * model_aliases: named pointers at versions ("default" is the version
--    unpinned calls use; without it, the latest).  A version an alias points
--    at cannot be deleted (checked by the daemon in the deleting
--    transaction).  The aliases go with their model.
--  * model_version_seq: the highest version number ever given to a model
--    name, kept when the model is deleted, so numbers never restart.
--  * model_versions.optimizer: the final optimizer state of the job that
--    published the version (optional, for warm starts), NULL when none.
--  * jobs.start_attempts: how many times a worker has started (or resumed)
--    the job; a job found running at start-up with too many attempts is
--    failed instead of resumed again.

CREATE TABLE model_aliases (
    model_id    INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    alias       TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (model_id, alias)
) WITHOUT ROWID;

CREATE TABLE model_version_seq (
    name          TEXT    PRIMARY KEY,
    last_version  INTEGER NOT NULL CHECK (last_version >= 0)
) WITHOUT ROWID;

INSERT INTO model_version_seq (name, last_version)
    SELECT m.name, max(v.version) FROM models m JOIN model_versions v ON v.model_id = m.id
    GROUP BY m.name;

ALTER TABLE model_versions ADD COLUMN optimizer BLOB;

ALTER TABLE jobs ADD COLUMN start_attempts INTEGER NOT NULL DEFAULT 0;
