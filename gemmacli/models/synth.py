"""Random-weight Gemma 3 models with Gemma's tokenizer structure, for tests and honest speed measurements.

`gemmacli model synth NAME --size tiny|270m` builds a `transformers.Gemma3ForCausalLM` with seeded random
weights and runs it through the same export code as a real checkpoint, so tests and benchmarks exercise
the real graph without a download. The HF checkpoint it exported from is kept beside the ONNX files in
`<model folder>/source-checkpoint/` (benchmarks feed the same weights to other exporters).

`tiny` also gets a structural prior (`_structural_prior`): a purely random model decoding greedily inside a
JSON string, where almost any token is allowed, practically never picks the closing quote, so nearly every
output ran out of tokens. Tiny's tied embedding/lm_head rows for the single-character pieces `"`, `}`,
`]`, `,`, `[` and `{` are shifted so those tokens get a logit bonus right after ordinary tokens (and a
smaller one right after a structural token), so strings take a few content tokens and then close,
numbers and containers end soon. The weights stay random and seeded; `270m` is left exactly as
initialized (its benchmarks need the real shape's cost).

Needs the `export` extra (torch, transformers, sentencepiece); imported only by `model synth`.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

SIZES = ("tiny", "270m")
SEED = 20250826
GEMMA3_270M_VOCAB = 262144
#: Gemma's fixed special ids; 4..104 hold reserved control pieces as in the real vocabulary.
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
START_OF_TURN_ID, END_OF_TURN_ID = 105, 106
TRAINED_VOCAB = 4096  # sentencepiece pieces learned from the generated corpus (tiny uses exactly this)

#: The real google/gemma-3-270m text config (what `270m` reproduces with random weights).
GEMMA3_270M_CONFIG: dict[str, Any] = {
    "vocab_size": GEMMA3_270M_VOCAB,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "query_pre_attn_scalar": 256,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "initializer_range": 0.02,
    "pad_token_id": PAD_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": [EOS_ID, END_OF_TURN_ID],
}

#: Same structure scaled down: 6 layers keep the 5:1 sliding/full pattern; a 16-token window lets tests
#: cross it with short prompts. A larger init std keeps greedy outputs varied on a small hidden size.
TINY_CONFIG: dict[str, Any] = {
    **GEMMA3_270M_CONFIG,
    "vocab_size": TRAINED_VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 6,
    "head_dim": 32,
    "sliding_window": 16,
    "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
    "query_pre_attn_scalar": 32,
    "max_position_embeddings": 2048,
    "initializer_range": 0.1,
}

#: Tiny's structural prior: every embedding row gets PRIOR_OFFSET along a fixed unit vector u (the even
#: spread over the second half of the hidden dims), and these pieces' rows are pulled back by their value.
PRIOR_OFFSET = 2.5
PRIOR_PULL = {'"': 2.2, "}": 1.76, "]": 1.76, ",": 0.44, "[": 1.98, "{": 1.98}

_RESERVED = ["<mask>", "[multimodal]"] + [f"<unused{i}>" for i in range(99)]  # ids 4..104
_USER_SYMBOLS = ["<start_of_turn>", "<end_of_turn>", "\n", "\n\n", "\t", "  ", "    "]  # 105, 106, ...

_WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from",
    "it", "an", "be", "this", "are", "which", "or", "his", "her", "their", "we", "you", "they", "he", "she",
    "not", "have", "has", "had", "were", "been", "will", "would", "can", "could", "should", "may", "must",
    "our", "your", "time", "year", "people", "way", "day", "man", "woman", "child", "world", "life", "hand",
    "part", "place", "case", "week", "company", "system", "program", "question", "work", "government",
    "number", "night", "point", "home", "water", "room", "mother", "area", "money", "story", "fact",
    "month", "lot", "right", "study", "book", "eye", "job", "word", "business", "issue", "side", "kind",
    "head", "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law",
    "car", "city", "community", "name", "president", "team", "minute", "idea", "kid", "body", "information",
    "back", "parent", "face", "others", "level", "office", "door", "health", "person", "art", "war",
    "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy", "moment", "air",
    "teacher", "force", "education", "invoice", "total", "amount", "date", "email", "phone", "address",
    "street", "customer", "order", "price", "quantity", "item", "description", "contact", "meeting",
    "project", "deadline", "please", "send", "received", "attached", "regards", "hello", "thanks", "best",
    "dear", "sincerely", "tomorrow", "yesterday", "today", "Monday", "Tuesday", "Wednesday", "Thursday",
    "Friday", "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December", "London", "Paris", "Berlin", "Tokyo", "Madrid", "Rome", "Chicago",
    "Boston", "Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Isabel", "John",
    "Karen", "Laura", "Michael", "Nina", "Oscar", "Paul", "Quinn", "Rachel"
)
_KEYS = ("name", "age", "email", "id", "items", "total", "currency", "city", "date", "status", "tags",
         "price", "quantity", "address", "phone", "description", "title", "url", "active", "count")


_SYLLABLES = ("ka", "ren", "to", "mi", "sa", "lor", "en", "qu", "ist", "ber", "ga", "vel", "ion", "dra",
              "ph", "th", "ow", "ack", "est", "ing", "ed", "ly", "er", "ch", "str", "ou", "ai", "ment",
              "ness", "ab")


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    """Made-up words so BPE has enough distinct material to learn a few thousand merges."""
    words = {"".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(count)}
    return sorted(words)


def _corpus_lines(rng: random.Random, count: int) -> list[str]:
    """Varied English, JSON-ish records and digits: the kinds of text gemmacli reads and writes."""
    lines: list[str] = []
    vocabulary = list(_WORDS) + _pseudo_words(rng, 6000)
    for _ in range(count):
        kind = rng.random()
        if kind < 0.55:
            words = [rng.choice(vocabulary if rng.random() < 0.4 else _WORDS)
                     for _ in range(rng.randint(4, 24))]
            words[0] = words[0].capitalize()
            line = " ".join(words) + rng.choice([".", ".", "?", "!", ",", ":"])
        elif kind < 0.85:
            record: dict[str, Any] = {}
            for key in rng.sample(_KEYS, rng.randint(1, 6)):
                value_kind = rng.random()
                if value_kind < 0.35:
                    record[key] = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 3)))
                elif value_kind < 0.6:
                    record[key] = rng.randint(0, 100000)
                elif value_kind < 0.75:
                    record[key] = round(rng.uniform(0, 5000), 2)
                elif value_kind < 0.85:
                    record[key] = rng.choice([True, False, None])
                else:
                    record[key] = [rng.choice(_WORDS) for _ in range(rng.randint(0, 3))]
            line = json.dumps(record, indent=None if rng.random() < 0.7 else 1).replace("\n", " ")
        else:
            line = (f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)} "
                    f"+{rng.randint(1, 99)} {rng.randint(100, 999)}-{rng.randint(1000, 9999)} "
                    f"{rng.uniform(0, 1e6):.2f} {rng.choice(_WORDS)}@example.com #{rng.randint(0, 10**9)}")
        lines.append(line)
    return lines


def train_tokenizer(out_dir: Path, *, vocab_size: int | None = None, seed: int = SEED) -> Path:
    """Train a Gemma-structured BPE (byte fallback, Gemma's special ids) and write `tokenizer.json`.

    `vocab_size` above the trained size pads with unreachable-by-encoding pieces built from real ones, so a
    270m-shaped vocabulary has 262144 real strings for the grammar engine's token table, as Gemma's does.
    """
    import sentencepiece as spm
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import convert_slow_tokenizer

    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gemmacli-spm-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(_corpus_lines(rng, 30000)) + "\n", encoding="utf-8")
        prefix = Path(tmp) / "spm"
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(prefix), model_type="bpe", vocab_size=TRAINED_VOCAB,
            byte_fallback=True, split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, normalization_rule_name="identity", character_coverage=1.0,
            pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
            control_symbols=_RESERVED, user_defined_symbols=_USER_SYMBOLS,
            num_threads=1, minloglevel=2,
        )
        slow = GemmaTokenizer(vocab_file=str(prefix) + ".model")
        tokenizer: Tokenizer = convert_slow_tokenizer(slow)
    # Gemma's tokenizer.json prepends <bos> itself (ModelConfig.tokenizer_adds_bos).
    tokenizer.post_processor = TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                  special_tokens=[("<bos>", BOS_ID)])
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    _check_special_ids(vocab)
    if vocab_size is not None and vocab_size > len(vocab):
        _pad_vocab(vocab, vocab_size, random.Random(seed + 1))
    path = out_dir / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    Tokenizer.from_file(str(path))  # fail here, not at load time, if the file is malformed
    return path


def _check_special_ids(vocab: dict[str, int]) -> None:
    expected = {"<pad>": PAD_ID, "<eos>": EOS_ID, "<bos>": BOS_ID, "<unk>": UNK_ID,
                "<start_of_turn>": START_OF_TURN_ID, "<end_of_turn>": END_OF_TURN_ID}
    wrong = {piece: vocab.get(piece) for piece, want in expected.items() if vocab.get(piece) != want}
    if wrong:
        raise RuntimeError(f"synthetic tokenizer has unexpected special ids: {wrong}")


def _pad_vocab(vocab: dict[str, int], size: int, rng: random.Random) -> None:
    """Append unique concatenations of two learned pieces until the vocabulary has `size` entries."""
    learned = [p for p in vocab if not (p.startswith("<") and p.endswith(">")) and p.strip()]
    next_id = max(vocab.values()) + 1
    while next_id < size:
        piece = rng.choice(learned) + rng.choice(learned)
        if piece not in vocab:
            vocab[piece] = next_id
            next_id += 1


def model_config(size: str, vocab_size: int) -> dict[str, Any]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    config = dict(GEMMA3_270M_CONFIG if size == "270m" else TINY_CONFIG)
    if size == "tiny":
        config["vocab_size"] = vocab_size
    return config


def build_checkpoint(size: str, out_dir: Path, *, seed: int = SEED) -> Path:
    """Write a seeded random-weight Gemma3ForCausalLM + its tokenizer as a Hugging Face checkpoint folder."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_path = train_tokenizer(out_dir, vocab_size=GEMMA3_270M_VOCAB if size == "270m" else None,
                                     seed=seed)
    vocab_size = len(json.loads(tokenizer_path.read_text(encoding="utf-8"))["model"]["vocab"])
    settings = model_config(size, vocab_size)
    init_std = settings["initializer_range"]
    config = Gemma3TextConfig(**settings)
    config.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        # Gemma's norms compute x * (1 + w) and init w to 0; small noise keeps layers distinguishable.
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, init_std)
        if size == "tiny":
            _structural_prior(model, tokenizer_path)
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, pad_token_id=PAD_ID,
                                               eos_token_id=[EOS_ID, END_OF_TURN_ID])
    model.save_pretrained(out_dir, safe_serialization=True)
    _write_tokenizer_config(out_dir)
    return out_dir


def _structural_prior(model: Any, tokenizer_path: Path) -> list[int]:
    """Bias a random tiny model towards ending JSON strings, numbers and containers (in place).

    Gemma's embeddings are tied, so a token's lm_head row is its embedding row, and Gemma feeds the input
    embedding (times sqrt(hidden)) straight into the residual stream. Adding PRIOR_OFFSET * u to every row
    gives the residual stream x a large positive component along u; flipping the sign of the final norm's
    weights on u's dims turns the offset into the same shift of every logit (no preference), except for
    the pulled rows, which get a bonus of about pull * (x.u) / rms(x) over the rest.
    A pulled token's own row carries less along u, so right after one the bonus is smaller: after an
    opening quote the model writes some content, and after content the quote wins (the openers `[` and
    `{` are pulled for that effect: without it, `]` right after `[` made nearly every array empty).
    Plain scaling of the rows does not work: the sign of h . row is random, and greedy decoding loops
    where it is negative.
    Returns the pulled token ids.
    """
    import torch
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    embedding = model.get_input_embeddings().weight  # the lm_head's weight too (tie_word_embeddings)
    hidden = embedding.shape[1]
    dims = slice(hidden // 2, hidden)
    u = torch.zeros(hidden, dtype=embedding.dtype)
    u[dims] = (hidden - hidden // 2) ** -0.5
    pulled = []
    with torch.no_grad():
        embedding += PRIOR_OFFSET * u
        for token_id in range(embedding.shape[0]):
            pull = PRIOR_PULL.get(tokenizer.decode([token_id]))
            if pull:
                embedding[token_id] -= pull * u
                pulled.append(token_id)
        norm = model.model.norm.weight  # Gemma's RMSNorm scales by (1 + w): this makes it -(1 + w)
        norm[dims] = -2.0 - norm[dims]
    return pulled


def _write_tokenizer_config(out_dir: Path) -> None:
    """So `AutoTokenizer.from_pretrained(checkpoint)` works (benchmarks, other exporters)."""
    from gemmacli.models.store import GEMMA3_CHAT_TEMPLATE

    config = {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False,
        "chat_template": GEMMA3_CHAT_TEMPLATE,
        "model_max_length": 32768,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=1), encoding="utf-8")


CHECKPOINT_DIR = "source-checkpoint"


def synthesize_into(folder: Path, *, name: str, size: str, seed: int = SEED, **export_options: Any) -> dict:
    """Build the random checkpoint in `folder/source-checkpoint/`, then export it into `folder`."""
    from gemmacli.models.export import Stages, export_into

    stages = Stages(export_options.get("report"))
    checkpoint = folder / CHECKPOINT_DIR
    with stages.stage("synth", f"random Gemma3ForCausalLM ({size}, seed {seed}) + tokenizer"):
        build_checkpoint(size, checkpoint, seed=seed)
    source_info = {"kind": "synthetic", "size": size, "seed": seed, "checkpoint": CHECKPOINT_DIR,
                   "architecture": "Gemma3ForCausalLM"}
    return export_into(folder, str(checkpoint), name=name, source_info=source_info, **export_options)


def synthesize(name: str, size: str, destination: Path, *, force: bool = False, **options: Any) -> Path:
    """`gemmacli model synth`: the whole model folder, written atomically."""
    from gemmacli.models.export import require_export_tools
    from gemmacli.models.store import staging_folder

    model_config(size, TRAINED_VOCAB)  # reject an unknown size before any work
    require_export_tools()  # exit 2 naming the pip command, not an ImportError from deep inside
    with staging_folder(destination, force=force) as staging:
        synthesize_into(staging, name=name, size=size, **options)
    return destination
