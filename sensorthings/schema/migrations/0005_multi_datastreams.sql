-- CityStream 0005: MultiDatastreams (STA 1.1 §10, the MultiDatastream extension).
-- A MultiDatastream's Observations have one result per component: an array whose i-th value is of
-- multiObservationDataTypes[i], in unitOfMeasurements[i], observing its i-th ObservedProperty (rank i).

CREATE TABLE multi_datastreams (
    id                           bigserial PRIMARY KEY,
    name                         text NOT NULL,
    description                  text NOT NULL,
    observation_type             text NOT NULL,
    multi_observation_data_types jsonb NOT NULL CHECK (jsonb_typeof(multi_observation_data_types) = 'array'),
    unit_of_measurements         jsonb NOT NULL CHECK (jsonb_typeof(unit_of_measurements) = 'array'),
    observed_area                geometry(Geometry, 4326),
    phenomenon_time_start        timestamptz,
    phenomenon_time_end          timestamptz,
    result_time_start            timestamptz,
    result_time_end              timestamptz,
    properties                   jsonb,
    thing_id                     bigint NOT NULL REFERENCES things (id) ON DELETE CASCADE,
    sensor_id                    bigint NOT NULL REFERENCES sensors (id) ON DELETE CASCADE
);
CREATE INDEX multi_datastreams_thing ON multi_datastreams (thing_id);
CREATE INDEX multi_datastreams_sensor ON multi_datastreams (sensor_id);
CREATE INDEX multi_datastreams_observed_area ON multi_datastreams USING gist (observed_area);

-- The ordered ObservedProperties: rank is the component's position. Deleting an ObservedProperty deletes
-- the MultiDatastreams that use it (the application does that first, as the model declares).
CREATE TABLE multi_datastream_observed_properties (
    multi_datastream_id  bigint NOT NULL REFERENCES multi_datastreams (id) ON DELETE CASCADE,
    observed_property_id bigint NOT NULL REFERENCES observed_properties (id) ON DELETE CASCADE,
    rank                 integer NOT NULL,
    PRIMARY KEY (multi_datastream_id, observed_property_id),
    UNIQUE (multi_datastream_id, rank)
);
CREATE INDEX multi_datastream_observed_properties_op
    ON multi_datastream_observed_properties (observed_property_id);

-- An Observation belongs to exactly one Datastream or MultiDatastream. These ALTERs reach every partition
-- (or TimescaleDB chunk); partitions created later copy them (sta_ensure_observation_partition).
ALTER TABLE observations ALTER COLUMN datastream_id DROP NOT NULL;
ALTER TABLE observations
    ADD COLUMN multi_datastream_id bigint REFERENCES multi_datastreams (id) ON DELETE CASCADE;
-- Every existing row has a Datastream and no MultiDatastream, so on native partitions the check is added
-- NOT VALID: new rows are checked, and the migration does not read the whole table under an exclusive lock.
-- (TimescaleDB gets a validated one: NOT VALID is a native-partitioning path only.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        ALTER TABLE observations
            ADD CONSTRAINT observations_one_stream CHECK (num_nonnulls(datastream_id, multi_datastream_id) = 1);
    ELSE
        ALTER TABLE observations
            ADD CONSTRAINT observations_one_stream CHECK (num_nonnulls(datastream_id, multi_datastream_id) = 1)
            NOT VALID;
    END IF;
END
$$;
-- Partial: Datastream Observations (the ingest hot path) are not written to this index at all. Building it
-- reads every partition once (it cannot be CONCURRENTLY on a partitioned table).
CREATE INDEX observations_multi_datastream_time ON observations (multi_datastream_id, phenomenon_time_start DESC, id)
    WHERE multi_datastream_id IS NOT NULL;
