# weir — the two commands a new machine needs:
#   make demo   run the main job
#   make test   install what the tests need, then run them all
# Both build what they need first.

CARGO ?= cargo

.PHONY: demo test lint bench bench-collector setup-test

demo:
	$(CARGO) run --release --bin weir -- run examples/media-events.toml

# Everything the test suite needs that is not a crate (rustup targets, emulators, browsers, ...)
# is installed by runtime/tests/setup.sh, idempotently.
test: setup-test
	$(CARGO) test --workspace
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

setup-test:
	bash runtime/tests/setup.sh

bench:
	$(CARGO) bench --bench throughput

# The collector endpoint under `weir loadgen`, into the null sink (requests/s, events/s, RSS).
bench-collector:
	bash runtime/benches/collector.sh
