-- Issue 11: failures are visible and recoverable.
--
-- * A shard keeps the last error of its runs (a dependency that was away, a worker that
--   died mid-shard): when it finally fails, `sweep status` says why.
-- * A sweep whose shards failed ends 'failed' (not 'finished' at 0%); `sweep retry`
--   queues its failed shards again and runs it again ('failed' -> 'running').
-- Independent of migrations 0004 and 0006 (other branches): it touches only the sweep
-- tables of 0001.

ALTER TABLE sweep_shards
    ADD COLUMN last_error    text,
    ADD COLUMN last_error_at timestamptz;

ALTER TABLE sweeps
    ADD COLUMN retries integer NOT NULL DEFAULT 0 CHECK (retries >= 0),
    DROP CONSTRAINT sweeps_state_check,
    ADD CONSTRAINT sweeps_state_check
        CHECK (state IN ('running', 'paused', 'cancelled', 'finished', 'failed')),
    DROP CONSTRAINT sweeps_check,
    ADD CONSTRAINT sweeps_finished_at_check
        CHECK ((finished_at IS NOT NULL) = (state IN ('cancelled', 'finished', 'failed')));

-- Sweeps that ended with failed shards before this migration were marked 'finished'.
UPDATE sweeps SET state = 'failed' WHERE state = 'finished' AND failed_shards > 0;

-- "Which shards failed, and why?" reads only the failed ones.
CREATE INDEX sweep_shards_failed ON sweep_shards (sweep_id, shard_index)
    WHERE state = 'failed';
