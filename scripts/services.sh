#!/usr/bin/env bash
# The services the tests talk to, on 127.0.0.1: PostgreSQL 5432, Redis 6379, RabbitMQ 5672
# (guest/guest), Mosquitto 1883 (anonymous).
#   scripts/services.sh start   start each one that does not answer yet, wait for all
#   scripts/services.sh status  one line each; exit 1 if one is down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=127.0.0.1
MOSQUITTO_CONF="${MOSQUITTO_CONF:-/etc/mosquitto/mosquitto.conf}"
SERVICES=(postgresql:5432 redis:6379 rabbitmq:5672 mosquitto:1883)

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: FAILED: %s\n' "$*" >&2; exit 1; }

answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" >/dev/null 2>&1; }

wait_port() {  # port seconds
    local deadline=$((SECONDS + $2))
    until answers "$1"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

pg_version() { find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1; }

start_postgresql() {
    local version
    version="$(pg_version)"
    [ -n "$version" ] || die "PostgreSQL is not installed (no /etc/postgresql/*); run scripts/bootstrap.sh"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
}

# A fresh Debian PostgreSQL asks for a password on 127.0.0.1; the tests log in as postgres
# without one, as on the project's machines (loopback only).
ensure_postgresql_login() {
    local version hba
    pg() { PGCONNECT_TIMEOUT=5 psql -w -h "$HOST" -U postgres -d postgres -Atqc "$1" 2>/dev/null; }
    if ! pg 'select 1' >/dev/null; then
        version="$(pg_version)"
        hba="/etc/postgresql/$version/main/pg_hba.conf"
        if [ "$(id -u)" -ne 0 ] || [ ! -w "$hba" ]; then
            die "psql -h $HOST -U postgres needs a password; add 'host all all 127.0.0.1/32 trust' on top of $hba"
        fi
        say "PostgreSQL: trusting logins from 127.0.0.1/32 ($hba)"
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload >/dev/null
        sleep 1
        pg 'select 1' >/dev/null || die "psql -h $HOST -U postgres still fails after trusting 127.0.0.1"
    fi
    if [ "$(pg "select 1 from pg_database where datname = 'test'")" != 1 ]; then
        pg 'create database test' >/dev/null || die "cannot create database test"
    fi
}

start_redis() {
    command -v redis-server >/dev/null || die "redis-server is not installed; run scripts/bootstrap.sh"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null \
        || die "redis-server did not start (see /var/log/redis/ci.log)"
}

start_rabbitmq() {
    command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] \
        || die "rabbitmq-server is not installed; run scripts/bootstrap.sh"
    PATH="$PATH:/usr/sbin" rabbitmq-server -detached >/dev/null 2>&1 || true
}

start_mosquitto() {
    local mosquitto=/usr/sbin/mosquitto
    command -v mosquitto >/dev/null && mosquitto="$(command -v mosquitto)"
    [ -x "$mosquitto" ] || die "mosquitto is not installed; run scripts/bootstrap.sh"
    if [ "$(id -u)" -eq 0 ]; then  # the pid file's folder, which systemd would make
        { mkdir -p /run/mosquitto && chown mosquitto: /run/mosquitto; } 2>/dev/null || true
    fi
    "$mosquitto" -d -c "$MOSQUITTO_CONF" >/dev/null 2>&1 || true
    wait_port 1883 5 && return 0
    # The machine's config does not listen on 127.0.0.1:1883 with anonymous access
    # (a fresh Debian one may not): run one with a config of ours.
    local dir
    dir="$(mktemp -d /tmp/brokerscan-mosquitto.XXXXXX)"
    chmod 755 "$dir"
    printf '%s\n' "listener 1883 $HOST" "allow_anonymous true" "persistence false" \
        "log_dest file $dir/mosquitto.log" >"$dir/mosquitto.conf"
    chmod 644 "$dir/mosquitto.conf"
    touch "$dir/mosquitto.log" && chmod 666 "$dir/mosquitto.log"
    say "Mosquitto: the system config does not serve $HOST:1883; using $dir/mosquitto.conf"
    "$mosquitto" -d -c "$dir/mosquitto.conf" || die "mosquitto did not start (see $dir/mosquitto.log)"
}

start() {
    local entry name port limit started=()
    for entry in "${SERVICES[@]}"; do
        name="${entry%%:*}" port="${entry##*:}"
        if ! answers "$port"; then
            say "starting $name"
            "start_$name"
            started+=("$entry")
        fi
    done
    for entry in "${SERVICES[@]}"; do
        name="${entry%%:*}" port="${entry##*:}"
        case "$name" in rabbitmq) limit=90 ;; *) limit=30 ;; esac
        wait_port "$port" "$limit" || die "$name does not answer on $HOST:$port after ${limit} s"
    done
    ensure_postgresql_login
    [ "${#started[@]}" -eq 0 ] || say "up: ${started[*]}"
}

status() {
    local entry name port down=0
    for entry in "${SERVICES[@]}"; do
        name="${entry%%:*}" port="${entry##*:}"
        if answers "$port"; then
            printf '%-11s %s:%s up\n' "$name" "$HOST" "$port"
        else
            printf '%-11s %s:%s DOWN\n' "$name" "$HOST" "$port"
            down=1
        fi
    done
    return "$down"
}

case "${1:-}" in
    start) start ;;
    status) status ;;
    *) echo "usage: $0 start|status" >&2; exit 2 ;;
esac
