-- Issue 11 (graceful shutdown): a shard handed back mid-run may leave targets unfinished
-- below its resume point.
--
-- A worker told to stop gives its probes in flight a few seconds, then abandons the rest
-- (no result is published for them) and hands the shard back. `unfinished` lists the
-- exponents, below `position`, of the targets it abandoned: the next run probes those
-- first, then resumes the walk at `position`. The counts of a shard now cover
-- [first_exponent, position) except `unfinished`. At most one entry per connection that
-- was in flight, so the array stays small.
-- It touches only the sweep_shards table of 0001.

ALTER TABLE sweep_shards
    ADD COLUMN unfinished bigint[] NOT NULL DEFAULT '{}'
        CHECK (array_position(unfinished, NULL) IS NULL);
