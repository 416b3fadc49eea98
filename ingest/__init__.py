"""The hot write path for Observations (validate -> queue -> batch -> binary COPY -> commit -> acknowledge).

Empty until the MQTT/ingest issue: the foundation writes Observations through sensorthings.write.writer inside
the request's transaction."""
