#!/usr/bin/env bash
# CityStream quickstart: install what the platform needs, build .venv, then run `citystream up`.
#
#   bash scripts/quickstart.sh [--no-start] [citystream up flags...]
#
# Debian 12 / Ubuntu 24.04 (or newer): installs PostgreSQL >= 15 with the matching PostGIS 3, Mosquitto,
# mosquitto-clients, GDAL, python3-venv, and a C compiler with the headers of the broker plugin (gcc, libc6-dev,
# mosquitto-dev, libmosquitto-dev, libcurl4-openssl-dev, libcjson-dev, uthash-dev: the embedded broker's
# plugin is compiled on its first start), and
# Node.js with npm when `node` or `npm` is missing (nodejs, npm: the test suite's JavaScript MQTT client)
# with apt-get (as root, or through sudo). Without either it prints the exact apt-get line to run and exits
# non-zero. Then creates .venv in the repository and installs CityStream with its test extras, and MQTT.js
# for the tests (`npm ci` in tests/clients/js, versions pinned by its package-lock.json). Every step is
# skipped when already done, so a second run takes seconds.
# --no-start stops after the install; any other arguments go to `citystream up` (e.g. --http-port 9090).
# As root, PostgreSQL and Mosquitto run as their system users; if those cannot enter the repository (e.g. it
# lives under /root, mode 0700) and no --data-dir or CITYSTREAM_DATA_DIR is given, the data goes to
# /var/lib/citystream instead of ./.citystream.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

start=1
data_dir_given=0
[[ -n "${CITYSTREAM_DATA_DIR:-}" ]] && data_dir_given=1
up_args=()
for arg in "$@"; do
    case "$arg" in
        --no-start) start=0 ;;
        --data-dir | --data-dir=*) data_dir_given=1; up_args+=("$arg") ;;
        *) up_args+=("$arg") ;;
    esac
done

say() { printf 'quickstart: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------- system packages

pg_major_installed() {
    # Highest installed PostgreSQL server major >= 15 that also has PostGIS, or nothing.
    local dir major
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        major="$(basename "$(dirname "$dir")")"
        if [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 15)) && [[ -x "$dir/postgres" && -x "$dir/initdb" ]] \
            && [[ -f "/usr/share/postgresql/$major/extension/postgis.control" ]]; then
            echo "$major"
            return 0
        fi
    done
    return 0
}

python_ok() {
    command -v python3 >/dev/null 2>&1 \
        && python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

plugin_build_ok() {
    # What citystream/mosquitto_plugin/citystream_auth.c needs: a C compiler, libc, the Mosquitto headers,
    # libcurl (it asks the platform), cJSON (it reads the answers) and uthash (its tables).
    { command -v "${CC:-cc}" >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1; } \
        && [[ -f /usr/include/stdlib.h && -f /usr/include/mosquitto.h ]] \
        && [[ -f /usr/include/mosquitto_broker.h && -f /usr/include/mosquitto_plugin.h ]] \
        && [[ -f /usr/include/cjson/cJSON.h && -f /usr/include/uthash.h ]] \
        && { [[ -f /usr/include/curl/curl.h ]] || compgen -G "/usr/include/*/curl/curl.h" >/dev/null; }
}

node_ok() {
    # Node.js and npm for the JavaScript test clients (tests/clients/js: MQTT.js).
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1
}

system_ready() {
    [[ -n "$(pg_major_installed)" ]] \
        && { command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; } \
        && command -v mosquitto_pub >/dev/null 2>&1 \
        && command -v ogrinfo >/dev/null 2>&1 \
        && plugin_build_ok \
        && node_ok \
        && python_ok
}

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        return 1
    fi
}

install_system_packages() {
    local can_root=0
    if ((EUID == 0)); then can_root=1
    elif command -v sudo >/dev/null 2>&1 && { [[ -t 0 ]] || sudo -n true 2>/dev/null; }; then can_root=1
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get: install PostgreSQL >= 15 with PostGIS 3, Mosquitto, \
mosquitto-clients, the Mosquitto development headers, a C compiler, GDAL, Node.js with npm and Python >= 3.11 \
with venv by hand, then run this script again"

    local major pkgs
    major="$(pg_major_installed)"
    if ((can_root)); then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    fi
    if [[ -z "$major" ]]; then
        # The major version of the distribution's `postgresql` package, e.g. "15+248" -> 15.
        major="$(apt-cache policy postgresql 2>/dev/null | awk '/Candidate:/ {print $2}' | sed 's/+.*//; s/^[0-9]*://')"
        if ! [[ "$major" =~ ^[0-9]+$ ]]; then
            ((can_root)) || die "cannot tell which PostgreSQL this system offers; as root run: apt-get update && \
apt-get install postgresql postgresql-15-postgis-3 mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev \
libcurl4-openssl-dev libcjson-dev uthash-dev gcc libc6-dev gdal-bin python3-venv tzdata nodejs npm"
            die "apt offers no 'postgresql' package; add a repository with PostgreSQL >= 15"
        fi
        ((major >= 15)) || die "this system's PostgreSQL is $major; CityStream needs >= 15 (Debian 12, \
Ubuntu 24.04, or the PostgreSQL project's apt repository)"
    fi
    # gcc only recommends libc6-dev, and --no-install-recommends is used: both are named. tzdata: the one
    # time-zone database that both Python's zoneinfo and Debian's PostgreSQL read (rollup buckets follow
    # local midnight, sensorthings/model/rollups.py), so the two never disagree on a zone's rules.
    pkgs=(postgresql "postgresql-$major" "postgresql-$major-postgis-3" mosquitto mosquitto-clients mosquitto-dev
        libmosquitto-dev libcurl4-openssl-dev libcjson-dev uthash-dev gcc libc6-dev gdal-bin python3-venv
        python3-pip tzdata)
    # Only what is missing: a Node.js from elsewhere (NodeSource, nvm) brings its own npm, and Debian's npm
    # package would conflict with NodeSource's nodejs.
    command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
    command -v npm >/dev/null 2>&1 || pkgs+=(npm)

    if ((!can_root)); then
        say "missing system packages and no root or sudo; as root run:"
        printf '  apt-get update && apt-get install -y %s\n' "${pkgs[*]}" >&2
        exit 1
    fi

    local fresh_mosquitto=0
    dpkg-query -W -f='${Status}' mosquitto 2>/dev/null | grep -q 'install ok installed' || fresh_mosquitto=1
    say "apt-get install ${pkgs[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"

    # CityStream runs its own Mosquitto; the one apt just enabled would hold port 1883.
    if ((fresh_mosquitto)) && [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-active --quiet mosquitto 2>/dev/null; then
            say "stopping and disabling the system mosquitto service apt just started (it would hold port 1883)"
            as_root systemctl disable --now mosquitto || true
        fi
    elif ((fresh_mosquitto)) && [[ -x /etc/init.d/mosquitto ]] && pgrep -x mosquitto >/dev/null 2>&1; then
        say "stopping the system mosquitto apt just started (it would hold port 1883)"
        as_root /etc/init.d/mosquitto stop || true
    fi
    system_ready || die "packages installed, but PostgreSQL >= 15 with PostGIS, Mosquitto, the Mosquitto \
headers, a C compiler, GDAL, Node.js with npm or Python >= 3.11 with venv are still missing"
}

if system_ready; then
    say "system packages present"
else
    install_system_packages
fi

# ---------------------------------------------------------------------------- Python environment

venv="$repo/.venv"
stamp="$venv/.citystream-install"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" ]]; then
    say "creating $venv"
    python3 -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" || ! -x "$venv/bin/citystream" ]]; then
    say "installing CityStream into $venv (pip install -e '.[test]')"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e '.[test]'
    echo "$want" >"$stamp"
else
    say "$venv up to date"
fi

# ---------------------------------------------------------------------------- JavaScript test clients

# MQTT.js, the client Masterportal uses, for tests/clients/test_mqtt_js.py; the platform itself needs no
# Node.js, so a failure here is a warning (those tests are then skipped), not the end of the quickstart.
js="$repo/tests/clients/js"
js_stamp="$js/node_modules/.citystream-install"
js_want="$(cat "$js/package.json" "$js/package-lock.json" | sha256sum | cut -d' ' -f1)"
if ! node_ok; then
    say "warning: no node/npm; the MQTT.js tests (tests/clients/test_mqtt_js.py) will be skipped"
elif [[ -f "$js_stamp" && "$(cat "$js_stamp")" == "$js_want" ]]; then
    say "JavaScript test clients up to date"
else
    say "installing the JavaScript test clients (npm ci in tests/clients/js)"
    if (cd "$js" && npm ci --no-audit --no-fund --loglevel=error >&2); then
        echo "$js_want" >"$js_stamp"
    else
        say "warning: npm ci failed in $js; the MQTT.js tests will be skipped until it succeeds"
    fi
fi

# ---------------------------------------------------------------------------- data directory

fallback_data_dir=/var/lib/citystream
service_cannot_enter_repo() {
    # As root the embedded services run as `postgres` and `mosquitto`: can each reach ./.citystream?
    local user target="$repo"
    [[ -d "$repo/.citystream" ]] && target="$repo/.citystream"
    command -v runuser >/dev/null 2>&1 || return 1
    for user in postgres mosquitto; do
        id -u "$user" >/dev/null 2>&1 || continue
        if ! runuser -u "$user" -- test -x "$target" 2>/dev/null; then
            blocked_user="$user"
            return 0
        fi
    done
    return 1
}

data_dir_args=()
blocked_user=""
if ((EUID == 0 && !data_dir_given)) && service_cannot_enter_repo; then
    say "running as root: the embedded services run as user '$blocked_user', which cannot enter $repo;" \
        "keeping the data in $fallback_data_dir instead of ./.citystream"
    mkdir -p "$fallback_data_dir"
    chmod 755 "$fallback_data_dir"
    data_dir_args=(--data-dir "$fallback_data_dir")
fi

if ((!start)); then
    say "done; start the platform with: .venv/bin/citystream up${data_dir_args[*]:+ ${data_dir_args[*]}}"
    exit 0
fi
exec "$venv/bin/citystream" up "${data_dir_args[@]}" "${up_args[@]}"
