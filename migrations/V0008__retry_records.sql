-- Records that failed for a reason that can pass (their parent not yet in Salesforce, a lock, a
-- limit, a record a Bulk job did not process): the next run of their area reads them again. An
-- incremental run reads Docebo from the area's watermark, and the watermark never moves past the
-- oldest Docebo change time kept here; a record leaves when it is written, when it fails for good,
-- or when a run over all time (which reads everything) did not find it failing again.
CREATE TABLE retry_records (
    connection_id      uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    area               text NOT NULL CHECK (area IN ('users', 'courses', 'enrollments')),
    object             text NOT NULL,
    record_key         text NOT NULL,
    -- The job kind that lists it (two kinds write session enrollments).
    scope              text NOT NULL,
    docebo_updated_at  timestamptz,
    reason             text NOT NULL,
    run_id             uuid NOT NULL,
    PRIMARY KEY (connection_id, object, record_key)
);
CREATE INDEX retry_records_by_area ON retry_records (connection_id, area, docebo_updated_at);
