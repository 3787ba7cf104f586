# syntax=docker/dockerfile:1
# inseq_ray image for Ray clusters. Ray, Python and the base tag must agree with pyproject.toml and
# infra/ (a test checks it).
#   GPU (default): docker build -t ghcr.io/your-org/inseq-ray:0.1.0-gpu .
#   CPU (laptops): docker build --build-arg VARIANT= --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                    -t ghcr.io/your-org/inseq-ray:0.1.0-cpu .
ARG RAY_VERSION=2.60.0
ARG VARIANT=-gpu
FROM rayproject/ray:${RAY_VERSION}-py311${VARIANT}
ARG TORCH_INDEX_URL=https://pypi.org/simple
WORKDIR /home/ray/app
# Same install as .ci/run: torch 2.13.0 first (CUDA wheel from PyPI, or the CPU index), then the project (no dev extras).
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX_URL}
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users inseq_ray ./inseq_ray
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir .
ENV RAY_USAGE_STATS_ENABLED=0 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
USER ray
