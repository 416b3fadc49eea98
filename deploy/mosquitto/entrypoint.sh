#!/bin/sh
# Entrypoint of the `mqtt` service in docker-compose.yml (image deploy/mosquitto/Dockerfile): creates
# Mosquitto's password file and the plugin's decision secret from the environment, then starts Mosquitto (through the image's own
# /docker-entrypoint.sh where there is one, as in eclipse-mosquitto images).
#
#   CITYSTREAM_MQTT_PLATFORM_PASSWORD  password of `citystream`, the platform's account (the app connects with it)
#   CITYSTREAM_MQTT_SENSOR_PASSWORD    password of `sensor`, the shared device account (creates anywhere)
#
# Who may do what, CityStream's plugin decides (mosquitto.conf beside this file): API keys, users and OIDC
# tokens it asks the platform about, sending the platform password (decision-secret) as its own secret.
# The password file is rewritten on every start: to change a password, change the variable and restart
# the service. Passwords go to mosquitto_passwd on stdin, never on a command line; each must be one line.
# Arguments, if any, replace the default command (`mosquitto -c /mosquitto/config/mosquitto.conf`).
set -eu

auth_dir="${CITYSTREAM_MQTT_AUTH_DIR:-/mosquitto/auth}"
: "${CITYSTREAM_MQTT_PLATFORM_PASSWORD:?set CITYSTREAM_MQTT_PLATFORM_PASSWORD (environment or .env file)}"
: "${CITYSTREAM_MQTT_SENSOR_PASSWORD:?set CITYSTREAM_MQTT_SENSOR_PASSWORD (environment or .env file)}"

umask 077
mkdir -p "$auth_dir"
new="$auth_dir/passwd.new"
rm -f "$new"
: >"$new"
printf '%s\n%s\n' "$CITYSTREAM_MQTT_PLATFORM_PASSWORD" "$CITYSTREAM_MQTT_PLATFORM_PASSWORD" |
    mosquitto_passwd -c "$new" citystream >/dev/null
printf '%s\n%s\n' "$CITYSTREAM_MQTT_SENSOR_PASSWORD" "$CITYSTREAM_MQTT_SENSOR_PASSWORD" |
    mosquitto_passwd "$new" sensor >/dev/null
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto:mosquitto "$auth_dir"
fi
mv -f "$new" "$auth_dir/passwd"
secret="$auth_dir/decision-secret.new"
printf '%s\n' "$CITYSTREAM_MQTT_PLATFORM_PASSWORD" >"$secret"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto:mosquitto "$secret"
fi
mv -f "$secret" "$auth_dir/decision-secret"
unset CITYSTREAM_MQTT_PLATFORM_PASSWORD CITYSTREAM_MQTT_SENSOR_PASSWORD

[ "$#" -gt 0 ] || set -- /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
if [ -x /docker-entrypoint.sh ]; then
    exec /docker-entrypoint.sh "$@"
fi
exec "$@"
