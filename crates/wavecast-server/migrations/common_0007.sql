-- Retention of device report ids: the background task deletes ids received longer ago than
-- the server's --report-retention, oldest first and in bounded chunks, through this index
-- rather than by scanning every report ever received.
CREATE INDEX device_reports_by_received_at ON device_reports (received_at);
