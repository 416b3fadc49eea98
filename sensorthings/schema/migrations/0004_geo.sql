-- CityStream 0004: helpers for OGC API - Features (geo/).

-- A JSON object flattened to one level for GIS clients, whose attribute tables have no nested values:
-- {"a": {"b": 1}, "c": [1]} with prefix 'properties.' becomes {"properties.a.b": 1, "properties.c": [1]}.
-- Arrays stay JSON values. NULL or a non-object gives an empty object.
CREATE FUNCTION ogc_flat_properties(j jsonb, prefix text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(flat.key, flat.value), '{}'::jsonb)
    FROM (
        SELECT prefix || e.key AS key, e.value
        FROM jsonb_each(CASE WHEN jsonb_typeof(j) = 'object' THEN j ELSE '{}'::jsonb END) e
        WHERE jsonb_typeof(e.value) <> 'object'
        UNION ALL
        SELECT inner_e.key, inner_e.value
        FROM jsonb_each(CASE WHEN jsonb_typeof(j) = 'object' THEN j ELSE '{}'::jsonb END) e
        CROSS JOIN LATERAL jsonb_each(ogc_flat_properties(e.value, prefix || e.key || '.')) inner_e
        WHERE jsonb_typeof(e.value) = 'object'
    ) flat
$$;
