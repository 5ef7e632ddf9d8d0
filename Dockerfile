# fsq container image: CPU-only by default (no CUDA libraries: about 1.5 GB instead of ~6 GB).
#
#   docker build -t fsq:local .
#   docker run --rm -v fsq-data:/data fsq:local init --passphrase-file /run/secrets/fsq-pass
#
# GPU variant (NVIDIA; run with `--gpus all` and the NVIDIA container toolkit on the host):
#
#   docker build -t fsq:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
#
# Everything mutable lives under /data (state DB, vault, reports, model cache); keys and
# passphrases are mounted at run time, never built into the image (.dockerignore keeps
# fsq.db, keys/, quarantine/ and reports/ of a checkout out of the build context).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# PyTorch's own wheel index: the CPU build (or a CUDA one via --build-arg). Installed first, so
# that installing fsq finds torch already satisfied and does not pull the CUDA build from PyPI.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fsq \
 && /opt/fsq/bin/pip install --index-url "${TORCH_INDEX}" torch
COPY pyproject.toml setup.cfg README.md /src/
COPY fsq /src/fsq
COPY templates /src/templates
RUN /opt/fsq/bin/pip install "/src[all]" \
 && /opt/fsq/bin/fsq --version

FROM ${PYTHON_IMAGE}
# A fixed, unprivileged user: the vault and the state DB are written 0600/0700 as this uid.
RUN groupadd --system --gid 10001 fsq \
 && useradd --system --uid 10001 --gid fsq --home-dir /data --shell /usr/sbin/nologin fsq \
 && mkdir -p /data \
 && chown fsq:fsq /data \
 && chmod 0700 /data
COPY --from=build /opt/fsq /opt/fsq
ENV PATH=/opt/fsq/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    FSQ_DB=/data/fsq.db \
    FSQ_VAULT=file:///data/quarantine \
    FSQ_REPORTS_DIR=/data/reports \
    FSQ_CACHE_DIR=/data/cache \
    FSQ_SERVE_LISTEN=0.0.0.0:14051 \
    HF_HUB_OFFLINE=1
USER fsq
WORKDIR /data
VOLUME ["/data"]
EXPOSE 14051
ENTRYPOINT ["fsq"]
CMD ["--help"]
