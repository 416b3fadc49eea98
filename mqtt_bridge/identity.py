"""Who the bridge is at the broker: its client id and its shared-subscription group. Defined once, because
the broker must reserve both to the platform account (citystream/mosquitto_plugin/citystream_auth.c): anyone
else using the client id would take over the bridge's persistent session, anyone joining the group would be
handed part of the sensors' Observations."""

CLIENT_ID = "citystream-bridge"
"""The default client id (CITYSTREAM_MQTT_CLIENT_ID); `citystream bridge --workers N` appends -w1 … -wN."""
SHARED_GROUP = "citystream"
"""The MQTT 5 shared subscription group of every bridge process: `$share/citystream/<create topic>`."""
