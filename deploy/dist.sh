#!/usr/bin/env bash
# Builds weir's release artifacts into one folder (default dist/): `make dist` runs it, the
# Dockerfile's build stage runs `make dist`, and CI runs `make dist` (through deploy/check.sh), so
# the image and CI build the same things the same way.
#
#   dist/bin/weir                                              release build, --locked, debug info stripped
#   dist/transforms/target/wasm32-unknown-unknown/release/     media_filter, viewer_state, dedup, weir_js (the js engine)
#   dist/examples/                                             example configs, sample data,
#                                                              the live viewer demo page (built)
#   dist/deploy/config/                                        the deployments' weir configs
#
# The layout below bin/ mirrors the repository, so every config's relative paths (WASM
# transforms, the demo page) resolve the same from the repository root and from dist/ (the
# image's working directory /opt/weir).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="${1:-dist}"
CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
WASM_DIR=transforms/target/wasm32-unknown-unknown/release

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

# weir itself (librdkafka and aws-lc are built from source by their -sys crates: cc, make, perl).
"$CARGO" build --release --locked -p weir --bin weir

# The shipped Rust transforms (wit-bindgen is a crate here: no CLI needed; only the C example
# under transforms/examples needs clang and wit-bindgen-cli, and it is not shipped).
(cd transforms && "$CARGO" build --release --locked --target wasm32-unknown-unknown \
  --target-dir target -p media-filter -p viewer-state -p dedup -p weir-js)

# The demo page's tracker bundle (the real Snowplow browser tracker + media plugin).
(cd examples/live-viewer/demo && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error \
  && npm run build --silent)

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/$WASM_DIR" "$OUT/examples/live-viewer/demo/dist" "$OUT/deploy/config"
# Without the line tables the release profile keeps (191 MB → 49 MB); symbols stay, so panics and
# profiles still name functions. The unstripped binary stays in the target dir.
install -m 0755 "$TARGET/release/weir" "$OUT/bin/weir"
strip --strip-debug "$OUT/bin/weir"
for t in media_filter viewer_state dedup weir_js; do
  install -m 0644 "$WASM_DIR/$t.wasm" "$OUT/$WASM_DIR/$t.wasm"
done
cp examples/*.toml examples/*.yaml examples/*.json "$OUT/examples/"
cp -r examples/data "$OUT/examples/"
cp examples/live-viewer/pipeline.toml "$OUT/examples/live-viewer/"
cp examples/live-viewer/demo/index.html examples/live-viewer/demo/content.webm \
  "$OUT/examples/live-viewer/demo/"
cp examples/live-viewer/demo/dist/tracker.js "$OUT/examples/live-viewer/demo/dist/"
cp deploy/config/*.toml "$OUT/deploy/config/"

echo "dist: $(du -sh "$OUT" | cut -f1) in $OUT/ (weir $("$OUT/bin/weir" --version | cut -d' ' -f2))"
