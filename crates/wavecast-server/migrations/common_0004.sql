-- Device silence that counts only while a device could act, and heartbeats.
--
-- active_since is when the rollout last (re)started serving devices: set at creation, when a
-- wave opens and on resume. A device that has not got past its download is silent only when
-- it was last heard from before both active_since and the device timeout, so time spent
-- paused or at a gate is never its silence. Rollouts that exist already take their last
-- change, which is at or after their last resume or wave opening.
ALTER TABLE rollouts ADD COLUMN active_since BIGINT NOT NULL DEFAULT 0;
UPDATE rollouts SET active_since = updated_at;

-- heard_at is when the server last heard from the device about this rollout (a report or a
-- heartbeat) or opened its wave: the sweep settles devices by it, through the index below.
-- The progress_* columns hold the latest heartbeat since the device's last state change
-- (cleared by each change): bytes so far and in all, the rate, and what the device waits out.
ALTER TABLE rollout_devices ADD COLUMN heard_at BIGINT NOT NULL DEFAULT 0;
UPDATE rollout_devices SET heard_at = updated_at;
ALTER TABLE rollout_devices ADD COLUMN progress_at BIGINT;
ALTER TABLE rollout_devices ADD COLUMN progress_state TEXT;
ALTER TABLE rollout_devices ADD COLUMN bytes_done BIGINT;
ALTER TABLE rollout_devices ADD COLUMN bytes_total BIGINT;
ALTER TABLE rollout_devices ADD COLUMN bytes_per_sec BIGINT;
ALTER TABLE rollout_devices ADD COLUMN waiting_class TEXT;
ALTER TABLE rollout_devices ADD COLUMN waiting_reason TEXT;
DROP INDEX rollout_devices_by_state;
CREATE INDEX rollout_devices_by_silence ON rollout_devices (rollout_id, state, heard_at);
-- The devices a rollout waits for, in wave and rollout order, for `rollout show`.
CREATE INDEX rollout_devices_at_work ON rollout_devices (rollout_id, state, wave, position);
