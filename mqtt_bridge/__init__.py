"""MQTT in (create Observations over MQTT) and out (STA subscription notifications)."""
