-- A read-only role for Grafana's census dashboard (run once as the owner of the tables;
-- compose mounts it into /docker-entrypoint-initdb.d). Change the password.
CREATE ROLE grafana_ro LOGIN PASSWORD 'grafana-readonly';
GRANT CONNECT ON DATABASE brokerscan TO grafana_ro;
GRANT USAGE ON SCHEMA public TO grafana_ro;
-- Tables made later by `brokerscan db migrate` (run as brokerscan) are readable too.
ALTER DEFAULT PRIVILEGES FOR ROLE brokerscan IN SCHEMA public GRANT SELECT ON TABLES TO grafana_ro;
ALTER ROLE grafana_ro SET default_transaction_read_only = on;
