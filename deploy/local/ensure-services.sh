#!/usr/bin/env bash
# Make sure the brokers the backend test suites use answer on loopback:
# Redis (127.0.0.1:6379) and Mosquitto (127.0.0.1:1883). Starts whichever is
# down, installing it from Debian's packages if it is missing. Used by CI;
# on a developer machine the suites skip a server that is not running.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {
    local name=$1 port=$2
    for _ in $(seq 1 50); do
        up "$port" && { echo "==> $name is up on 127.0.0.1:$port"; return 0; }
        sleep 0.2
    done
    echo "error: $name did not come up on 127.0.0.1:$port" >&2
    return 1
}

install() {
    if [ -z "${apt_updated:-}" ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! up 6379; then
    command -v redis-server >/dev/null || install redis-server
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_up Redis 6379

if ! up 1883; then
    command -v mosquitto >/dev/null || install mosquitto
    conf=/tmp/openhqm-mosquitto.conf
    mkdir -p /var/lib/mosquitto
    printf 'listener 1883 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location /var/lib/mosquitto/\n' >"$conf"
    mosquitto -d -c "$conf"
fi
wait_up Mosquitto 1883
