#!/usr/bin/env bash
# Build bench/.venv-builder: onnxruntime-genai 0.18.0 and its model builder, which needs transformers 5.x.
# Why a separate venv: optimum-onnx 0.1.0 (our exporter) needs transformers <4.58, the builder needs 5.x.
# Re-runnable: an existing venv is reused and pip only installs what is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-builder"
py="${PYTHON:-python3.11}"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# CPU torch first: a bare `torch` requirement resolves to the CUDA build (GBs).
"$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q \
  "onnxruntime-genai==0.18.0" \
  "transformers>=5,<6" \
  "onnx>=1.17" onnx-ir onnxscript numpy sentencepiece tokenizers protobuf safetensors accelerate
"$venv/bin/python" - <<'PY'
import onnxruntime_genai as og, transformers, onnxruntime as ort, torch
print("builder venv ok: onnxruntime-genai", og.__version__, "transformers", transformers.__version__,
      "onnxruntime", ort.__version__, "torch", torch.__version__)
PY
