-- Records a job keeps for one more try at the end of its listing, because Salesforce did not know
-- their parent yet (a user or course written later in the same run). They used to travel inside
-- jobs.checkpoint, which every chunk's commit rewrote whole (up to 2,000 records each time); here
-- each is written once, with the commit of its chunk, and deleted with the commit of its retry.
CREATE TABLE job_deferred (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    record_key  text NOT NULL,
    -- The record as the worker sends it (fields, value hash, Docebo change time) and Salesforce's
    -- first reason.
    record      jsonb NOT NULL,
    PRIMARY KEY (job_id, record_key)
);
