-- CityStream 0002: typed views of JSON values for $filter on properties, parameters and object results.
-- Each returns NULL when the JSON value has another type, so a comparison on it is simply false.
-- Plain SQL and IMMUTABLE, so PostgreSQL inlines them into the compiled statement.

CREATE FUNCTION sta_json_number(j jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(j) = 'number' THEN (j #>> '{}')::double precision END
$$;

CREATE FUNCTION sta_json_text(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(j) = 'string' THEN j #>> '{}' END
$$;

CREATE FUNCTION sta_json_boolean(j jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(j) = 'boolean' THEN (j #>> '{}')::boolean END
$$;

-- A numeric reading of text, NULL when the text is not a number (for `result gt '3'`).
CREATE FUNCTION sta_text_number(t text) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN t ~ '^\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$'
                THEN t::double precision END
$$;

-- Append one key to a JSON object built by json_build_object, leaving it unchanged when the value is NULL.
-- Used for @iot.nextLink / @iot.count of expanded collections, which exist only sometimes. json (not
-- jsonb) keeps key order and the exact text of numbers.
CREATE FUNCTION sta_json_with(obj json, key text, value json) RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN value IS NULL THEN obj
        WHEN obj::text = '{}' THEN ('{' || to_json(key)::text || ':' || value::text || '}')::json
        ELSE (left(rtrim(obj::text), -1) || ', ' || to_json(key)::text || ' : ' || value::text || '}')::json
    END
$$;
