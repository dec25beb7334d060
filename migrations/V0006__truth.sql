-- Salesforce stays what Docebo says: runs that check instead of writing, unenrollments above a
-- connection's threshold held until a caller confirms them, counts of what a run repaired and
-- unenrolled, and a scratch table for what Salesforce was seen to hold.

-- A check run reads both sides and reports what a synchronization would do; it writes nothing to
-- Salesforce and nothing to the ledger.
ALTER TABLE runs ADD COLUMN check_only boolean NOT NULL DEFAULT false;
-- Resynchronize was told to unenroll even above the connection's threshold.
ALTER TABLE runs ADD COLUMN confirm_unenrollments boolean NOT NULL DEFAULT false;

-- A run that would unenroll more than max(min_records, max_percent % of the object's live
-- records) unenrolls nothing and waits for a confirmed Resynchronize.
ALTER TABLE connections ADD COLUMN unenroll_max_percent integer NOT NULL DEFAULT 10
    CHECK (unenroll_max_percent BETWEEN 0 AND 100);
ALTER TABLE connections ADD COLUMN unenroll_min_records integer NOT NULL DEFAULT 100
    CHECK (unenroll_min_records >= 0);

-- Per job: records found missing or changed in Salesforce and put back (a check run: that would
-- be), records written that Salesforce did not hold (created), and records unenrolled. Written
-- stays created plus updated; unenrollments are not writes of records read.
ALTER TABLE jobs ADD COLUMN repaired_count bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN created_count bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN unenrolled_count bigint NOT NULL DEFAULT 0;

-- What Salesforce holds of one job's object, read in bulk by a full comparison: the key and the
-- hash of its values in the form learnsync writes them (and, for check runs, the values, to name
-- the fields that differ). Scratch: unlogged (no WAL, emptied by a crash, when the job reads it
-- again) and cleared when the job has compared it.
CREATE UNLOGGED TABLE salesforce_snapshot (
    job_id      uuid NOT NULL,
    record_key  text NOT NULL,
    value_hash  bytea NOT NULL,
    fields      jsonb,
    PRIMARY KEY (job_id, record_key)
);
