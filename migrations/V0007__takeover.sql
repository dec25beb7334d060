-- When another worker may take over a running job whose lease ran out: the lease's expiry plus
-- the grace its holder declared (the longest Salesforce write it may have in flight, its request
-- timeout), so a write the holder started before its lease ran out has ended or timed out before a
-- new attempt writes the same records. Set by the claim and every heartbeat, with the lease. A
-- claim or the reaper takes a running job once both this and lease_expires_at are past (greatest
-- ignores a NULL: rows leased before this column existed wait for their lease only).
ALTER TABLE jobs ADD COLUMN takeover_after timestamptz;
DROP INDEX jobs_leased;
CREATE INDEX jobs_takeover ON jobs ((greatest(lease_expires_at, takeover_after))) WHERE state = 'running';
