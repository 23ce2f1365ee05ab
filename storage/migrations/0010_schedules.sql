-- Issue 20: recurring sweeps. A schedule names a sweep's spec and a cadence; the
-- scheduler starts one run (a sweep) per period (scheduler/schedules.py,
-- scheduler/cadence.py).
--
-- * `next_due` is when the next period's run is due (its beginning plus the jitter): the
--   scheduler's question "what is due?" reads only the index below.
-- * `last_period` is the latest period handled: run, or skipped because the previous run
--   was still under way (`last_skip` says so, `skipped` counts them).
-- * A run is a sweep with `schedule` (the schedule's name) and `period` (the period's
--   beginning). UNIQUE (schedule, period) (also the index of "is its previous run
--   still under way?"): a period is started at most once, whatever
--   the number of schedulers (each also locks the schedule's row while it starts one).
--   The name is kept without a foreign key, so that the runs of a removed schedule still
--   say which schedule made them.
-- Independent of 0009 (another branch): it touches only the sweep tables of 0001.

CREATE TABLE schedules (
    name          text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    -- What `sweep start` would record (scheduler.sweeps.SweepSpec), without started_at;
    -- without seed when each run draws its own.
    spec          jsonb       NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    every_seconds integer     CHECK (every_seconds > 0),
    cron          text        CHECK (cron <> ''),
    jitter_seconds integer    NOT NULL DEFAULT 0 CHECK (jitter_seconds >= 0),
    paused        boolean     NOT NULL DEFAULT false,
    next_period   timestamptz,
    next_due      timestamptz,
    last_period   timestamptz,
    last_sweep    text,
    last_skip     text,
    last_error    text,
    skipped       integer     NOT NULL DEFAULT 0 CHECK (skipped >= 0),
    runs          integer     NOT NULL DEFAULT 0 CHECK (runs >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((every_seconds IS NULL) <> (cron IS NULL))
);

CREATE INDEX schedules_due ON schedules (next_due) WHERE NOT paused;

ALTER TABLE sweeps
    ADD COLUMN schedule text,
    ADD COLUMN period   timestamptz,
    ADD CONSTRAINT sweeps_schedule_period UNIQUE (schedule, period),
    ADD CONSTRAINT sweeps_schedule_has_period CHECK ((schedule IS NULL) = (period IS NULL));
