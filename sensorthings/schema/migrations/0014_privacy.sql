-- CityStream 0014: privacy classes (issue 18, section 3; sensorthings/model/privacy.py defines them,
-- sensorthings/query/visibility.py applies them to every read).
--
-- A Project, Datastream or MultiDatastream may declare a class (`privacy`): a publication delay, a minimum
-- public aggregation (a rollup width), a minimum count per rollup bucket. A stream's effective class is its
-- own, else its Project's; a rollup's is its source's (its own `privacy` must stay NULL). Reads must not
-- join Projects or sources per row, so the effective class is kept beside the stream, as `restricted` is
-- (migration 0009), by the triggers below:
--
-- - `effective_privacy`: the effective class as the API shows it (`effectivePrivacy`), with `from` saying
--   where it comes from (itself, Project, RollupOf, RollupOf/Project); NULL: no class;
-- - `privacy_delay`: the publication delay as an exact interval (no day or month part: subtracting it from
--   now() must not depend on the session's time zone);
-- - `privacy_withheld`: the public sees none of the stream's Observations (raw data of a stream with a
--   minimum aggregation, or a rollup narrower than it);
-- - `privacy_min_count`: the minimum count of a rollup's buckets (NULL for raw streams: it counts buckets);
-- - `privacy_withholds`: any of the three, i.e. the class may hide some Observation from the public. Only
--   these streams cost the reads anything (partial indexes).

ALTER TABLE projects ADD COLUMN privacy jsonb CHECK (jsonb_typeof(privacy) = 'object');

ALTER TABLE datastreams
    ADD COLUMN privacy jsonb CHECK (jsonb_typeof(privacy) = 'object'),
    ADD COLUMN effective_privacy jsonb,
    ADD COLUMN privacy_delay interval,
    ADD COLUMN privacy_withheld boolean NOT NULL DEFAULT false,
    ADD COLUMN privacy_min_count bigint,
    ADD COLUMN privacy_withholds boolean NOT NULL DEFAULT false;
ALTER TABLE multi_datastreams
    ADD COLUMN privacy jsonb CHECK (jsonb_typeof(privacy) = 'object'),
    ADD COLUMN effective_privacy jsonb,
    ADD COLUMN privacy_delay interval,
    ADD COLUMN privacy_withheld boolean NOT NULL DEFAULT false,
    ADD COLUMN privacy_min_count bigint,
    ADD COLUMN privacy_withholds boolean NOT NULL DEFAULT false;

-- The reads ask "which streams may this principal not see, or see only in part?" (restricted or
-- withholding, and not its own): one index over both, as few rows as there are such streams. The guard
-- (migration 0010) asks whether any withholding stream exists.
CREATE INDEX datastreams_restricted_or_withholding ON datastreams (id, project_id, party_id)
    WHERE restricted OR privacy_withholds;
CREATE INDEX multi_datastreams_restricted_or_withholding ON multi_datastreams (id, project_id, party_id)
    WHERE restricted OR privacy_withholds;
CREATE INDEX datastreams_withholding ON datastreams (id) WHERE privacy_withholds;
CREATE INDEX multi_datastreams_withholding ON multi_datastreams (id) WHERE privacy_withholds;

-- The nominal length of a rollup width in minutes, to compare widths: P1D is 24 hours, P1W 7 days, P1M 28
-- days (a month is at least as wide as any day or week). Widths come validated (model/rollups.py WIDTHS).
CREATE FUNCTION sta_privacy_width_minutes(width text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE width WHEN 'P1D' THEN 1440 WHEN 'P1W' THEN 10080 WHEN 'P1M' THEN 40320
                      ELSE extract(epoch FROM sta_rollup_step(width)) / 60 END
$$;

-- A publication delay (an ISO 8601 duration of days, hours, minutes and seconds, validated by
-- model/privacy.py) as an exact interval: the days become 24 hours each.
CREATE FUNCTION sta_privacy_delay(delay text) RETURNS interval
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT make_interval(hours => extract(day FROM d)::int * 24) + (d - make_interval(days => extract(day FROM d)::int))
    FROM (SELECT delay::interval AS d) AS parsed
$$;

-- The columns that follow from a class (`base`, NULL or {} for none) declared at `origin`, for a stream
-- that is a rollup of `rollup_width` (NULL: raw data).
CREATE FUNCTION sta_privacy_columns(base jsonb, origin text, rollup_width text,
                                    OUT effective jsonb, OUT delay interval, OUT withheld boolean,
                                    OUT min_count bigint, OUT withholds boolean)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    withheld := false;
    withholds := false;
    IF base IS NULL OR base = '{}'::jsonb THEN
        RETURN;
    END IF;
    effective := base || jsonb_build_object('from', origin);
    IF base ? 'publicationDelay' THEN
        delay := sta_privacy_delay(base ->> 'publicationDelay');
    END IF;
    IF base ? 'minimumPublicAggregation' THEN
        withheld := rollup_width IS NULL OR sta_privacy_width_minutes(rollup_width)
                                            < sta_privacy_width_minutes(base ->> 'minimumPublicAggregation');
    END IF;
    IF rollup_width IS NOT NULL AND base ? 'minimumCount' THEN
        min_count := (base ->> 'minimumCount')::bigint;
    END IF;
    withholds := delay IS NOT NULL OR withheld OR min_count IS NOT NULL;
END $$;

CREATE FUNCTION sta_datastream_privacy() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    base jsonb := NEW.privacy;
    origin text := 'itself';
    width text;
    source_project bigint;
    derived record;
BEGIN
    IF NEW.rollup_of_id IS NOT NULL THEN
        IF NEW.privacy IS NOT NULL THEN
            RAISE EXCEPTION 'a rollup''s privacy class is its source''s: leave privacy out here and set it on '
                            'its RollupOf, Datastream %', NEW.rollup_of_id USING ERRCODE = 'check_violation';
        END IF;
        SELECT s.privacy, s.project_id INTO base, source_project FROM datastreams s WHERE s.id = NEW.rollup_of_id;
        origin := 'RollupOf';
        IF base IS NULL THEN
            SELECT p.privacy INTO base FROM projects p WHERE p.id = source_project;
            origin := 'RollupOf/Project';
        END IF;
        width := NEW.rollup ->> 'width';
    ELSIF base IS NULL THEN
        SELECT p.privacy INTO base FROM projects p WHERE p.id = NEW.project_id;
        origin := 'Project';
    END IF;
    derived := sta_privacy_columns(base, origin, width);
    NEW.effective_privacy := derived.effective;
    NEW.privacy_delay := derived.delay;
    NEW.privacy_withheld := derived.withheld;
    NEW.privacy_min_count := derived.min_count;
    NEW.privacy_withholds := derived.withholds;
    RETURN NEW;
END $$;

CREATE FUNCTION sta_multi_datastream_privacy() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    base jsonb := NEW.privacy;
    origin text := 'itself';
    derived record;
BEGIN
    IF base IS NULL THEN
        SELECT p.privacy INTO base FROM projects p WHERE p.id = NEW.project_id;
        origin := 'Project';
    END IF;
    derived := sta_privacy_columns(base, origin, NULL);
    NEW.effective_privacy := derived.effective;
    NEW.privacy_delay := derived.delay;
    NEW.privacy_withheld := derived.withheld;
    NEW.privacy_min_count := derived.min_count;
    NEW.privacy_withholds := derived.withholds;
    RETURN NEW;
END $$;

CREATE TRIGGER datastreams_privacy BEFORE INSERT OR UPDATE OF privacy, project_id, rollup_of_id ON datastreams
    FOR EACH ROW EXECUTE FUNCTION sta_datastream_privacy();
CREATE TRIGGER multi_datastreams_privacy BEFORE INSERT OR UPDATE OF privacy, project_id ON multi_datastreams
    FOR EACH ROW EXECUTE FUNCTION sta_multi_datastream_privacy();

-- A source's class or Project changed: its rollups follow (rollups of rollups do not exist).
CREATE FUNCTION sta_datastream_privacy_rollups() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE datastreams SET privacy = privacy WHERE rollup_of_id = NEW.id;
    RETURN NULL;
END $$;

CREATE TRIGGER datastreams_privacy_rollups AFTER UPDATE OF privacy, project_id ON datastreams
    FOR EACH ROW WHEN (NEW.rollup_of_id IS NULL AND (OLD.privacy IS DISTINCT FROM NEW.privacy
                                                     OR OLD.project_id IS DISTINCT FROM NEW.project_id))
    EXECUTE FUNCTION sta_datastream_privacy_rollups();

-- A Project's class changed: the streams that inherit it, and the rollups of those, follow (in the same
-- transaction). Each row's trigger reads the Project and the source as they are now, so the order in
-- which the rows are updated does not matter.
CREATE FUNCTION sta_project_privacy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE datastreams SET privacy = privacy
     WHERE (project_id = NEW.id AND privacy IS NULL AND rollup_of_id IS NULL)
        OR rollup_of_id IN (SELECT s.id FROM datastreams s WHERE s.project_id = NEW.id AND s.privacy IS NULL);
    UPDATE multi_datastreams SET privacy = privacy WHERE project_id = NEW.id AND privacy IS NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER projects_privacy AFTER UPDATE OF privacy ON projects
    FOR EACH ROW WHEN (OLD.privacy IS DISTINCT FROM NEW.privacy) EXECUTE FUNCTION sta_project_privacy();

ANALYZE datastreams;
ANALYZE multi_datastreams;
