#!/usr/bin/env bash
# Installs exactly what one image target runs into a new virtual environment, from uv.lock.
#
# Usage: hack/install-target.sh operator|runtime DEST
# The target's name is the pyproject extra it installs (besides the base dependencies); the project itself is
# installed as a built wheel, not in editable mode. The Dockerfile's build stage runs this script, and so do
# the tests that start each target's entry point from a clean install.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:-}
dest=${2:-}
case "$target" in
  operator | runtime) ;;
  *)
    echo "usage: $0 operator|runtime DEST" >&2
    exit 2
    ;;
esac
if [[ -z "$dest" || -e "$dest" ]]; then
  echo "install-target: DEST must be a path that does not exist yet (got '$dest')" >&2
  exit 2
fi
python=${PYTHON:-python3}
uv=$(bash "$root/hack/ensure-uv.sh")
# The interpreter given, never one uv would download.
export UV_PYTHON_DOWNLOADS=never
"$uv" venv --quiet --python "$python" "$dest"
# --locked: a pyproject.toml that no longer matches uv.lock is an error, not a silent re-resolve.
UV_PROJECT_ENVIRONMENT=$dest "$uv" sync --quiet --project "$root" --locked --no-editable \
  --no-default-groups --extra "$target"
