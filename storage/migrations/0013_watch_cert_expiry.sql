-- Issue 20: a watch may also report, on every sweep, the matching services whose leaf
-- certificate has expired or will within this many days (NULL: not asked).
-- It touches only the watches table of 0011.

ALTER TABLE watches ADD COLUMN cert_expiry_days integer CHECK (cert_expiry_days >= 0);
