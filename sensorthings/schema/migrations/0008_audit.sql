-- The audit log (citystream/audit.py): one row per write request (and, later, per read of restricted data):
-- who (principal_kind, principal: the name, principal_id: the stable id a key, user or token has), when,
-- the method, the path and query as sent (bounded by the writer), the status answered and the rows it changed
-- (NULL: not known). Written in batches by each API process; listed newest first at GET /admin/audit.
--
-- Append-only: UPDATE and DELETE raise (the row trigger on the parent is cloned to every partition).
-- Retention drops whole day partitions (audit_drop_partitions), never rows; TRUNCATE is not blocked (the
-- test suite empties every table with it, and an operator who truncates has decided to).
--
-- One partition per UTC day, created on demand by the writer (audit_ensure_partition) when a COPY finds
-- none, as observation partitions are: created standalone and ATTACHed, so writers and readers of the log
-- are never blocked. No default partition: a missing one is an error the writer answers, never a slow path.
-- The primary key leads with id: it is the index that serves /admin/audit's newest-first keyset paging
-- (`id < before ORDER BY id DESC`), so every insert maintains one index, not two.
CREATE TABLE audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY,
    at timestamptz NOT NULL DEFAULT now(),
    principal_kind text NOT NULL,
    principal text NOT NULL,
    principal_id text,
    method text NOT NULL,
    path text NOT NULL,
    status smallint NOT NULL,
    rows integer,
    request_id text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

CREATE FUNCTION audit_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: its rows cannot be updated or deleted'
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'old entries go when their day partition is dropped (CITYSTREAM_AUDIT_RETENTION_DAYS)';
END
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();

CREATE FUNCTION audit_partition_name(day date) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'audit_log_' || to_char(day, 'YYYYMMDD')
$$;

CREATE FUNCTION audit_ensure_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    partition_name text := audit_partition_name(day);
    day_start timestamptz := day::timestamp AT TIME ZONE 'UTC';
    -- not day_start + interval '1 day': that is calendar arithmetic in the session's time zone (23 or 25 hours
    -- across a daylight saving change)
    day_end timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(partition_name));
    IF to_regclass(partition_name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE audit_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', partition_name);
    EXECUTE format('ALTER TABLE audit_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   partition_name, day_start, day_end);
END
$$;

-- Drops the day partitions before `keep_from` (a UTC day) and returns how many it dropped.
CREATE FUNCTION audit_drop_partitions(keep_from date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_log'::regclass AND c.relname ~ '^audit_log_[0-9]{8}$'
          AND to_date(substr(c.relname, 11), 'YYYYMMDD') < keep_from
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END
$$;
