#!/usr/bin/env bash
# Runs `buf breaking` against a git reference (default: the main branch) when that reference
# already has contracts; the first revision that adds proto/ has nothing to break.
set -euo pipefail
ref=${1:-main}
if ! git rev-parse --verify --quiet "$ref^{commit}" >/dev/null; then
  echo "buf breaking: no revision '$ref' to compare with; skipped"
  exit 0
fi
if [ -z "$(git ls-tree -r --name-only "$ref" -- proto | grep '\.proto$' || true)" ]; then
  echo "buf breaking: '$ref' has no contracts yet; skipped"
  exit 0
fi
buf breaking --against ".git#ref=$(git rev-parse "$ref"),subdir=."
echo "buf breaking: no breaking change against $ref"
