# Two images from one file:
#   docker build --target operator -t maas-operator:0.1.0 .   # kopf operator, no torch
#   docker build --target runtime  -t maas-runtime:0.1.0 .    # worker runtime with torch (CUDA build)
# The operator image must never need torch, and the runtime image never needs kopf.
FROM python:3.11-slim AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api api
COPY operator operator
COPY runtime runtime
COPY devcluster devcluster

FROM python:3.11-slim AS operator
COPY --from=source /src /src
RUN pip install --no-cache-dir "/src[operator]" && rm -rf /src
USER 65532:65532
# Standalone kopf over every namespace; settings come from MAAS_* variables (maas_operator.settings).
ENTRYPOINT ["python", "-m", "maas_operator"]

FROM python:3.11-slim AS runtime
COPY --from=source /src /src
RUN pip install --no-cache-dir "/src[runtime]" && rm -rf /src
USER 65532:65532
# torchrun's agent that exits with the workers' code; the operator sets its flags through PET_* variables
# and MAAS_WORKER_INDEX (see maas_api.contract).
ENTRYPOINT ["python", "-m", "maas_runtime.agent"]
