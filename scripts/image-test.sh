#!/usr/bin/env bash
# The container image, built and run for real (`make image-test`; .ci/run runs it after
# `make test`):
#
#   1. podman, runc and debootstrap, installed with apt-get where missing;
#   2. a Debian base (debootstrap --variant=minbase bookworm), made once and kept: the podman
#      image localhost/alphacut-image-test-base:bookworm and its tarball in the state folder
#      ($ALPHACUT_IMAGE_TEST_DIR, default .alphacut/image-test), reused by later runs (with a
#      layer of this machine's own CA certificates on top, where it has any);
#   3. the image built on it (CPU variant, whole); the GPU variant built up to and including
#      its check that onnxruntime lists the CUDA provider (`--target deps`);
#   4. the image run against the services of scripts/services.sh (those the caller's
#      environment names, else started here and stopped at the end), with host networking:
#      one container runs `alphacut serve`, one `alphacut worker`, on a scratch database,
#      broker prefix and bucket prefix of their own;
#   5. a photo of tests/data through the API node over HTTP (the removebg_mask contract), its
#      output fetched and checked (an RGBA PNG of the photo's size); the containers' user
#      (uid 10001, not root); both containers' HEALTHCHECK; no npm, node, uv or pip in the
#      image; the image's size printed.
#
# Everything it started (containers, the scratch database and prefixes, services) is removed
# at the end; the base and the built image stay, for the next run's cache. Where podman cannot
# run containers here (not root, no apt-get, an install or `podman run` that fails), it prints
# "image-test: skipped: <reason>" and exits 0.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${ALPHACUT_IMAGE_TEST_DIR:-$ROOT/.alphacut/image-test}"
PYTHON="$ROOT/.venv/bin/python"
SUITE=bookworm
DEBIAN_IMAGE="localhost/alphacut-image-test-base:$SUITE"
BASE_IMAGE="$DEBIAN_IMAGE" # plus this machine's CA certificates, if it has any (ensure_base)
BASE_TAR="$STATE/debian-$SUITE-minbase.tar"
IMAGE=localhost/alphacut:image-test
GPU_DEPS_IMAGE=localhost/alphacut:image-test-gpu-deps
PHOTO="$ROOT/tests/data/animal-1.jpg"
RUN_ID="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"

# The form of podman that works on these machines: runc, cgroupfs, host networking (no
# bridge set-up needed), and explicit ulimits (the defaults come from a host that may lack
# them). One-shot containers run without the image's health check; the two that serve keep
# it, run when this script says (`podman healthcheck run`): no systemd timer here (podman
# still tries to set one up, and logs its failure to run-*.log in the state folder).
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
RUN_OPTIONS=(--network host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 --no-healthcheck)
SERVE_OPTIONS=(--network host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096
  --health-interval disable)
BUILD_OPTIONS=() # set by ensure_base

log() { echo "image-test: $*" >&2; }
skip() {
  echo "image-test: skipped: $*"
  exit 0
}
die() {
  echo "image-test: FAILED: $*" >&2
  exit 1
}
seconds_since() { echo $((SECONDS - $1)); }

# --- 1. tools -------------------------------------------------------------------------------

install_tools() {
  local missing=() tool
  for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) && return 0
  [ "$(id -u)" = 0 ] || skip "${missing[*]} not installed, and not root to install them"
  command -v apt-get >/dev/null || skip "${missing[*]} not installed, and no apt-get"
  log "installing ${missing[*]} with apt-get"
  # With podman's recommended packages (its network plugins, among others).
  if ! { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >"$STATE/apt.log" 2>&1; then
    skip "apt-get install ${missing[*]} failed: see $STATE/apt.log"
  fi
}

# --- 2. the Debian base ---------------------------------------------------------------------

# The Debian mirror this machine's apt uses (none: debootstrap's default).
host_mirror() {
  local uri
  uri="$(grep -hoE '^URIs:[[:space:]]*[^[:space:]]+/debian/?$' /etc/apt/sources.list.d/*.sources \
    2>/dev/null | head -n 1 | awk '{print $2}')" || true
  if [ -z "$uri" ]; then
    uri="$(awk '$1 == "deb" && $3 == "'"$SUITE"'" {print $2; exit}' /etc/apt/sources.list \
      2>/dev/null)" || true
  fi
  echo "$uri"
}

make_base_tarball() {
  local rootfs="$STATE/rootfs.tmp" mirror started=$SECONDS
  mirror="$(host_mirror)"
  rm -rf "$rootfs"
  log "making the $SUITE base with debootstrap (about a minute)"
  # shellcheck disable=SC2086 # an empty mirror is no argument
  debootstrap --variant=minbase "$SUITE" "$rootfs" $mirror >"$STATE/debootstrap.log" 2>&1 ||
    skip "debootstrap failed: see $STATE/debootstrap.log"
  # As Debian's own slim images: no package caches, lists, manuals or translations, now or
  # after later installs (copyright files stay).
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-image-test-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
  # The machine's own package sources (updates and security included) where they are for
  # this suite.
  if grep -qs "$SUITE" /etc/apt/sources.list.d/debian.sources; then
    cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
    rm -f "$rootfs/etc/apt/sources.list"
  fi
  tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$rootfs"
  log "base made in $(seconds_since "$started") s"
}

ensure_base() {
  if ! "${PODMAN[@]}" image exists "$DEBIAN_IMAGE"; then
    [ -f "$BASE_TAR" ] || make_base_tarball
    "${PODMAN[@]}" import --quiet --change 'CMD ["/bin/bash"]' "$BASE_TAR" "$DEBIAN_IMAGE" \
      >/dev/null || skip "podman import of the base failed"
    log "base: $DEBIAN_IMAGE imported from $BASE_TAR"
  fi
  # The build downloads through this machine's network: where the machine trusts CAs of its
  # own (/usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's), so does the base;
  # the Dockerfile's `apt-get install ca-certificates` adds them to the system store, which
  # pip, uv and npm use there. The tag names the certificates, so a change makes a new base.
  local certificates=(/usr/local/share/ca-certificates/*.crt) digest context
  if [ ! -e "${certificates[0]}" ]; then
    BASE_IMAGE="$DEBIAN_IMAGE"
  else
    digest="$(cat "${certificates[@]}" | sha256sum | cut -c1-12)"
    BASE_IMAGE="$DEBIAN_IMAGE-ca-$digest"
    if ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
      context="$(mktemp -d)"
      cp "${certificates[@]}" "$context/"
      printf 'FROM %s\nCOPY *.crt /usr/local/share/ca-certificates/\n' "$DEBIAN_IMAGE" \
        >"$context/Containerfile"
      "${PODMAN[@]}" build --quiet --format docker -t "$BASE_IMAGE" "$context" >/dev/null ||
        skip "podman build of the base with this machine's CA certificates failed"
      rm -rf "$context"
    fi
  fi
  BUILD_OPTIONS=(--format docker --network host --build-arg "BASE=$BASE_IMAGE")
  log "base: $BASE_IMAGE"
}

# --- 3. builds ------------------------------------------------------------------------------

# podman build, its output in a log; the previous image of the tag goes once replaced.
build() {
  local tag=$1 logfile=$2 started=$SECONDS old new
  shift 2
  old="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" || old=""
  if ! "${PODMAN[@]}" build "${BUILD_OPTIONS[@]}" "$@" -t "$tag" -f "$ROOT/Dockerfile" "$ROOT" \
    >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    die "podman build $tag failed: see $logfile"
  fi
  new="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$tag")"
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true
  fi
  # Build layers nothing uses any more, once a few days old (recent ones are the next
  # build's cache).
  "${PODMAN[@]}" image prune -f --filter until=72h >/dev/null 2>&1 || true
  log "built $tag in $(seconds_since "$started") s"
}

image_size_mb() {
  local bytes
  bytes="$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$1")"
  echo $(((bytes + 500000) / 1000000))
}

# --- 4. the services and the containers -----------------------------------------------------

STARTED_SERVICES=0
CONTAINERS=()
SCRATCH_DATABASE=""
BUCKET=""
PREFIX="imagetest-$RUN_ID"

cleanup() {
  local status=$?
  local container
  compose_cleanup
  for container in "${CONTAINERS[@]}"; do
    "${PODMAN[@]}" rm -f -t 5 "$container" >/dev/null 2>&1 || true
  done
  if [ -n "$SCRATCH_DATABASE" ] || [ -n "$BUCKET" ]; then
    "$PYTHON" - "$SCRATCH_DATABASE" "$BUCKET" "$PREFIX" <<'EOF' || log "cleanup: $?"
import os, sys
database, bucket, prefix = sys.argv[1:4]
if database:
    import psycopg
    url = os.environ["ALPHACUT_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
if bucket:
    import boto3
    s3 = boto3.client("s3", endpoint_url=os.environ["ALPHACUT_S3_ENDPOINT_URL"],
                      region_name="us-east-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
from redis import Redis
broker = Redis.from_url(os.environ["ALPHACUT_BROKER_URL"], socket_connect_timeout=5)
keys = list(broker.scan_iter(match=prefix + ":*"))
if keys:
    broker.delete(*keys)
EOF
  fi
  if [ "$STARTED_SERVICES" = 1 ]; then
    "$ROOT/scripts/services.sh" stop >/dev/null 2>&1 || true
  fi
  exit "$status"
}

ensure_services() {
  local name
  for name in ALPHACUT_DATABASE_URL ALPHACUT_BROKER_URL ALPHACUT_STORAGE_URL \
    ALPHACUT_S3_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
    if [ -z "${!name:-}" ]; then
      # Services of this script's own state folder, so that stopping them at the end stops
      # nothing anyone else uses.
      log "no $name: starting the services (scripts/services.sh, in $STATE/services)"
      local services
      export ALPHACUT_SERVICES_DIR="$STATE/services"
      STARTED_SERVICES=1
      services="$("$ROOT/scripts/services.sh" start)" || die "scripts/services.sh start failed"
      eval "$services"
      return 0
    fi
  done
}

# The scratch database (at the current schema, by the image's own `alphacut db upgrade`),
# broker prefix and bucket prefix of this run.
prepare_scratch() {
  SCRATCH_DATABASE="alphacut_imagetest_$RUN_ID"
  "$PYTHON" - "$SCRATCH_DATABASE" <<'EOF' || die "could not create the scratch database"
import os, sys
import psycopg
url = os.environ["ALPHACUT_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
    connection.execute(f'CREATE DATABASE "{sys.argv[1]}"')
EOF
  local storage="${ALPHACUT_STORAGE_URL#s3://}"
  BUCKET="${storage%%/*}"
  CONTAINER_ENV=(
    -e "ALPHACUT_DATABASE_URL=${ALPHACUT_DATABASE_URL%/*}/$SCRATCH_DATABASE"
    -e "ALPHACUT_BROKER_URL=$ALPHACUT_BROKER_URL"
    -e "ALPHACUT_BROKER_PREFIX=$PREFIX:"
    -e "ALPHACUT_STORAGE_URL=s3://$BUCKET/$PREFIX/outputs"
    -e "ALPHACUT_S3_ENDPOINT_URL=$ALPHACUT_S3_ENDPOINT_URL"
    -e "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID"
    -e "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
    -e "AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}"
  )
}

free_port() {
  "$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

# Waits until "$@" succeeds, at most $1 seconds.
wait_for() {
  local seconds=$1 deadline
  shift
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

http_ok() { "$PYTHON" -c "import httpx, sys; sys.exit(httpx.get(sys.argv[1], timeout=3).status_code != 200)" "$1"; }

show_logs() {
  local container
  for container in "${CONTAINERS[@]}"; do
    echo "--- podman logs $container (last 40 lines)" >&2
    "${PODMAN[@]}" logs --tail 40 "$container" >&2 2>&1 || true
  done
}

# --- the checks -----------------------------------------------------------------------------

check_image_contents() {
  local found
  # Nothing of the build stages: no npm, node, uv or pip on the image's PATH.
  # shellcheck disable=SC2016 # expanded in the container
  found="$("${PODMAN[@]}" run --rm "${RUN_OPTIONS[@]}" "$IMAGE" sh -c \
    'for tool in npm node nodejs uv pip pip3; do command -v "$tool"; done; true')"
  [ -z "$found" ] || die "the image carries build tools: $found"
  "${PODMAN[@]}" run --rm "${RUN_OPTIONS[@]}" "$IMAGE" sh -c \
    'test ! -e /usr/lib/node_modules && test ! -e /usr/share/nodejs' ||
    die "the image carries node modules"
  found="$("${PODMAN[@]}" run --rm "${RUN_OPTIONS[@]}" "$IMAGE" alphacut models list)"
  grep -Eq '^medium \(default\) +yes' <<<"$found" || die "the model is not installed: $found"
  local config
  config="$("${PODMAN[@]}" image inspect --format '{{.Config.User}} {{json .Config.Healthcheck}}' "$IMAGE")"
  [[ "$config" == "10001:10001 "*alphacut.health* ]] || die "user or HEALTHCHECK: $config"
}

check_user() {
  local container=$1 uid
  # The container's main process, as the kernel sees it.
  uid="$("${PODMAN[@]}" exec "$container" sh -c "awk '/^Uid:/ {print \$2}' /proc/1/status")"
  [ "$uid" = 10001 ] || die "$container runs as uid $uid, not 10001"
}

check_photo() {
  local base=$1
  "$PYTHON" - "$base" "$PHOTO" "$STATE/output.png" <<'EOF'
import base64, io, sys, time
import httpx
from PIL import Image

base, photo, keep = sys.argv[1:4]
with open(photo, "rb") as fh:
    data = fh.read()
body = {
    "key": "",
    "seed": 12345,
    "image": "data:image/jpeg;base64," + base64.b64encode(data).decode(),
    "post_process_mask": False,
    "only_mask": False,
    "alpha_matting": False,
    "webhook": None,
    "track_id": None,
}
started = time.monotonic()
answer = httpx.post(f"{base}/api/v5/removebg_mask", json=body, timeout=120).json()
deadline = time.monotonic() + 300
fetch_url = answer.get("fetch_result")  # only the first "processing" answer carries it
while answer.get("status") == "processing" and time.monotonic() < deadline:
    time.sleep(2)
    answer = httpx.post(fetch_url, json={"key": ""}, timeout=60).json()
if answer.get("status") != "success":
    sys.exit(f"the API answered {answer}")
output = httpx.get(answer["output"][0], timeout=60)
output.raise_for_status()
with open(keep, "wb") as fh:  # for a look: the state folder's output.png
    fh.write(output.content)
image = Image.open(io.BytesIO(output.content))
expected = Image.open(io.BytesIO(data)).size
if image.format != "PNG" or image.mode != "RGBA" or image.size != expected:
    sys.exit(f"output is {image.format} {image.mode} {image.size}, not PNG RGBA {expected}")
alpha = image.getchannel("A")
low, high = alpha.getextrema()
if not (low == 0 and high == 255):
    sys.exit(f"the alpha channel cuts nothing out: extrema {low}..{high}")
print(
    f"image-test: {photo.rsplit('/', 1)[-1]} -> {answer['output'][0]}: PNG RGBA {image.size}, "
    f"job {answer['id']}, {time.monotonic() - started:.1f} s"
)
EOF
}

# --- 6. deploy/compose.yaml, brought up with podman-compose ----------------------------------

PODMAN_COMPOSE="$ROOT/.venv/bin/podman-compose"
SERVICE_IMAGES=(redis postgres seaweedfs) # deploy/test/services.Containerfile's targets
COMPOSE_PROJECT="alphacut-image-test-$RUN_ID"
COMPOSE_DIR=""
COMPOSE=()

# The stand-ins for the images compose would pull, from the same base (cached layers).
build_service_images() {
  local context="$STATE/services-context" target started=$SECONDS
  mkdir -p "$context"
  cp "$ROOT/deploy/test/postgres-entrypoint.sh" "$context/"
  ln -f "$ROOT/.venv/bin/weed" "$context/weed" 2>/dev/null ||
    cp "$ROOT/.venv/bin/weed" "$context/weed"
  for target in "${SERVICE_IMAGES[@]}"; do
    "${PODMAN[@]}" build --format docker --network host --build-arg "BASE=$BASE_IMAGE" \
      --target "$target" -t "localhost/alphacut-image-test-$target:$SUITE" \
      -f "$ROOT/deploy/test/services.Containerfile" "$context" >"$STATE/build-$target.log" 2>&1 ||
      die "podman build of the $target stand-in failed: see $STATE/build-$target.log"
  done
  log "compose: service stand-ins built in $(seconds_since "$started") s"
}

# Containers, volumes and the network of the compose project, then its scratch folder: what
# `down` leaves (an `up` cut short) goes by the project's label.
compose_cleanup() {
  [ -n "$COMPOSE_DIR" ] || return 0
  local label="label=io.podman.compose.project=$COMPOSE_PROJECT"
  if [ ${#COMPOSE[@]} -gt 0 ]; then
    "${COMPOSE[@]}" down -v -t 5 >"$STATE/compose-down.log" 2>&1 || true
  fi
  "${PODMAN[@]}" ps -aq --filter "$label" | xargs -r "${PODMAN[@]}" rm -f --depend -t 0 \
    >/dev/null 2>&1 || true
  "${PODMAN[@]}" volume ls -q --filter "$label" | xargs -r "${PODMAN[@]}" volume rm -f \
    >/dev/null 2>&1 || true
  "${PODMAN[@]}" network ls -q --filter "$label" | xargs -r "${PODMAN[@]}" network rm -f \
    >/dev/null 2>&1 || true
  [ -z "$("${PODMAN[@]}" ps -aq --filter "$label")" ] || log "compose: containers left: $label"
  rm -rf "$COMPOSE_DIR"
}

random_secret() { "$PYTHON" -c "import secrets; print(secrets.token_hex(16))"; }

# The compose files as they are, in a scratch folder with settings files of random secrets
# (deploy/alphacut.env and services.env, the user's, are never touched), the API on two free
# loopback ports.
compose_up() {
  local password s3_secret started=$SECONDS worker
  COMPOSE_DIR="$STATE/compose-$RUN_ID"
  mkdir -p "$COMPOSE_DIR"
  cp "$ROOT/deploy/compose.yaml" "$ROOT/deploy/compose.test.yaml" "$COMPOSE_DIR/"
  API_1_PORT="$(free_port)"
  API_2_PORT="$(free_port)"
  export API_1_PORT API_2_PORT
  password="$(random_secret)"
  s3_secret="$(random_secret)"
  {
    echo "POSTGRES_PASSWORD=$password"
    echo "S3_ACCESS_KEY=alphacut"
    echo "S3_SECRET_KEY=$s3_secret"
  } >"$COMPOSE_DIR/services.env"
  {
    echo "ALPHACUT_DATABASE_URL=postgresql+psycopg://alphacut:$password@postgres:5432/alphacut"
    echo "AWS_ACCESS_KEY_ID=alphacut"
    echo "AWS_SECRET_ACCESS_KEY=$s3_secret"
    echo "ALPHACUT_WEBHOOK_SECRET=$(random_secret)"
    echo "ALPHACUT_KEY_PEPPER=$(random_secret)"
    echo "ALPHACUT_PUBLIC_URL=http://127.0.0.1:$API_1_PORT"
  } >"$COMPOSE_DIR/alphacut.env"
  COMPOSE=("$PODMAN_COMPOSE" --podman-args "--runtime runc --cgroup-manager=cgroupfs"
    --in-pod false -p "$COMPOSE_PROJECT"
    -f "$COMPOSE_DIR/compose.yaml" -f "$COMPOSE_DIR/compose.test.yaml")
  # In two steps, --no-deps: podman 4.3 (Debian 12) cannot start a container whose `--requires`
  # (podman-compose's depends_on) names one that has exited, and ignores service_healthy. So the
  # one-shot commands start with the services, retrying until those answer (their --wait), and
  # the nodes once both exited 0: the order depends_on gives under Docker or a newer podman.
  "${COMPOSE[@]}" up -d --no-build --no-deps redis postgres seaweedfs migrate storage-init \
    >"$STATE/compose-up.log" 2>&1 || {
    tail -n 30 "$STATE/compose-up.log" >&2
    die "podman-compose up (services, migrate, storage-init) failed: see $STATE/compose-up.log"
  }
  local one_shot status
  for one_shot in migrate storage-init; do
    status="$("${PODMAN[@]}" wait "$(compose_containers "$one_shot")")" || status="?"
    [ "$status" = 0 ] || {
      compose_logs
      die "compose: $one_shot exited $status"
    }
  done
  "${COMPOSE[@]}" up -d --no-build --no-deps api-1 api-2 worker-cpu \
    >>"$STATE/compose-up.log" 2>&1 || {
    tail -n 30 "$STATE/compose-up.log" >&2
    die "podman-compose up (API nodes, workers) failed: see $STATE/compose-up.log"
  }
  if ! wait_for 300 http_ok "http://127.0.0.1:$API_1_PORT/readyz" ||
    ! wait_for 60 http_ok "http://127.0.0.1:$API_2_PORT/readyz"; then
    compose_logs
    die "the compose API nodes did not become ready"
  fi
  for worker in $(compose_containers worker-cpu); do
    wait_for 120 "${PODMAN[@]}" exec "$worker" python3 -m alphacut.health --role worker || {
      compose_logs
      die "compose worker $worker did not become ready"
    }
  done
  log "compose: up in $(seconds_since "$started") s: $(compose_containers running | tr '\n' ' ')"
}

# The names of the project's containers: of one service, or those running ("running").
compose_containers() {
  local filters=(--filter "label=io.podman.compose.project=$COMPOSE_PROJECT")
  if [ "${1:-}" = running ]; then
    filters+=(--filter status=running)
  elif [ -n "${1:-}" ]; then
    filters+=(--filter "label=com.docker.compose.service=$1")
  fi
  "${PODMAN[@]}" ps -a "${filters[@]}" --format '{{.Names}}' | sort
}

compose_logs() {
  local container
  for container in $(compose_containers); do
    echo "--- podman logs $container (last 30 lines)" >&2
    "${PODMAN[@]}" logs --tail 30 "$container" >&2 2>&1 || true
  done
}

# A 10 MP photo with alpha matting (slow enough to be caught running) through api-2; the
# worker container that claimed it is killed (SIGKILL, the whole container); the job completes.
check_worker_killed_mid_job() {
  "$PYTHON" - "http://127.0.0.1:$API_2_PORT" "$PHOTO" "$(compose_containers postgres)" \
    "${PODMAN[@]}" <<'EOF'
import base64, io, subprocess, sys, time
import httpx
from PIL import Image

base, photo, postgres, *podman = sys.argv[1:]

def run(*args: str) -> str:
    return subprocess.run([*podman, *args], capture_output=True, text=True, check=True).stdout

def sql(query: str) -> str:
    return run("exec", postgres, "psql", "-tA", "-U", "alphacut", "-d", "alphacut", "-c", query).strip()

buffer = io.BytesIO()
Image.open(photo).convert("RGB").resize((4000, 2668)).save(buffer, "JPEG", quality=90)
image = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
body = {"key": "", "seed": 1, "image": image, "alpha_matting": True, "instant_response": True}
answer = httpx.post(f"{base}/api/v5/removebg_mask", json=body, timeout=120).json()
job, fetch_url = answer["id"], answer["fetch_result"]

deadline = time.monotonic() + 180
while True:  # until a worker claims it: the worker column is "<host name>:<pid>"
    row = sql(f"SELECT status || '|' || coalesce(worker, '') FROM jobs WHERE id = {job}")
    status, _, worker = row.partition("|")
    if status == "running" and worker:
        break
    if status not in ("queued", "running") or time.monotonic() > deadline:
        sys.exit(f"job {job} was not caught running: {row}")
    time.sleep(0.2)
hosts = {
    run("inspect", "--format", "{{.Config.Hostname}}", name).strip(): name
    for name in run("ps", "--format", "{{.Names}}").split()
    if "worker-cpu" in name
}
victim = hosts.get(worker.split(":")[0])
if victim is None:
    sys.exit(f"no worker container has the host name of {worker}: {hosts}")
run("kill", victim)
killed = time.monotonic()
while (answer := httpx.post(fetch_url, json={"key": ""}, timeout=60).json())["status"] == "processing":
    if time.monotonic() > killed + 300:
        sys.exit(f"job {job} did not complete within 300 s of the kill of {victim}")
    time.sleep(2)
finished_by = sql(f"SELECT worker FROM jobs WHERE id = {job}")
if answer["status"] != "success" or finished_by == worker:
    sys.exit(f"job {job} (killed worker {worker}, then {finished_by}) ended {answer}")
print(
    f"image-test: compose: killed {victim} running job {job}; the job done by {finished_by} "
    f"{time.monotonic() - killed:.0f} s later"
)
EOF
}

check_compose() {
  local started=$SECONDS container
  [ -x "$PODMAN_COMPOSE" ] || die "no $PODMAN_COMPOSE: run make setup"
  build_service_images
  compose_up
  # A photo through each API container (their links point at ALPHACUT_PUBLIC_URL, api-1).
  if ! check_photo "http://127.0.0.1:$API_1_PORT" || ! check_photo "http://127.0.0.1:$API_2_PORT"
  then
    compose_logs
    die "a photo did not come through the compose cluster"
  fi
  for container in $(compose_containers api-1) $(compose_containers worker-cpu); do
    check_user "$container"
  done
  check_worker_killed_mid_job || {
    compose_logs
    die "a job did not survive the kill of its worker container"
  }
  log "compose: passed in $(seconds_since "$started") s"
}

# --- main -----------------------------------------------------------------------------------

main() {
  local started=$SECONDS
  [ "$(id -u)" = 0 ] || skip "not root (the image test runs podman as root, with runc)"
  [ -x "$PYTHON" ] || die "no $PYTHON: run make setup first"
  mkdir -p "$STATE"
  install_tools
  ensure_base
  "${PODMAN[@]}" run --rm "${RUN_OPTIONS[@]}" "$BASE_IMAGE" true >"$STATE/podman-run.log" 2>&1 ||
    skip "podman cannot run containers here: $(tail -n 3 "$STATE/podman-run.log" | tr '\n' ' ')"

  build "$IMAGE" "$STATE/build-cpu.log"
  log "image $IMAGE: $(image_size_mb "$IMAGE") MB"
  build "$GPU_DEPS_IMAGE" "$STATE/build-gpu-deps.log" --build-arg VARIANT=gpu --target deps
  grep -h '^onnxruntime .* providers:' "$STATE/build-gpu-deps.log" |
    sed 's/^/image-test: gpu variant: /' >&2 ||
    log "gpu variant: provider check passed when its (cached) layer was built"
  check_image_contents

  trap cleanup EXIT
  ensure_services
  prepare_scratch
  "${PODMAN[@]}" run --rm "${RUN_OPTIONS[@]}" "${CONTAINER_ENV[@]}" "$IMAGE" \
    alphacut db upgrade >/dev/null || die "alphacut db upgrade (in the image) failed"

  local port worker="alphacut-image-test-worker-$RUN_ID" api="alphacut-image-test-api-$RUN_ID"
  port="$(free_port)"
  CONTAINERS+=("$worker")
  "${PODMAN[@]}" run -d --name "$worker" "${SERVE_OPTIONS[@]}" "${CONTAINER_ENV[@]}" "$IMAGE" \
    alphacut worker --queue cpu --concurrency 1 >/dev/null 2>"$STATE/run-worker.log" ||
    die "podman run (worker) failed: $(cat "$STATE/run-worker.log")"
  CONTAINERS+=("$api")
  # The API listens on a free port (host networking): its health check is told which.
  "${PODMAN[@]}" run -d --name "$api" "${SERVE_OPTIONS[@]}" "${CONTAINER_ENV[@]}" \
    --health-cmd "[\"python3\", \"-m\", \"alphacut.health\", \"--port\", \"$port\"]" \
    "$IMAGE" alphacut serve --host 127.0.0.1 --port "$port" >/dev/null 2>"$STATE/run-api.log" ||
    die "podman run (API node) failed: $(cat "$STATE/run-api.log")"
  # Ready when its heartbeat file is there: it is written as the worker reports ready.
  wait_for 120 "${PODMAN[@]}" exec "$worker" python3 -m alphacut.health --role worker || {
    show_logs
    die "the worker did not become ready"
  }
  wait_for 120 http_ok "http://127.0.0.1:$port/readyz" || {
    show_logs
    die "the API node did not become ready"
  }
  log "API node and worker up"

  check_user "$worker"
  check_user "$api"
  check_photo "http://127.0.0.1:$port" || {
    show_logs
    die "the photo did not come through the API node and the worker"
  }
  local container
  for container in "$worker" "$api"; do
    # The HEALTHCHECK as podman runs it, then its message.
    "${PODMAN[@]}" healthcheck run "$container" >/dev/null || {
      "${PODMAN[@]}" exec "$container" python3 -m alphacut.health >&2 || true
      die "the health check of $container failed"
    }
  done
  log "worker: $("${PODMAN[@]}" exec "$worker" python3 -m alphacut.health)"
  log "API node: $("${PODMAN[@]}" exec "$api" python3 -m alphacut.health --port "$port")"
  # The worker check is not vacuous: the API node has no worker heartbeat.
  if "${PODMAN[@]}" exec "$api" python3 -m alphacut.health --role worker >/dev/null 2>&1; then
    die "the worker health check passes in the API container"
  fi
  log "health checks: worker and API node healthy (uid 10001)"
  check_compose
  log "passed in $(seconds_since "$started") s (image $(image_size_mb "$IMAGE") MB)"
  # The checks above: the CPU build, the GPU variant's provider check, the image's contents,
  # the schema from the image, both containers ready, their user, the photo, the health checks,
  # deploy/compose.yaml up (2 API nodes, 2 workers) with a photo through each API node, and a
  # worker container killed mid-job.
  echo "image-test: 10 passed, 0 failed"
}

main "$@"
