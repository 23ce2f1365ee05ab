-- Sweeps and their shards: the durable record of an Internet-wide sweep (issue 3).
-- Live counters are in Redis; counts are persisted here at shard granularity.

CREATE TABLE sweeps (
    -- Readable id made by the application: 'sw-' and eight base32 characters.
    id            text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name          text        CHECK (name <> ''),
    -- The sweep's parameters (targets, ports, probe, allow_reserved, rate, seed, timeouts...).
    spec          jsonb       NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    state         text        NOT NULL DEFAULT 'running'
                              CHECK (state IN ('running', 'paused', 'cancelled', 'finished')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    target_count  bigint      NOT NULL CHECK (target_count >= 0),
    shard_count   integer     NOT NULL CHECK (shard_count >= 0),
    -- Set when the sweep finishes: shards that gave up count as finished, but are recorded.
    failed_shards integer     NOT NULL DEFAULT 0 CHECK (failed_shards >= 0),
    CHECK ((finished_at IS NOT NULL) = (state IN ('cancelled', 'finished')))
);

-- Starting "the same sweep" twice is refused: a name belongs to one unfinished sweep at a
-- time; a finished or cancelled sweep frees it (so "weekly" can run every week).
CREATE UNIQUE INDEX sweeps_active_name ON sweeps (name)
    WHERE state IN ('running', 'paused') AND name IS NOT NULL;

CREATE INDEX sweeps_created ON sweeps (created_at DESC);

CREATE TABLE sweep_shards (
    sweep_id       text        NOT NULL REFERENCES sweeps (id) ON DELETE CASCADE,
    shard_index    integer     NOT NULL CHECK (shard_index >= 0),
    queue          text        NOT NULL,
    -- The shard covers exponents [first_exponent, end_exponent) of the sweep's cyclic group.
    first_exponent bigint      NOT NULL CHECK (first_exponent >= 0),
    end_exponent   bigint      NOT NULL,
    -- Resume point: every exponent below it is done, and the counts below cover exactly
    -- [first_exponent, position).
    position       bigint      NOT NULL,
    state          text        NOT NULL DEFAULT 'pending'
                               CHECK (state IN ('pending', 'queued', 'running', 'done',
                                                'paused', 'cancelled', 'failed')),
    attempts       integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    probes         bigint      NOT NULL DEFAULT 0 CHECK (probes >= 0),
    open           bigint      NOT NULL DEFAULT 0 CHECK (open >= 0),
    hits           jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(hits) = 'object'),
    statuses       jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(statuses) = 'object'),
    worker         text,
    error          text,
    queued_at      timestamptz,
    started_at     timestamptz,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sweep_id, shard_index),
    CHECK (end_exponent >= first_exponent),
    CHECK (position BETWEEN first_exponent AND end_exponent)
);

-- The dispatcher's question, "the next shards to queue", reads only this small index.
CREATE INDEX sweep_shards_dispatchable ON sweep_shards (sweep_id, shard_index)
    WHERE state IN ('pending', 'paused');

-- "How many are out there?" (backpressure) and the done/failed tallies of a sweep.
CREATE INDEX sweep_shards_state ON sweep_shards (sweep_id, state);

-- Adds two {"key": count} objects key by key: the hits and statuses of a shard grow by
-- what each checkpoint reports.
CREATE FUNCTION sweep_add_counts(a jsonb, b jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(key, total), '{}'::jsonb)
    FROM (SELECT key, sum(value::bigint) AS total
          FROM (SELECT * FROM jsonb_each_text(a) UNION ALL SELECT * FROM jsonb_each_text(b)) AS e
          GROUP BY key) AS sums
$$;
