#!/usr/bin/env bash
# Creates (once) the project's development virtual environment under ~/.cache from uv.lock, with every extra,
# and installs this checkout into it in editable mode. Prints the venv folder as its last line.
#
# The folder is keyed by the Python version and the lock file, so a fresh clone reuses it and a new lock builds
# a new one. torch from PyPI is the CUDA build (a few GB with its nvidia packages); it runs fine on CPU.
# uv itself comes from hack/ensure-uv.sh (its own cache folder, the version and hashes uv.lock pins).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
uv=$(bash "$root/hack/ensure-uv.sh")
key=$({ "$python" -c 'import sys; print(sys.version_info[:2])'; cat "$root/uv.lock"; } | sha256sum | cut -c1-12)
venv="${MAAS_CACHE_DIR:-$HOME/.cache/maas-operator}/venv/$key"
export UV_PROJECT_ENVIRONMENT=$venv UV_PYTHON_DOWNLOADS=never

if [[ ! -f "$venv/.complete" ]]; then
  echo "[venv] creating $venv from uv.lock (first time: downloads torch, a few GB) ..." >&2
  rm -rf "$venv"
  "$uv" venv --quiet --python "$python" "$venv" >&2
  # Bytecode compiled once at creation, as pip does: the first import of torch is then not slower.
  "$uv" sync --quiet --project "$root" --locked --all-extras --compile-bytecode >&2
  touch "$venv/.complete"
fi
# Every call: the packages as locked, and the editable install pointed at this checkout (cheap when nothing
# changed; a cached venv may have served another clone). --locked fails when pyproject.toml changed and
# uv.lock was not updated (`make lock`).
"$uv" sync --quiet --project "$root" --locked --all-extras >&2
# A stable name for Makefile targets and editors: .venv -> the cached venv.
ln -sfn "$venv" "$root/.venv"
echo "$venv"
