-- What a replica must forget about a device (kind 'device', subject its id: its credential or
-- its assignments changed) or a whole group (kind 'group', subject its name: a rollout of the
-- group changed state). Written in the transaction that makes the change, read by every
-- replica (see src/checkin.rs), and deleted after an hour.
CREATE TABLE change_events (
    seq BIGSERIAL PRIMARY KEY,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL
);
CREATE INDEX change_events_at ON change_events (at);
