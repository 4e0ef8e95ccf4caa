"""Layer 2, the engine: text in, validated JSON out, for one checked schema and one loaded model.

- `prompt`, `examples`   what the model reads (chat or document style; worked examples)
- `grammar`, `tokens`, `spans`   the llguidance grammar and token table; span fields bound to the text
- `decoder`, `loops`     our decoding loop (forced tokens, lazy and masked choices, the repetition guard)
- `likely`               enum values chosen whole by the model's likelihood (`--choose likely`)
- `runtime`              onnxruntime sessions of a model folder (decoder graph + separate lm_head)
- `extractor`            Extractor: prompt -> decode -> jsonschema validation -> ExtractionResult
"""
