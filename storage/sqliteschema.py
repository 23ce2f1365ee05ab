"""The embedded store's schema, versioned like the PostgreSQL migrations: ``PRAGMA
user_version`` says which steps a file has, :func:`upgrade` applies the rest in one
transaction each. A file made by an older brokerscan is upgraded when it is opened; a file
from a newer one is refused.

The tables mirror PostgreSQL's without partitions; ``ip_num`` (IPv4 as an integer) stands in
for ``inet``, so that CIDR blocks and ranges compare numbers.
"""

from __future__ import annotations

import sqlite3
from typing import Final

from storage.facets import row_values, rows_sql
from storage.rows import census_json, ip_number

__all__ = ["STEPS", "SchemaError", "upgrade", "version"]


class SchemaError(Exception):
    """The file's schema is newer than this brokerscan, or a step failed."""


_V1: Final = """
CREATE TABLE IF NOT EXISTS observations (
    sweep_started_at TEXT NOT NULL, sweep_id TEXT NOT NULL, ip TEXT NOT NULL,
    port INTEGER NOT NULL, transport TEXT NOT NULL, observed_at TEXT NOT NULL,
    day TEXT NOT NULL, status TEXT NOT NULL, protocol TEXT, tls INTEGER NOT NULL,
    anonymous INTEGER, duration_ms REAL NOT NULL, mqtt_level INTEGER,
    mqtt_return_code INTEGER, amqp_family TEXT, amqp_product TEXT, amqp_version TEXT,
    tls_version TEXT, tls_handshake INTEGER, cert_sha256 TEXT, cert_self_signed INTEGER,
    cert_expired INTEGER, asn INTEGER, org TEXT, country TEXT, error TEXT,
    record TEXT NOT NULL,
    UNIQUE (sweep_id, ip, port)
);
CREATE INDEX IF NOT EXISTS observations_order
    ON observations (sweep_started_at, sweep_id, ip, port);
CREATE TABLE IF NOT EXISTS services (
    ip TEXT NOT NULL, port INTEGER NOT NULL, transport TEXT NOT NULL,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, last_changed TEXT NOT NULL,
    sweep_id TEXT NOT NULL, status TEXT NOT NULL, protocol TEXT, anonymous INTEGER,
    product TEXT, cert_sha256 TEXT, country TEXT, asn INTEGER, latest TEXT NOT NULL,
    PRIMARY KEY (ip, port, transport)
);
CREATE TABLE IF NOT EXISTS rollup (
    day TEXT NOT NULL, sweep_id TEXT NOT NULL, protocol TEXT NOT NULL,
    port INTEGER NOT NULL, tls INTEGER NOT NULL, anonymous INTEGER NOT NULL,
    country TEXT NOT NULL, asn INTEGER NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (day, sweep_id, protocol, port, tls, anonymous, country, asn, status)
);
"""

_ROLLUP_KEY: Final = "protocol, port, transport, tls, anonymous, country, asn, status"


def _dims(prefix: str) -> str:
    """The services_rollup key of a services row (sentinels as in PostgreSQL)."""
    return (f"coalesce({prefix}.protocol, ''), {prefix}.port, {prefix}.transport, {prefix}.tls, "
            f"coalesce({prefix}.anonymous, -1), coalesce({prefix}.country, ''), "
            f"coalesce({prefix}.asn, -1), {prefix}.status")


# The read side (issue 9): what migration 0004 does to PostgreSQL.
_V2: Final = f"""
CREATE TABLE rollup_v2 (
    day TEXT NOT NULL, sweep_id TEXT NOT NULL, protocol TEXT NOT NULL,
    port INTEGER NOT NULL, transport TEXT NOT NULL, tls INTEGER NOT NULL,
    anonymous INTEGER NOT NULL, country TEXT NOT NULL, asn INTEGER NOT NULL,
    status TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (day, sweep_id, protocol, port, transport, tls, anonymous, country, asn,
                 status)
);
INSERT INTO rollup_v2 SELECT day, sweep_id, protocol, port,
    CASE WHEN tls THEN 'tls' ELSE 'tcp' END, tls, anonymous, country, asn, status, n
    FROM rollup;
DROP TABLE rollup;
ALTER TABLE rollup_v2 RENAME TO rollup;
ALTER TABLE observations RENAME COLUMN amqp_product TO product;
ALTER TABLE observations RENAME COLUMN amqp_version TO version;
ALTER TABLE observations ADD COLUMN amqp_mechanisms TEXT;
ALTER TABLE observations ADD COLUMN mqtt_levels TEXT;
ALTER TABLE observations ADD COLUMN cert_subject TEXT;
ALTER TABLE observations ADD COLUMN cert_issuer TEXT;
ALTER TABLE observations ADD COLUMN cert_trusted INTEGER;
ALTER TABLE observations ADD COLUMN ip_num INTEGER;
UPDATE observations SET
    amqp_mechanisms = (SELECT nullif(group_concat(upper(value), ' '), '')
                       FROM json_each(json_extract(record, '$.amqp.mechanisms'))),
    mqtt_levels = (SELECT nullif(group_concat(value, ' '), '') FROM
                   (SELECT value FROM json_each(json_extract(record, '$.mqtt.accepted_levels'))
                    ORDER BY value)),
    cert_subject = json_extract(record, '$.tls.certificate.subject'),
    cert_issuer = json_extract(record, '$.tls.certificate.issuer'),
    cert_trusted = json_extract(record, '$.tls.trusted'),
    ip_num = ip_number(ip);
CREATE INDEX IF NOT EXISTS observations_sweep ON observations (sweep_id);
CREATE INDEX IF NOT EXISTS observations_ip ON observations (ip_num);

ALTER TABLE services ADD COLUMN tls INTEGER;
ALTER TABLE services ADD COLUMN mqtt_level INTEGER;
ALTER TABLE services ADD COLUMN mqtt_return_code INTEGER;
ALTER TABLE services ADD COLUMN mqtt_levels TEXT;
ALTER TABLE services ADD COLUMN amqp_family TEXT;
ALTER TABLE services ADD COLUMN version TEXT;
ALTER TABLE services ADD COLUMN amqp_mechanisms TEXT;
ALTER TABLE services ADD COLUMN tls_version TEXT;
ALTER TABLE services ADD COLUMN cert_subject TEXT;
ALTER TABLE services ADD COLUMN cert_issuer TEXT;
ALTER TABLE services ADD COLUMN cert_self_signed INTEGER;
ALTER TABLE services ADD COLUMN cert_expired INTEGER;
ALTER TABLE services ADD COLUMN cert_trusted INTEGER;
ALTER TABLE services ADD COLUMN org TEXT;
ALTER TABLE services ADD COLUMN ip_num INTEGER;
UPDATE services SET (tls, mqtt_level, mqtt_return_code, mqtt_levels, amqp_family, version,
                     amqp_mechanisms, tls_version, cert_subject, cert_issuer,
                     cert_self_signed, cert_expired, cert_trusted, org, ip_num) = (
    SELECT o.tls, o.mqtt_level, o.mqtt_return_code, o.mqtt_levels, o.amqp_family,
           o.version, o.amqp_mechanisms, o.tls_version, o.cert_subject, o.cert_issuer,
           o.cert_self_signed, o.cert_expired, o.cert_trusted, o.org, o.ip_num
    FROM observations AS o
    WHERE o.sweep_id = services.sweep_id AND o.ip = services.ip AND o.port = services.port);
UPDATE services SET tls = (transport = 'tls') WHERE tls IS NULL;
CREATE INDEX IF NOT EXISTS services_asn ON services (asn);
CREATE INDEX IF NOT EXISTS services_country ON services (country);
CREATE INDEX IF NOT EXISTS services_port ON services (port);
CREATE INDEX IF NOT EXISTS services_ip ON services (ip_num);

CREATE TABLE services_rollup (
    protocol TEXT NOT NULL, port INTEGER NOT NULL, transport TEXT NOT NULL, tls INTEGER NOT NULL,
    anonymous INTEGER NOT NULL, country TEXT NOT NULL, asn INTEGER NOT NULL,
    status TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY ({_ROLLUP_KEY})
);
INSERT INTO services_rollup ({_ROLLUP_KEY}, n)
SELECT {_dims("services")}, count(*) FROM services GROUP BY 1, 2, 3, 4, 5, 6, 7, 8;
CREATE TRIGGER services_inserted AFTER INSERT ON services BEGIN
    INSERT INTO services_rollup ({_ROLLUP_KEY}, n) VALUES ({_dims("new")}, 1)
    ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER services_updated AFTER UPDATE ON services BEGIN
    UPDATE services_rollup SET n = n - 1
    WHERE ({_ROLLUP_KEY}) = ({_dims("old")});
    INSERT INTO services_rollup ({_ROLLUP_KEY}, n) VALUES ({_dims("new")}, 1)
    ON CONFLICT ({_ROLLUP_KEY}) DO UPDATE SET n = n + 1;
END;

CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, hash TEXT NOT NULL,
    created_at TEXT NOT NULL, revoked_at TEXT
);
"""

#: Step 3: a certificate's fingerprint is looked up as such (as in PostgreSQL's 0007).
_V3: Final = """
CREATE INDEX IF NOT EXISTS services_cert_sha256 ON services (cert_sha256)
    WHERE cert_sha256 IS NOT NULL;
"""

#: Step 4: the census report's rollups (what PostgreSQL's 0009 does): every row's facts
#: (from its record, for rows written before), their counts per sweep and in the current
#: view, kept by triggers in the transaction that writes the rows. A replayed observation
#: is ignored by INSERT OR IGNORE, so its facts count once; a service's facts change only
#: when its latest observation does (the services upsert's rule).
_V4: Final = """
ALTER TABLE observations ADD COLUMN census TEXT;
ALTER TABLE services ADD COLUMN census TEXT;
UPDATE observations SET census = census_of(record);
UPDATE services SET census = census_of(latest);
CREATE TABLE census_sweep (
    day TEXT NOT NULL, sweep_id TEXT NOT NULL, fact TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, day, fact)
);
INSERT INTO census_sweep (day, sweep_id, fact, n)
SELECT o.day, o.sweep_id, f.value, count(*) FROM observations AS o, json_each(o.census) AS f
GROUP BY 1, 2, 3;
CREATE TABLE census_current (fact TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO census_current (fact, n)
SELECT f.value, count(*) FROM services AS s, json_each(s.census) AS f GROUP BY 1;
CREATE TRIGGER observations_census AFTER INSERT ON observations BEGIN
    INSERT INTO census_sweep (day, sweep_id, fact, n)
    SELECT new.day, new.sweep_id, value, 1 FROM json_each(new.census) WHERE true
    ON CONFLICT (sweep_id, day, fact) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER services_census_inserted AFTER INSERT ON services BEGIN
    INSERT INTO census_current (fact, n)
    SELECT value, 1 FROM json_each(new.census) WHERE true
    ON CONFLICT (fact) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER services_census_updated AFTER UPDATE OF census ON services
WHEN old.census IS NOT new.census BEGIN
    UPDATE census_current SET n = n - 1
    WHERE fact IN (SELECT value FROM json_each(old.census));
    INSERT INTO census_current (fact, n)
    SELECT value, 1 FROM json_each(new.census) WHERE true
    ON CONFLICT (fact) DO UPDATE SET n = n + 1;
END;
"""

#: Step 5: watches, their events and deliveries (as in PostgreSQL's 0011).
_V5: Final = """
CREATE TABLE watches (
    name TEXT PRIMARY KEY, query TEXT NOT NULL, networks TEXT NOT NULL DEFAULT '',
    asns TEXT NOT NULL DEFAULT '', webhook_url TEXT, secret TEXT, email TEXT,
    certificates INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
    CHECK (webhook_url IS NOT NULL OR email IS NOT NULL)
);
CREATE TABLE watch_events (
    id TEXT PRIMARY KEY, watch TEXT NOT NULL REFERENCES watches (name) ON DELETE CASCADE,
    sweep_id TEXT NOT NULL, previous TEXT, ip TEXT NOT NULL, port INTEGER NOT NULL,
    kind TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL,
    UNIQUE (watch, sweep_id, ip, port, kind)
);
CREATE TABLE watch_deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES watch_events (id) ON DELETE CASCADE,
    watch TEXT NOT NULL, channel TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try_at TEXT, last_error TEXT,
    created_at TEXT NOT NULL, delivered_at TEXT,
    UNIQUE (event_id, channel)
);
CREATE INDEX watch_deliveries_due ON watch_deliveries (next_try_at) WHERE status = 'pending';
CREATE INDEX watch_deliveries_watch ON watch_deliveries (watch, created_at);
"""

_V6: Final = """
CREATE TABLE optouts (
    id TEXT PRIMARY KEY, networks TEXT NOT NULL, contact TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', client TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'rejected')),
    created_at TEXT NOT NULL, decided_at TEXT, decided_by TEXT
);
CREATE INDEX optouts_state ON optouts (state, created_at);
"""

#: Step 7: a watch's certificate expiry horizon (as in PostgreSQL's 0013).
_V7: Final = """
ALTER TABLE watches ADD COLUMN cert_expiry_days INTEGER CHECK (cert_expiry_days >= 0);
"""

_FACET_KEY: Final = "field, protocol, known, value"

#: Step 8: the facet rollups (what PostgreSQL's 0014 does, storage/facets.py): for each
#: of a few fields, every row counted under its protocol and value, per sweep and in the
#: current view, kept by triggers in the transaction that writes the rows. (No retention
#: ledger: the embedded store keeps all of its history.)
_V8: Final = f"""
CREATE TABLE facet_sweep (
    day TEXT NOT NULL, sweep_id TEXT NOT NULL, field TEXT NOT NULL, protocol TEXT NOT NULL,
    known INTEGER NOT NULL, value TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, day, {_FACET_KEY})
);
INSERT INTO facet_sweep (day, sweep_id, {_FACET_KEY}, n)
{rows_sql("observations", ("day", "sweep_id"))};
CREATE TABLE facet_current (
    field TEXT NOT NULL, protocol TEXT NOT NULL, known INTEGER NOT NULL, value TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY ({_FACET_KEY})
);
INSERT INTO facet_current ({_FACET_KEY}, n) {rows_sql("services", ())};
CREATE TRIGGER observations_facets AFTER INSERT ON observations BEGIN
    INSERT INTO facet_sweep (day, sweep_id, {_FACET_KEY}, n)
    SELECT new.day, new.sweep_id, {_FACET_KEY}, 1 FROM {row_values("new")} WHERE true
    ON CONFLICT (sweep_id, day, {_FACET_KEY}) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER services_facets_inserted AFTER INSERT ON services BEGIN
    INSERT INTO facet_current ({_FACET_KEY}, n)
    SELECT {_FACET_KEY}, 1 FROM {row_values("new")} WHERE true
    ON CONFLICT ({_FACET_KEY}) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER services_facets_updated AFTER UPDATE ON services BEGIN
    UPDATE facet_current SET n = n - 1
    WHERE ({_FACET_KEY}) IN (SELECT {_FACET_KEY} FROM {row_values("old")});
    INSERT INTO facet_current ({_FACET_KEY}, n)
    SELECT {_FACET_KEY}, 1 FROM {row_values("new")} WHERE true
    ON CONFLICT ({_FACET_KEY}) DO UPDATE SET n = n + 1;
END;
"""

#: The schema steps, in order; ``PRAGMA user_version`` is how many a file has.
STEPS: Final = (_V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8)


def version(conn: sqlite3.Connection) -> int:
    """The number of steps *conn*'s file has."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def upgrade(conn: sqlite3.Connection) -> list[int]:
    """Apply the steps the file lacks, each in its own transaction.

    :returns: the step numbers applied (1-based)
    :raises SchemaError: the file is newer than this brokerscan
    """
    have = version(conn)
    if have > len(STEPS):
        raise SchemaError(f"the file has schema version {have}; this brokerscan knows "
                          f"{len(STEPS)}: upgrade brokerscan")
    applied = []
    # Steps may compute what SQL cannot (an address as a number) with our own functions.
    conn.create_function("ip_number", 1, ip_number, deterministic=True)
    conn.create_function("census_of", 1, census_json, deterministic=True)
    for number, script in enumerate(STEPS, start=1):
        if number <= have:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process (a scheduler, a server, a worker opening the same new file)
            # may have applied this step since we looked: the write lock says for sure.
            if version(conn) >= number:
                conn.execute("COMMIT")
                continue
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            # A full disk can end the transaction inside SQLite already: roll back only
            # what is still open, so the error the user sees is the disk's, not ours.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(number)
    return applied


def _statements(script: str) -> list[str]:
    """The statements of *script* (triggers hold semicolons: split on complete ones)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out
