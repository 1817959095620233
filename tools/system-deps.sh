#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real (today: chromium, for the IdP login
# page in a headless browser) when they are missing. Without root it only says what is missing;
# the tests that need a package then skip with that reason.
set -euo pipefail

declare -A package_for=([chromium]=chromium)
missing=()
for command in "${!package_for[@]}"; do
	command -v "$command" >/dev/null || missing+=("${package_for[$command]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "not installed (needs root): ${missing[*]}; the tests that use them will be skipped" >&2
	exit 0
fi
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
