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
