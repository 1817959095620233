#!/usr/bin/env bash
# Fails when the committed gen/ differs from what proto/ generates now.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tools/gen.sh "$tmp/gen"
if ! diff -r gen/bastion "$tmp/gen/bastion" >"$tmp/diff"; then
  head -50 "$tmp/diff"
  echo "gen/ is not current: run 'make gen' and commit the result" >&2
  exit 1
fi
echo "gen/ is current"
