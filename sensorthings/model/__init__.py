"""The entity model and what it is made of: entities and relations, field kinds, JSON values and times,
result types, Observation ids, errors. Imports nothing else of sensorthings."""

VERSION = "v1.1"
"""The STA version served, as it appears in URLs and MQTT topics."""
