-- learnsync's job state: connections, area configurations, runs, jobs, logs, the record ledger,
-- the Docebo call budget and idempotency keys. Every state change is one guarded statement or
-- transaction (see store/); the invariants that must hold whatever the code does are constraints.

CREATE TABLE connections (
    id                    uuid PRIMARY KEY,
    tenant                text NOT NULL,
    display_name          text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    -- AES-256-GCM: 12-byte nonce followed by the ciphertext of the credentials JSON; the
    -- connection id is the associated data, so a blob cannot be moved to another row.
    credentials           bytea NOT NULL,
    -- Which key encrypted `credentials` (a fingerprint, never the key), for key rotation.
    credentials_key_id    text NOT NULL,
    docebo_grant          text NOT NULL CHECK (docebo_grant IN ('client_credentials', 'password')),
    salesforce_grant      text NOT NULL CHECK (salesforce_grant IN ('client_credentials', 'jwt_bearer')),
    credentials_time      timestamptz NOT NULL DEFAULT now(),
    -- Shared by every connection of one Docebo platform (a hash of its base URL): the call budget
    -- is per platform, not per connection.
    docebo_platform       text NOT NULL,
    docebo_calls_per_hour integer NOT NULL DEFAULT 1000 CHECK (docebo_calls_per_hour BETWEEN 1 AND 100000),
    unenrollment_policy   text NOT NULL DEFAULT 'mark_unenrolled'
                          CHECK (unenrollment_policy IN ('mark_unenrolled', 'delete')),
    -- The last log sequence number handed out; log writers take the next ones under this row's lock,
    -- so a connection's log is gapless and totally ordered.
    log_sequence          bigint NOT NULL DEFAULT 0,
    -- Salesforce said REQUEST_LIMIT_EXCEEDED: writes for this org pause until then.
    salesforce_paused_until timestamptz,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX connections_by_tenant ON connections (tenant, create_time, id);
CREATE INDEX connections_by_time ON connections (create_time, id);

CREATE TABLE area_configs (
    connection_id        uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    area                 text NOT NULL CHECK (area IN ('users', 'courses', 'enrollments')),
    enabled              boolean NOT NULL,
    mode                 text NOT NULL CHECK (mode IN ('manual', 'realtime')),
    interval_seconds     integer NOT NULL DEFAULT 900 CHECK (interval_seconds BETWEEN 1 AND 86400),
    course_category_ids  bigint[] NOT NULL DEFAULT '{}',
    update_time          timestamptz NOT NULL DEFAULT now(),
    -- When the area's first run completed (succeeded, with or without record errors). Start is
    -- refused from then on; for enrollments, unenrollments are tracked from then on.
    first_success_time   timestamptz,
    last_success_time    timestamptz,
    -- Incremental runs read Docebo changes from here (minus a safety overlap): the newest change
    -- time whose write Salesforce confirmed in the last successful run.
    watermark            timestamptz,
    -- The realtime schedule: when the next scheduled run is due.
    next_run_time        timestamptz,
    PRIMARY KEY (connection_id, area)
);

CREATE TABLE runs (
    id                 uuid PRIMARY KEY,
    connection_id      uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    area               text NOT NULL CHECK (area IN ('users', 'courses', 'enrollments')),
    trigger            text NOT NULL CHECK (trigger IN ('start', 'resynchronize', 'schedule', 'webhook')),
    timeframe_start    timestamptz,
    timeframe_end      timestamptz,
    -- A full run reads everything in its timeframe; an incremental one reads from `updated_from`.
    full_sync          boolean NOT NULL,
    updated_from       timestamptz,
    rewrite_unchanged  boolean NOT NULL DEFAULT false,
    state              text NOT NULL CHECK (state IN ('queued', 'running', 'stopping', 'succeeded',
                                                      'succeeded_with_errors', 'failed', 'stopped')),
    stop_time          timestamptz,
    first_error_sequence bigint,
    error_message      text,
    create_time        timestamptz NOT NULL DEFAULT now(),
    start_time         timestamptz,
    end_time           timestamptz,
    CHECK (timeframe_end IS NULL OR timeframe_start IS NULL OR timeframe_end >= timeframe_start)
);
-- At most one active run per area, whatever asks for it.
CREATE UNIQUE INDEX runs_one_active_per_area ON runs (connection_id, area)
    WHERE state IN ('queued', 'running', 'stopping');
CREATE INDEX runs_by_connection ON runs (connection_id, create_time DESC, id DESC);

CREATE TABLE jobs (
    id                 uuid PRIMARY KEY,
    run_id             uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    connection_id      uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    -- The job's place in its run (Area::jobs order), for stable listing.
    position           smallint NOT NULL DEFAULT 0,
    kind               text NOT NULL CHECK (kind IN ('users', 'courses', 'learning_plans', 'sessions',
                           'course_enrollments', 'learning_plan_enrollments',
                           'webinar_session_enrollments', 'ilt_session_enrollments')),
    -- This job is claimable only once that job of the same run is final (sessions after courses).
    after_job_id       uuid REFERENCES jobs (id) ON DELETE CASCADE,
    state              text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded',
                           'succeeded_with_errors', 'failed', 'stopped')),
    -- Bumped by every claim; every write about the job names the attempt it holds, so a worker
    -- that lost its lease changes nothing.
    attempt            integer NOT NULL DEFAULT 0,
    lease_owner        text,
    lease_expires_at   timestamptz,
    heartbeat_time     timestamptz,
    -- A retry's backoff: not claimable before this.
    not_before         timestamptz NOT NULL DEFAULT now(),
    retries_with_progress    integer NOT NULL DEFAULT 0,
    retries_without_progress integer NOT NULL DEFAULT 0,
    -- Where a job taken over goes on from: the last point whose writes Salesforce confirmed.
    checkpoint         jsonb,
    read_count         bigint NOT NULL DEFAULT 0,
    written_count      bigint NOT NULL DEFAULT 0,
    unchanged_count    bigint NOT NULL DEFAULT 0,
    failed_count       bigint NOT NULL DEFAULT 0,
    expected_count     bigint NOT NULL DEFAULT 0,
    status_message     text NOT NULL DEFAULT '',
    error_message      text,
    create_time        timestamptz NOT NULL DEFAULT now(),
    start_time         timestamptz,
    end_time           timestamptz,
    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE INDEX jobs_by_run ON jobs (run_id);
CREATE INDEX jobs_queued ON jobs (not_before) WHERE state = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'running';

CREATE TABLE log_events (
    connection_id  uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    sequence       bigint NOT NULL,
    run_id         uuid,
    job_id         uuid,
    time           timestamptz NOT NULL DEFAULT now(),
    -- 1 debug, 2 info, 3 warn, 4 error (LogLevel in the proto).
    level          smallint NOT NULL CHECK (level BETWEEN 1 AND 4),
    message        text NOT NULL,
    record_key     text,
    error_code     text,
    fields         jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (connection_id, sequence)
);
CREATE INDEX log_events_by_run ON log_events (run_id, sequence) WHERE run_id IS NOT NULL;

-- What Salesforce holds for each connection: one row per record learnsync wrote.
CREATE TABLE ledger (
    connection_id      uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    -- The Salesforce object (API name) and the record's external id value.
    object             text NOT NULL,
    record_key         text NOT NULL,
    salesforce_id      text,
    -- A hash of the field values last written: a record whose values did not change is not written
    -- again.
    value_hash         bytea NOT NULL,
    docebo_updated_at  timestamptz,
    -- The last run whose full listing contained the record: a full comparison marks the records it
    -- did not see as unenrolled.
    seen_run_id        uuid,
    unenrolled_at      timestamptz,
    write_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, object, record_key)
);

-- How many ledger rows each connection holds per object, kept by the same statements that change
-- the ledger, so GetStatus never counts a million rows.
CREATE TABLE ledger_counts (
    connection_id  uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    area           text NOT NULL CHECK (area IN ('users', 'courses', 'enrollments')),
    object         text NOT NULL,
    records        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (connection_id, area, object)
);

-- The Docebo call budget of one platform, shared by every job on every worker (a token bucket).
CREATE TABLE docebo_budgets (
    platform        text PRIMARY KEY,
    calls_per_hour  integer NOT NULL,
    tokens          double precision NOT NULL,
    refill_time     timestamptz NOT NULL DEFAULT now(),
    -- Docebo answered 429 or 503: nobody calls it before then.
    paused_until    timestamptz
);

-- Answers to mutating requests, by caller and request id, for 24 hours.
CREATE TABLE idempotency_keys (
    principal     text NOT NULL,
    method        text NOT NULL,
    request_id    text NOT NULL,
    request_hash  bytea NOT NULL,
    response      bytea,
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, method, request_id)
);
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (create_time);
