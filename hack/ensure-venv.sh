#!/usr/bin/env bash
# Creates (once) the project's virtual environment under ~/.cache, keyed by the dependency list, and
# installs this checkout into it in editable mode. Prints the venv folder as its last line.
#
# torch from PyPI is the CUDA build (a few GB with its nvidia packages); it runs fine on CPU. Keying the
# venv by the dependency list means a fresh clone reuses it, and a dependency change builds a new one.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
key=$("$python" - "$root/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = {"python": sys.version_info[:2], "deps": project["dependencies"],
        "extras": project["optional-dependencies"]}
print(hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:12])
PY
)
venv="${MAAS_CACHE_DIR:-$HOME/.cache/maas-operator}/venv/$key"

if [[ ! -f "$venv/.complete" ]]; then
  echo "[venv] creating $venv (first time: downloads torch, a few GB) ..." >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip setuptools wheel >&2
  # Dependencies only: the checkout itself is installed below, on every call, because clones move.
  "$venv/bin/python" - "$root/pyproject.toml" > "$venv/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for req in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
    print(req)
PY
  "$venv/bin/pip" install --quiet -r "$venv/requirements.txt" >&2
  touch "$venv/.complete"
fi
# Re-point the editable install at this checkout (cheap; a cached venv may have served another clone).
# (Its output, setuptools' warnings included, is shown only when it fails.)
if ! log=$("$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e "$root" 2>&1); then
  echo "$log" >&2
  exit 1
fi
# A stable name for Makefile targets and editors: .venv -> the cached venv.
ln -sfn "$venv" "$root/.venv"
echo "$venv"
