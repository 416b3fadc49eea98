-- CityStream 0010: the guard of reads that skip the hiding predicates.
--
-- While nothing is restricted (the usual state of an open-data platform), a read by a principal who may not
-- see restricted data runs the plain statement (the same plan as everyone's) under a guard that asks, in the
-- statement's own snapshot, whether any restricted row exists, and if so calls this function: the statement
-- fails with SQLSTATE CS001 and the platform runs it again with the hiding predicates
-- (sensorthings/query/visibility.py). So the shortcut can never show restricted data, however stale the
-- platform's idea of "nothing is restricted" is.

CREATE FUNCTION sta_restricted_data_found() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'restricted data exists: read again with the hiding predicates' USING ERRCODE = 'CS001';
END $$;

-- The guard looks for restricted streams through the partial indexes of migration 0009; statistics that
-- predate the `restricted` column would have the planner read whole tables instead.
ANALYZE datastreams;
ANALYZE multi_datastreams;
ANALYZE projects;
