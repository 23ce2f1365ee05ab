-- The rollup and the current view, kept by the database from exactly the rows an INSERT or
-- COPY adds to observations (issue 4, second pass).
--
-- Until now a write copied its batch into a temporary staging table and merged from there
-- (INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING, with the rollup and services
-- upserts in CTEs over the returned rows). Staging costs a second COPY of every row. With a
-- statement-level trigger whose transition table holds the rows the statement inserted, a
-- write can COPY straight into observations, and the rollup and services are derived from
-- the same rows at once. A batch that holds an observation stored already fails that COPY
-- (unique key) and is merged through the staging table as before; the trigger then sees
-- only the rows the ON CONFLICT DO NOTHING insert really added, so duplicates still count
-- nothing twice.
--
-- One statement may add several observations of one service (ip, port, transport): two
-- sweeps of it in one batch. ON CONFLICT DO UPDATE cannot touch a row twice in a
-- statement, so services are upserted in rounds, each service's observations in the order
-- they were made (observed_at), one per round; the usual batch needs one round.
-- Within a round, rows are locked in key order. A batch that needs several rounds can
-- still deadlock with a concurrent writer; PostgreSQL rolls one back whole and
-- storage/pgstore.py writes it again.

CREATE FUNCTION observations_added() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    rounds integer;
    round integer;
BEGIN
    INSERT INTO rollup AS r (day, sweep_id, protocol, port, tls, anonymous, country, asn,
                             status, n)
    SELECT day, sweep_id, coalesce(protocol, ''), port, tls,
           CASE anonymous WHEN TRUE THEN 1 WHEN FALSE THEN 0 ELSE -1 END,
           coalesce(country, ''), coalesce(asn, -1), status, count(*)
    FROM added
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9
    ON CONFLICT (day, sweep_id, protocol, port, tls, anonymous, country, asn, status)
    DO UPDATE SET n = r.n + excluded.n;

    -- A service moves forward only with a newer observation; last_changed moves when
    -- protocol, status, anonymous, product or certificate differ from before.
    SELECT max(n) INTO rounds
    FROM (SELECT count(*) AS n FROM added GROUP BY ip, port, transport) AS per_service;
    FOR round IN 1..coalesce(rounds, 0) LOOP
        INSERT INTO services AS s (ip, port, transport, first_seen, last_seen, last_changed,
                                   sweep_id, status, protocol, anonymous, product,
                                   cert_sha256, country, asn, latest)
        SELECT ip, port, transport, observed_at, observed_at, observed_at,
               sweep_id, status, protocol, anonymous, amqp_product, cert_sha256, country,
               asn, record
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
                     AND (s.protocol, s.status, s.anonymous, s.product, s.cert_sha256)
                         IS DISTINCT FROM (excluded.protocol, excluded.status, excluded.anonymous,
                                           excluded.product, excluded.cert_sha256)
                THEN excluded.last_seen ELSE s.last_changed END,
            sweep_id = CASE WHEN excluded.last_seen > s.last_seen
                            THEN excluded.sweep_id ELSE s.sweep_id END,
            status = CASE WHEN excluded.last_seen > s.last_seen
                          THEN excluded.status ELSE s.status END,
            protocol = CASE WHEN excluded.last_seen > s.last_seen
                            THEN excluded.protocol ELSE s.protocol END,
            anonymous = CASE WHEN excluded.last_seen > s.last_seen
                             THEN excluded.anonymous ELSE s.anonymous END,
            product = CASE WHEN excluded.last_seen > s.last_seen
                           THEN excluded.product ELSE s.product END,
            cert_sha256 = CASE WHEN excluded.last_seen > s.last_seen
                               THEN excluded.cert_sha256 ELSE s.cert_sha256 END,
            country = CASE WHEN excluded.last_seen > s.last_seen
                           THEN excluded.country ELSE s.country END,
            asn = CASE WHEN excluded.last_seen > s.last_seen
                       THEN excluded.asn ELSE s.asn END,
            latest = CASE WHEN excluded.last_seen > s.last_seen
                          THEN excluded.latest ELSE s.latest END;
    END LOOP;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observations_added AFTER INSERT ON observations
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION observations_added();
