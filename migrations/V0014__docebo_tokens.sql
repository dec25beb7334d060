-- Each connection's Docebo token, shared by every worker: Docebo counts token requests against
-- the platform's calls, so the workers ask once per connection, not once each. The token is
-- sealed with the credentials' key (AES-256-GCM, the connection id and "docebo token" as the
-- associated data), never stored in clear. `fingerprint` is a keyed digest (HMAC-SHA-256) of the
-- Docebo credentials the token was asked for with: after an UpdateConnection it no longer matches
-- and the next job asks again. `version` grows with each new token: a worker replaces the token
-- only at the version it read (a compare-and-swap), under a per-connection advisory lock held
-- around the token request, so workers that a 401 answers together renew it once.
CREATE TABLE docebo_tokens (
    connection_id  uuid PRIMARY KEY REFERENCES connections (id) ON DELETE CASCADE,
    fingerprint    bytea NOT NULL,
    token          bytea NOT NULL,
    expires_at     timestamptz NOT NULL,
    version        bigint NOT NULL CHECK (version > 0),
    update_time    timestamptz NOT NULL DEFAULT now()
);
