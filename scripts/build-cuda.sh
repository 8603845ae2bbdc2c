#!/usr/bin/env bash
# Builds the CUDA binary (`--features cuda`) on a machine without a GPU or a system CUDA:
#   1. the CUDA 13.0 compiler and runtime come from PyPI wheels (pinned: cudarc 0.19 accepts
#      CUDA <= 13.4, and the GPU hosts' driver 580 runs PTX up to 13.0);
#   2. candle-core is patched at build time, from the registry's own copy, to load the CUDA
#      libraries at run time (cudarc `dynamic-loading`) instead of linking them, so the binary
#      starts on CPU-only hosts and falls back to the CPU;
#   3. CUDA's runtime is linked statically.
# Output: target/cuda/abstractgateway (stripped) and target/cuda/abstractgateway.xz (to carry).
# `scripts/build-cuda.sh --check`: only `cargo check --features cuda` of every target (what CI
# runs to keep the CUDA code compiling; candle's CUDA kernels are still compiled by nvcc).
# `scripts/build-cuda.sh --tests`: the engines' device suite (engines/tests/device_suite.rs) as a
# release test executable with its CUDA tests, target/cuda/device_suite.xz, for a GPU host that
# has no Rust (scripts/gpu-check.sh suite runs it).
# Env: CUDA_COMPUTE_CAP (default 90, Hopper), CUDA_TOOLCHAIN_DIR (default target/cuda-toolchain).
set -euo pipefail
CHECK=0
TESTS=0
case "${1:-}" in
--check) CHECK=1 ;;
--tests) TESTS=1 ;;
"") ;;
*) echo "usage: scripts/build-cuda.sh [--check|--tests]" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TOOLS=${CUDA_TOOLCHAIN_DIR:-$ROOT/target/cuda-toolchain}
WORK=$ROOT/target/cuda
mkdir -p "$TOOLS/wheels" "$WORK"

step() { printf '\n== %s\n' "$*"; }

step "CUDA 13.0 toolchain wheels -> $TOOLS"
WHEELS="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
if [ ! -x "$TOOLS/root/nvidia/cu13/bin/nvcc" ]; then
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps -d "$TOOLS/wheels" $WHEELS
    rm -rf "$TOOLS/root"
    for w in "$TOOLS"/wheels/*.whl; do python3 -m zipfile -e "$w" "$TOOLS/root"; done
    chmod +x "$TOOLS"/root/nvidia/cu13/bin/* "$TOOLS"/root/nvidia/cu13/nvvm/bin/*
fi
export CUDA_ROOT=$TOOLS/root/nvidia/cu13
export PATH=$CUDA_ROOT/bin:$PATH
# candle-kernels would ask nvidia-smi for the compute capability; there is no GPU here.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
nvcc --version | tail -2

step "candle-core patched for run-time loading of the CUDA libraries"
cargo fetch -q
CANDLE_SRC=$(cargo metadata --format-version 1 | python3 -c '
import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "candle-core"))')
rm -rf "$WORK/candle-core.new"
cp -rp "$CANDLE_SRC" "$WORK/candle-core.new"
python3 - "$WORK/candle-core.new/Cargo.toml" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
n = s.count('"dynamic-linking"')
if n != 1:
    sys.exit(f"expected one cudarc 'dynamic-linking' feature in {p}, found {n}: candle-core changed, update this script")
open(p, "w").write(s.replace('"dynamic-linking"', '"dynamic-loading"'))
PY
# The previous build's copy stays when it is the same, so cargo does not rebuild candle.
if diff -rq "$WORK/candle-core.new" "$WORK/candle-core" >/dev/null 2>&1; then
    rm -rf "$WORK/candle-core.new"
else
    rm -rf "$WORK/candle-core"
    mv "$WORK/candle-core.new" "$WORK/candle-core"
fi
mkdir -p "$WORK/cudart-static"
ln -sf "$CUDA_ROOT/lib/libcudart_static.a" "$WORK/cudart-static/libcudart.a"

# The patch rewrites Cargo.lock, so cargo runs in a copy of the workspace (git's tracked and
# not-ignored files, about 2 MB): the repository's lock file is never touched, and a commit made
# while a build runs cannot pick up the patched lock. The copy keeps the files' mtimes, so
# cargo's fingerprints still see unchanged sources as unchanged and rebuilds stay incremental.
step "workspace copy -> $WORK/ws"
rm -rf "$WORK/ws"
mkdir -p "$WORK/ws"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$WORK/ws"

# cargo with the CUDA build's environment, in the copy: TARGET_DIR (under target/), then
# cargo's arguments.
cuda_cargo() {
    local dir=$1
    shift
    (cd "$WORK/ws" && CARGO_TARGET_DIR=$ROOT/target/$dir CUDART_LINK_DIR=$WORK/cudart-static \
        cargo "$@" --config "patch.crates-io.candle-core.path=\"$WORK/candle-core\"")
}

# Strips the executable at $1 into $WORK/$2 and compresses it (what is carried to a GPU host).
pack() {
    step "strip and compress $2"
    cp "$1" "$WORK/$2"
    strip "$WORK/$2"
    xz -9 -T2 -k -f "$WORK/$2"
    ls -l "$WORK/$2" "$WORK/$2.xz"
}

if [ "$CHECK" = 1 ]; then
    step "cargo check --features cuda (all targets)"
    for pkg in abstractgateway abstractgateway-engines; do
        cuda_cargo cuda-check check -p "$pkg" --features cuda --all-targets
    done
    exit 0
fi

if [ "$TESTS" = 1 ]; then
    step "cargo test --release --features cuda --test device_suite --no-run"
    exe=$(cuda_cargo cuda-build test --release -p abstractgateway-engines --features cuda --test device_suite \
        --no-run --message-format json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "device_suite":
        print(m["executable"])')
    [ -n "$exe" ] || { echo "no device_suite executable" >&2; exit 1; }
    pack "$exe" device_suite
    exit 0
fi

step "cargo build --release --features cuda"
cuda_cargo cuda-build build --release --features cuda --bin abstractgateway
pack target/cuda-build/release/abstractgateway abstractgateway
