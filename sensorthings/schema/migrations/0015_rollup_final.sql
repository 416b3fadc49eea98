-- CityStream 0015: rollup buckets are provisional until their rollup's `finalAfter` has passed since their
-- end, then final (sensorthings/model/rollups.py). `final` is set when a bucket is written after that
-- time, and by the finalizer (citystream/rollup_finalizer.py) for buckets that were written before it. The
-- partial index holds only the provisional buckets (the last few of each rollup), which is all the
-- finalizer ever reads.
ALTER TABLE rollup_buckets ADD COLUMN final boolean NOT NULL DEFAULT false;
CREATE INDEX rollup_buckets_provisional ON rollup_buckets (bucket_end) WHERE NOT final;

-- Rollups declared before 0015 get the default lateness allowance in their definition.
UPDATE datastreams SET rollup = rollup || '{"finalAfter": "PT1H"}'::jsonb
WHERE rollup IS NOT NULL AND NOT rollup ? 'finalAfter';
