-- CityStream 0009: restricted data (sensorthings/query/visibility.py) and roles held for a Project.
--
-- A Project is `public` or `restricted`; a Datastream or MultiDatastream inherits its Project's visibility
-- unless it sets its own (NULL: inherit; without a Project: public). Reads filter on the stream's effective
-- visibility, so it is kept beside it in `restricted`, set by the triggers below whenever the stream's own
-- visibility, its Project or the Project's visibility changes (these are small metadata tables: a trigger
-- per row costs nothing there; Observations carry no flag, they are filtered by their stream's id).

-- NULL is public (a Project created or replaced without one), so that only `restricted` has to be said.
ALTER TABLE projects ADD COLUMN visibility text CHECK (visibility IN ('public', 'restricted'));

ALTER TABLE datastreams
    ADD COLUMN visibility text CHECK (visibility IN ('public', 'restricted')),
    ADD COLUMN restricted boolean NOT NULL DEFAULT false;
ALTER TABLE multi_datastreams
    ADD COLUMN visibility text CHECK (visibility IN ('public', 'restricted')),
    ADD COLUMN restricted boolean NOT NULL DEFAULT false;

-- The reads ask "which restricted streams may this principal not see?" on every request: a partial index
-- keeps that an index-only look at the (usually few, often no) restricted rows.
CREATE INDEX datastreams_restricted ON datastreams (id, project_id, party_id) WHERE restricted;
CREATE INDEX multi_datastreams_restricted ON multi_datastreams (id, project_id, party_id) WHERE restricted;

CREATE FUNCTION sta_stream_restricted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.restricted := coalesce(NEW.visibility,
                               (SELECT p.visibility FROM projects p WHERE p.id = NEW.project_id),
                               'public') = 'restricted';
    RETURN NEW;
END $$;

CREATE TRIGGER datastreams_restricted BEFORE INSERT OR UPDATE OF visibility, project_id ON datastreams
    FOR EACH ROW EXECUTE FUNCTION sta_stream_restricted();
CREATE TRIGGER multi_datastreams_restricted BEFORE INSERT OR UPDATE OF visibility, project_id ON multi_datastreams
    FOR EACH ROW EXECUTE FUNCTION sta_stream_restricted();

-- A Project's visibility changed: its streams that inherit it follow (in the same transaction).
CREATE FUNCTION sta_project_visibility() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_restricted boolean := coalesce(NEW.visibility, 'public') = 'restricted';
BEGIN
    UPDATE datastreams SET restricted = now_restricted
     WHERE project_id = NEW.id AND visibility IS NULL AND restricted <> now_restricted;
    UPDATE multi_datastreams SET restricted = now_restricted
     WHERE project_id = NEW.id AND visibility IS NULL AND restricted <> now_restricted;
    RETURN NULL;
END $$;

CREATE TRIGGER projects_visibility AFTER UPDATE OF visibility ON projects
    FOR EACH ROW WHEN (OLD.visibility IS DISTINCT FROM NEW.visibility) EXECUTE FUNCTION sta_project_visibility();

-- Roles held for Projects: a key or user with `project_ids` holds its roles only for those Projects' data
-- (NULL: everywhere, as before).
ALTER TABLE api_keys ADD COLUMN project_ids bigint[];
ALTER TABLE api_users ADD COLUMN project_ids bigint[];
