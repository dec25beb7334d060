-- The sessions read once for both areas (issue 13): a run of the courses area lists the
-- session courses' sessions to write them; the enrollments area's roster jobs need the same
-- list to know which rosters to read. The courses run's sessions job now publishes its reading,
-- and the roster jobs walk it instead of listing the sessions again, as long as it is the
-- reading of the courses area's latest run (so every session learnsync wrote is in it).

-- When the reading of a run's shared listing began: a proof that uses the listing says "gone"
-- only of what existed before then.
ALTER TABLE run_listings ADD COLUMN read_from timestamptz NOT NULL DEFAULT now();

-- A sessions job's reading in progress: each session course's sessions as Docebo answered them
-- (the first page, and whether it was the whole listing), saved as read, before the checkpoint
-- that covers it commits, so a resumed job still has the pages before its checkpoint.
CREATE TABLE session_reading_pages (
    job_id      uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    course_id   bigint NOT NULL,
    -- The sessions (a JSON array of Docebo items).
    items       jsonb NOT NULL,
    -- One answer held the course's whole listing (a listing of several pages is not published:
    -- the roster jobs would have to prove it, and list it themselves).
    whole       boolean NOT NULL,
    -- Read with the incremental run's `updated_from`: the sessions changed since, merged into
    -- the connection's reading.
    filtered    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, course_id)
);

-- The session ids of a reading's sessions ({"<course id>": [items], ...}): each item's numeric
-- `id` (Docebo sends ids as numbers or strings).
CREATE FUNCTION session_ids_of(sessions jsonb) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT (s->>'id')::bigint), '{}')
    FROM jsonb_each(sessions) c, jsonb_array_elements(c.value) s
    WHERE jsonb_typeof(c.value) = 'array' AND (s->>'id') ~ '^[0-9]{1,18}$'
$$;

-- A connection's published reading: the course list its sessions job walked, and the sessions of
-- each session course; one per connection. A full courses run replaces it; an incremental one
-- merges what it read into it (the sessions changed since, and the whole listing of a course
-- the reading did not hold), when its `updated_from` is no later than `last_read_from`.
CREATE TABLE session_readings (
    connection_id  uuid PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    -- The courses run whose sessions job read it, or last merged into it.
    run_id         uuid NOT NULL,
    -- When the reading of the course list began (the sessions were listed after it): a session
    -- not in it, of an enrollment written before then, was deleted. Merges keep it.
    read_from      timestamptz NOT NULL,
    -- When the latest reading merged into it began (the full one's, or an incremental one's).
    last_read_from timestamptz NOT NULL,
    -- The courses area's category filter it was read under (empty: every course).
    categories     bigint[] NOT NULL,
    -- The course list, in listing order (a JSON array of Docebo items).
    courses        jsonb NOT NULL,
    -- Each session course's sessions: {"<course id>": [items], ...}, whole listings only.
    sessions       jsonb NOT NULL,
    -- Every session id in `sessions`.
    session_ids    bigint[] GENERATED ALWAYS AS (session_ids_of(sessions)) STORED,
    publish_time   timestamptz NOT NULL DEFAULT now()
);
