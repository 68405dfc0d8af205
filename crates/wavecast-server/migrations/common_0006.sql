-- The check-in fast path (issue 12): each replica answers idle check-ins from memory, and
-- learns what to forget from change_events (created in the backend-specific part, which
-- differs only in how seq is generated).
--
-- Per-group pacing of device check-ins, in milliseconds; NULL means the server's default.
-- poll_idle_ms and poll_active_ms pace devices that poll; long_poll_ms is how long a check-in
-- may be held waiting for a change (0: never held).
ALTER TABLE device_groups ADD COLUMN poll_idle_ms BIGINT;
ALTER TABLE device_groups ADD COLUMN poll_active_ms BIGINT;
ALTER TABLE device_groups ADD COLUMN long_poll_ms BIGINT;
