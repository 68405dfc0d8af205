-- wavecast schema, version 1. Shared by SQLite and PostgreSQL: only BIGINT and TEXT columns,
-- times as Unix milliseconds, digests as lowercase hex. Backend-specific parts (the triggers
-- that make the audit log append-only) live beside this file.

CREATE TABLE installation (
    id          BIGINT PRIMARY KEY CHECK (id = 1),
    created_at  BIGINT NOT NULL,
    root_sha256 TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    revoked_at    BIGINT
);

-- Every version of every TUF role, exactly as signed. Rows are never changed: a new version is a
-- new row, and the primary key makes two servers racing to write the same version conflict.
CREATE TABLE tuf_metadata (
    role       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (role, version)
);

CREATE TABLE artifacts (
    name            TEXT NOT NULL,
    version         TEXT NOT NULL,
    length          BIGINT NOT NULL,
    sha256          TEXT NOT NULL,
    hardware        TEXT,
    targets_version BIGINT NOT NULL,
    published_at    BIGINT NOT NULL,
    published_by    TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE device_groups (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE enrollment_tokens (
    id            TEXT PRIMARY KEY,
    group_name    TEXT NOT NULL REFERENCES device_groups (name),
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    revoked_at    BIGINT
);

CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    group_name        TEXT NOT NULL REFERENCES device_groups (name),
    hardware          TEXT NOT NULL,
    credential_sha256 TEXT NOT NULL UNIQUE,
    enrolled_at       BIGINT NOT NULL,
    last_seen_at      BIGINT
);
CREATE INDEX devices_by_group ON devices (group_name, id);

-- The audit log is the leaf list of a Merkle tree: seq is the leaf index (0, 1, 2, … with no
-- gaps) and body the canonical event bytes the leaf hash is computed from. audit_head hands out
-- seq under a row lock so concurrent writers (several replicas) never collide or leave gaps.
CREATE TABLE audit_head (
    id   BIGINT PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL
);
INSERT INTO audit_head (id, size) VALUES (1, 0);

CREATE TABLE audit_log (
    seq     BIGINT PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX audit_by_subject ON audit_log (subject, seq);
