-- The device lifecycle: enrollment tokens that admit a limited number of devices, and devices
-- whose credential is revoked.
--
-- uses counts the devices a token enrolled, under the token row's lock; max_uses is NULL for
-- any number until the token expires. revoked_at marks a device whose credential is refused:
-- it stays listed, as revoked, until an operator removes it, which deletes its rows.
ALTER TABLE enrollment_tokens ADD COLUMN max_uses BIGINT;
ALTER TABLE enrollment_tokens ADD COLUMN uses BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN revoked_at BIGINT;
