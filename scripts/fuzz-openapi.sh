#!/usr/bin/env bash
# Property-based check of /openapi.json against the real server: schemathesis generates requests
# from the document (valid and invalid ones) for every operation, and fails on any 5xx, any
# undocumented status code or content type, any response that breaks its schema, any schema-
# violating request that is accepted, and any schema-valid request refused as malformed (422).
#
#   scripts/fuzz-openapi.sh [MAX_SECONDS] [MAX_EXAMPLES]     (defaults: 240 s, 40 per operation)
#
# The gateway runs from a fresh data dir in hosted-user mode (so the admin routes are exercised
# too), with the upstream test bundles, no chat model, the tiny random-weight embedding model
# of the engine tests (86 KB), so that the embedding and knowledge-graph routes really embed,
# whisper tiny.en and the Piper voice joe (fetched into .models if missing; the voice needs the
# espeak-ng program), so that /v1/audio really reads and speaks what it is sent (texts capped at
# 200 characters, so that no one request outlasts the request timeout). schemathesis (Python, pinned) is installed once into target/schemathesis-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
max_time=${1:-240}
max_examples=${2:-40}
venv=target/schemathesis-venv
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check schemathesis==4.32.5
fi
cargo build -q --bin abstractgateway
scripts/fetch-models.sh --dest .models whisper-tiny.en piper-joe >/dev/null
data=$(mktemp -d /tmp/agw-fuzz-XXXXXX)
mkdir -p "$data/flows"
cp tests/fixtures/bundles/test-*.flow "$data/flows/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ABSTRACTGATEWAY_DATA_DIR="$data" ABSTRACTGATEWAY_AUTH_TOKEN=fuzz-operator-token-0123456789 \
  ABSTRACTGATEWAY_USER_AUTH=1 ABSTRACTGATEWAY_MODELS=tiny-embed=engines/tests/data/tiny-xlmr,stt=.models/whisper-tiny.en,tts=.models/piper-en_US-joe-medium \
  ABSTRACTGATEWAY_TTS_MAX_CHARS=200 ABSTRACTGATEWAY_LOG_LEVEL=error \
  ABSTRACTGATEWAY_LOCKOUT_AFTER=1000000 ABSTRACTGATEWAY_MAX_CONCURRENCY=256 \
  target/debug/abstractgateway serve --host 127.0.0.1 --port "$port" >"$data/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do curl -sf "127.0.0.1:$port/api/health" >/dev/null && break; sleep 0.1; done
admin=$(cat "$data/auth/bootstrap-admin-token")
echo "fuzzing http://127.0.0.1:$port/openapi.json for at most ${max_time}s, ${max_examples} examples per operation"
"$venv/bin/schemathesis" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $admin" --max-examples "$max_examples" --max-time "$max_time" \
  --request-timeout 10 --workers 1 --seed 20261205 --no-color
