#!/usr/bin/env bash
# Runs every test of the workspace. The simulator's real-client tests drive the Salesforce
# simulator with the Python simple-salesforce and the npm jsforce libraries, and the Python gRPC
# client tests (tests/tests/python_clients.rs) use grpcio, grpcio-tools, grpcio-reflection and
# protobuf: they are installed here, once, into .learnsync/ (git-ignored), and the tests are told
# where. The console's browser test (tests/tests/console.rs) drives Debian's headless Chromium
# through chromedriver: installed here with apt-get when missing.
# Postgres: DATABASE_URL if set, otherwise each test binary starts a private cluster from the
# machine's PostgreSQL binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p .learnsync
if ! .learnsync/venv/bin/python -c 'import simple_salesforce, grpc, grpc_tools.protoc, grpc_reflection.v1alpha.proto_reflection_descriptor_database, google.protobuf.message_factory' >/dev/null 2>&1; then
  echo "installing simple-salesforce, grpcio, grpcio-tools, grpcio-reflection and protobuf into .learnsync/venv"
  python3 -m venv .learnsync/venv
  .learnsync/venv/bin/pip install --quiet --disable-pip-version-check 'simple-salesforce>=1.12,<2' \
    'grpcio>=1.62,<2' 'grpcio-tools>=1.62,<2' 'grpcio-reflection>=1.62,<2' 'protobuf>=4.25,<8'
fi
if [ ! -f .learnsync/node_modules/jsforce/package.json ]; then
  echo "installing jsforce into .learnsync/node_modules"
  (cd .learnsync && npm install --silent --no-audit --no-fund --no-package-lock 'jsforce@^3' >/dev/null)
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver (the console's browser test)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
fi
export LEARNSYNC_PYTHON="$PWD/.learnsync/venv/bin/python"
export LEARNSYNC_NODE_PATH="$PWD/.learnsync/node_modules"

# cargo prints one summary per test binary, the last often a doc-test run of 0: close with the
# totals over all of them.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# tests/tests/hostile.rs runs the server binary as a process of its own: cargo test builds only
# the binaries of the package under test, so build it first.
profile=()
for arg in "$@"; do [ "$arg" = --release ] && profile=(--release); done
cargo build -p learnsync-server --bin learnsync-server "${profile[@]}"
set +e
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
echo
echo "total: $passed passed, $failed failed"
exit "$status"
