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

# The Kafka tests run librdkafka's mock cluster in-process (rdkafka builds librdkafka from source
# with gcc, make and perl, all present on the base image): nothing to install.
