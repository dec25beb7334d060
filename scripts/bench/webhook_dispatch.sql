-- What a webhook dispatch pass and the receiver's quota check cost at scale (BENCHMARKS.md,
-- "Webhook dispatch at scale"). Run on an empty database migrated to V0011:
--   for f in migrations/V*.sql; do psql -q -v ON_ERROR_STOP=1 "$URL" -f "$f"; done
--   psql "$URL" -f scripts/bench/webhook_dispatch.sql
-- 10,000 connections; 1,000 of them with 100 pending messages each (100,000 pending), the first
-- 500 of those with an active enrollments run; 1,000,000 handled messages, none past retention.
\set ON_ERROR_STOP 1
INSERT INTO connections (id, tenant, display_name, credentials, credentials_key_id, docebo_grant,
                         salesforce_grant, docebo_platform)
SELECT md5('c' || n)::uuid, 't' || (n % 100), 'c' || n, '\x00', 'k', 'client_credentials',
       'client_credentials', 'p' || n
FROM generate_series(1, 10000) n;
INSERT INTO webhook_messages (connection_id, message_id, event, body, receive_time)
SELECT md5('c' || c)::uuid, 'm' || m, 'course.enrollment.created',
       '{"event": "course.enrollment.created", "payload": {"user_id": 1, "course_id": 2}}',
       now() - make_interval(secs => m + c)
FROM generate_series(1, 1000) c, generate_series(1, 100) m;
INSERT INTO webhook_messages (connection_id, message_id, event, body, receive_time, handle_time, outcome)
SELECT md5('c' || (1 + n % 10000))::uuid, 'h' || n, 'course.enrollment.created', '{}',
       now() - interval '2 days', now() - interval '1 day', 'run'
FROM generate_series(1, 1000000) n;
INSERT INTO runs (id, connection_id, area, trigger, full_sync, state)
SELECT md5('r' || c)::uuid, md5('c' || c)::uuid, 'enrollments', 'start', true, 'queued'
FROM generate_series(1, 500) c;
VACUUM ANALYZE;

\timing on
\echo '== the connections a dispatch pass serves (webhook_connections_ready, limit 100), 5 times'
SELECT count(*) FROM (SELECT c.id FROM connections c
  CROSS JOIN LATERAL (SELECT m.receive_time FROM webhook_messages m
      WHERE m.connection_id = c.id AND m.handle_time IS NULL ORDER BY m.receive_time LIMIT 1) oldest
  WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.connection_id = c.id
      AND r.area = 'enrollments' AND r.state = ANY('{queued,running,stopping}'))
  ORDER BY oldest.receive_time LIMIT 100) ready;
\g
\g
\g
\g
\echo '== one connection''s batch (pending_webhooks, limit 500), 5 times'
BEGIN;
SELECT count(*) FROM (SELECT connection_id, message_id, body, receive_time FROM webhook_messages
  WHERE connection_id = md5('c' || 700)::uuid AND handle_time IS NULL ORDER BY receive_time LIMIT 500
  FOR UPDATE SKIP LOCKED) batch;
\g
\g
\g
\g
ROLLBACK;
\echo '== before: the oldest 500 pending messages of all connections, 5 times'
BEGIN;
SELECT count(*) FROM (SELECT connection_id, message_id, body, receive_time FROM webhook_messages
  WHERE handle_time IS NULL ORDER BY receive_time LIMIT 500 FOR UPDATE SKIP LOCKED) batch;
\g
\g
\g
\g
ROLLBACK;
\echo '== the quota check of a connection holding 100 pending (limit 10,000), 5 times'
SELECT (SELECT count(*) FROM (SELECT 1 FROM webhook_messages
          WHERE connection_id = md5('c' || 700)::uuid AND handle_time IS NULL LIMIT 10000) p),
       EXISTS (SELECT 1 FROM webhook_messages WHERE connection_id = md5('c' || 700)::uuid
          AND message_id = 'new');
\g
\g
\g
\g
\echo '== the hourly purge, nothing past retention: with the handled index, then without'
BEGIN;
DELETE FROM webhook_messages WHERE handle_time IS NOT NULL AND handle_time < now() - interval '7 days';
\g
DROP INDEX webhook_messages_handled;
DELETE FROM webhook_messages WHERE handle_time IS NOT NULL AND handle_time < now() - interval '7 days';
\g
ROLLBACK;
