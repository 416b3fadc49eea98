-- Evidence of every MQTT payload that could not be stored: written in the same transaction as the batch it
-- arrived in, so acknowledging the batch also means its rejections are on record (GET /admin/dead-letters).
CREATE TABLE dead_letters (
    id            bigserial PRIMARY KEY,
    received_at   timestamptz NOT NULL,
    topic         text NOT NULL,
    client_id     text,
    payload       text NOT NULL,   -- the first 2 KiB, as text (invalid UTF-8 replaced)
    payload_bytes integer NOT NULL,
    reason        text NOT NULL
);
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);
