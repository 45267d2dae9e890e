#!/usr/bin/env bash
# Installs what the test suite needs beyond crates, idempotently. Called by `make test` (and so
# by CI). Safe to run again: each step checks first.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

# rustfmt and clippy for the lint step.
if have rustup; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# WebAssembly transforms: the wasm32 target, and clang + wasi-libc + wit-bindgen for the C example.
bash "$(cd "$(dirname "$0")/../.." && pwd)/transforms/setup.sh"

# AWS emulator for the DynamoDB / Kinesis tests: moto's server (one port, every service; the only
# emulator here with Kinesis UpdateShardCount). Installed into a virtualenv beside the build
# output, where the tests look for it (`<target dir>/aws-emulators/venv/bin/moto_server`).
MOTO_VERSION=5.2.5
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
EMU_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/aws-emulators"
if ! "$EMU_DIR/venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  mkdir -p "$EMU_DIR"
  python3 -m venv "$EMU_DIR/venv"
  "$EMU_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
# The Kafka tests run librdkafka's mock cluster in-process (rdkafka builds librdkafka from source
# with gcc, make and perl, all present on the base image): nothing to install.
# The collector tests run real Snowplow software: the Python tracker (GET/POST, base64, batches)
# and a real Thrift library (thriftpy2) to encode raw CollectorPayload records.
if have python3; then
  python3 - <<'PY' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check snowplow-tracker==1.1.0 thriftpy2==0.7.1
import importlib.metadata as m
assert m.version("snowplow-tracker") == "1.1.0" and m.version("thriftpy2") == "0.7.1"
PY
else
  echo "setup.sh: python3 is needed by the collector tests" >&2
  exit 1
fi

# The live viewer browser test: Debian's Chromium, and the demo page's npm packages (the real
# Snowplow browser tracker + media plugin, esbuild, playwright-core) with its tracker bundle.
if ! have chromium; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
DEMO="$(cd "$(dirname "$0")/../.." && pwd)/examples/live-viewer/demo"
if [ ! -d "$DEMO/node_modules/playwright-core" ] || [ ! -f "$DEMO/dist/tracker.js" ]; then
  (cd "$DEMO" && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error && npm run build --silent)
fi
