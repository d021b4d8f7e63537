#!/usr/bin/env bash
# Fuzzes `backstop serve` against its own OpenAPI description with
# schemathesis (status codes, response schemas, auth, no 5xx), on 127.0.0.1.
# Not part of the test command (it installs schemathesis from PyPI); run it
# after changing the API: `tests/api-fuzz.sh [max-examples]`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
examples=${1:-200}
venv="$root/target/schemathesis-venv"
[ -x "$venv/bin/schemathesis" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'schemathesis==4.32.5'; }
"$root/plugins/build.sh" rust >/dev/null
cargo build -q -p backstop --manifest-path "$root/Cargo.toml"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/backstop.toml" <<TOML
version = 1
seed = 1
state = "sqlite:$work/state.db"
cache_dir = "$root/target/e2e-cache"
[defaults.retry]
attempts = 2
base = "5ms"
[tools.fault]
component = "$root/plugins/dist/fault.wasm"
[tools.checked]
component = "$root/plugins/dist/fault.wasm"
approval = true
[models.m]
provider = "anthropic"
model = "m"
base_url = "http://127.0.0.1:9"
retry = { attempts = 1 }
[agents.checked]
steps = [{ name = "c", tool = "checked", input = { mode = "echo", value = "ok" } }]
TOML
token=fuzz-token
BACKSTOP_API_TOKEN=$token BACKSTOP_LOG=error "$root/target/debug/backstop" -c "$work/backstop.toml" \
  serve --listen 127.0.0.1:0 > "$work/out" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^listening on //p' "$work/out")
[ -n "$base" ] || { echo "serve did not start" >&2; exit 1; }
"$venv/bin/schemathesis" run "$base/openapi.json" -H "Authorization: Bearer $token" \
  --checks all --max-examples "$examples"
