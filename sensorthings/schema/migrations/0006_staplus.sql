-- CityStream 0006: the STAplus (OGC 22-022r1) entity types Party, Project and License, served under /v1.1.
-- A Thing, Datastream or MultiDatastream may name its owner (Party); a Datastream or MultiDatastream its
-- Project and its License. Every link is optional: the new columns are nullable, so existing rows migrate
-- as they are (no party, project or licence), and deleting a Party, Project or License leaves the data in
-- place, unlinked (ON DELETE SET NULL). Observations are not touched: they reach these through their stream.

CREATE TABLE parties (
    id           bigserial PRIMARY KEY,
    description  text,
    -- the principal's id in the platform's authentication (an API key id, a user name, a token's `sub`);
    -- unique where given: one Party per principal
    auth_id      text UNIQUE,
    role         text NOT NULL CHECK (role IN ('individual', 'institutional')),
    display_name text
);

CREATE TABLE projects (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL,
    description    text,
    classification text,
    terms_of_use   text NOT NULL,
    privacy_policy text,
    creation_time  timestamptz NOT NULL,
    start_time     timestamptz,
    end_time       timestamptz,
    url            text,
    properties     jsonb
);

CREATE TABLE licenses (
    id               bigserial PRIMARY KEY,
    name             text NOT NULL,
    definition       text NOT NULL,
    description      text,
    logo             text,
    attribution_text text,
    properties       jsonb
);

-- Adding a nullable column without a default rewrites no table, and its foreign key has only NULLs to check.
-- The indexes serve Parties(1)/Datastreams and the SET NULL of a delete; partial, as most rows have no link.
ALTER TABLE things ADD COLUMN party_id bigint REFERENCES parties (id) ON DELETE SET NULL;
CREATE INDEX things_party ON things (party_id) WHERE party_id IS NOT NULL;

ALTER TABLE datastreams
    ADD COLUMN party_id   bigint REFERENCES parties (id) ON DELETE SET NULL,
    ADD COLUMN project_id bigint REFERENCES projects (id) ON DELETE SET NULL,
    ADD COLUMN license_id bigint REFERENCES licenses (id) ON DELETE SET NULL;
CREATE INDEX datastreams_party ON datastreams (party_id) WHERE party_id IS NOT NULL;
CREATE INDEX datastreams_project ON datastreams (project_id) WHERE project_id IS NOT NULL;
CREATE INDEX datastreams_license ON datastreams (license_id) WHERE license_id IS NOT NULL;

ALTER TABLE multi_datastreams
    ADD COLUMN party_id   bigint REFERENCES parties (id) ON DELETE SET NULL,
    ADD COLUMN project_id bigint REFERENCES projects (id) ON DELETE SET NULL,
    ADD COLUMN license_id bigint REFERENCES licenses (id) ON DELETE SET NULL;
CREATE INDEX multi_datastreams_party ON multi_datastreams (party_id) WHERE party_id IS NOT NULL;
CREATE INDEX multi_datastreams_project ON multi_datastreams (project_id) WHERE project_id IS NOT NULL;
CREATE INDEX multi_datastreams_license ON multi_datastreams (license_id) WHERE license_id IS NOT NULL;
