-- A Docebo listing read once per run and shared by the run's jobs (the course list: the courses
-- job and every nested listing start from it). The first job that needs it takes the reading
-- (reader_job, reader_attempt), reads it with its verification passes and publishes the items and
-- the verdict; the others wait for it, and take the reading over when the reader's attempt no
-- longer runs. Scratch: unlogged (no WAL; a crash that empties it makes the next job read the
-- listing again), and a connection's rows of finished runs are deleted by its next publication.
CREATE UNLOGGED TABLE run_listings (
    run_id          uuid NOT NULL,
    -- The listing: its path and filters, as a query string.
    listing         text NOT NULL,
    connection_id   uuid NOT NULL,
    reader_job      uuid NOT NULL,
    reader_attempt  integer NOT NULL,
    -- The items in listing order (a JSON array); null while the reading goes on.
    items           jsonb,
    -- Why the reading is not proven complete (null: proven).
    incomplete      text,
    PRIMARY KEY (run_id, listing)
);

CREATE INDEX run_listings_connection ON run_listings (connection_id);
