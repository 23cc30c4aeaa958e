# syntax=docker/dockerfile:1
# Two images from one file, both installed from uv.lock by hack/install-target.sh:
#   docker build --target operator -t maas-operator:0.1.0 .   # kopf operator, no torch
#   docker build --target runtime  -t maas-runtime:0.1.0 .    # worker runtime: torch from PyPI (CUDA, NCCL)
# The operator image never contains torch, and the runtime image never contains kopf (tests/images checks
# both from a clean install of each target).
# torch's PyPI wheels carry the CUDA runtime and NCCL as nvidia-* packages, so the runtime needs no CUDA
# base image: the node's driver comes in through the NVIDIA container toolkit.

# One pinned base for every stage: the virtual environment built in a build stage links to this interpreter.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# Sources, the lock and uv (hash-checked, at the version uv.lock pins). Nothing from here is shipped.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY hack/ensure-uv.sh hack/install-target.sh hack/
RUN bash hack/ensure-uv.sh
COPY api api
COPY operator operator
COPY runtime runtime
COPY devcluster devcluster

FROM build AS operator-venv
RUN --mount=type=cache,target=/root/.cache/uv bash hack/install-target.sh operator /opt/maas

FROM build AS runtime-venv
RUN --mount=type=cache,target=/root/.cache/uv bash hack/install-target.sh runtime /opt/maas

# The shipped stages: the base image, its packaging tools removed, and the target's virtual environment.
FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="maas-operator" \
      org.opencontainers.image.description="The MaaSJob operator (kopf)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes --quiet pip setuptools wheel
COPY --from=operator-venv /opt/maas /opt/maas
ENV PATH=/opt/maas/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 65532:65532
# Standalone kopf; settings come from MAAS_* variables (maas_operator.settings; the Helm chart sets them).
ENTRYPOINT ["python", "-m", "maas_operator"]

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="maas-runtime" \
      org.opencontainers.image.description="The MaaSJob worker runtime (torch.distributed)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes --quiet pip setuptools wheel
COPY --from=runtime-venv /opt/maas /opt/maas
# HOME: torch and its compilers cache under ~ and the non-root user has no home folder.
ENV PATH=/opt/maas/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
# torchrun's agent that exits with the workers' code (the operator's worker pods run the same command and set
# its flags through PET_* variables and MAAS_WORKER_INDEX, see maas_api.contract).
ENTRYPOINT ["python", "-m", "maas_runtime.agent"]
