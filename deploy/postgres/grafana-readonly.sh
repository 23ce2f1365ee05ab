#!/bin/sh
# A read-only role for Grafana's census dashboard (compose mounts this into
# /docker-entrypoint-initdb.d: it runs once, as the owner of the tables, when the data
# volume is new). Its password is BROKERSCAN_GRAFANA_DB_PASSWORD (deploy/.env), never
# written here. Elsewhere: run the SQL below with psql -v password=...
set -eu
psql -v ON_ERROR_STOP=1 -v password="$BROKERSCAN_GRAFANA_DB_PASSWORD" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE grafana_ro LOGIN PASSWORD :'password';
GRANT CONNECT ON DATABASE brokerscan TO grafana_ro;
GRANT USAGE ON SCHEMA public TO grafana_ro;
-- Tables made later by `brokerscan db migrate` (run as brokerscan) are readable too.
ALTER DEFAULT PRIVILEGES FOR ROLE brokerscan IN SCHEMA public GRANT SELECT ON TABLES TO grafana_ro;
ALTER ROLE grafana_ro SET default_transaction_read_only = on;
SQL
