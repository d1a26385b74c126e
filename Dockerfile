# kerve: one image for serving (`kerve serve`, the default command) and scheduled retraining (`kerve retrain`).
#
#   docker build -t kerve:0.1.0 .                                          # CPU (tensorflow)
#   docker build --build-arg TF_VARIANT=gpu -t kerve:0.1.0-gpu .           # GPU (tensorflow[and-cuda])
#   docker build --build-arg KERVE_EXTRAS=server -t kerve:0.1.0-serve .    # serving only, no training stack
#
# The CUDA/cuDNN libraries of the GPU variant come from pip wheels (tensorflow[and-cuda]), so both variants
# share the same slim Debian base; the host only needs the NVIDIA driver and container toolkit.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
# builder: a self-contained virtual environment in /opt/kerve, installed with the pinned constraints.
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# cpu -> tensorflow, gpu -> tensorflow[and-cuda]
ARG TF_VARIANT=cpu
# server -> `kerve serve` only; all -> serve + train/retrain (the CronJob runs `kerve retrain` from this image)
ARG KERVE_EXTRAS=all

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/kerve \
    PATH=/opt/kerve/bin:$PATH

RUN python -m venv /opt/kerve

WORKDIR /src

# TensorFlow first, in its own layer: it is by far the largest dependency and changes least often.
# Versions come from the constraints file (tensorflow==2.21.0 etc.), so the names below stay unpinned.
COPY requirements/constraints.txt requirements/constraints.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    case "${TF_VARIANT}" in \
      cpu) tf="tensorflow" ;; \
      gpu) tf="tensorflow[and-cuda]" ;; \
      *) echo "TF_VARIANT must be 'cpu' or 'gpu', got '${TF_VARIANT}'" >&2; exit 2 ;; \
    esac \
    && case "${KERVE_EXTRAS}" in \
      server|all) ;; \
      *) echo "KERVE_EXTRAS must be 'server' or 'all', got '${KERVE_EXTRAS}'" >&2; exit 2 ;; \
    esac \
    && pip install -c requirements/constraints.txt "${tf}"

# Then kerve itself (generated protobuf modules are committed, so no protoc is needed here).
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY kerve/ kerve/
COPY server/ server/
COPY client/ client/
COPY training/ training/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c requirements/constraints.txt ".[${KERVE_EXTRAS}]" \
    && kerve --help > /dev/null

# ---------------------------------------------------------------------------------------------------------
# runtime: the venv on a fresh base, a numeric non-root user, nothing from the build tree.
# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG TF_VARIANT=cpu

LABEL org.opencontainers.image.title="kerve" \
      org.opencontainers.image.description="Keras/TensorFlow model server: KServe V2 and TF Serving gRPC APIs, dynamic batching" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.kerve.tf-variant="${TF_VARIANT}"

# UID/GID 10001: outside the range of system and typical host users; Kubernetes manifests pin the same IDs.
RUN groupadd --system --gid 10001 kerve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/kerve --create-home \
       --shell /usr/sbin/nologin kerve \
    && mkdir -p /models \
    && chown 10001:10001 /models

COPY --from=builder /opt/kerve /opt/kerve

# KERAS_HOME under /tmp: the Kubernetes pods run with a read-only root filesystem and an emptyDir at /tmp.
ENV VIRTUAL_ENV=/opt/kerve \
    PATH=/opt/kerve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KERAS_HOME=/tmp/.keras \
    TF_CPP_MIN_LOG_LEVEL=1 \
    KERVE_HEALTHCHECK_TARGET=127.0.0.1:8500

USER 10001:10001
WORKDIR /home/kerve

# The model repository: <model>/<version>/saved_model.pb, written by `kerve train|retrain`.
VOLUME ["/models"]

# 8500: gRPC (KServe V2 + TF Serving + grpc.health.v1 + reflection); 8501: Prometheus /metrics.
EXPOSE 8500 8501

# grpc.health.v1 Check on service "" (SERVING once every model is loaded). grpc_health_probe is not shipped;
# the health stub is already in the venv (grpcio-health-checking). Point KERVE_HEALTHCHECK_TARGET elsewhere
# when the server runs with another --port. It speaks plaintext: with KERVE_TLS_CERT set, turn it off
# (docker run --no-healthcheck) and probe with TLS instead (README: --tls-cert).
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as pb, health_pb2_grpc as pbg; ch = grpc.insecure_channel(os.environ.get('KERVE_HEALTHCHECK_TARGET', '127.0.0.1:8500')); st = pbg.HealthStub(ch).Check(pb.HealthCheckRequest(service=''), timeout=5).status; sys.exit(0 if st == pb.HealthCheckResponse.SERVING else 1)"]

# kerve handles SIGTERM itself (health -> NOT_SERVING, drain in-flight requests, exit 0), so it runs as PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kerve"]
CMD ["serve", "--model-repository", "/models", "--host", "0.0.0.0", "--port", "8500", "--metrics-port", "8501"]
