# syntax=docker/dockerfile:1
# inseq_ray image for Ray clusters. Ray, Python and the base tag must agree with pyproject.toml and
# infra/ (a test checks it). GPU (default):   docker build -t inseq-ray:0.1.0-gpu .
#                                     CPU:     docker build --target cpu -t inseq-ray:0.1.0-cpu .
ARG RAY_VERSION=2.60.0

FROM rayproject/ray:${RAY_VERSION}-py311 AS cpu
WORKDIR /home/ray/app
# Same install as .ci/run: torch 2.13.0 first (CPU wheel here), then the project itself (no dev extras).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users inseq_ray ./inseq_ray
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir .
ENV RAY_USAGE_STATS_ENABLED=0 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
USER ray

FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS gpu
WORKDIR /home/ray/app
# Same install as .ci/run: torch 2.13.0 first (the CUDA wheel from PyPI here), then the project.
RUN pip install --no-cache-dir torch==2.13.0
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users inseq_ray ./inseq_ray
COPY --chown=ray:users jobs ./jobs
RUN pip install --no-cache-dir .
ENV RAY_USAGE_STATS_ENABLED=0 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
USER ray
