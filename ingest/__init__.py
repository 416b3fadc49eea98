"""The hot write path for Observations (validate -> queue -> batch -> binary COPY -> commit -> acknowledge),
for MQTT and for the REST routes (POST Observations, CreateObservations: their ObservationSink port). Its
domain rules come from `sensorthings.write` (bodies and derived data), never from the REST writer."""
