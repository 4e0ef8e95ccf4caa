"""TuneOptions: everything `gemmacli tune` was asked for, in one frozen object (the CLI builds it once)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.engine.prompt import PROMPT_LEVELS
from gemmacli.errors import UsageError

METHODS = ("lora", "full")
#: Peak learning rates by method (AdamW): LoRA's small adapters take larger steps than the full blocks.
DEFAULT_LR = {"lora": 3e-4, "full": 3e-5}
#: Without --minutes or --epochs.
DEFAULT_EPOCHS = 1.0


@dataclass(frozen=True)
class TuneOptions:
    name: str
    data: Path
    dev: Path | None = None
    base: str | None = None  # a model name/folder or a .gguf file; None: the installed base model
    out_dir: Path | None = None
    minutes: float | None = None
    epochs: float | None = None
    method: str = "lora"
    rank: int = 16
    learning_rate: float | None = None
    batch_size: int = 16
    max_prompt_tokens: int = 512
    seed: int = 0
    precision: str = "auto"  # the exported model's (gemmacli.models.builder.PRECISIONS)
    dev_limit: int | None = 200
    checkpoint_minutes: float = 5.0
    #: the prompt trained on and declared (gemmacli.engine.prompt.PROMPT_LEVELS): "bare" is the text alone
    prompt: str = "bare"
    limit: int | None = None  # train on the first N records
    threads: int | None = None
    resume: bool = False
    force: bool = False
    #: also export an fp32 model for one eval, so the manifest holds the quantization's cost
    score_fp32: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}",
                             option="method")
        for name in ("minutes", "epochs", "learning_rate", "checkpoint_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be a number above 0, not {value}", option=name)
        if self.prompt not in PROMPT_LEVELS:
            raise UsageError(f"prompt must be one of {', '.join(PROMPT_LEVELS)}, not {self.prompt!r}",
                             option="prompt")
        if self.minutes is not None and self.epochs is not None:
            raise UsageError("give minutes or epochs, not both", option=("minutes", "epochs"))
        for name in ("rank", "batch_size", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1", option=name)

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.method]

    def planned(self) -> TuneOptions:
        """With the default length filled in (one epoch)."""
        if self.minutes is None and self.epochs is None:
            return dataclasses.replace(self, epochs=DEFAULT_EPOCHS)
        return self

    def hyper_parameters(self) -> dict[str, Any]:
        """What the manifest records as the training recipe."""
        return {"method": self.method, "rank": self.rank if self.method == "lora" else None,
                "lora_alpha": 2 * self.rank if self.method == "lora" else None,
                "lora_targets": "q,k,v,o,gate,up,down" if self.method == "lora" else None,
                "learning_rate": self.lr, "schedule": "linear warm-up 8 steps, linear decay to 10%",
                "optimizer": "AdamW (weight decay 0), gradient norm clipped at 1",
                "batch_size": self.batch_size, "epochs": self.epochs, "minutes": self.minutes,
                "max_prompt_tokens": self.max_prompt_tokens, "seed": self.seed,
                "prompt": self.prompt, "autocast": "bfloat16", "embedding": "frozen (tied lm_head)",
                "loss": "cross-entropy on the answer tokens only", "precision": self.precision}

    def checkpoint_key(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed (not minutes: a resumed run may be longer)."""
        data = self.hyper_parameters()
        data.pop("minutes")
        return {**data, "data": str(self.data), "limit": self.limit, "base": self.base}
