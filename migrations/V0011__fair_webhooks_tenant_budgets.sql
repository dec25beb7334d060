-- Webhooks served per connection, and a Docebo call budget per tenant and platform.

-- The dispatcher takes each connection's oldest pending messages, and the receiver counts a
-- connection's pending messages against its quota: both read this index.
CREATE INDEX webhook_messages_pending_by_connection ON webhook_messages (connection_id, receive_time)
    WHERE handle_time IS NULL;

-- The hourly purge of handled messages reads this index instead of every message.
CREATE INDEX webhook_messages_handled ON webhook_messages (handle_time) WHERE handle_time IS NOT NULL;

-- A platform's budget was one bucket whoever named the platform: a tenant naming another tenant's
-- Docebo URL drew down that tenant's calls. Each tenant now has its own bucket per platform. The
-- buckets that exist are copied to every tenant with a connection on the platform (their tokens
-- and pauses kept), and the rows keyed by platform alone go.
ALTER TABLE docebo_budgets ADD COLUMN tenant text NOT NULL DEFAULT '';
ALTER TABLE docebo_budgets DROP CONSTRAINT docebo_budgets_pkey;
INSERT INTO docebo_budgets (tenant, platform, calls_per_hour, tokens, refill_time, paused_until)
    SELECT DISTINCT c.tenant, b.platform, b.calls_per_hour, b.tokens, b.refill_time, b.paused_until
    FROM docebo_budgets b JOIN connections c ON c.docebo_platform = b.platform
    WHERE b.tenant = '';
DELETE FROM docebo_budgets WHERE tenant = '';
ALTER TABLE docebo_budgets ALTER COLUMN tenant DROP DEFAULT;
ALTER TABLE docebo_budgets ADD PRIMARY KEY (tenant, platform);
