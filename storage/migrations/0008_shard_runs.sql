-- Issue 17: live counts that stay exact, shards that are never stuck.
--
-- * `run_id` names the run that holds a running shard (one per start, whoever the
--   worker): checkpoints and the end of a run apply only to the run that holds it, and a
--   run's live counts in Redis are tagged with it, so a replayed or superseded run is
--   never counted twice.
-- * `checkpoints` counts the checkpoints written (the end of a run included): a run's
--   live counts are "since checkpoint N", and count only while N is the last one.
-- * `requeues` counts how often the scheduler put the shard back (its run's worker gone,
--   or its message lost): `sweep status` shows it.
-- It touches only the sweep_shards table of 0001.

ALTER TABLE sweep_shards
    ADD COLUMN run_id      text,
    ADD COLUMN checkpoints integer NOT NULL DEFAULT 0 CHECK (checkpoints >= 0),
    ADD COLUMN requeues    integer NOT NULL DEFAULT 0 CHECK (requeues >= 0);
