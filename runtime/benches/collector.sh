#!/usr/bin/env bash
# Collector endpoint benchmark: `weir loadgen` (simulated viewers, media events, base64 entities)
# against a `collector` source writing into the null sink, release build. weir is pinned to CPU 0
# and the load generator to CPU 1, so the rates are what one core of weir sustains.
#
#   make bench-collector                    # or: bash runtime/benches/collector.sh
#   RUNS=5 SECONDS_PER_RUN=10 VIEWERS=64 BATCHES="1 10" bash runtime/benches/collector.sh
#
# Prints, per batch size, the median of RUNS runs: requests/s, events/s, p50/p99 latency, weir's
# CPU use during the run (if well under 100 %, the load generator is the limit, not weir) and the
# events per CPU-second weir spent; and weir's peak RSS over the whole series.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
VIEWERS=${VIEWERS:-64}
BATCHES=${BATCHES:-"1 10"}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release --quiet --bin weir
WEIR="$TARGET/release/weir"
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat >"$WORK/bench.toml" <<EOF
[source]
type = "collector"
address = "127.0.0.1:0"
max_inflight_per_client = 0

[sink]
type = "null"

[batch]
max_records = 1000
EOF

# taskset execs the command, so $! below is weir's own pid.
PIN0=() PIN1=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then PIN0=(taskset -c 0) PIN1=(taskset -c 1); fi

"${PIN0[@]}" "$WEIR" run "$WORK/bench.toml" --progress=never </dev/null >/dev/null 2>"$WORK/weir.log" &
PID=$!
for _ in $(seq 100); do
  ADDR=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/weir.log" | grep -o 'collector listening address=[0-9.:]*' | cut -d= -f2 || true)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { cat "$WORK/weir.log"; exit 1; }

# weir's user + system CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "weir $("$WEIR" --version | cut -d' ' -f2), $VIEWERS viewers, ${SECONDS_PER_RUN}s x $RUNS runs per batch size, --speed 0"
for B in $BATCHES; do
  : >"$WORK/runs.jsonl"
  : >"$WORK/cpu.txt"
  : >"$WORK/per_cpu_s.txt"
  for _ in $(seq "$RUNS"); do
    T0=$(cpu_ticks)
    "${PIN1[@]}" "$WEIR" loadgen --viewers "$VIEWERS" --speed 0 --duration "${SECONDS_PER_RUN}s" \
      --batch "$B" --json "http://$ADDR" >>"$WORK/runs.jsonl"
    T1=$(cpu_ticks)
    python3 - "$WORK/runs.jsonl" "$T0" "$T1" "$(getconf CLK_TCK)" >>"$WORK/cpu.txt" 3>>"$WORK/per_cpu_s.txt" <<'PY'
import json, os, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print(100 * cpu / r["seconds"])
os.write(3, f"{r['events_accepted'] / max(cpu, 1e-9)}\n".encode())
PY
  done
  get() { python3 -c "import json,sys; [print(json.loads(l)['$1']) for l in open('$WORK/runs.jsonl')]"; }
  printf 'batch %3s: %7.0f requests/s %7.0f events/s  p50 %6.2f ms  p99 %6.2f ms  weir CPU %3.0f %%  %7.0f events/CPU-s  (503: %s, other: %s)\n' "$B" \
    "$(get requests_per_s | median)" "$(get events_per_s | median)" \
    "$(get latency_ms_p50 | median)" "$(get latency_ms_p99 | median)" \
    "$(median <"$WORK/cpu.txt")" "$(median <"$WORK/per_cpu_s.txt")" \
    "$(get status_503 | awk '{s+=$1} END {print s+0}')" "$(get status_other | awk '{s+=$1} END {print s+0}')"
done
echo "weir peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2/1024}' "/proc/$PID/status")"
kill -TERM "$PID"
wait "$PID" || true
