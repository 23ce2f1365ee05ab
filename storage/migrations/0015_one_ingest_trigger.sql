-- The store writer's server side in one statement trigger (issue 19 part 4: ingest at
-- 0.8x a raw COPY). Measured with auto_explain inside the triggers (docs/benchmarks.md,
-- ingest): the upserts of the current view are most of a write's server time, and the
-- largest, services_core's, rewrote every conflicting row even when nothing moved.
--
-- * observations_added and observations_census (0007, 0009) become one function: the
--   transition table is grouped for the rounds once, not twice, and one trigger fires.
--   Same rounds, same rules, same statements in the same order, so the same locks.
-- * services_core is updated only when the observation moves it: newer than its
--   last_seen, or older than its first_seen. Any other conflicting row (a replay of the
--   same time from another sweep, a late older observation inside the service's span)
--   kept every column as it was: its update was a new row version, an entry in each of
--   the table's six indexes, and a -1/+1 pair in services_rollup's trigger that cancelled.
--   The row is still locked by ON CONFLICT, in key order, as before.

DROP TRIGGER observations_census ON observations;
DROP FUNCTION observations_census();

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

    INSERT INTO census_sweep AS r (day, sweep_id, fact, n)
    SELECT day, sweep_id, fact, count(*) FROM added, unnest(added.census) AS f(fact)
    GROUP BY 1, 2, 3 ORDER BY 2, 1, 3
    ON CONFLICT (sweep_id, day, fact) DO UPDATE SET n = r.n + excluded.n;

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
                       THEN excluded.country ELSE s.country END
        WHERE excluded.last_seen > s.last_seen OR excluded.first_seen < s.first_seen;

        -- The record and the facts move on by the same rule: only with a newer observation.
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

        INSERT INTO services_census AS s (ip, port, transport, seen, census)
        SELECT ip, port, transport, observed_at, coalesce(census, '{}')
        FROM (SELECT *, CASE WHEN rounds = 1 THEN 1 ELSE row_number() OVER (
                            PARTITION BY ip, port, transport
                            ORDER BY observed_at, sweep_started_at, sweep_id) END AS nth
              FROM added) AS numbered
        WHERE nth = round
        ORDER BY ip, port, transport
        ON CONFLICT (ip, port, transport) DO UPDATE SET
            seen = excluded.seen, census = excluded.census
        WHERE excluded.seen > s.seen;
    END LOOP;
    RETURN NULL;
END
$fn$;
