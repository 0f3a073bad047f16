# The image cluster-k8s.yaml names: Ray's official image, the project's locked packages, and every
# pretrained weight the paper profile loads (nothing is downloaded at run time).
#   docker build --build-arg CODE_VERSION=$(git rev-parse --short=12 HEAD) -t REGISTRY/orchestrator:0.1.0 .
#   docker push REGISTRY/orchestrator:0.1.0
# rayproject/ray-ml images stopped after 2.49 and the -gpu images carry no torch: torch (built for
# CUDA 13.0: nodes need an NVIDIA driver >= 580) comes from the lock, as on the AWS nodes.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /home/ray/orchestrator
# the lock first (its layer is reused while only the code changes), exactly as cluster.yaml installs it
COPY --chown=ray:users cluster-requirements.txt ./
RUN pip install --no-cache-dir -r cluster-requirements.txt
COPY --chown=ray:users . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && python -m orchestrator.clusters.prefetch --profile paper

# rows record the code version (no .git in the image): docker build --build-arg CODE_VERSION=$(git rev-parse --short=12 HEAD)
ARG CODE_VERSION=unknown
# caches are baked in above; at run time the hub is never asked
ENV ORCHESTRATOR_CODE_VERSION=$CODE_VERSION \
    HF_HUB_OFFLINE=1 \
    ORCHESTRATOR_DATA_DIR=/mnt/shared/data \
    ORCHESTRATOR_CACHE_DIR=/mnt/shared/cache \
    ORCHESTRATOR_RESULTS=/mnt/shared/results
