# The GPU image the Helm chart runs (helm/qwen-vl-serving, values image.*): vLLM 0.32.0 (CUDA
# wheels), Ray 2.60.0 and this project, with the exact pins of requirements/gpu.lock.
#
#   docker build -t <registry>/qwen-vl-serving:0.1.0 .
#   docker push <registry>/qwen-vl-serving:0.1.0
#
# The tag should be the chart's appVersion (the chart's default). Nodes need the NVIDIA driver
# and container toolkit; CUDA itself comes with the torch wheels. Not built in CI (no Docker
# engine there): docs/kubernetes.md.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models/huggingface

# gcc: Triton (vLLM's kernels) compiles a small launcher at run time. KubeRay starts Ray with
# bash, which the base image has.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --shell /bin/bash ray \
    && mkdir -p /models && chown ray:ray /models

WORKDIR /opt/qwen-vl-serving
# The project and its pinned dependencies (the load tests run from a workstation, not here).
COPY requirements/gpu.lock requirements/gpu.lock
COPY pyproject.toml README.md ./
COPY engine engine
COPY launch launch
COPY loadtest loadtest
RUN pip install -c requirements/gpu.lock ".[gpu]" \
    && qwen-vl --help > /dev/null \
    && test -x /usr/local/bin/qwen-vl-haproxy

# Non-root, matching the chart's securityContext (runAsUser 1000).
USER 1000
WORKDIR /home/ray
