-- CityStream 0013: retention of raw Observations (citystream/retention.py, docs/retention.md).
--
-- `retention` says how long a Datastream or MultiDatastream keeps its Observations: an ISO 8601 duration of
-- whole days, weeks, months or years (P90D, P1W, P6M, P2Y; at least a day, at most 1000 years), checked by
-- the API (sensorthings/model/kinds.py, RetentionPeriod); NULL keeps them forever. The CHECK only makes sure
-- that every stored value casts to an interval.
--
-- `retained_from` is the stream's horizon: its Observations whose phenomenonTime starts before it are gone
-- (or going: a pass raises the horizon before it deletes). Only the platform sets it, and it never moves
-- back (a longer retention, or none, does not bring deleted data back), so rollup recomputation can tell
-- from it which buckets of a source retention has cut into. NULL: nothing was ever deleted.
ALTER TABLE datastreams
    ADD COLUMN retention text CONSTRAINT datastreams_retention_form
        CHECK (retention ~ '^P([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?$' AND retention <> 'P'
               AND octet_length(retention) <= 32),
    ADD COLUMN retained_from timestamptz;
ALTER TABLE multi_datastreams
    ADD COLUMN retention text CONSTRAINT multi_datastreams_retention_form
        CHECK (retention ~ '^P([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?$' AND retention <> 'P'
               AND octet_length(retention) <= 32),
    ADD COLUMN retained_from timestamptz;

-- The horizon a retention gives at `at`: that long before it, in calendar terms of UTC (P1M before March 31
-- is February 28 or 29; a day is a calendar day). Explicit about UTC so that the session's TimeZone, which
-- calendar arithmetic on timestamptz would otherwise follow, never moves it.
CREATE FUNCTION sta_retention_horizon(retention text, at timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT timezone('UTC', timezone('UTC', at) - retention::interval)
$$;
