-- Dashboard sessions. A browser that signed in with an API token holds a random secret in an
-- HttpOnly cookie; only the secret's SHA-256 is stored, with the token it stands for and when
-- it ends. Every replica reads the same rows, so a session holds behind a balancer, and a
-- session whose token is revoked is refused from its next request on.
CREATE TABLE dashboard_sessions (
    secret_sha256 TEXT PRIMARY KEY,
    token_id      TEXT NOT NULL REFERENCES api_tokens (id),
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_by_expiry ON dashboard_sessions (expires_at);

-- The dashboard's rollout page lists a rollout's devices a page at a time, in wave then rollout
-- order: through this index it reads that page's rows, never the rollout's whole fleet.
CREATE INDEX rollout_devices_by_position ON rollout_devices (rollout_id, wave, position);
