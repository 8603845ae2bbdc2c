#!/usr/bin/env bash
# Installs the upstream Python AbstractGateway (PyPI) into a venv for side-by-side benchmarks.
# Usage: benches/setup-upstream.sh [/tmp/upvenv]  then
#        UPSTREAM_GATEWAY=/tmp/upvenv/bin/abstractgateway cargo bench --bench gateway_bench
set -euo pipefail
venv=${1:-/tmp/upvenv}
python3 -m venv "$venv"
"$venv/bin/pip" install -q abstractgateway
"$venv/bin/abstractgateway" --help >/dev/null
echo "UPSTREAM_GATEWAY=$venv/bin/abstractgateway"
