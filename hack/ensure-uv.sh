#!/usr/bin/env bash
# Installs (once) the uv that uv.lock pins, in a cache folder of its own, and prints the path of its binary.
#
# uv installs everything else from the lock, so it cannot install itself: this bootstrap takes uv's version
# and wheel hashes from uv.lock (the dev extra pins it) and installs it with pip, hash-checked. The folder is
# keyed by the version, so a bump in the lock installs the new uv beside the old one.
# The Dockerfile's build stage runs this script too.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}

# "VERSION" on the first line, then one requirement line with every wheel hash of that version.
pin=$("$python" - "$root/uv.lock" <<'PY'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
(uv,) = [package for package in lock["package"] if package["name"] == "uv"]
hashes = " ".join(f"--hash={wheel['hash']}" for wheel in uv["wheels"])
print(uv["version"])
print(f"uv=={uv['version']} {hashes}")
PY
)
version=${pin%%$'\n'*}
home="${MAAS_CACHE_DIR:-$HOME/.cache/maas-operator}/uv/$version"

if [[ ! -f "$home/.complete" ]]; then
  echo "[uv] installing uv $version into $home ..." >&2
  rm -rf "$home"
  "$python" -m venv "$home"
  printf '%s\n' "${pin#*$'\n'}" >"$home/requirements.txt"
  "$home/bin/pip" install --quiet --no-cache-dir --require-hashes --only-binary=:all: \
    -r "$home/requirements.txt" >&2
  touch "$home/.complete"
fi
echo "$home/bin/uv"
