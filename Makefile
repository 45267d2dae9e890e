# weir — the two commands a new machine needs:
#   make demo   run the main job
#   make test   install what the tests need, then run them all
# Both build what they need first.

CARGO ?= cargo

.PHONY: demo demo-build js-engine sample dist test test-kafka test-rest lint bench bench-collector bench-viewers bench-js setup-test fuzz

# The live viewer demo: collector -> media-filter -> viewer-state -> profile store + dashboard.
# Open http://127.0.0.1:8080/demo/ (the tracked video) and http://127.0.0.1:8080/ (the dashboard).
demo: demo-build
	$(CARGO) run --release --bin weir -- run examples/live-viewer/pipeline.toml

# The WASM transforms and the tracker bundle the demo needs.
demo-build:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	cd transforms && $(CARGO) build --release --target wasm32-unknown-unknown --target-dir target \
		-p media-filter -p viewer-state
	cd examples/live-viewer/demo && npm ci --legacy-peer-deps --no-audit --no-fund && npm run build

# The JavaScript engine of the `js` transform (Boa in a WASM guest), where weir looks for it
# in a checkout: transforms/target/wasm32-unknown-unknown/release/weir_js.wasm.
js-engine:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	cd transforms && $(CARGO) build --release --target wasm32-unknown-unknown --target-dir target -p weir-js

# The bundled sample events through the Snowplow built-ins, to stdout.
sample:
	$(CARGO) run --release --bin weir -- run examples/media-events.toml

# Release artifacts into dist/: weir (release, --locked), the shipped WASM transforms, the demo
# page and the configs, laid out as the image's /opt/weir. The Dockerfile's build stage runs this.
dist:
	bash deploy/dist.sh dist

# runtime/tests/kafka.rs (~16 min on two cores, most of it waiting on brokers: sessions, kills,
# restarts, a 30 s outage) runs beside everything else; its output is printed at the end.
# Every selection keeps `--workspace`, so that cargo resolves the same features as the build.
OTHER_TESTS := $(filter-out kafka,$(basename $(notdir $(wildcard runtime/tests/*.rs runtime/crates/*/tests/*.rs))))

test: setup-test
	$(CARGO) test --workspace --no-run
	@log=$$(mktemp); \
	$(CARGO) test --workspace --test kafka > $$log 2>&1 & kafka=$$!; \
	$(MAKE) --no-print-directory test-rest; rest=$$?; \
	wait $$kafka; k=$$?; \
	echo "== runtime/tests/kafka.rs (ran beside the rest; exit $$k) =="; cat $$log; rm -f $$log; \
	[ $$rest -eq 0 ] && [ $$k -eq 0 ]

# The Kafka tests alone (a real broker, started by the tests).
test-kafka: setup-test
	$(CARGO) test --workspace --test kafka

# Everything `make test` runs but the Kafka tests.
test-rest:
	$(CARGO) test --workspace --lib --bins $(addprefix --test ,$(OTHER_TESTS))
	$(CARGO) test --workspace --doc
	$(CARGO) test --manifest-path transforms/Cargo.toml --workspace
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path transforms/Cargo.toml --all -- --check
	$(CARGO) fmt --manifest-path runtime/fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path transforms/Cargo.toml --workspace --all-targets -- -D warnings
	cd transforms && $(CARGO) clippy --workspace --target wasm32-unknown-unknown -- -D warnings
	bash deploy/check.sh
	bash runtime/fuzz/run.sh $(FUZZ_CI_SECONDS)

# Each fuzz target (runtime/fuzz) runs this long in `make test`, and in `make fuzz`.
FUZZ_CI_SECONDS ?= 12
FUZZ_SECONDS ?= 600

# The long fuzzing run: every target for FUZZ_SECONDS (one after the other; FUZZ_TARGETS to pick).
fuzz:
	bash runtime/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Everything the test suite needs that is not a crate (rustup targets, emulators, browsers, ...)
# is installed by runtime/tests/setup.sh, idempotently.
setup-test:
	bash runtime/tests/setup.sh

bench:
	$(CARGO) bench --bench throughput

# The collector endpoint under `weir loadgen`, into the null sink (requests/s, events/s, RSS).
# viewer-state at scale: N viewers x K media events, memory and disk state (see README).
bench-viewers:
	$(CARGO) bench --bench viewers

# The js transform (the accelerator's script, snowplow_mode) against the same work in Rust WASM.
bench-js:
	$(CARGO) bench --bench js

bench-collector:
	bash runtime/benches/collector.sh
