"""Layer 2, the engine: text in, validated JSON out, for one checked schema and one loaded model.

- `prompt`, `examples`   what the model reads (chat or document style; worked examples)
- `grammar`, `tokens`, `spans`   the llguidance grammar and token table; span fields bound to the text
- `decoder`, `loops`     our decoding loop (forced tokens, lazy and masked choices, the repetition guard)
- `likely`               enum values chosen whole by the model's likelihood (`--choose likely`)
- `protocols`            what the loop needs from a model, a grammar matcher and a tokenizer
- `runtime`              onnxruntime sessions of a model folder (decoder graph + separate lm_head)
- `kvcache`, `lockstep`  one sequence's KV cache; several documents' steps in one run (`--parallel`)
- `extractor`            Extractor: prompt -> decode -> jsonschema validation -> ExtractionResult
"""
