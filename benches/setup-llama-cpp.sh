#!/usr/bin/env bash
# Installs llama.cpp's Python binding (built from source by pip; takes several minutes on 2 cores)
# into a venv, for the side-by-side text benchmark:
#   benches/setup-llama-cpp.sh [/tmp/llvenv]
#   LLAMA_CPP_PYTHON=/tmp/llvenv/bin/python cargo bench --bench text_bench
set -euo pipefail
venv=${1:-/tmp/llvenv}
python3 -m venv "$venv"
"$venv/bin/pip" install -q llama-cpp-python==0.3.36
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
echo "LLAMA_CPP_PYTHON=$venv/bin/python"
