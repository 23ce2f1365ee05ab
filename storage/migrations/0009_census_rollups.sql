-- The census report from rollups kept at ingest (issue 19): the report costs the number of
-- distinct values, not the number of rows.
--
-- What one observation counts for in the report (its facts: 'mqtt.servers',
-- 'mqtt.by_port=1883/tcp', ...) is defined once, in Python (brokerscan/report.py:
-- census_facts), and written with the row (observations.census). The database only adds
-- facts up, from exactly the rows a statement inserted, as the other rollups:
--
-- * census_sweep: per sweep (and the day it started), every observation's facts;
-- * services_census: the facts of each service's latest observation (the same rule as
--   services_core and services_records: only a newer observation moves it), and
--   census_current: their counts, kept by statement triggers on services_census from the
--   rows each statement inserted (+1 a fact) or changed (-1 the old facts, +1 the new).
--
-- A replayed observation is not inserted (the unique key; storage/pgstore.py merges a
-- batch holding one through ON CONFLICT DO NOTHING), so it counts nothing twice; an older
-- observation arriving late changes no service. All of it happens in the transaction
-- that writes the rows.
--
-- Rows stored before this migration get their facts from their records, in Python, in
-- the same transaction as this file (storage/rollups.py: backfill_census, run by
-- storage/migrate.py after it).

ALTER TABLE observations ADD COLUMN census text[];

CREATE TABLE census_sweep (
    day      date   NOT NULL,  -- UTC day of sweep_started_at
    sweep_id text   NOT NULL,
    fact     text   NOT NULL,
    n        bigint NOT NULL CHECK (n >= 0),
    PRIMARY KEY (sweep_id, day, fact)
);

CREATE TABLE services_census (
    ip        inet        NOT NULL,
    port      integer     NOT NULL,
    transport text        NOT NULL,
    seen      timestamptz NOT NULL,  -- observed_at of the facts: the service's last_seen
    census    text[]      NOT NULL,
    PRIMARY KEY (ip, port, transport)
) WITH (fillfactor = 80);

CREATE TABLE census_current (
    fact text   PRIMARY KEY,
    -- no CHECK (n >= 0): a change arrives as -1 for the old fact (see services_rollup)
    n    bigint NOT NULL
);

CREATE FUNCTION services_census_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO census_current AS r (fact, n)
    SELECT fact, count(*) FROM inserted, unnest(inserted.census) AS f(fact)
    GROUP BY 1 ORDER BY 1
    ON CONFLICT (fact) DO UPDATE SET n = r.n + excluded.n;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION services_census_updated() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO census_current AS r (fact, n)
    SELECT fact, sum(delta) FROM (
        SELECT fact, -1 AS delta FROM before_rows, unnest(before_rows.census) AS f(fact)
        UNION ALL
        SELECT fact, 1 FROM after_rows, unnest(after_rows.census) AS f(fact)
    ) AS changes
    GROUP BY 1 HAVING sum(delta) <> 0 ORDER BY 1
    ON CONFLICT (fact) DO UPDATE SET n = r.n + excluded.n;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER services_census_inserted AFTER INSERT ON services_census
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION services_census_inserted();
CREATE TRIGGER services_census_updated AFTER UPDATE ON services_census
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION services_census_updated();

-- Beside observations_added (0003, 0004, 0007): the same rounds (one statement may add
-- two observations of one service), the same rule (only a newer observation moves the
-- service), so services_census follows services_core row for row.
CREATE FUNCTION observations_census() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    rounds integer;
    round integer;
BEGIN
    INSERT INTO census_sweep AS r (day, sweep_id, fact, n)
    SELECT day, sweep_id, fact, count(*) FROM added, unnest(added.census) AS f(fact)
    GROUP BY 1, 2, 3 ORDER BY 2, 1, 3
    ON CONFLICT (sweep_id, day, fact) DO UPDATE SET n = r.n + excluded.n;

    SELECT max(n) INTO rounds
    FROM (SELECT count(*) AS n FROM added GROUP BY ip, port, transport) AS per_service;
    FOR round IN 1..coalesce(rounds, 0) LOOP
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

CREATE TRIGGER observations_census AFTER INSERT ON observations
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION observations_census();
