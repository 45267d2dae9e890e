#!/usr/bin/env bash
# Installs what the test suite needs beyond crates, idempotently. Called by `make test` (and so
# by CI). Safe to run again: each step checks first.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

# A python3 that can make virtualenvs (Debian ships venv/ensurepip apart, in python3-venv).
need_venv() {
  have python3 || { echo "setup.sh: python3 is needed (moto, the Snowplow tracker and SDK tests)" >&2; exit 1; }
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
}

# rustfmt and clippy for the lint step, and (transforms/setup.sh) the wasm32 target: all from
# rustup. A Rust without rustup (Debian's cargo, say) cannot add them: say so instead of failing
# later in a build.
if ! have rustup; then
  echo "setup.sh: rustup is needed (it adds rustfmt, clippy and the wasm32-unknown-unknown target)," >&2
  echo "          but it is not on PATH. Install Rust with rustup (https://rustup.rs), then run this again." >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
# The fuzz targets (runtime/fuzz/run.sh, a short run in `make test`) build with a nightly
# toolchain; cargo-fuzz itself is installed by run.sh, beside the build output.
rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal

# WebAssembly transforms: the wasm32 target, and clang + wasi-libc + wit-bindgen for the C example.
bash "$(cd "$(dirname "$0")/../.." && pwd)/transforms/setup.sh"

# PostgreSQL for the postgres sink's tests (runtime/tests/pg_support): Debian's server package;
# each test runs its own throwaway server (initdb + pg_ctl, as the `postgres` user when root).
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || ! have psql || ! have runuser; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql util-linux
fi

# AWS emulator for the DynamoDB / Kinesis tests: moto's server (one port, every service; the only
# emulator here with Kinesis UpdateShardCount). Installed into a virtualenv beside the build
# output, where the tests look for it (`<target dir>/aws-emulators/venv/bin/moto_server`).
MOTO_VERSION=5.2.5
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
EMU_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/aws-emulators"
if ! "$EMU_DIR/venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  need_venv
  mkdir -p "$EMU_DIR"
  python3 -m venv "$EMU_DIR/venv"
  "$EMU_DIR/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
# Google Cloud Pub/Sub emulator for the pubsub tests (runtime/tests/pubsub_support): Google's
# in-memory fake from its Go client library (cloud.google.com/go/pubsub/v2/pstest) as a gRPC
# server, built from runtime/tests/pubsub_support/emulator with the Go toolchain and the Go
# module proxy into `<target dir>/pubsub-emulator/pstest-server`. Rebuilt when its source changes.
PS_SRC="$ROOT/runtime/tests/pubsub_support/emulator"
PS_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/pubsub-emulator"
PS_STAMP="$(cat "$PS_SRC/main.go" "$PS_SRC/go.mod" "$PS_SRC/go.sum" | sha256sum | cut -c1-16)"
if [ "$(cat "$PS_DIR/.stamp" 2>/dev/null)" != "$PS_STAMP" ] || [ ! -x "$PS_DIR/pstest-server" ]; then
  GO="$(command -v go || true)"
  [ -n "$GO" ] || [ ! -x /usr/local/go/bin/go ] || GO=/usr/local/go/bin/go
  if [ -z "$GO" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go
    GO="$(command -v go)"
  fi
  mkdir -p "$PS_DIR"
  (cd "$PS_SRC" && GOFLAGS=-mod=mod "$GO" build -o "$PS_DIR/pstest-server" .)
  echo "$PS_STAMP" > "$PS_DIR/.stamp"
fi
# Apache Kafka for the Kafka tests and benches (runtime/tests/kafka_support): a pinned release's
# jars (the KRaft broker, its tools and a log4j2 binding) from Maven Central, fetched once into
# `<target dir>/kafka-<version>/libs` and run with `java -cp 'libs/*' kafka.Kafka`. Needs a JDK
# >= 17 and Maven. (rdkafka builds librdkafka and OpenSSL from source with gcc, make and perl, all
# present on the base image.) The tests read KAFKA_VERSION from this line.
KAFKA_VERSION=4.1.1
KAFKA_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/kafka-$KAFKA_VERSION"
if [ ! -f "$KAFKA_DIR/libs/.complete" ]; then
  java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1; }
  if ! have java || [ "$(java_major)" -lt 17 ] || ! have mvn; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless maven
  fi
  mkdir -p "$KAFKA_DIR"
  cat >"$KAFKA_DIR/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>weir.tests</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- Kafka logs through slf4j 1.x: log4j2's binding for it. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.25.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.25.3</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$KAFKA_DIR/libs.tmp"
  mvn -q -B -Dstyle.color=never -f "$KAFKA_DIR/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_DIR/libs.tmp"
  touch "$KAFKA_DIR/libs.tmp/.complete"
  rm -rf "$KAFKA_DIR/libs"
  mv "$KAFKA_DIR/libs.tmp" "$KAFKA_DIR/libs"
fi
# The collector and SDK tests run real Snowplow software: the Python tracker (GET/POST, base64,
# batches), a real Thrift library (thriftpy2) to encode raw CollectorPayload records, and the
# Python analytics SDK whose JSON is the expectation for weir's. Installed into their own
# virtualenv beside the build output, never into the system Python (Debian's refuses pip anyway);
# the tests look for `<target dir>/test-python/venv/bin/python` (or WEIR_TEST_PYTHON).
PY_VENV="${CARGO_TARGET_DIR:-$ROOT/target}/test-python/venv"
PY_PACKAGES=(snowplow-tracker==1.1.0 thriftpy2==0.7.1 snowplow-analytics-sdk==0.2.3)
if ! "$PY_VENV/bin/python" - "${PY_PACKAGES[@]}" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(any(m.version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
  need_venv
  rm -rf "$PY_VENV"
  python3 -m venv "$PY_VENV"
  "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

# The live viewer browser test: a Chromium (the test takes $CHROMIUM, else `chromium` or
# `chromium-browser` on PATH; Debian's package when there is none), and the demo page's npm
# packages (the real Snowplow browser tracker + media plugin, esbuild, playwright-core) with its
# tracker bundle.
if [ -z "${CHROMIUM:-}" ] && ! have chromium && ! have chromium-browser; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
if ! have npm; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi
DEMO="$(cd "$(dirname "$0")/../.." && pwd)/examples/live-viewer/demo"
if [ ! -d "$DEMO/node_modules/playwright-core" ] || [ ! -f "$DEMO/dist/tracker.js" ]; then
  (cd "$DEMO" && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error && npm run build --silent)
fi
