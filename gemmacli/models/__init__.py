"""Making model folders without torch: a GGUF file's weights and vocabulary -> the gemmacli layout.

- `gguf_file`   reads a Gemma 3 GGUF: metadata as a Hugging Face-style config, tensors de-quantized
- `vocab`       tokenizer.json from the GGUF's SentencePiece vocabulary (ids equal the published one)
- `int4`        blockwise INT4 in MatMulNBits' layout, in numpy
- `builder`     the fused decoder graph (GroupQueryAttention, fused norms, split lm_head) from weights
- `importer`    `gemmacli model import`: the stages above into an atomic, hashed model folder
"""
