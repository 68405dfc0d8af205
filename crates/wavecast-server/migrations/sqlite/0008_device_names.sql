-- The dashboard's devices page reads names in byte order (SQLite's own), within a group through
-- this index; across groups through the names' unique index.
CREATE INDEX devices_by_group_name ON devices (group_name, name);
