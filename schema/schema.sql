CREATE INDEX datasets_by_name ON datasets (name);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY,
    token_hash  TEXT    NOT NULL UNIQUE,         -- sha256 hex of the token
    scope       TEXT    NOT NULL CHECK (scope IN ('read', 'write')),
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE blob_chunks (
    owner       TEXT    NOT NULL,
    idx         INTEGER NOT NULL CHECK (idx >= 0),
    data        BLOB    NOT NULL,
    PRIMARY KEY (owner, idx)
);
CREATE TABLE datasets (
    id          TEXT    PRIMARY KEY,             -- "ds_" + 16 hex digits
    name        TEXT    NOT NULL,
    format      TEXT    NOT NULL,                -- csv, npy, idx, json
    rows        INTEGER NOT NULL CHECK (rows >= 1),
    dim         INTEGER NOT NULL CHECK (dim >= 1),
    is_integer  INTEGER NOT NULL,
    vmin        REAL    NOT NULL,
    vmax        REAL    NOT NULL,
    sha256      TEXT    NOT NULL,                -- of the uploaded bytes
    data        BLOB    NOT NULL,                -- float32 little-endian (rows, dim)
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
, shape_c INTEGER CHECK (shape_c IS NULL OR shape_c >= 1), shape_h INTEGER CHECK (shape_h IS NULL OR shape_h >= 1), shape_w INTEGER CHECK (shape_w IS NULL OR shape_w >= 1));
CREATE TABLE flowd_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE job_metrics (
    job_id      INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('train', 'val')),
    epoch       INTEGER NOT NULL,
    train_loss  REAL,
    val_loss    REAL,
    lr          REAL,
    grad_norm   REAL,
    time        REAL    NOT NULL,                -- unix seconds
    PRIMARY KEY (job_id, step, kind)
) WITHOUT ROWID;
CREATE TABLE job_train_state (
    job_id      INTEGER PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    step        INTEGER NOT NULL,
    state       BLOB    NOT NULL,                -- core trainer state blob (NFTS)
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
, chunks INTEGER NOT NULL DEFAULT 0 CHECK (chunks >= 0));
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    submission_id    TEXT    UNIQUE,
    model            TEXT    NOT NULL,
    request          TEXT    NOT NULL,           -- the job JSON as submitted
    state            TEXT    NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress         TEXT,                       -- latest progress object (JSON)
    error            TEXT,
    version          INTEGER,                    -- the model version it published
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at       TEXT,
    finished_at      TEXT
, start_attempts INTEGER NOT NULL DEFAULT 0);
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
CREATE TABLE model_versions (
    model_id     INTEGER NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    version      INTEGER NOT NULL CHECK (version >= 1),
    checkpoint   BLOB    NOT NULL,               -- the model file (core/model.h)
    sha256       TEXT    NOT NULL,               -- of checkpoint, checked on load
    size_bytes   INTEGER NOT NULL,
    dim          INTEGER NOT NULL,
    context_dim  INTEGER NOT NULL,
    config       TEXT    NOT NULL,               -- flow config JSON
    preprocess   TEXT    NOT NULL,               -- preprocessing JSON
    metrics      TEXT    NOT NULL,               -- training metrics JSON
    job_id       INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), optimizer BLOB, checkpoint_chunks INTEGER NOT NULL DEFAULT 0
    CHECK (checkpoint_chunks >= 0), optimizer_chunks INTEGER NOT NULL DEFAULT 0
    CHECK (optimizer_chunks >= 0),
    PRIMARY KEY (model_id, version)
) WITHOUT ROWID;
CREATE TABLE models (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TRIGGER job_train_state_drop_chunks AFTER DELETE ON job_train_state BEGIN
    DELETE FROM blob_chunks WHERE owner = 'train_state/' || old.job_id;
END;
CREATE TRIGGER model_versions_drop_chunks AFTER DELETE ON model_versions BEGIN
    DELETE FROM blob_chunks WHERE owner IN ('checkpoint/' || old.model_id || '/' || old.version,
                                            'optimizer/' || old.model_id || '/' || old.version);
END;
