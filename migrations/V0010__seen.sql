-- Writes that follow the changes: a full comparison marked every ledger row its listing contained
-- (`ledger.seen_run_id`), so comparing an unchanged platform rewrote the whole ledger (441 bytes of
-- WAL per record). A job's seen marks are scratch now, like salesforce_snapshot.

-- The ledger records a job's listing contained and it did not write (unchanged, failed, deferred):
-- the unenrollment comparison keeps them. Records the run wrote carry its id in the ledger
-- (`seen_run_id`, set by the write itself). Unlogged: no WAL, and emptied by a crash of Postgres;
-- cleared when the job ends.
CREATE UNLOGGED TABLE ledger_seen (
    job_id      uuid NOT NULL,
    record_key  text NOT NULL,
    PRIMARY KEY (job_id, record_key)
);

-- How many seen marks the job made, moved in the transaction that makes them (logged): a set a
-- crash emptied holds fewer, and the job reads its listing again instead of unenrolling what it
-- no longer knows it saw.
ALTER TABLE jobs ADD COLUMN seen_marks bigint NOT NULL DEFAULT 0;
