-- The read side (issue 9): every field of the search language is a column of both
-- observations (the history) and services (the current view), so that one compiled query
-- runs against either; the current view gets a rollup of its own, so that the census's
-- headline counts and top countries/ASNs read a small table; API tokens.
--
-- Columns renamed, not copied: amqp_product and amqp_version become product and version
-- (MQTT brokers get a product too, from their fingerprint). New columns are filled from
-- the stored records, so rows written before this migration answer searches too.

ALTER TABLE observations RENAME COLUMN amqp_product TO product;
ALTER TABLE observations RENAME COLUMN amqp_version TO version;
ALTER TABLE observations
    ADD COLUMN amqp_mechanisms text,    -- offered SASL mechanisms, upper case, ' '-separated
    ADD COLUMN mqtt_levels     text,    -- accepted MQTT levels (3, 4, 5), ' '-separated
    ADD COLUMN cert_subject    text,
    ADD COLUMN cert_issuer     text,
    ADD COLUMN cert_trusted    boolean;

UPDATE observations SET
    amqp_mechanisms = nullif(array_to_string(ARRAY(
        SELECT upper(m) FROM jsonb_array_elements_text(record->'amqp'->'mechanisms') AS m),
        ' '), ''),
    mqtt_levels = nullif(array_to_string(ARRAY(
        SELECT l FROM jsonb_array_elements_text(record->'mqtt'->'accepted_levels') AS l
        ORDER BY l), ' '), ''),
    cert_subject = record->'tls'->'certificate'->>'subject',
    cert_issuer = record->'tls'->'certificate'->>'issuer',
    cert_trusted = (record->'tls'->>'trusted')::boolean
WHERE record ? 'amqp' OR record ? 'mqtt' OR record ? 'tls';

CREATE INDEX observations_asn ON observations (asn);
CREATE INDEX observations_country ON observations (country);

-- The current view carries every searchable column of its latest observation.
ALTER TABLE services
    ADD COLUMN tls              boolean,
    ADD COLUMN mqtt_level       smallint,
    ADD COLUMN mqtt_return_code smallint,
    ADD COLUMN mqtt_levels      text,
    ADD COLUMN amqp_family      text,
    ADD COLUMN version          text,
    ADD COLUMN amqp_mechanisms  text,
    ADD COLUMN tls_version      text,
    ADD COLUMN cert_subject     text,
    ADD COLUMN cert_issuer      text,
    ADD COLUMN cert_self_signed boolean,
    ADD COLUMN cert_expired     boolean,
    ADD COLUMN cert_trusted     boolean,
    ADD COLUMN org              text;

UPDATE services AS s SET
    tls = o.tls, mqtt_level = o.mqtt_level, mqtt_return_code = o.mqtt_return_code,
    mqtt_levels = o.mqtt_levels, amqp_family = o.amqp_family, version = o.version,
    amqp_mechanisms = o.amqp_mechanisms, tls_version = o.tls_version,
    cert_subject = o.cert_subject, cert_issuer = o.cert_issuer,
    cert_self_signed = o.cert_self_signed, cert_expired = o.cert_expired,
    cert_trusted = o.cert_trusted, org = o.org
FROM observations AS o
WHERE o.sweep_id = s.sweep_id AND o.ip = s.ip AND o.port = s.port
  AND o.transport = s.transport;
UPDATE services SET tls = (transport = 'tls') WHERE tls IS NULL;
ALTER TABLE services ALTER COLUMN tls SET NOT NULL;

CREATE INDEX services_asn ON services (asn);
CREATE INDEX services_country ON services (country);
CREATE INDEX services_port ON services (port);
CREATE INDEX services_last_seen ON services (last_seen);

-- The history's rollup counts by transport too (tcp, tls, ws, wss): a WebSocket endpoint
-- is not a plain one. Rows written before had only tcp and tls, told by the tls column.
ALTER TABLE rollup ADD COLUMN transport text;
UPDATE rollup SET transport = CASE WHEN tls THEN 'tls' ELSE 'tcp' END;
ALTER TABLE rollup ALTER COLUMN transport SET NOT NULL;
ALTER TABLE rollup DROP CONSTRAINT rollup_pkey;
ALTER TABLE rollup ADD PRIMARY KEY (day, sweep_id, protocol, port, transport, tls, anonymous,
                                    country, asn, status);

-- Counts of the current view, by the census's dimensions (sentinels as in rollup).
CREATE TABLE services_rollup (
    protocol  text     NOT NULL,  -- '' = none
    port      integer  NOT NULL,
    transport text     NOT NULL,
    tls       boolean  NOT NULL,
    anonymous smallint NOT NULL CHECK (anonymous IN (-1, 0, 1)),  -- -1 = unknown
    country   text     NOT NULL,  -- '' = unknown
    asn       bigint   NOT NULL,  -- -1 = unknown
    status    text     NOT NULL,
    -- No CHECK (n >= 0): PostgreSQL checks the row an INSERT proposes before ON CONFLICT
    -- merges it, and a change arrives as -1 for the old key. n never ends below 0.
    n         bigint   NOT NULL,
    PRIMARY KEY (protocol, port, transport, tls, anonymous, country, asn, status)
);

INSERT INTO services_rollup
SELECT coalesce(protocol, ''), port, transport, tls,
           CASE anonymous WHEN TRUE THEN 1 WHEN FALSE THEN 0 ELSE -1 END,
           coalesce(country, ''), coalesce(asn, -1), status, count(*)
FROM services GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;

-- Kept by statement triggers on services from exactly the rows each statement inserted or
-- changed (the observations trigger upserts services; its inserts and updates land here).
CREATE FUNCTION services_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO services_rollup AS r
    SELECT coalesce(protocol, ''), port, transport, tls,
           CASE anonymous WHEN TRUE THEN 1 WHEN FALSE THEN 0 ELSE -1 END,
           coalesce(country, ''), coalesce(asn, -1), status, count(*)
    FROM inserted GROUP BY 1, 2, 3, 4, 5, 6, 7, 8 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (protocol, port, transport, tls, anonymous, country, asn, status)
    DO UPDATE SET n = r.n + excluded.n;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION services_updated() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO services_rollup AS r
    SELECT protocol, port, transport, tls, anonymous, country, asn, status, sum(delta)
    FROM (
        SELECT coalesce(protocol, '') AS protocol, port, transport, tls,
               CASE anonymous WHEN TRUE THEN 1 WHEN FALSE THEN 0 ELSE -1 END AS anonymous,
               coalesce(country, '') AS country, coalesce(asn, -1) AS asn, status,
               -1 AS delta
        FROM before_rows
        UNION ALL
        SELECT coalesce(protocol, ''), port, transport, tls,
           CASE anonymous WHEN TRUE THEN 1 WHEN FALSE THEN 0 ELSE -1 END,
           coalesce(country, ''), coalesce(asn, -1), status, 1
        FROM after_rows
    ) AS changes
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
    HAVING sum(delta) <> 0
    ORDER BY 1, 2, 3, 4, 5, 6, 7, 8
    ON CONFLICT (protocol, port, transport, tls, anonymous, country, asn, status)
    DO UPDATE SET n = r.n + excluded.n;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER services_inserted AFTER INSERT ON services
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION services_inserted();
CREATE TRIGGER services_updated AFTER UPDATE ON services
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION services_updated();

-- The observations trigger, again (0003), now carrying every searchable column into the
-- current view. Same rounds, same rule: a service moves forward only with a newer
-- observation; last_changed moves when protocol, status, anonymous, product, version or
-- certificate differ from before.
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
        INSERT INTO services AS s (
            ip, port, transport, first_seen, last_seen, last_changed, sweep_id, status,
            protocol, tls, anonymous, mqtt_level, mqtt_return_code, mqtt_levels, amqp_family,
            product, version, amqp_mechanisms, tls_version, cert_sha256, cert_subject,
            cert_issuer, cert_self_signed, cert_expired, cert_trusted, asn, org, country,
            latest)
        SELECT ip, port, transport, observed_at, observed_at, observed_at, sweep_id, status,
               protocol, tls, anonymous, mqtt_level, mqtt_return_code, mqtt_levels,
               amqp_family, product, version, amqp_mechanisms, tls_version, cert_sha256,
               cert_subject, cert_issuer, cert_self_signed, cert_expired, cert_trusted, asn,
               org, country, record
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
                       THEN excluded.country ELSE s.country END,
            latest = CASE WHEN excluded.last_seen > s.last_seen
                      THEN excluded.latest ELSE s.latest END;
    END LOOP;
    RETURN NULL;
END
$fn$;

-- API tokens: only a hash is kept; the token itself is shown once, when it is made.
CREATE TABLE api_tokens (
    id          text        PRIMARY KEY,           -- public part of the token
    name        text        NOT NULL CHECK (name <> ''),
    role        text        NOT NULL CHECK (role IN ('reader', 'operator')),
    hash        text        NOT NULL,              -- hex SHA-256 of the secret part
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
