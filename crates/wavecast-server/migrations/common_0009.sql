-- Golden sets for the model check. A publisher may sign a golden bundle (expectations, golden
-- inputs and outputs) into a model's target; its digest names a blob like the artifact's own,
-- and devices assigned the artifact may fetch it. `golden_local_check` is what the publisher's
-- machine did before signing: `passed` or `skipped`. All three are null without a golden set.
ALTER TABLE artifacts ADD COLUMN golden_sha256 TEXT;
ALTER TABLE artifacts ADD COLUMN golden_length BIGINT;
ALTER TABLE artifacts ADD COLUMN golden_local_check TEXT;
-- Whether a blob is still referred to asks for either digest.
CREATE INDEX artifacts_by_golden ON artifacts (golden_sha256);

-- What a device's probe printed about the version (a model check's JSON report: pass or fail,
-- deviation, latency and memory against budget), kept with its outcome in the rollout.
ALTER TABLE rollout_devices ADD COLUMN probe_result TEXT;
