-- The audit log is append-only: the database itself refuses updates, deletes and truncation.
CREATE FUNCTION wavecast_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION wavecast_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION wavecast_append_only();
CREATE TRIGGER tuf_metadata_no_update BEFORE UPDATE ON tuf_metadata
    FOR EACH ROW EXECUTE FUNCTION wavecast_append_only();
