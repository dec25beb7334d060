-- Runs ended longer ago than the servers' retention are purged hourly with their jobs and log
-- events (a fleet writes millions of runs a day): found by their end time.
CREATE INDEX runs_by_end_time ON runs (end_time) WHERE end_time IS NOT NULL;
