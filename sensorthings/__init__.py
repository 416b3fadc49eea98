"""The SensorThings API 1.1 domain, in stages that import only downward:

- `model/`: entities and relations, field kinds, JSON values and times, result types, ids, errors, VERSION;
- `query/`: resource paths, query options, the OData grammar and expressions, the compiler to ONE SQL
  statement, and the SQL building blocks the other stages share;
- `write/`: the REST writer (one transaction per request), request bodies, derived data (Datastream
  summaries, generated FeaturesOfInterest, partitions), Data Arrays, and the ports the platform fills;
- `http/`: the STA routes, `$batch`, result formats, the OpenAPI document and shared HTTP helpers;
- `schema/`: the migrations and how they are applied.

Imports nothing from ingest, mqtt_bridge, geo or citystream."""
