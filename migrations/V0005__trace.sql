-- The W3C trace id of each run: the caller's when its request carried a `traceparent`, a new one
-- otherwise. The server's and the workers' log lines about a run carry it, so one search finds a
-- run's whole story across processes.
ALTER TABLE runs ADD COLUMN trace_id text NOT NULL
    DEFAULT replace(gen_random_uuid()::text, '-', '')
    CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32));
