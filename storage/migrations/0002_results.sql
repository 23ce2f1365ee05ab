-- Results (issue 4): the observation history, the current view of services, a rollup.
--
-- observations is partitioned by RANGE on sweep_started_at, not observed_at: a unique key
-- of a partitioned table must contain the partition key, and only a timestamp every record
-- of a sweep shares (and that a re-run shard repeats exactly) makes (sweep, ip, port)
-- deduplicate. Consequence: a sweep that runs for several days lives entirely in the
-- partition of the day it started, and "day" means the UTC day the sweep started.
-- Daily partitions observations_pYYYYMMDD are made by storage/partitions.py; rows outside
-- every partition land in observations_default, which should stay empty (it is watched).

CREATE TABLE observations (
    sweep_started_at   timestamptz NOT NULL,
    sweep_id           text        NOT NULL,
    ip                 inet        NOT NULL,
    port               integer     NOT NULL CHECK (port BETWEEN 0 AND 65535),
    transport          text        NOT NULL,
    observed_at        timestamptz NOT NULL,
    day                date        NOT NULL,  -- UTC day of sweep_started_at
    status             text        NOT NULL,
    protocol           text,
    tls                boolean     NOT NULL,  -- transport = 'tls'
    anonymous          boolean,
    duration_ms        real        NOT NULL,
    mqtt_level         smallint,
    mqtt_return_code   smallint,
    amqp_family        text,
    amqp_product       text,
    amqp_version       text,
    tls_version        text,
    tls_handshake      boolean,
    cert_sha256        text,
    cert_self_signed   boolean,
    cert_expired       boolean,
    asn                bigint,
    org                text,
    country            text,
    error              text,
    record             jsonb       NOT NULL,
    UNIQUE (sweep_started_at, sweep_id, ip, port)
) PARTITION BY RANGE (sweep_started_at);

CREATE TABLE observations_default PARTITION OF observations DEFAULT;

-- Indexes on the parent are created on every partition, present and future.
CREATE INDEX observations_sweep ON observations (sweep_id);
CREATE INDEX observations_ip ON observations (ip);
CREATE INDEX observations_port_status ON observations (port, status);

-- The current view: one row per service, moved forward only by newer observations.
CREATE TABLE services (
    ip           inet        NOT NULL,
    port         integer     NOT NULL,
    transport    text        NOT NULL,
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    -- When protocol, status, anonymous, product or certificate last differed from before.
    last_changed timestamptz NOT NULL,
    sweep_id     text        NOT NULL,
    status       text        NOT NULL,
    protocol     text,
    anonymous    boolean,
    product      text,
    cert_sha256  text,
    country      text,
    asn          bigint,
    latest       jsonb       NOT NULL,
    PRIMARY KEY (ip, port, transport)
-- Every write updates last_seen and latest of the services it saw again. With room left in
-- each page and no index on a column that changes, those updates are HOT (no index
-- maintenance): about 15% faster writes. A filter on last_seen reads the whole table.
) WITH (fillfactor = 70);

-- Counts for dashboards, added to from exactly the observations a write inserted. Columns
-- that can be unknown hold a sentinel ('' or -1) so that the key is a plain unique key.
CREATE TABLE rollup (
    day       date     NOT NULL,  -- UTC day of sweep_started_at
    sweep_id  text     NOT NULL,
    protocol  text     NOT NULL,  -- '' = none
    port      integer  NOT NULL,
    tls       boolean  NOT NULL,
    anonymous smallint NOT NULL CHECK (anonymous IN (-1, 0, 1)),  -- -1 = unknown
    country   text     NOT NULL,  -- '' = unknown
    asn       bigint   NOT NULL,  -- -1 = unknown
    status    text     NOT NULL,
    n         bigint   NOT NULL CHECK (n >= 0),
    PRIMARY KEY (day, sweep_id, protocol, port, tls, anonymous, country, asn, status)
);

CREATE INDEX rollup_sweep ON rollup (sweep_id);
