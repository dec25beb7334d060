-- Runs ended longer ago than the servers' retention are purged hourly with their jobs and log
-- events (a fleet writes millions of runs a day): found by their end time.
CREATE INDEX runs_by_end_time ON runs (end_time) WHERE end_time IS NOT NULL;

-- Deleting a job (with its run, or its connection) makes Postgres look for the jobs that wait on it
-- (`jobs.after_job_id REFERENCES jobs ON DELETE CASCADE`): without an index, a scan of every job
-- per job deleted (the purge of 20,000 runs took 238 s, 84 runs a second).
CREATE INDEX jobs_after_job ON jobs (after_job_id) WHERE after_job_id IS NOT NULL;
