"""Writes: the REST writer (one transaction per request), request bodies, the data STA derives from what
is written (shared with bulk ingest), Data Arrays, and the ports that the platform fills."""
