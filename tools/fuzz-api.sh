#!/usr/bin/env bash
# Property-based API fuzzing with Schemathesis against a throwaway database:
# every documented operation, generated inputs, no 5xx allowed, responses
# checked against /api/openapi.json. Revoking keys is left out: the
# stateful phase would revoke the key it is testing with.
set -euo pipefail
cd "$(dirname "$0")/.."
server_url=${KARVON_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}
database="karvon_fuzz_$$"
export KARVON_DATABASE_URL="$server_url/$database"
export KARVON_LISTEN=127.0.0.1:18181
export KARVON_LOG=warn
command -v schemathesis >/dev/null || pip install --quiet schemathesis
cargo build --release -p karvon-app --bin karvon
karvon=target/release/karvon
$karvon migrate
key=$($karvon api-key create --tenant default --scopes admin,operator --rate-limit 1000000 | tail -n 1)
$karvon serve &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    psql "$server_url/postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
}
trap cleanup EXIT
for _ in $(seq 1 50); do curl -fs "http://$KARVON_LISTEN/ready" >/dev/null && break; sleep 0.2; done
schemathesis run "http://$KARVON_LISTEN/api/openapi.json" \
    --header "Authorization: Bearer $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --exclude-path-regex 'revoke$' \
    --max-examples "${KARVON_FUZZ_EXAMPLES:-50}" "$@"
