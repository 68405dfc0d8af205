-- The dashboard's devices page reads names in byte order, as SQLite does, so a name prefix is a
-- range of an index: PostgreSQL's default collation sorts by locale rules, so these indexes name
-- the "C" collation.
CREATE INDEX devices_by_name_bytes ON devices (name COLLATE "C");
CREATE INDEX devices_by_group_name ON devices (group_name, name COLLATE "C");
