"""Extractor: text + checked schema + model -> validated JSON. Batches, checks and eval all go through it.

    Extractor(schema, *, model=None, config=None, warn=None, **options)
        schema   a dict, a LoadedSchema, or a string as `--schema` takes it (file, inline, bundled, concise)
        model    a name, a folder or a loaded runtime.Model; None: $GEMMACLI_MODEL, else the best installed
        config   an ExtractionConfig (gemmacli.engine.config), or its fields as keyword options
        The schema is checked (SchemaError, 3) before the model loads (ModelError, 4).
    .extract(text) -> ExtractionResult  (data validated with jsonschema; ExtractionFailed, 1, otherwise)
    extract(text, schema, *, model=None, **options): the one-shot form.

The budget (max_tokens None) is sized from the schema: max(1024, 2 x its smallest output + 64), at most
half the model's context; a schema whose smallest output cannot fit is refused up front. The prompt's head
(instruction, field guide, fixed worked examples) is prefilled once and its KV cache reused per document.
ExtractionResult also carries `model_seconds` (inside onnxruntime), `truncated`, `warnings` and `repeats`
(loops the repetition guard, gemmacli.engine.loops, led the model out of: the values it cut short).

Speed: the `gemmacli` executable sets GEMMACLI_PROCESS_THREAD_POOL=1 (gemmacli.engine.runtime: one
onnxruntime pool for the decoder and lm_head sessions; 0.31 against 0.34 s per document in
bench/bench_extract.py). A library caller gets per-session pools unless it sets the variable itself before
the first model loads.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from gemmacli.engine.config import ExtractionConfig
from gemmacli.engine.decoder import DecodeOptions, decode
from gemmacli.engine.grammar import (
    TokenizerBuild,
    close_objects,
    compile_grammar,
    lark_grammar,
    new_matcher,
)
from gemmacli.engine.headcache import head_store
from gemmacli.engine.likely import LikelyChoice
from gemmacli.engine.prompt import Prompt, count_tokens, encode_prompt
from gemmacli.engine.spans import has_spans, span_grammar
from gemmacli.errors import ExtractionFailed, ModelError, SchemaError, UsageError
from gemmacli.models import store
from gemmacli.schema import (
    LoadedSchema,
    PreparedSchema,
    canonical_json,
    instance_validator,
    join_pointer,
    load_schema,
    prepare_schema,
)
from gemmacli.schema.choices import choice_values
from gemmacli.schema.sizing import smallest_json, string_hints

if TYPE_CHECKING:
    from gemmacli.engine.lockstep import StreamModel
    from gemmacli.engine.runtime import Model

#: The budget when the user sets none, unless the schema's smallest output asks for more (`budget_for`).
DEFAULT_MAX_TOKENS = 1024


@dataclass
class ExtractionResult:
    data: Any
    text: str
    prompt_tokens: int
    generated_tokens: int
    forced_tokens: int
    model_calls: int
    seconds: float
    model_seconds: float = 0.0
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    #: Loops the repetition guard ended (gemmacli.engine.loops): those values are the model's output, cut
    #: short.
    repeats: list[str] = field(default_factory=list)
    #: Prompt-lookup speculation (gemmacli.engine.speculate): draft tokens run, and those then chosen.
    drafted: int = 0
    accepted: int = 0


SchemaLike = dict | LoadedSchema | PreparedSchema | str


def _prepared(schema: SchemaLike, config: ExtractionConfig) -> PreparedSchema:
    """The schema checked for these options: as given when it was prepared for them (the CLI checks once
    per command), else checked here. A string is read as `--schema` reads one; SchemaError otherwise."""
    if isinstance(schema, PreparedSchema) and schema.fits(lenient=config.lenient, pretty=config.pretty):
        return schema
    if isinstance(schema, PreparedSchema):
        schema = LoadedSchema(schema.schema, schema.source, schema.path, schema.sha256)
    if isinstance(schema, str):
        schema = load_schema(schema)
    if not isinstance(schema, LoadedSchema | dict):
        raise SchemaError(f"a schema must be a JSON object, not {type(schema).__name__}", pointer="")
    return prepare_schema(schema, lenient=config.lenient, pretty=config.pretty)


class Extractor:
    """Loads the model and compiles the schema once; call .extract(text) many times (batches)."""

    def __init__(self, schema: SchemaLike, *, model: Model | StreamModel | str | Path | None = None,
                 config: ExtractionConfig | None = None, warn: Callable[[str], None] | None = None,
                 **options: Any) -> None:
        """`config` (gemmacli.engine.config.ExtractionConfig), or its fields as keyword `options`;
        `warn` receives the --lenient warnings. The schema is checked before any model work (a bad one is
        exit 3 at once), then the model loads (or `model`, a loaded Model, is used as it is)."""
        self.config = config if config is not None else ExtractionConfig.from_options(**options)
        if config is not None and options:
            raise TypeError("pass either config or keyword options, not both")
        self.prepared = _prepared(schema, self.config)
        self.schema, self.schema_sha256 = self.prepared.schema, self.prepared.sha256
        self.timings: dict[str, float] = {}
        self._prepare_schema(warn)
        self._load_model(model)
        self.smallest_tokens, self.max_tokens = budget_for(self.schema, self.model, self.config.max_tokens)
        self.options = DecodeOptions(max_tokens=self.max_tokens, temperature=self.config.temperature,
                                     top_p=self.config.top_p, seed=self.config.seed,
                                     repeat_guard=self.config.repeat_guard, speculate=self.config.speculate)
        self._matcher: Any = None
        self._prefix: tuple[tuple[int, ...], Any] | None = None  # head ids -> KV cache after them
        # and kept on disk for the next process (a shell pipe runs one document per process)
        self._heads = (head_store(self.model, threads=getattr(self.model, "threads", None))
                       if self.config.prefix_cache else None)

    # Kept as attributes: batch and benchmark code read them.
    @property
    def instructions(self) -> str | None:
        return self.config.instructions

    @property
    def truncate(self) -> bool:
        return self.config.truncate

    def _prepare_schema(self, warn: Callable[[str], None] | None) -> None:
        """Compile the checked schema's grammar (its warnings to `warn`), and ready the span schema, the
        validator and the string hints the repetition guard completes values from."""
        pretty = self.config.pretty
        compile_schema, self.warnings = self.prepared.enforced, list(self.prepared.warnings)
        if warn is not None:
            for message in self.warnings:
                warn(message)
        self.grammar = compile_grammar(compile_schema, pretty=pretty)
        # Span fields (gemmacli.engine.spans): a grammar per document, holding its text. Compact output only.
        self._span_schema = close_objects(compile_schema) if not pretty else None
        spanned = self._span_schema is not None and has_spans(self._span_schema, self.config.spans)
        self._spans = self.config.spans if spanned else "none"
        self._validate = instance_validator(self.schema)  # the ORIGINAL schema, not the enforced one
        self._hints = string_hints(self.schema)
        # Closed choices decided by likelihood (gemmacli.engine.likely), tokenized once the tokenizer is.
        self._choice_values = choice_values(compile_schema) if self.config.choose != "greedy" else {}
        self._choices: LikelyChoice | None = None

    def _load_model(self, model: Model | StreamModel | str | Path | None) -> None:
        """The model (loaded here when named), its llguidance tokenizer build, and its identity."""
        if model is None:
            model = store.default_model()
        folder, model_config = self._model_folder(model)
        if isinstance(model, (str, Path)):
            from gemmacli.engine.runtime import Model

            t0 = time.perf_counter()
            self.model = Model.load(folder, threads=self.config.threads)
            self.timings["model_load"] = time.perf_counter() - t0
        else:  # a loaded Model, or a lockstep stream standing in for one (the same interface)
            self.model = cast("Model", model)
        # llguidance's token table: built on a thread during the first prefill (gemmacli.engine.grammar),
        # from a cached table of the model's own tokenizer where it is Gemma's (gemmacli.engine.tokens).
        self._tokenizer_build = TokenizerBuild(folder / "tokenizer.json", model_config.vocab_size,
                                               list(model_config.eos_token_ids),
                                               encoder=getattr(self.model, "tokenizer", None),
                                               bos=getattr(model_config, "bos_token_id", 2))
        manifest = getattr(self.model, "manifest", None) or {}
        self.model_name = str(manifest.get("name") or Path(self.model.folder).name)
        files = manifest.get("files")
        # The decoder graph's hash (runtime.Model.sha256), else a hash over the manifest's files.
        self.model_sha256 = str(getattr(self.model, "sha256", "") or "") or (
            hashlib.sha256(canonical_json(files).encode("utf-8")).hexdigest() if files else "")

    @staticmethod
    def _model_folder(model: Any) -> tuple[Path, Any]:
        if isinstance(model, (str, Path)):
            from gemmacli.models.store import ModelConfig, resolve_model

            found = resolve_model(model)
            return found, ModelConfig.from_folder(found)
        folder = getattr(model, "folder", None)
        config = getattr(model, "config", None)
        if folder is None or config is None:
            raise ModelError("model must be a name, a folder or a gemmacli.engine.runtime.Model")
        return Path(folder), config

    def _new_matcher(self, text: str) -> Any:
        """The schema's matcher (reused, reset), or one bound to this text's spans (gemmacli.engine.spans)."""
        tokenizer = self._tokenizer_build.result()
        if self._spans != "none" and self._span_schema is not None:
            lark = span_grammar(self._span_schema, text, self._spans)
            if lark is not None:
                return new_matcher(tokenizer, lark_grammar(lark))
        if self._matcher is None:
            self._matcher = new_matcher(tokenizer, self.grammar)
        else:
            self._matcher.reset()
        return self._matcher

    def _prefill(self, prompt: Prompt) -> tuple[Any, Any, int, float]:
        """KV cache and hidden state after the prompt: (cache, hidden, forward calls, seconds).

        The head (instruction + field guide) is the same for every document of a schema: it is prefilled
        once and its KV cache copied for each document, so a document only prefills its own text. Every
        document runs the same grouping of forward calls (head, then text), whether the head came from the
        cache or not: onnxruntime's float results depend on the grouping, and greedy output must be
        byte-identical from one run to the next.
        """
        model = self.model
        head, body = tuple(prompt.ids[: prompt.prefix_len]), prompt.ids[prompt.prefix_len:]
        calls = 0
        t0 = time.perf_counter()
        cache = self._cached_head(head)
        if cache is None:
            cache = model.new_cache()
            if head:
                model.forward(cache, list(head))
                calls += 1
                self._keep_head(head, cache)
        hidden = model.forward(cache, body)
        return cache, hidden, calls + 1, time.perf_counter() - t0

    def _cached_head(self, head: tuple[int, ...]) -> Any:
        """A copy of the head's KV cache kept by an earlier document, or by an earlier process (on disk,
        gemmacli.engine.headcache); None: prefill it."""
        if not self.config.prefix_cache or not head:
            return None
        if self._prefix is None or self._prefix[0] != head:
            kept = self._heads.load(self.model, head) if self._heads is not None else None
            if kept is None:
                return None
            self._prefix = (head, kept)
        adopt = getattr(self.model, "adopt_cache", None)  # a lockstep stream keeps it in its own row
        return adopt(self._prefix[1]) if adopt is not None else self._prefix[1].copy()

    def _keep_head(self, head: tuple[int, ...], cache: Any) -> None:
        if self.config.prefix_cache and callable(getattr(cache, "copy", None)):
            self._prefix = (head, cache.copy())
            if self._heads is not None:
                self._heads.save(head, cache)

    def extract(self, text: str) -> ExtractionResult:
        """One document -> one validated JSON value; ExtractionFailed (exit 1) otherwise."""
        start = time.perf_counter()
        model = self.model
        prompt = encode_prompt(model.tokenizer, model.config, self.schema, text,
                               instructions=self.instructions, max_tokens=self.max_tokens,
                               examples=self.config.examples.for_text(text),
                               examples_in_head=not self.config.examples.per_text,
                               truncate=self.truncate)
        # In the first document of a process llguidance builds its token table during the prefill
        # (gemmacli.engine.grammar.TokenizerBuild); later documents find it cached.
        self._tokenizer_build.start()
        cache, hidden, calls, model_seconds = self._prefill(prompt)
        matcher = self._new_matcher(text)
        tokenizer = self._tokenizer_build.result()
        if self._choice_values and self._choices is None:
            self._choices = LikelyChoice(self._choice_values, tokenizer)
        self.timings["tokenizer_build"] = self._tokenizer_build.build_seconds
        self.timings["tokenizer_wait"] = self._tokenizer_build.wait_seconds
        result = decode(model, cache, matcher, tokenizer, [], self.options, hidden=hidden,
                        model_calls=calls, model_seconds=model_seconds, hints=self._hints, context=prompt.ids,
                        choices=self._choices)
        try:
            data = json.loads(result.text)
        except json.JSONDecodeError as exc:  # the grammar makes this unreachable; never pass it on
            raise ExtractionFailed(f"the model emitted text that is not JSON: {exc}") from exc
        errors = sorted(self._validate.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            listed = "; ".join(f"{join_pointer('', *e.absolute_path) or '/'}: {e.message}"
                               for e in errors[:10])
            more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise ExtractionFailed(f"the output does not validate against the schema: {listed}{more}")
        return ExtractionResult(
            data=data,
            text=result.text,
            prompt_tokens=len(prompt.ids),
            generated_tokens=result.generated_tokens,
            forced_tokens=result.forced_tokens,
            model_calls=result.model_calls,
            seconds=time.perf_counter() - start,
            model_seconds=result.model_seconds,
            truncated=prompt.truncated,
            warnings=list(self.warnings),
            repeats=list(result.repeats),
            drafted=result.drafted,
            accepted=result.accepted,
        )


def budget_for(schema: dict, model: Any, max_tokens: int | None) -> tuple[int, int]:
    """(tokens of the schema's smallest output, the token budget); SchemaError when the first exceeds the
    second: a schema that cannot be answered within the budget is refused before any model work."""
    smallest = count_tokens(model.tokenizer, smallest_json(schema))
    context = int(getattr(model.config, "context_length", 32768))
    if max_tokens is not None and max_tokens >= context:
        raise UsageError(f"max_tokens {max_tokens} does not fit this model's context of {context} tokens",
                         hint=f"use at most {context // 2}, or leave it out to size it from the schema",
                         option="max_tokens")
    budget = max_tokens if max_tokens is not None else min(max(DEFAULT_MAX_TOKENS, 2 * smallest + 64),
                                                           context // 2)
    if smallest > budget:
        where = (f"max_tokens is {budget}" if max_tokens is not None
                 else f"the budget is {budget} tokens, half of this model's {context}-token context")
        hint = (f"raise max_tokens to at least {smallest}" if max_tokens is not None and smallest < context
                else "split the schema, or make fewer fields required")
        raise SchemaError(f"the smallest JSON this schema allows (its required fields, at their shortest) "
                          f"takes about {smallest} tokens, and {where}", hint=hint,
                          option="max_tokens" if max_tokens is not None else None)
    return smallest, budget


def extract(text: str, schema: SchemaLike, *, model: Model | str | Path | None = None,
            **options: Any) -> ExtractionResult:
    """One-shot convenience: build an Extractor and extract one document."""
    return Extractor(schema, model=model, **options).extract(text)
