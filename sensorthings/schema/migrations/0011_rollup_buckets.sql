-- CityStream 0011: rollup bucket boundaries in SQL, for the backfill and recompute paths that aggregate raw
-- Observations in the database (sensorthings/write/rollups.py). sensorthings/model/rollups.py is the
-- definition (bucket_start / bucket_end); these functions compute the same instants, and
-- tests/sta/test_rollup_bucket_sql.py holds them to it.
--
-- The rule, in short: a local day starts at the first instant whose local date is that day (local midnight,
-- or the change itself where a DST change skips midnight, or the first of two midnights where it repeats);
-- P1D runs from a day start to the next, P1W from a local Monday, P1M from a local first of the month;
-- sub-day widths step in elapsed time from the start of the local day, the day's last bucket clipped at the
-- next day start. Buckets are clipped to the span of STA times (0001-01-01 to 9999-12-31T23:59:59.999999Z).
--
-- Why not just `date_trunc('day', t, zone)`: PostgreSQL resolves a local time that does not exist (a
-- skipped midnight) or exists twice (a repeated one) by its own rule, "the offset before the change for a
-- gap, the offset after it for an overlap". For a gap that begins exactly at midnight (America/Havana,
-- America/Santiago, Asia/Beirut) that is the change, as rollups.py wants, but for a repeated midnight
-- (America/Havana in November: 01:00 CDT back to 00:00 CST) it is the second 00:00, and for a gap that
-- straddles midnight it is a time inside the day, not its first instant. So:
--
-- - The fast path, taken by almost every row, applies only where the zone's UTC offset is the same 50 hours
--   before and after the instant (25 around a week's or month's boundaries). There a day is 24 hours and
--   its start is `t - local time of day`: plain arithmetic after one conversion to local time, inlined
--   into the caller's query (LANGUAGE sql, no plpgsql call per row). "Same offset at both ends" is taken
--   to mean "no change in between": tz data (2025b) has one pair of changes that cancel within 100 hours,
--   Africa/Freetown 1939-09-01/05 (95.7 h, a 20-minute summer time), where for about four hours of
--   instants the fast path can miss it; every other zone and year is exact.
-- - Every other row (about 2% in a zone with DST: those within two days of a change, and those within
--   two months of the ends of time) goes to sta_rollup_bucket_slow, plpgsql that follows rollups.py
--   step by step: the two readings of local midnight, the first that reads back as midnight, else a
--   bisection over whole seconds for the change (tz changes fall on whole seconds), and the day of an
--   instant found by stepping from its local date.
--
-- Volatility: STABLE, not IMMUTABLE. The results depend on the tz database (files under /usr/share/zoneinfo
-- with --with-system-tzdata), which an OS update changes under a running server; an index or a stored
-- generated column over an IMMUTABLE function would then silently disagree with new rows. Nothing here
-- depends on the session's TimeZone: intervals added to timestamptz never have a day or month part (those
-- would be calendar arithmetic in the session's zone), and naive local times are only converted with an
-- explicit zone.
--
-- Strictness: sta_rollup_bucket_start/_end return NULL when any argument is NULL, but are not declared
-- STRICT: PostgreSQL inlines a LANGUAGE sql function only if it is not STRICT or its body has no CASE (a
-- "non-strict construct"), and the per-row speed comes from that inlining. The plpgsql helpers are STRICT.
--
-- Zones: the names rollups.py accepts (IANA names; the SQL does not check them again: callers pass a
-- stored, validated rollup). PostgreSQL reads a zone argument first as a time zone abbreviation, so CET,
-- EET, MET, WET, EST, MST and HST would become fixed offsets (CET with no summer time); those seven are read
-- from the tz database's posix/ copy instead, which names the same files without the clash. (GMT, UTC,
-- UCT and Zulu are abbreviations too, but with the same fixed offset zero as the zones.)

-- Raises the error for a width rollups.py does not know. IMMUTABLE so that the inlinable functions that
-- call it stay inlinable; the planner folds it only where the width is a constant, and then raising while
-- planning is the right answer.
CREATE FUNCTION sta_rollup_width_error(width text) RETURNS interval
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RAISE EXCEPTION 'unknown rollup width %', quote_literal(left(width, 64))
        USING ERRCODE = 'invalid_parameter_value',
              HINT = 'use P1D, P1W, P1M or a sub-day width PTnM, PTnH or PTnHnM whose minutes divide 24 hours, '
                     'spelled as sensorthings/model/rollups.py spells it (PT1H, not PT60M)';
END
$$;

-- The step of a sub-day width. The list is rollups.SUB_DAY_WIDTHS written out (every whole number of minutes
-- that divides 1440, in its one accepted spelling): a CASE over constants is cheaper per row than a regular
-- expression and a cast, and it rejects every other spelling (PT60M, PT1H0M, pt1h) by construction. The
-- test compares it with rollups.py, both ways.
CREATE FUNCTION sta_rollup_step(width text) RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE width
        WHEN 'PT1M' THEN interval '1 minutes'
        WHEN 'PT2M' THEN interval '2 minutes'
        WHEN 'PT3M' THEN interval '3 minutes'
        WHEN 'PT4M' THEN interval '4 minutes'
        WHEN 'PT5M' THEN interval '5 minutes'
        WHEN 'PT6M' THEN interval '6 minutes'
        WHEN 'PT8M' THEN interval '8 minutes'
        WHEN 'PT9M' THEN interval '9 minutes'
        WHEN 'PT10M' THEN interval '10 minutes'
        WHEN 'PT12M' THEN interval '12 minutes'
        WHEN 'PT15M' THEN interval '15 minutes'
        WHEN 'PT16M' THEN interval '16 minutes'
        WHEN 'PT18M' THEN interval '18 minutes'
        WHEN 'PT20M' THEN interval '20 minutes'
        WHEN 'PT24M' THEN interval '24 minutes'
        WHEN 'PT30M' THEN interval '30 minutes'
        WHEN 'PT32M' THEN interval '32 minutes'
        WHEN 'PT36M' THEN interval '36 minutes'
        WHEN 'PT40M' THEN interval '40 minutes'
        WHEN 'PT45M' THEN interval '45 minutes'
        WHEN 'PT48M' THEN interval '48 minutes'
        WHEN 'PT1H' THEN interval '60 minutes'
        WHEN 'PT1H12M' THEN interval '72 minutes'
        WHEN 'PT1H20M' THEN interval '80 minutes'
        WHEN 'PT1H30M' THEN interval '90 minutes'
        WHEN 'PT1H36M' THEN interval '96 minutes'
        WHEN 'PT2H' THEN interval '120 minutes'
        WHEN 'PT2H24M' THEN interval '144 minutes'
        WHEN 'PT2H40M' THEN interval '160 minutes'
        WHEN 'PT3H' THEN interval '180 minutes'
        WHEN 'PT4H' THEN interval '240 minutes'
        WHEN 'PT4H48M' THEN interval '288 minutes'
        WHEN 'PT6H' THEN interval '360 minutes'
        WHEN 'PT8H' THEN interval '480 minutes'
        WHEN 'PT12H' THEN interval '720 minutes'
        ELSE sta_rollup_width_error(width)
    END
$$;

-- The zone name as PostgreSQL must be given it to read the tz database's zone of that name (see above).
CREATE FUNCTION sta_rollup_zone(zone text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN octet_length(zone) = 3 AND zone IN ('CET', 'EET', 'MET', 'WET', 'EST', 'MST', 'HST')
                THEN 'posix/' || zone ELSE zone END
$$;

-- The first instant whose local date (in `zone`) is `day` (a local midnight), as rollups._day_start finds
-- it: the two readings of midnight (with the offset before and after a nearby change), the earlier of those
-- that reads back as midnight (the first 00:00 where it repeats), else, midnight being skipped, the change
-- itself, found by bisection over whole seconds. The offsets before and after are those 26 hours either
-- side of midnight read as UTC: a zone's offset is within 16 hours of UTC, so that brackets the change,
-- assuming (as rollups.py's reliance on a fold does) one change near a midnight, not two.
CREATE FUNCTION sta_rollup_day_start(day timestamp, zone text) RETURNS timestamptz
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
DECLARE
    z text := sta_rollup_zone(zone);
    u timestamptz := timezone(interval '0', day);
    before interval := timezone(z, u - interval '26 hours') - (day - interval '26 hours');
    after interval := timezone(z, u + interval '26 hours') - (day + interval '26 hours');
    earlier timestamptz := u - greatest(before, after);
    later timestamptz := u - least(before, after);
    low bigint := 0;
    high bigint := extract(epoch FROM later - earlier)::bigint;
    middle bigint;
BEGIN
    IF timezone(z, earlier) = day THEN
        RETURN earlier;
    ELSIF timezone(z, later) = day THEN
        RETURN later;
    END IF;
    WHILE high - low > 1 LOOP
        middle := (low + high) / 2;
        IF timezone(z, earlier + make_interval(secs => middle)) >= day THEN
            high := middle;
        ELSE
            low := middle;
        END IF;
    END LOOP;
    RETURN earlier + make_interval(secs => high);
END
$$;

-- The bucket holding `t`, computed the long way (rollups._bounds): the local day of `t` (its local date,
-- or the day after where clocks went back across midnight and that day had already begun), the width's
-- span of days, sub-day steps from the day's start clipped at the next day's start, and the clip to the
-- span of STA times. For the rows the inlined fast path cannot vouch for.
CREATE FUNCTION sta_rollup_bucket_slow(t timestamptz, width text, zone text,
                                       OUT bucket_start timestamptz, OUT bucket_end timestamptz)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
DECLARE
    step interval;
    day timestamp;
    first timestamp;
    following timestamp;
BEGIN
    IF width NOT IN ('P1D', 'P1W', 'P1M') THEN
        step := sta_rollup_step(width);
    END IF;
    IF t < '0001-01-01 00:00:00+00' OR t > '9999-12-31 23:59:59.999999+00' THEN
        RAISE EXCEPTION 'rollup buckets cover the span of STA times, 0001-01-01 to 9999-12-31 (UTC); % is outside it',
            t AT TIME ZONE 'UTC' USING ERRCODE = 'datetime_field_overflow';
    END IF;
    day := date_trunc('day', timezone(sta_rollup_zone(zone), t));
    WHILE sta_rollup_day_start(day, zone) > t LOOP
        day := day - interval '1 day';
    END LOOP;
    WHILE sta_rollup_day_start(day + interval '1 day', zone) <= t LOOP  -- a skipped day is empty
        day := day + interval '1 day';
    END LOOP;
    IF step IS NOT NULL THEN
        bucket_start := date_bin(step, t, sta_rollup_day_start(day, zone));
        bucket_end := least(bucket_start + step, sta_rollup_day_start(day + interval '1 day', zone));
    ELSE
        IF width = 'P1D' THEN
            first := day;
            following := day + interval '1 day';
        ELSIF width = 'P1W' THEN
            first := date_trunc('week', day);
            following := first + interval '7 days';
        ELSE
            first := date_trunc('month', day);
            following := first + interval '1 month';
        END IF;
        bucket_start := sta_rollup_day_start(first, zone);
        bucket_end := sta_rollup_day_start(following, zone);
    END IF;
    bucket_start := greatest(bucket_start, '0001-01-01 00:00:00+00'::timestamptz);
    bucket_end := least(bucket_end, '9999-12-31 23:59:59.999999+00'::timestamptz);
END
$$;

-- The start (inclusive) of the bucket holding `t`: rollups.bucket_start. Fast path where no offset change
-- is near (see the top of this file): `t - local time of day` is the day's start, date_bin steps from it;
-- for P1W/P1M the boundary's reading of local midnight is checked to have the same offset 25 hours either
-- side, and an instant in the last two local days of the span also checks the end boundary (a repeat of
-- local time across that midnight would move it into the next span). Width and zone are parsed per row
-- (callers take them from a join); with constants the planner folds that away.
CREATE FUNCTION sta_rollup_bucket_start(t timestamptz, width text, zone text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN NOT (t >= '0001-03-01 00:00:00+00'::timestamptz AND t < '9999-11-01 00:00:00+00'::timestamptz)
            THEN (sta_rollup_bucket_slow(t, width, zone)).bucket_start
        WHEN width = 'P1W' THEN CASE
            WHEN timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t))) + interval '25 hours')
                 - timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t))) - interval '25 hours')
                 = interval '50 hours'
             AND (timezone(sta_rollup_zone(zone), t) < date_trunc('week', timezone(sta_rollup_zone(zone), t)) + interval '5 days'
                  OR timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t)) + interval '7 days') + interval '25 hours')
                     - timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t)) + interval '7 days') - interval '25 hours')
                     = interval '50 hours')
            THEN timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t)))
            ELSE (sta_rollup_bucket_slow(t, width, zone)).bucket_start END
        WHEN width = 'P1M' THEN CASE
            WHEN timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t))) + interval '25 hours')
                 - timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t))) - interval '25 hours')
                 = interval '50 hours'
             AND (timezone(sta_rollup_zone(zone), t) < date_trunc('month', timezone(sta_rollup_zone(zone), t)) + interval '1 month' - interval '2 days'
                  OR timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t)) + interval '1 month') + interval '25 hours')
                     - timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t)) + interval '1 month') - interval '25 hours')
                     = interval '50 hours')
            THEN timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t)))
            ELSE (sta_rollup_bucket_slow(t, width, zone)).bucket_start END
        WHEN timezone(sta_rollup_zone(zone), t + interval '50 hours') - timezone(sta_rollup_zone(zone), t - interval '50 hours')
             <> interval '100 hours'
            THEN (sta_rollup_bucket_slow(t, width, zone)).bucket_start
        WHEN width = 'P1D' THEN t - timezone(sta_rollup_zone(zone), t)::time::interval
        ELSE date_bin(sta_rollup_step(width), t, t - timezone(sta_rollup_zone(zone), t)::time::interval)
    END
$$;

-- The end (exclusive; LATEST for the last bucket of time, which includes it) of the bucket holding `t`,
-- normally a bucket's start: rollups.bucket_end. The same fast path; P1W/P1M check only the end boundary
-- (the local day of `t` is its local date or, across a repeated midnight, a later one, never earlier).
CREATE FUNCTION sta_rollup_bucket_end(t timestamptz, width text, zone text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN NOT (t >= '0001-03-01 00:00:00+00'::timestamptz AND t < '9999-11-01 00:00:00+00'::timestamptz)
            THEN (sta_rollup_bucket_slow(t, width, zone)).bucket_end
        WHEN width = 'P1W' THEN CASE
            WHEN timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t)) + interval '7 days') + interval '25 hours')
                 - timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t)) + interval '7 days') - interval '25 hours')
                 = interval '50 hours'
            THEN timezone(sta_rollup_zone(zone), date_trunc('week', timezone(sta_rollup_zone(zone), t)) + interval '7 days')
            ELSE (sta_rollup_bucket_slow(t, width, zone)).bucket_end END
        WHEN width = 'P1M' THEN CASE
            WHEN timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t)) + interval '1 month') + interval '25 hours')
                 - timezone(sta_rollup_zone(zone), timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t)) + interval '1 month') - interval '25 hours')
                 = interval '50 hours'
            THEN timezone(sta_rollup_zone(zone), date_trunc('month', timezone(sta_rollup_zone(zone), t)) + interval '1 month')
            ELSE (sta_rollup_bucket_slow(t, width, zone)).bucket_end END
        WHEN timezone(sta_rollup_zone(zone), t + interval '50 hours') - timezone(sta_rollup_zone(zone), t - interval '50 hours')
             <> interval '100 hours'
            THEN (sta_rollup_bucket_slow(t, width, zone)).bucket_end
        WHEN width = 'P1D' THEN t - timezone(sta_rollup_zone(zone), t)::time::interval + interval '24 hours'
        ELSE date_bin(sta_rollup_step(width), t, t - timezone(sta_rollup_zone(zone), t)::time::interval)
             + sta_rollup_step(width)
    END
$$;
