-- Facet rollups and the retention ledger (issue 19: the overview's counts from rollups,
-- and `db verify` exact after retention).
--
-- Facets: the fields the other rollups do not hold but the overview, the search page's
-- facets and the trends ask of a whole view (storage/facets.py: FIELDS), counted per
-- protocol and value: for each field, every row counts once, under its value or under
-- "unknown" (known = false), so a count of any query over protocol and that one field
-- is a sum over a few rows.
--
-- * facet_sweep: per sweep (and the day it started), every observation;
-- * facet_current: each service's latest state, kept by statement triggers on
--   services_core from the rows each statement inserted (+1) or changed (-1 old, +1 new),
--   as services_rollup is (0004).
--
-- A value is text ('1'/'0' for a boolean, digits for a number): facet_values() says what
-- each field's value is, once for the triggers and the backfill below; storage/facets.py
-- says the same for SQLite and for `db verify`, which compares the two.
--
-- The ledger: partitions past retention are dropped (storage/partitions.py), and the
-- rollups keep their counts on purpose (history is a feature). In the transaction that
-- drops a partition, what it held is added to census_sweep_expired, rollup_expired and
-- facet_sweep_expired (the same keys as census_sweep, rollup and facet_sweep), so
-- `db verify` checks rollup = rows + ledger, exactly, after any drop.

CREATE FUNCTION facet_values(anonymous boolean, mqtt_return_code smallint, product text,
                             version text, amqp_family text, tls_version text,
                             cert_trusted boolean, cert_self_signed boolean)
RETURNS TABLE (field text, value text) LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    VALUES ('anonymous', CASE anonymous WHEN TRUE THEN '1' WHEN FALSE THEN '0' END),
           ('mqtt.return_code', CAST(mqtt_return_code AS text)),
           ('product', product),
           ('version', version),
           ('amqp.family', amqp_family),
           ('tls.version', tls_version),
           ('cert.trusted', CASE cert_trusted WHEN TRUE THEN '1' WHEN FALSE THEN '0' END),
           ('cert.self_signed',
            CASE cert_self_signed WHEN TRUE THEN '1' WHEN FALSE THEN '0' END)
$fn$;

CREATE TABLE facet_sweep (
    day      date    NOT NULL,  -- UTC day of sweep_started_at
    sweep_id text    NOT NULL,
    field    text    NOT NULL,
    protocol text    NOT NULL,  -- '' = none
    known    boolean NOT NULL,
    value    text    NOT NULL,  -- '' when not known
    n        bigint  NOT NULL CHECK (n >= 0),
    PRIMARY KEY (sweep_id, day, field, protocol, known, value)
);

CREATE TABLE facet_current (
    field    text    NOT NULL,
    protocol text    NOT NULL,
    known    boolean NOT NULL,
    value    text    NOT NULL,
    n        bigint  NOT NULL,  -- no CHECK: a change arrives as -1 for the old value
    PRIMARY KEY (field, protocol, known, value)
);

-- Rows stored before: one pass over each table, set-based.
INSERT INTO facet_sweep (day, sweep_id, field, protocol, known, value, n)
SELECT day, sweep_id, f.field, coalesce(protocol, ''), f.value IS NOT NULL,
       coalesce(f.value, ''), count(*)
FROM observations AS o,
     facet_values(o.anonymous, o.mqtt_return_code, o.product, o.version, o.amqp_family,
                  o.tls_version, o.cert_trusted, o.cert_self_signed) AS f
GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO facet_current (field, protocol, known, value, n)
SELECT f.field, coalesce(protocol, ''), f.value IS NOT NULL, coalesce(f.value, ''), count(*)
FROM services_core AS s,
     facet_values(s.anonymous, s.mqtt_return_code, s.product, s.version, s.amqp_family,
                  s.tls_version, s.cert_trusted, s.cert_self_signed) AS f
GROUP BY 1, 2, 3, 4;

CREATE FUNCTION observations_facets() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO facet_sweep AS r (day, sweep_id, field, protocol, known, value, n)
    SELECT day, sweep_id, f.field, coalesce(protocol, ''), f.value IS NOT NULL,
           coalesce(f.value, ''), count(*)
    FROM added,
         facet_values(added.anonymous, added.mqtt_return_code, added.product, added.version,
                      added.amqp_family, added.tls_version, added.cert_trusted,
                      added.cert_self_signed) AS f
    GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 2, 1, 3, 4, 5, 6
    ON CONFLICT (sweep_id, day, field, protocol, known, value)
    DO UPDATE SET n = r.n + excluded.n;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observations_facets AFTER INSERT ON observations
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION observations_facets();

CREATE FUNCTION services_facets_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO facet_current AS r (field, protocol, known, value, n)
    SELECT f.field, coalesce(protocol, ''), f.value IS NOT NULL, coalesce(f.value, ''),
           count(*)
    FROM inserted,
         facet_values(inserted.anonymous, inserted.mqtt_return_code, inserted.product,
                      inserted.version, inserted.amqp_family, inserted.tls_version,
                      inserted.cert_trusted, inserted.cert_self_signed) AS f
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (field, protocol, known, value) DO UPDATE SET n = r.n + excluded.n;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION services_facets_updated() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO facet_current AS r (field, protocol, known, value, n)
    SELECT field, protocol, known, value, sum(delta) FROM (
        SELECT f.field, coalesce(b.protocol, '') AS protocol, f.value IS NOT NULL AS known,
               coalesce(f.value, '') AS value, -1 AS delta
        FROM before_rows AS b,
             facet_values(b.anonymous, b.mqtt_return_code, b.product, b.version,
                          b.amqp_family, b.tls_version, b.cert_trusted,
                          b.cert_self_signed) AS f
        UNION ALL
        SELECT f.field, coalesce(a.protocol, ''), f.value IS NOT NULL, coalesce(f.value, ''),
               1
        FROM after_rows AS a,
             facet_values(a.anonymous, a.mqtt_return_code, a.product, a.version,
                          a.amqp_family, a.tls_version, a.cert_trusted,
                          a.cert_self_signed) AS f
    ) AS changes
    GROUP BY 1, 2, 3, 4 HAVING sum(delta) <> 0 ORDER BY 1, 2, 3, 4
    ON CONFLICT (field, protocol, known, value) DO UPDATE SET n = r.n + excluded.n;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER services_facets_inserted AFTER INSERT ON services_core
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION services_facets_inserted();
CREATE TRIGGER services_facets_updated AFTER UPDATE ON services_core
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION services_facets_updated();

-- The retention ledger: what dropped partitions held, keyed as the rollups are.
CREATE TABLE census_sweep_expired (LIKE census_sweep INCLUDING ALL);
CREATE TABLE rollup_expired (LIKE rollup INCLUDING ALL);
CREATE TABLE facet_sweep_expired (LIKE facet_sweep INCLUDING ALL);

ANALYZE facet_sweep;
ANALYZE facet_current;
