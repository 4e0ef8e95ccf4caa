"""ExtractionConfig: every choice that shapes an extraction, in one frozen, picklable object.

The CLI builds it once from its flags; batch workers receive it whole (it pickles); the `check` result
cache hashes it (`fingerprint`, from its fields: a new option cannot be forgotten there); `Extractor`
takes it. Before, the same fifteen options were spelled out four times on the way down (argparse,
batch options, keyword arguments, decoder options), and the cache key by hand.

Errors here name the option (`UsageError.option`), not a command-line flag: the CLI words them as flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from gemmacli.engine.examples import Examples
from gemmacli.engine.spans import MODES
from gemmacli.errors import UsageError

#: Fields that change how fast an extraction runs, never what it writes: left out of the fingerprint.
SPEED_ONLY = frozenset({"threads", "prefix_cache"})
#: How closed choices may be made (ExtractionConfig.choose).
CHOOSE_MODES = ("likely", "greedy")


@dataclass(frozen=True)
class ExtractionConfig:
    """How to extract (the schema and the model are given apart: they are identified by their hashes)."""

    lenient: bool = False  # drop keywords the grammar cannot enforce (warned) instead of refusing
    max_tokens: int | None = None  # None: sized from the schema (gemmacli.engine.extractor.budget_for)
    temperature: float = 0.0  # 0: greedy, deterministic
    top_p: float = 1.0
    seed: int | None = None
    instructions: str | None = None
    truncate: bool = False  # cut a text that does not fit instead of failing
    pretty: bool = False  # bounded indentation in the output
    repeat_guard: bool = True  # end a value the model keeps repeating (gemmacli.engine.loops)
    spans: str = "annotated"  # which string fields must be spans of the text (gemmacli.engine.spans)
    examples: Examples = field(default_factory=Examples)  # worked examples (gemmacli.engine.examples)
    threads: int | None = None  # onnxruntime threads (None: its default)
    prefix_cache: bool = True  # prefill the prompt head once per batch
    #: Prompt-lookup speculation (gemmacli.engine.speculate): most draft tokens a model run verifies; 0 off.
    #: Off by default: on the real model a position run with others is not bit-equal to one run alone, so a
    #: greedy near tie can go the other way (bench/README.md, "Speculation").
    speculate: int = 0
    #: How a closed choice (an enum's value) is made: "likely", the listed value the model finds most
    #: probable as a whole (gemmacli.engine.likely), or "greedy", token by token. Greedy mode only.
    choose: str = "greedy"

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"max_tokens must be at least 1, not {self.max_tokens}", option="max_tokens")
        if not math.isfinite(self.temperature) or self.temperature < 0:  # nan fails isfinite
            raise UsageError(f"temperature must be a number >= 0, not {self.temperature}",
                             option="temperature")
        if not 0 < self.top_p <= 1:  # nan fails this too
            raise UsageError(f"top_p must be in (0, 1], not {self.top_p}", option="top_p")
        if self.speculate < 0:
            raise UsageError(f"speculate must be 0 or more, not {self.speculate}", option="speculate")
        if self.choose not in CHOOSE_MODES:
            raise UsageError(f"choose must be one of {', '.join(CHOOSE_MODES)}, not {self.choose!r}",
                             option="choose")
        if self.spans not in MODES:
            raise UsageError(f"spans must be one of {', '.join(MODES)}, not {self.spans!r}", option="spans")

    @classmethod
    def from_options(cls, **options: Any) -> ExtractionConfig:
        """The config for keyword options (the library's `extract(text, schema, max_tokens=…)`); an unknown
        name is a TypeError, as for any misspelt keyword argument."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown extraction option(s): {', '.join(unknown)}")
        examples = options.get("examples")
        if examples is not None and not isinstance(examples, Examples):
            options["examples"] = Examples(tuple(examples), len(tuple(examples)))
        return cls(**options)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the output, as plain JSON data (a cache key): every field but SPEED_ONLY."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in SPEED_ONLY}
        if not data["speculate"]:  # off: the fingerprint of every config from before the option
            del data["speculate"]
        if data["choose"] == "greedy":  # token by token: the fingerprint of every config from before it
            del data["choose"]
        examples: Examples = data.pop("examples")
        data["examples"] = {"pool": [[e.text, e.answer] for e in examples.pool], "shots": examples.shots,
                            "select": examples.select}
        return data

    def summary(self) -> dict[str, Any]:
        """The fingerprint with long values (instructions, examples) as sha256: small enough to store
        beside every output and readable enough to say which option differs."""
        data = self.fingerprint()
        for key in ("instructions", "examples"):
            if data[key] is not None:
                data[key] = hashlib.sha256(json.dumps(data[key], sort_keys=True).encode("utf-8")).hexdigest()
        return data

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode("utf-8")).hexdigest()
