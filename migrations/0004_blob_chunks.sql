-- 0004_blob_chunks: values larger than one SQLite blob (issue 15).
-- A model file, a version's optimizer state or a job's training state
-- longer than the chunk size (from sqlite3_limit(SQLITE_LIMIT_LENGTH), see
-- server/blobs.h) is stored as numbered chunks in blob_chunks, written in
-- the same transaction as its row.  The row's own BLOB column is then
-- empty (X'') and its *_chunks column says how many chunks there are.
-- Rows written before this migration, and every value that fits one
-- chunk, keep *_chunks = 0 and their bytes in the column, as before.
-- owner names the value: 'checkpoint/MODEL_ID/VERSION',
-- 'optimizer/MODEL_ID/VERSION' or 'train_state/JOB_ID'.  The chunks go
-- with their row (the triggers below, which foreign-key cascades fire too).

CREATE TABLE blob_chunks (
    owner       TEXT    NOT NULL,
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    data        BLOB    NOT NULL,
    PRIMARY KEY (owner, idx)
);

ALTER TABLE model_versions ADD COLUMN checkpoint_chunks INTEGER NOT NULL DEFAULT 0
    CHECK (checkpoint_chunks >= 0);
ALTER TABLE model_versions ADD COLUMN optimizer_chunks INTEGER NOT NULL DEFAULT 0
    CHECK (optimizer_chunks >= 0);
ALTER TABLE job_train_state ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0 CHECK (chunks >= 0);

CREATE TRIGGER model_versions_drop_chunks AFTER DELETE ON model_versions BEGIN
    DELETE FROM blob_chunks WHERE owner IN ('checkpoint/' || old.model_id || '/' || old.version,
                                            'optimizer/' || old.model_id || '/' || old.version);
END;

CREATE TRIGGER job_train_state_drop_chunks AFTER DELETE ON job_train_state BEGIN
    DELETE FROM blob_chunks WHERE owner = 'train_state/' || old.job_id;
END;
