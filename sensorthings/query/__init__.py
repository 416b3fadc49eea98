"""From a URL to ONE SQL statement: resource paths, query options, the OData grammar and expressions, the
compiler, and the SQL building blocks shared with the writer, ingest and the OGC API."""
