# syntax=docker/dockerfile:1
#
# The profiles worker (and every other `profiles` command).  CPU by default:
#
#   docker build -t realtime-profiles .
#   docker run --rm -p 8080:8080 -e PROFILES_BOOTSTRAP_SERVERS=kafka:9092 \
#       -e PROFILES_HTTP_HOST=0.0.0.0 realtime-profiles            # = `profiles worker`
#   docker run --rm realtime-profiles dlq replay --dry-run          # any other subcommand
#
# GPU variant: install the CUDA build of torch instead of the CPU one.  The CUDA wheels
# bundle their own CUDA runtime (nvidia-* wheels), so only the host needs an NVIDIA driver
# and the NVIDIA Container Toolkit (`docker run --gpus all`, or `gpus: all` in compose).
# If you prefer a CUDA base image, pass one that ships Python 3.11:
#
#   docker build -t realtime-profiles:gpu \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   # optionally also: --build-arg BASE_IMAGE=<an nvidia/cuda:*-runtime image with python3.11>
#   docker run --gpus all -e PROFILES_ENCODER_DEVICE=cuda ... realtime-profiles:gpu
#
# (pick the cuXXX tag of download.pytorch.org that offers torch ${TORCH_VERSION} and that
# your driver supports.)

ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# torch first, from the chosen index, so `pip install .` finds it satisfied and does not
# pull the (much larger) default CUDA build from PyPI.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY . /app
RUN pip install . \
    && useradd --create-home --uid 10001 --user-group profiles \
    && mkdir -p /state \
    && chown profiles:profiles /state

USER profiles
ENV PROFILES_STATE_DIR=/state \
    PROFILES_HTTP_HOST=0.0.0.0
VOLUME ["/state"]
EXPOSE 8080

ENTRYPOINT ["profiles"]
CMD ["worker"]
