-- Responses of POST /books kept by Idempotency-Key, so a retried create replays the first
-- answer instead of inserting a second book. Rows older than a day are purged.
CREATE TABLE idempotency_keys (
    key             TEXT PRIMARY KEY,
    request         JSONB NOT NULL,
    response_status SMALLINT NOT NULL,
    location        TEXT NOT NULL,
    response_body   BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
