-- Rollouts, per-device rollout state, device reports, and what devices run.

-- One row per rollout. plan, probe and counts are JSON: the plan and probe are fixed at
-- creation; counts (devices per state per wave) change with every device transition, under
-- this row's lock, so deciding the next step never scans the fleet. active_key is
-- "group/artifact" while the rollout is not finished and NULL after, so the unique index
-- allows one active rollout per (group, artifact).
CREATE TABLE rollouts (
    id               TEXT PRIMARY KEY,
    artifact_name    TEXT NOT NULL,
    artifact_version TEXT NOT NULL,
    group_name       TEXT NOT NULL REFERENCES device_groups (name),
    plan             TEXT NOT NULL,
    probe            TEXT NOT NULL,
    state            TEXT NOT NULL,
    opened           BIGINT NOT NULL,
    failures_counted BIGINT NOT NULL,
    counts           TEXT NOT NULL,
    device_count     BIGINT NOT NULL,
    abort_mode       TEXT,
    active_key       TEXT UNIQUE,
    created_at       BIGINT NOT NULL,
    created_by       TEXT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX rollouts_by_group ON rollouts (group_name, artifact_name, created_at);

CREATE TABLE rollout_devices (
    rollout_id  TEXT NOT NULL REFERENCES rollouts (id),
    device_id   TEXT NOT NULL REFERENCES devices (id),
    position    BIGINT NOT NULL,
    wave        BIGINT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    assigned_at BIGINT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_by_device ON rollout_devices (device_id, rollout_id);
CREATE INDEX rollout_devices_by_state ON rollout_devices (rollout_id, state, updated_at);
CREATE INDEX rollout_devices_by_wave ON rollout_devices (rollout_id, wave, state);

-- Report ids already applied, so a report delivered twice changes nothing the second time.
CREATE TABLE device_reports (
    device_id   TEXT NOT NULL,
    report_id   TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, report_id)
);

-- What each device last said it runs.
CREATE TABLE device_artifacts (
    device_id  TEXT NOT NULL REFERENCES devices (id),
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (device_id, name)
);

-- Grows whenever a device's assignments change; signed into its assignment doc.
ALTER TABLE devices ADD COLUMN assignment_counter BIGINT NOT NULL DEFAULT 0;
