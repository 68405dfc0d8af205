-- The audit log is append-only: the database itself refuses updates and deletes.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER tuf_metadata_no_update BEFORE UPDATE ON tuf_metadata
BEGIN
    SELECT RAISE(ABORT, 'tuf_metadata is append-only');
END;
