-- Realtime replication: scheduled incremental runs, a periodic full comparison, and Docebo
-- webhooks recorded durably before anything acts on them.

-- How often a realtime area runs a full comparison (finds deletions no webhook announced), and
-- when the next one is due.
ALTER TABLE area_configs
    ADD COLUMN full_interval_seconds integer NOT NULL DEFAULT 86400
        CHECK (full_interval_seconds BETWEEN 1 AND 2592000),
    ADD COLUMN next_full_time timestamptz;

-- What a webhook run is limited to (the records its events named), as JSON: see
-- store::realtime::Targets. NULL for every other run.
ALTER TABLE runs ADD COLUMN targets jsonb;

-- The webhook URL's secret is derived from the server key, the connection id and this
-- generation; rotating it bumps the generation, so no secret is stored anywhere.
ALTER TABLE connections ADD COLUMN webhook_generation integer NOT NULL DEFAULT 1;

-- Docebo webhook messages, one row per message_id (Docebo retries: the key makes them
-- idempotent), kept until a run has acted on them.
CREATE TABLE webhook_messages (
    connection_id  uuid NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    message_id     text NOT NULL,
    event          text NOT NULL,
    body           jsonb NOT NULL,
    receive_time   timestamptz NOT NULL DEFAULT now(),
    -- Set once handled: the run that carries the change, or why none does.
    handle_time    timestamptz,
    run_id         uuid,
    outcome        text,
    PRIMARY KEY (connection_id, message_id)
);
CREATE INDEX webhook_messages_pending ON webhook_messages (receive_time) WHERE handle_time IS NULL;
