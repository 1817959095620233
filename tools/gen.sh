#!/usr/bin/env bash
# Regenerates the Python modules of proto/ into OUT (default: gen/). buf.gen.yaml writes to a
# folder named gen/, so OUT must be named gen; it may sit elsewhere (the freshness check uses a temporary one).
# buf writes the modules; every generated folder gets an empty __init__.py so gen/ is a plain
# package root that setuptools, mypy and pytest all see the same way.
set -euo pipefail
out=${1:-gen}
rm -rf "$out/bastion"
mkdir -p "$out"
[ "$(basename "$out")" = gen ] || { echo "output folder must be named gen" >&2; exit 2; }
# protoc-gen-mypy announces every file it writes on stderr: show that output only on failure.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! buf generate -o "$(dirname "$out")" 2>"$log"; then
  cat "$log" >&2
  exit 1
fi
find "$out/bastion" -type d -exec touch {}/__init__.py \;
