"""The SensorThings API 1.1 domain: entity model, schema and migrations, path/query parsing, SQL compiler,
writer and REST surface. Imports nothing from ingest, mqtt_bridge, geo or citystream."""
