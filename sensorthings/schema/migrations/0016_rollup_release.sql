-- CityStream 0016: a rollup bucket of a stream whose privacy class withholds something from the public
-- (migration 0014: a publication delay, a minimum aggregation or count) is notified to its members live, with
-- a restricted audience, and to the public once it may see it (citystream/rollup_finalizer.py, after the
-- delay): `released` is false from each change of such a bucket until that notification is sent (or found
-- not to be due to the public at all). Every other bucket is released when it is written. The partial index
-- holds the unreleased ones only.
ALTER TABLE rollup_buckets ADD COLUMN released boolean NOT NULL DEFAULT true;
CREATE INDEX rollup_buckets_unreleased ON rollup_buckets (bucket_end) WHERE NOT released;
