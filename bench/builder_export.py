"""Run onnxruntime-genai's model builder on a Gemma 3 checkpoint (inside bench/.venv-builder).

Why a wrapper: under transformers 5 a Gemma 3 config carries rope settings nested per layer type
(`rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}`) and no `rope_local_base_freq`,
while onnxruntime-genai 0.18.0's builder reads the flat form (`rope_parameters["rope_type"]`, KeyError) and
`config.rope_local_base_freq` (AttributeError). A config.json alone cannot fix the second (transformers 5
drops the key on load), so we flatten the loaded config in memory: the full-attention rope becomes the flat
`rope_parameters` and the sliding one becomes `rope_local_base_freq`. The weights and the checkpoint folder
are untouched.

    bench/.venv-builder/bin/python bench/builder_export.py CHECKPOINT OUT [--block-size 32]
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Any


def flatten_gemma3_rope(config: Any) -> Any:
    """Give a transformers-5 Gemma 3 config the flat rope fields the builder expects (idempotent)."""
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        rope = getattr(cfg, "rope_parameters", None)
        if isinstance(rope, dict) and "full_attention" in rope and "rope_type" not in rope:
            flat = dict(rope["full_attention"])
            flat.update({k: v for k, v in rope.items() if k in ("full_attention", "sliding_attention")})
            cfg.rope_parameters = flat
            cfg.rope_local_base_freq = rope.get("sliding_attention", {}).get("rope_theta", 10_000.0)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--accuracy-level", type=int, default=4)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()

    import transformers

    original = transformers.AutoConfig.from_pretrained.__func__

    def from_pretrained(cls: Any, *a: Any, **kw: Any) -> Any:
        return flatten_gemma3_rope(original(cls, *a, **kw))

    transformers.AutoConfig.from_pretrained = classmethod(from_pretrained)
    sys.argv = [
        "builder", "-i", args.checkpoint, "-o", args.out, "-p", "int4", "-e", "cpu",
        "-c", args.cache_dir or f"{args.out}/.builder-cache",
        "--extra_options", "prune_lm_head=true", f"block_size={args.block_size}",
        f"accuracy_level={args.accuracy_level}",
    ]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")


if __name__ == "__main__":
    main()
