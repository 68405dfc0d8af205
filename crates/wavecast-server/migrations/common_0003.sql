-- Signed checkpoints of the audit log (RFC 6962 tree, C2SP checkpoint notes).
--
-- note is the signed checkpoint exactly as served; size and root_sha256 repeat what it says for
-- queries, and are never trusted without checking the note's signature. frontier is the JSON
-- list of the roots of the complete subtrees covering [0, size) (a compact range): the next
-- checkpoint extends it with the new events only, so rows the signer already covered are
-- never read again, and a changed old row can never be signed over. The frontier is checked
-- against the signed root before use. The primary key makes replicas racing to sign the same
-- size conflict; the loser skips.
CREATE TABLE audit_checkpoints (
    size        BIGINT PRIMARY KEY,
    root_sha256 TEXT NOT NULL,
    note        TEXT NOT NULL,
    frontier    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
