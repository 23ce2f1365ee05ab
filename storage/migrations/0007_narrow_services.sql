-- The current view, narrow (issue 9's performance targets): counts and facets that the
-- rollups cannot answer scan the services table, and with each service's whole record
-- in its rows (about 1 kB of JSON, 3 kB a row with the room left for updates) a scan of
-- 10^6 services read 3.5 GB. The records move to a table of their own; `services` becomes
-- a view over the two, so every reader keeps its name and columns. The record is a scalar
-- subquery on the records' primary key: a query that reads no record (counts, facets, the
-- CSV export) never evaluates it, and one that does (a page, the JSON lines export) looks
-- up only the rows it returns (a join would walk the records from the first key for every
-- page, whatever the page's cursor).
--
-- The table keeps its indexes, constraints and rollup triggers under its new name; it is
-- rewritten in primary-key order (CLUSTER) to give back the space the records took.

ALTER TABLE services RENAME TO services_core;
ALTER INDEX services_pkey RENAME TO services_core_pkey;

CREATE TABLE services_records (
    ip        inet        NOT NULL,
    port      integer     NOT NULL,
    transport text        NOT NULL,
    seen      timestamptz NOT NULL,  -- observed_at of the record: the service's last_seen
    latest    jsonb       NOT NULL,
    PRIMARY KEY (ip, port, transport)
) WITH (fillfactor = 90);

INSERT INTO services_records (ip, port, transport, seen, latest)
SELECT ip, port, transport, last_seen, latest FROM services_core ORDER BY ip, port, transport;

ALTER TABLE services_core DROP COLUMN latest;
CLUSTER services_core USING services_core_pkey;
-- A certificate's fingerprint is looked up as such (cert.sha256:...): one service of many.
CREATE INDEX services_core_cert_sha256 ON services_core (cert_sha256)
    WHERE cert_sha256 IS NOT NULL;
ANALYZE services_core;
ANALYZE services_records;

CREATE VIEW services AS
SELECT c.*, (SELECT r.latest FROM services_records AS r
             WHERE r.ip = c.ip AND r.port = c.port AND r.transport = c.transport) AS latest
FROM services_core AS c;

-- The observations trigger (0004), writing the two tables: the same rounds and rules.
CREATE OR REPLACE FUNCTION observations_added() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    rounds integer;
    round integer;
BEGIN
    INSERT INTO rollup AS r (day, sweep_id, protocol, port, transport, tls, anonymous,
                             country, asn, status, n)
    SELECT day, sweep_id, coalesce(protocol, ''), port, transport, tls,
           CASE anonymous WHEN TRUE THEN 1 WHEN FALSE THEN 0 ELSE -1 END,
           coalesce(country, ''), coalesce(asn, -1), status, count(*)
    FROM added
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
    ON CONFLICT (day, sweep_id, protocol, port, transport, tls, anonymous, country, asn,
                 status)
    DO UPDATE SET n = r.n + excluded.n;

    SELECT max(n) INTO rounds
    FROM (SELECT count(*) AS n FROM added GROUP BY ip, port, transport) AS per_service;
    FOR round IN 1..coalesce(rounds, 0) LOOP
        INSERT INTO services_core AS s (
            ip, port, transport, first_seen, last_seen, last_changed, sweep_id, status,
            protocol, tls, anonymous, mqtt_level, mqtt_return_code, mqtt_levels, amqp_family,
            product, version, amqp_mechanisms, tls_version, cert_sha256, cert_subject,
            cert_issuer, cert_self_signed, cert_expired, cert_trusted, asn, org, country)
        SELECT ip, port, transport, observed_at, observed_at, observed_at, sweep_id, status,
               protocol, tls, anonymous, mqtt_level, mqtt_return_code, mqtt_levels,
               amqp_family, product, version, amqp_mechanisms, tls_version, cert_sha256,
               cert_subject, cert_issuer, cert_self_signed, cert_expired, cert_trusted, asn,
               org, country
        FROM (SELECT *, CASE WHEN rounds = 1 THEN 1 ELSE row_number() OVER (
                            PARTITION BY ip, port, transport
                            ORDER BY observed_at, sweep_started_at, sweep_id) END AS nth
              FROM added) AS numbered
        WHERE nth = round
        ORDER BY ip, port, transport
        ON CONFLICT (ip, port, transport) DO UPDATE SET
            first_seen = least(s.first_seen, excluded.first_seen),
            last_seen = greatest(s.last_seen, excluded.last_seen),
            last_changed = CASE
                WHEN excluded.last_seen > s.last_seen
                     AND (s.protocol, s.status, s.anonymous, s.product, s.version,
                          s.cert_sha256)
                         IS DISTINCT FROM (excluded.protocol, excluded.status,
                                           excluded.anonymous, excluded.product,
                                           excluded.version, excluded.cert_sha256)
                THEN excluded.last_seen ELSE s.last_changed END,
            sweep_id = CASE WHEN excluded.last_seen > s.last_seen
                        THEN excluded.sweep_id ELSE s.sweep_id END,
            status = CASE WHEN excluded.last_seen > s.last_seen
                      THEN excluded.status ELSE s.status END,
            protocol = CASE WHEN excluded.last_seen > s.last_seen
                        THEN excluded.protocol ELSE s.protocol END,
            tls = CASE WHEN excluded.last_seen > s.last_seen
                   THEN excluded.tls ELSE s.tls END,
            anonymous = CASE WHEN excluded.last_seen > s.last_seen
                         THEN excluded.anonymous ELSE s.anonymous END,
            mqtt_level = CASE WHEN excluded.last_seen > s.last_seen
                          THEN excluded.mqtt_level ELSE s.mqtt_level END,
            mqtt_return_code = CASE WHEN excluded.last_seen > s.last_seen
                                THEN excluded.mqtt_return_code ELSE s.mqtt_return_code END,
            mqtt_levels = CASE WHEN excluded.last_seen > s.last_seen
                           THEN excluded.mqtt_levels ELSE s.mqtt_levels END,
            amqp_family = CASE WHEN excluded.last_seen > s.last_seen
                           THEN excluded.amqp_family ELSE s.amqp_family END,
            product = CASE WHEN excluded.last_seen > s.last_seen
                       THEN excluded.product ELSE s.product END,
            version = CASE WHEN excluded.last_seen > s.last_seen
                       THEN excluded.version ELSE s.version END,
            amqp_mechanisms = CASE WHEN excluded.last_seen > s.last_seen
                               THEN excluded.amqp_mechanisms ELSE s.amqp_mechanisms END,
            tls_version = CASE WHEN excluded.last_seen > s.last_seen
                           THEN excluded.tls_version ELSE s.tls_version END,
            cert_sha256 = CASE WHEN excluded.last_seen > s.last_seen
                           THEN excluded.cert_sha256 ELSE s.cert_sha256 END,
            cert_subject = CASE WHEN excluded.last_seen > s.last_seen
                            THEN excluded.cert_subject ELSE s.cert_subject END,
            cert_issuer = CASE WHEN excluded.last_seen > s.last_seen
                           THEN excluded.cert_issuer ELSE s.cert_issuer END,
            cert_self_signed = CASE WHEN excluded.last_seen > s.last_seen
                                THEN excluded.cert_self_signed ELSE s.cert_self_signed END,
            cert_expired = CASE WHEN excluded.last_seen > s.last_seen
                            THEN excluded.cert_expired ELSE s.cert_expired END,
            cert_trusted = CASE WHEN excluded.last_seen > s.last_seen
                            THEN excluded.cert_trusted ELSE s.cert_trusted END,
            asn = CASE WHEN excluded.last_seen > s.last_seen
                   THEN excluded.asn ELSE s.asn END,
            org = CASE WHEN excluded.last_seen > s.last_seen
                   THEN excluded.org ELSE s.org END,
            country = CASE WHEN excluded.last_seen > s.last_seen
                       THEN excluded.country ELSE s.country END;

        -- The record moves on by the same rule: only with a newer observation.
        INSERT INTO services_records AS r (ip, port, transport, seen, latest)
        SELECT ip, port, transport, observed_at, record
        FROM (SELECT *, CASE WHEN rounds = 1 THEN 1 ELSE row_number() OVER (
                            PARTITION BY ip, port, transport
                            ORDER BY observed_at, sweep_started_at, sweep_id) END AS nth
              FROM added) AS numbered
        WHERE nth = round
        ORDER BY ip, port, transport
        ON CONFLICT (ip, port, transport) DO UPDATE SET
            seen = excluded.seen, latest = excluded.latest
        WHERE excluded.seen > r.seen;
    END LOOP;
    RETURN NULL;
END
$fn$;
