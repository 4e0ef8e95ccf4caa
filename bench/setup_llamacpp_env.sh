#!/usr/bin/env bash
# Build bench/.venv-llamacpp: llama-cpp-python compiled from source, for bench/bench_llamacpp.py only.
# Why a separate venv: llama.cpp is the baseline we measure against, never a gemmacli dependency.
# Why these flags: the default native build segfaults in ggml_backend_amx_mul_mat on this CPU (an upstream
# bug); native without AMX works. ~8.5 min on 2 cores: run it under the heavy-job lock.
# Re-runnable: an existing venv with llama_cpp importable is left as it is.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-llamacpp"
py="${PYTHON:-python3.11}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
if "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  "$venv/bin/python" -c "import llama_cpp; print('llama.cpp venv ok:', llama_cpp.__version__)"
  exit 0
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q numpy jsonschema
CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
CXXFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
CMAKE_ARGS="-DGGML_NATIVE=ON" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "$venv/bin/pip" install --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$version"
"$venv/bin/python" -c "import llama_cpp; print('llama.cpp venv ok:', llama_cpp.__version__)"
