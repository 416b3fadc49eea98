-- CityStream 0012: rollups (sensorthings/model/rollups.py defines widths, zones, buckets and functions).
--
-- A rollup is an ordinary Datastream (so every reader, path and client works on it unchanged) whose
-- Observations the platform computes from those of the Datastream it is a rollup of: one Observation per
-- bucket, phenomenonTime the bucket's interval. `rollup` holds {"width", "function", "timeZone"}; a
-- Datastream has both or neither. Deleting the source deletes its rollups (and so their Observations).
ALTER TABLE datastreams
    ADD COLUMN rollup_of_id bigint REFERENCES datastreams (id) ON DELETE CASCADE,
    ADD COLUMN rollup jsonb,
    ADD CONSTRAINT datastreams_rollup_pair CHECK ((rollup_of_id IS NULL) = (rollup IS NULL)),
    ADD CONSTRAINT datastreams_rollup_not_of_itself CHECK (rollup_of_id <> id);
CREATE INDEX datastreams_rollup_of ON datastreams (rollup_of_id) WHERE rollup_of_id IS NOT NULL;

-- The running state of each bucket of each rollup: what adding Observations to it needs (count, exact
-- sum, extremes, and first/last by (phenomenon time, id)), so that an ingest batch merges its part into
-- it instead of reading the bucket's raw Observations again (a month of them, for P1M, per batch).
-- `observation` is the id of the rollup's Observation for the bucket, `last_feature` the FeatureOfInterest
-- of its last raw Observation (the rollup Observation's). Values are numeric: sums and extremes of
-- the exact number texts, rounded once when the Observation is written.
CREATE TABLE rollup_buckets (
    rollup_id      bigint NOT NULL REFERENCES datastreams (id) ON DELETE CASCADE,
    bucket_start   timestamptz NOT NULL,
    bucket_end     timestamptz NOT NULL,
    count          bigint NOT NULL,
    sum            numeric NOT NULL,
    integral       boolean NOT NULL,
    min            numeric,
    max            numeric,
    first_time     timestamptz,
    first_id       bigint,
    first_value    numeric,
    last_time      timestamptz,
    last_id        bigint,
    last_value     numeric,
    last_feature   bigint REFERENCES features_of_interest (id) ON DELETE SET NULL,
    observation    bigint,
    PRIMARY KEY (rollup_id, bucket_start)
);
