-- Issue 20, part 2: watches. A watch is a saved query (with networks and AS numbers)
-- evaluated when a sweep finishes against the sweep before it; what it finds are events,
-- each delivered (webhook, email) at least once and logged with its attempts.
-- It touches no table of earlier migrations.

CREATE TABLE watches (
    name         text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    query        text        NOT NULL,
    networks     text        NOT NULL DEFAULT '',   -- CIDRs, comma separated
    asns         text        NOT NULL DEFAULT '',   -- AS numbers, comma separated
    webhook_url  text,
    secret       text,                              -- HMAC key of the webhook's signature
    email        text,
    certificates boolean     NOT NULL DEFAULT false, -- also report expired certificates
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (webhook_url IS NOT NULL OR email IS NOT NULL)
);

-- One event per (watch, sweep, service, kind): a sweep evaluated twice adds nothing.
CREATE TABLE watch_events (
    id           text        PRIMARY KEY,
    watch        text        NOT NULL REFERENCES watches (name) ON DELETE CASCADE,
    sweep_id     text        NOT NULL,
    previous     text,                              -- the sweep it was compared with
    ip           text        NOT NULL,
    port         integer     NOT NULL,
    kind         text        NOT NULL,
    detail       text        NOT NULL DEFAULT '{}', -- JSON
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (watch, sweep_id, ip, port, kind)
);

-- One delivery per (event, channel); its id is the receiver's idempotency key.
CREATE TABLE watch_deliveries (
    id           text        PRIMARY KEY,
    event_id     text        NOT NULL REFERENCES watch_events (id) ON DELETE CASCADE,
    watch        text        NOT NULL,
    channel      text        NOT NULL CHECK (channel IN ('webhook', 'email')),
    status       text        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed',
                                                        'refused')),
    attempts     integer     NOT NULL DEFAULT 0,
    next_try_at  timestamptz,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    UNIQUE (event_id, channel)
);
CREATE INDEX watch_deliveries_due ON watch_deliveries (next_try_at) WHERE status = 'pending';
CREATE INDEX watch_deliveries_watch ON watch_deliveries (watch, created_at);
