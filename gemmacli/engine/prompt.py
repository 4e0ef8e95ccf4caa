"""The prompt the model reads: an instruction, a field guide built from the schema, the text.

Two styles, by the kind of model (gemmacli.json `kind`):
- chat (instruction-tuned and random-weight models): Gemma has no system role, so everything sits in one
  user turn: `<bos><start_of_turn>user\n…<end_of_turn>\n<start_of_turn>model\n`.
- document (pretrained "base" models, which never saw chat turns): the same instruction and guide as plain
  text, then the text and `JSON:`, so the answer reads as the document's continuation. On the real base
  model the chat turns gave `"name":"m.m.m…"` where this style copies the name from the text.
The grammar enforces the shape; the guide tells the model what each field *means* and that missing
information is null/empty, not invented.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemmacli.errors import ExtractionFailed

INSTRUCTION = (
    "Extract the information from the text below as one JSON value that matches the schema. "
    "Use only facts stated in the text; never invent values."
)
MISSING = (
    "If the text does not give an optional field, use null where the field allows null, an empty list for "
    "lists, or leave the field out."
)
_TURN_MARKERS = ("<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>")
_MAX_ENUM = 12
_MAX_DEPTH = 3


def _type_name(node: dict, defs_root: dict) -> str:
    node = _deref(node, defs_root)
    if "const" in node:
        return f"constant {json.dumps(node['const'])}"
    if "enum" in node:
        values = node["enum"][:_MAX_ENUM]
        more = ", ..." if len(node["enum"]) > _MAX_ENUM else ""
        return "one of " + ", ".join(json.dumps(v, ensure_ascii=False) for v in values) + more
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    if kind == "array":
        items = node.get("items")
        return f"list of {_type_name(items, defs_root)}" if isinstance(items, dict) else "list"
    if kind:
        fmt = node.get("format")
        return f"{kind} ({fmt})" if isinstance(fmt, str) else str(kind)
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            return " or ".join(_type_name(b, defs_root) for b in node[key][:4] if isinstance(b, dict))
    return "any JSON value"


def _deref(node: Any, defs_root: dict, depth: int = 0) -> dict:
    """Follow a local '#/...' $ref for the guide (display only; the grammar does the real resolution)."""
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and depth < 8:
        target: Any = defs_root
        for token in ref[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            target = target.get(token) if isinstance(target, dict) else None
        if isinstance(target, dict):
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return {**_deref(target, defs_root, depth + 1), **siblings}
    return node


def _allows_null(node: dict) -> bool:
    kind = node.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(isinstance(b, dict) and b.get("type") == "null" for b in node.get("anyOf", []) or [])


def field_guide(schema: dict, *, max_lines: int = 60, descriptions: bool = True,
                max_chars: int = 4000) -> list[str]:
    """One line per field: name, type, required/optional (null/empty guidance), description, values."""
    lines: list[str] = []

    def walk(node: dict, prefix: str, depth: int) -> None:
        node = _deref(node, schema)
        props = node.get("properties")
        if not isinstance(props, dict):
            return
        required = set(node.get("required", []) or [])
        for name, sub in props.items():
            if len(lines) >= max_lines or sum(map(len, lines)) >= max_chars:
                return
            sub = _deref(sub, schema)
            path = f"{prefix}{name}"
            if name in required:
                need = "required"
            elif _allows_null(sub):
                need = "optional: null if not in the text"
            elif sub.get("type") == "array":
                need = "optional: [] if not in the text"
            else:
                need = "optional: leave out if not in the text"
            text = f"- {path} ({_type_name(sub, schema)}; {need})"
            desc = sub.get("description") or sub.get("title")
            if descriptions and isinstance(desc, str) and desc.strip():
                text += ": " + " ".join(desc.split())[:200]
            lines.append(text)
            if depth < _MAX_DEPTH:
                if sub.get("type") == "object" or "properties" in sub:
                    walk(sub, path + ".", depth + 1)
                items = sub.get("items")
                if isinstance(items, dict):
                    walk(items, path + "[].", depth + 1)

    walk(schema, "", 0)
    return lines


def _neutralise(text: str) -> str:
    """Keep turn markers in user text from being read as control tokens (a prompt cannot be hijacked)."""
    for marker in _TURN_MARKERS:
        text = text.replace(marker, marker[0] + "\u200b" + marker[1:])
    return text


#: Guide sizes tried in turn when the prompt does not fit: full, terse, none, and last the bare prompt
#: (no instruction either). A tuned model declares the level it was trained on (ModelConfig.guide_level):
#: it learnt what the fields mean, and every prompt token costs training time.
GUIDE_LEVELS: tuple[dict[str, Any], ...] = (
    {"max_lines": 60, "descriptions": True, "max_chars": 4000},
    {"max_lines": 30, "descriptions": False, "max_chars": 1500},
    {"max_lines": 0, "descriptions": False, "max_chars": 0},
    {"max_lines": 0, "descriptions": False, "max_chars": 0, "instruction": False},
)
#: names of the levels, as `gemmacli tune --prompt` takes them
PROMPT_LEVELS = ("guide", "terse", "short", "bare")


@dataclass(frozen=True)
class Demonstration:
    """One worked example shown before the text: a text and its answer as compact JSON."""

    text: str
    answer: str


def demonstrations_block(examples: Sequence[Demonstration]) -> str:
    """Worked examples in the layout the answer then follows: `Text: …` / `JSON: …`, a blank line apart."""
    return "".join(f"Text: {' '.join(e.text.split())}\nJSON: {e.answer}\n\n" for e in examples)


def turn_head(schema: dict, instructions: str | None = None, *, level: int = 0,
              examples: Sequence[Demonstration] = (), examples_follow: bool = False) -> str:
    """The prompt up to the text: instruction, field guide, null/empty guidance, user instructions, then
    worked examples (with them, the text follows as one more `Text: `, as in the examples).
    `examples_follow`: the examples are chosen per text and follow the head (it ends at `Examples:`)."""
    sizes = dict(GUIDE_LEVELS[level])
    bare = not sizes.pop("instruction", True)
    parts = [] if bare else [INSTRUCTION]
    guide = field_guide(schema, **sizes)
    if guide:
        parts.append("Fields:\n" + "\n".join(guide))
        parts.append(MISSING)
    elif not bare:
        description = schema.get("description") or schema.get("title")
        if isinstance(description, str):
            parts.append("The value: " + " ".join(description.split())[:300])
    if instructions:
        parts.append("Instructions: " + instructions.strip())
    if examples:
        parts.append("Examples:\n\n" + demonstrations_block(examples) + "Text: ")
    elif examples_follow:
        parts.append("Examples:\n\n")
    else:
        parts.append("Text:\n")
    return _neutralise("\n\n".join(parts))


def user_turn(schema: dict, text: str, instructions: str | None = None, *, level: int = 0,
              examples: Sequence[Demonstration] = ()) -> str:
    """The content of the user turn (without the chat markers)."""
    return turn_head(schema, instructions, level=level, examples=examples) + _neutralise(text.strip())


#: What follows the text in the document style: the answer starts on the next line; after worked examples,
#: the layout of the examples (`Text: …\nJSON: {…}`).
DOCUMENT_CLOSING = "\n\nJSON:\n"
EXAMPLES_CLOSING = "\nJSON: "


def style_for(config: Any) -> str:
    """The style the model declares (a tuned model: the one it was trained on), else "document" for a
    pretrained base model and "chat" for the others (gemmacli.models.store.ModelConfig)."""
    declared = getattr(config, "prompt_style", "")
    if declared in ("document", "chat"):
        return str(declared)
    return "document" if getattr(config, "kind", "instruct") == "base" else "chat"


def first_guide_level(config: Any) -> int:
    """The fullest field guide the model reads (ModelConfig.guide_level; a tuned model: none)."""
    level = int(getattr(config, "guide_level", 0) or 0)
    return min(max(level, 0), len(GUIDE_LEVELS) - 1)


@dataclass
class Prompt:
    ids: list[int]
    truncated: bool
    #: ids[:prefix_len] depend only on the schema and the instructions, never on the text: a batch
    #: prefills them once and reuses their KV cache (gemmacli.engine.extractor.Extractor).
    prefix_len: int = 0


def encode_prompt(tokenizer: Any, config: Any, schema: dict, text: str, *, instructions: str | None = None,
                  max_tokens: int = 1024, truncate: bool = False,
                  examples: Sequence[Demonstration] = (), examples_in_head: bool = True) -> Prompt:
    """Token ids of the prompt; ExtractionFailed when prompt + max_tokens exceed the context.

    The head (up to "Text:\n") and the text are tokenized separately, so the head's tokens never depend
    on the text (Gemma's "\n" is a piece of its own: the boundary costs nothing). With truncate=True the
    text (never the instruction or the guide) is cut from the end to fit. Worked examples sit in the head
    (one set for a whole batch, prefilled once), or, `examples_in_head=False` (chosen per text), open the
    body after a head that ends at "Examples:" ("\n\n" is a piece of its own too).
    """
    bos = int(getattr(config, "bos_token_id", 2))
    context = int(getattr(config, "context_length", 32768))
    sot = special_token_id(tokenizer, "<start_of_turn>", 105)
    eot = special_token_id(tokenizer, "<end_of_turn>", 106)
    if style_for(config) == "document":
        opening: list[int] = []
        closing = _encode(tokenizer, EXAMPLES_CLOSING if examples else DOCUMENT_CLOSING)
    else:
        opening = [sot, *_encode(tokenizer, "user\n")]
        closing = [eot, *_encode(tokenizer, "\n"), sot, *_encode(tokenizer, "model\n")]

    in_head = tuple(examples) if examples_in_head else ()
    lead = "" if examples_in_head or not examples else demonstrations_block(examples) + "Text: "

    def head_ids(level: int) -> list[int]:
        return [bos, *opening, *_encode(tokenizer, turn_head(schema, instructions, level=level,
                                                             examples=in_head,
                                                             examples_follow=bool(lead)))]

    def body_ids(body: str) -> list[int]:
        return _encode(tokenizer, _neutralise(lead + body.strip())) + closing

    budget = context - max_tokens
    text, clipped = clip_text(tokenizer, text, budget)
    clipped_ids = _encode(tokenizer, text.strip()) if clipped else None  # the clip's ids, once
    body = (clipped_ids + closing) if clipped_ids is not None else body_ids(text)
    if not clipped:
        for level in range(first_guide_level(config), len(GUIDE_LEVELS)):  # the guide shrinks first
            head = head_ids(level)
            if len(head) + len(body) <= budget:
                return Prompt(head + body, False, len(head))
    if not truncate:
        size = f"more than {len(body)}" if clipped else f"{len(head_ids(len(GUIDE_LEVELS) - 1)) + len(body)}"
        raise ExtractionFailed(
            f"the input is too long: the prompt is {size} tokens and {max_tokens} more are "
            f"reserved for the answer, but the model's context holds {context}",
            hint="use truncate to cut the text to fit, or lower max_tokens",
            option=("truncate", "max_tokens"),
        )
    level = next((i for i in range(first_guide_level(config), len(GUIDE_LEVELS))
                  if len(head_ids(i)) < budget // 2),
                 len(GUIDE_LEVELS) - 1)
    head = head_ids(level)
    fixed = len(head) + len(closing)
    if fixed >= budget:
        raise ExtractionFailed(f"the schema guide alone ({fixed} tokens) leaves no room in the context "
                               f"({context} tokens with --max-tokens {max_tokens})")
    text_ids = clipped_ids if clipped_ids is not None else _encode(tokenizer, text.strip())
    keep = max(0, budget - fixed)
    while True:
        body = body_ids(tokenizer.decode(text_ids[:keep]))
        if len(head) + len(body) <= budget or keep == 0:
            return Prompt(head + body, True, len(head))
        keep = max(0, keep - (len(head) + len(body) - budget))


#: Characters a token tokenized first when a text might not fit: more than `budget` tokens of most text
#: (Gemma averages 4 to 5 characters a token in English), so a 50 MB input is judged from a small prefix;
#: a text of longer tokens grows the prefix.
CHARS_PER_TOKEN_GUESS = 6


def clip_text(tokenizer: Any, text: str, budget: int) -> tuple[str, bool]:
    """(`text`, False) when it may fit in `budget` tokens; else (a prefix already over `budget`, True).

    Tokenizing a huge input whole cost a minute and gigabytes before the length check could refuse it. A
    prefix of CHARS_PER_TOKEN_GUESS characters a token is tokenized first, and grown only while it stays
    under the budget, so "too long" is decided, and --truncate cut, from about what fits.
    """
    limit = max(budget, 1) * CHARS_PER_TOKEN_GUESS
    while len(text) > limit:
        if len(_encode(tokenizer, text[:limit])) > budget:
            return text[:limit], True
        limit *= 2
    return text, False


def count_tokens(tokenizer: Any, text: str) -> int:
    """How many tokens the model's tokenizer makes of `text` (no special tokens)."""
    return len(_encode(tokenizer, text))


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids) if text else []


def special_token_id(tokenizer: Any, piece: str, default: int) -> int:
    """The id of a control token such as <end_of_turn> in this tokenizer, else Gemma's."""
    found = tokenizer.token_to_id(piece)
    return int(found) if found is not None else default
