-- CityStream 0001: the SensorThings API 1.1 core schema.
-- Extensions (postgis, timescaledb when available) are created by sensorthings.migrate before this runs.

-- ISO 8601 UTC rendering used by every JSON response: seconds only when there is no fraction,
-- otherwise the fraction without trailing zeros (what STA clients and FROST produce).
CREATE FUNCTION sta_time(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN t IS NULL THEN NULL
        WHEN date_part('microseconds', t)::bigint % 1000000 = 0
            THEN to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        ELSE rtrim(to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '0') || 'Z'
    END
$$;

-- An interval reads back as 'start/end'; a missing or zero-length end reads back as an instant.
CREATE FUNCTION sta_interval(s timestamptz, e timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN s IS NULL THEN NULL
        WHEN e IS NULL OR e = s THEN sta_time(s)
        ELSE sta_time(s) || '/' || sta_time(e)
    END
$$;

CREATE TABLE things (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    description text NOT NULL,
    properties  jsonb
);

CREATE TABLE locations (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    description   text NOT NULL,
    encoding_type text NOT NULL,
    location      jsonb NOT NULL,
    location_geom geometry(Geometry, 4326),
    properties    jsonb
);
CREATE INDEX locations_geom ON locations USING gist (location_geom);

CREATE TABLE thing_locations (
    thing_id    bigint NOT NULL REFERENCES things (id) ON DELETE CASCADE,
    location_id bigint NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
    PRIMARY KEY (thing_id, location_id)
);
CREATE INDEX thing_locations_location ON thing_locations (location_id);

CREATE TABLE historical_locations (
    id       bigserial PRIMARY KEY,
    time     timestamptz NOT NULL,
    thing_id bigint NOT NULL REFERENCES things (id) ON DELETE CASCADE
);
CREATE INDEX historical_locations_thing ON historical_locations (thing_id, time DESC);

CREATE TABLE location_historical_locations (
    location_id            bigint NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
    historical_location_id bigint NOT NULL REFERENCES historical_locations (id) ON DELETE CASCADE,
    PRIMARY KEY (location_id, historical_location_id)
);
CREATE INDEX location_historical_locations_hl ON location_historical_locations (historical_location_id);

CREATE TABLE sensors (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    description   text NOT NULL,
    encoding_type text NOT NULL,
    metadata      jsonb NOT NULL,
    properties    jsonb
);

CREATE TABLE observed_properties (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    definition  text NOT NULL,
    description text NOT NULL,
    properties  jsonb
);

CREATE TABLE datastreams (
    id                    bigserial PRIMARY KEY,
    name                  text NOT NULL,
    description           text NOT NULL,
    observation_type      text NOT NULL,
    unit_of_measurement   jsonb NOT NULL,
    observed_area         geometry(Geometry, 4326),
    phenomenon_time_start timestamptz,
    phenomenon_time_end   timestamptz,
    result_time_start     timestamptz,
    result_time_end       timestamptz,
    properties            jsonb,
    thing_id              bigint NOT NULL REFERENCES things (id) ON DELETE CASCADE,
    sensor_id             bigint NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    observed_property_id  bigint NOT NULL REFERENCES observed_properties (id) ON DELETE CASCADE
);
CREATE INDEX datastreams_thing ON datastreams (thing_id);
CREATE INDEX datastreams_sensor ON datastreams (sensor_id);
CREATE INDEX datastreams_observed_property ON datastreams (observed_property_id);
CREATE INDEX datastreams_observed_area ON datastreams USING gist (observed_area);

CREATE TABLE features_of_interest (
    id            bigserial PRIMARY KEY,
    name          text NOT NULL,
    description   text NOT NULL,
    encoding_type text NOT NULL,
    feature       jsonb NOT NULL,
    feature_geom  geometry(Geometry, 4326),
    properties    jsonb,
    -- set on a FeatureOfInterest generated from a Location; reused while that Location stands unchanged
    generated_from_location_id bigint UNIQUE REFERENCES locations (id) ON DELETE SET NULL
);
CREATE INDEX features_of_interest_geom ON features_of_interest USING gist (feature_geom);

-- Observation ids are allocated by the application: sequence value * 65536 + day index of the
-- phenomenon time (see sensorthings/observation_ids.py), so an id lookup prunes to one partition.
CREATE SEQUENCE observation_id_seq AS bigint;

-- Observations: time-partitioned on phenomenon_time_start. Results keep their JSON type
-- (result_type: 0 null, 1 number, 2 string, 3 boolean, 4 object/array); numbers keep their exact
-- text in result_string. No triggers: Datastream summaries are updated once per write batch.
DO $$
DECLARE
    columns text := $cols$
        id                    bigint NOT NULL,
        phenomenon_time_start timestamptz NOT NULL,
        phenomenon_time_end   timestamptz,
        result_time           timestamptz,
        result_type           smallint NOT NULL,
        result_number         double precision,
        result_string         text,
        result_boolean        boolean,
        result_json           jsonb,
        result_quality        jsonb,
        valid_time_start      timestamptz,
        valid_time_end        timestamptz,
        parameters            jsonb,
        datastream_id         bigint NOT NULL REFERENCES datastreams (id) ON DELETE CASCADE,
        feature_id            bigint NOT NULL REFERENCES features_of_interest (id) ON DELETE CASCADE,
        PRIMARY KEY (id, phenomenon_time_start)
    $cols$;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        EXECUTE 'CREATE TABLE observations (' || columns || ')';
        PERFORM create_hypertable('observations', 'phenomenon_time_start',
                                  chunk_time_interval => interval '7 days');
    ELSE
        EXECUTE 'CREATE TABLE observations (' || columns || ') PARTITION BY RANGE (phenomenon_time_start)';
    END IF;
END
$$;
CREATE INDEX observations_datastream_time ON observations (datastream_id, phenomenon_time_start DESC, id);
-- Serves FeaturesOfInterest(id)/Observations and the cascade when a FeatureOfInterest is deleted.
CREATE INDEX observations_feature ON observations (feature_id);

CREATE TABLE observation_relocations (
    id        bigint PRIMARY KEY,
    day_start timestamptz NOT NULL
);

-- Native partitioning: one partition per UTC month. A write that meets a missing month rolls back and the
-- application creates the partition with sta_ensure_observation_partition outside its transaction, then
-- retries (creating it inside a request transaction deadlocked with concurrent writers). The partition is
-- created standalone and ATTACHed: SHARE UPDATE EXCLUSIVE on observations never blocks readers or writers,
-- but adding its foreign keys briefly takes SHARE ROW EXCLUSIVE on datastreams and features_of_interest,
-- so a concurrent writer can still be chosen as a deadlock victim; the application retries those.
-- No default partition, so a missing partition is a loud error, never a silent slow path.
-- With TimescaleDB, chunks are created automatically and both functions do nothing.
CREATE FUNCTION sta_observation_partition_name(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT 'observations_' || to_char(t AT TIME ZONE 'UTC', 'YYYYMM')
$$;

CREATE FUNCTION sta_observation_partition_missing(t timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'observations'::regclass)
       AND to_regclass(sta_observation_partition_name(t)) IS NULL
$$;

CREATE FUNCTION sta_ensure_observation_partition(t timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    partition_name text := sta_observation_partition_name(t);
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(partition_name));
    IF NOT sta_observation_partition_missing(t) THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE observations INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', partition_name);
    EXECUTE format('ALTER TABLE observations ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   partition_name, month_start, month_start + interval '1 month');
END
$$;
