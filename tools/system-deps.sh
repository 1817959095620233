#!/usr/bin/env bash
# Installs and starts what the test suite drives for real when it is missing: Debian's chromium
# (the IdP login page in a headless browser) and PostgreSQL (the storage tests run on SQLite and
# on PostgreSQL). Without root it only says what is missing; the tests that need it then skip
# with that reason (and fail instead under MRZAP_TEST_STRICT=1, as in CI).
set -euo pipefail

declare -A package_for=([chromium]=chromium [pg_ctlcluster]=postgresql [sshd]=openssh-server)
missing=()
for command in "${!package_for[@]}"; do
	command -v "$command" >/dev/null || missing+=("${package_for[$command]}")
done

if [ "$(id -u)" -ne 0 ]; then
	[ ${#missing[@]} -eq 0 ] || echo "not installed (needs root): ${missing[*]}" >&2
	exit 0
fi
if [ ${#missing[@]} -ne 0 ]; then
	echo "installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PostgreSQL: start the machine's cluster and give the tests a role that may create databases.
cluster=$(pg_lsclusters --no-header | awk 'NR == 1 { print $1 " " $2 }')
if [ -z "$cluster" ]; then
	pg_createcluster "$(ls /usr/lib/postgresql | sort -n | tail -1)" main >/dev/null
	cluster=$(pg_lsclusters --no-header | awk 'NR == 1 { print $1 " " $2 }')
fi
if ! pg_lsclusters --no-header | awk 'NR == 1 { exit $4 != "online" }'; then
	# shellcheck disable=SC2086 # "VERSION NAME"
	pg_ctlcluster $cluster start
fi
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 <<'SQL'
SELECT 'CREATE ROLE mrzap_test LOGIN CREATEDB PASSWORD ''mrzap_test'''
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mrzap_test')\gexec
SQL
