"""Where models live: name -> folder resolution, manifests, verification.

CONTRACT: resolve_model(ref) -> Path; model_search_path() -> list[Path];
search order: $GEMMACLI_MODELS (os.pathsep-separated), ./onnx_models in a checkout, then
${XDG_CACHE_HOME:-~/.cache}/gemmacli/models. Missing -> ModelError with the command that fixes it.
"""

from __future__ import annotations
