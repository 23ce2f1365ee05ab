-- Issue 20: a watch may also report, on every sweep, the matching services whose leaf
-- certificate has expired or will within this many days (NULL: not asked).
ALTER TABLE watches ADD COLUMN cert_expiry_days integer CHECK (cert_expiry_days >= 0);

-- Events and deliveries are written by the hundred thousand after a large sweep; a foreign
-- key check per row was a third of that time. Removing a watch deletes its deliveries,
-- events and row itself, in that order (storage/watches.py), as the SQLite store always
-- did (it never enforced these keys).
ALTER TABLE watch_events DROP CONSTRAINT watch_events_watch_fkey;
ALTER TABLE watch_deliveries DROP CONSTRAINT watch_deliveries_event_id_fkey;
