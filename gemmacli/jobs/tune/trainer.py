"""The training loop: LoRA (peft) or full tuning of the blocks, loss on the answer tokens only.

Where the compute goes, and what is done about it (shared/REAL-MODEL.md has the measurements):
- Gemma's tied lm_head is a 262,144 x 640 matrix: applied at every position it would be most of the work.
  The blocks run for hidden states, and the head is applied only where an answer token is predicted.
- The embedding is the lm_head: it stays frozen (the tuned model keeps the base's 8-bit table, shared by
  the lm_head and the embedding lookup on disk).
- Batches hold sequences of similar length (gemmacli.jobs.tune.data.epoch_batches): little padding.
- bf16 autocast (1.7x faster per step than fp32 on this kind of CPU), torch threads = the machine's cores,
  OpenMP waiting passively (the CLI sets OMP_WAIT_POLICY before torch loads: spinning threads collapse
  when another process holds a core).

Checkpoints (trainable weights, optimizer, position in the data, elapsed time) are written every few
minutes and when SIGINT/SIGTERM arrive; the signal is only noted, and acted on between steps, so a
checkpoint never holds a half-applied update. A resumed run meets the same batches in the same order and
ends with the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemmacli.errors import Terminated
from gemmacli.jobs.tune.data import TrainingSequence, epoch_batches
from gemmacli.jobs.tune.options import TuneOptions
from gemmacli.models.torch_gemma import LINEAR_MODULES

CHECKPOINT = "checkpoint.pt"
WARMUP_STEPS = 8
#: --minutes: the step time is measured over these first steps to plan the learning-rate schedule
PLAN_AFTER_STEPS = 3
FINAL_LR_FRACTION = 0.1


@dataclass
class Status:
    """Where training stands: what progress lines and checkpoints report."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next batch of `epoch`
    examples: int = 0
    seconds: float = 0.0  # training time, summed over resumed runs
    planned_steps: int | None = None
    loss: float = math.nan
    losses: list[float] = field(default_factory=list)
    dev: list[dict[str, float]] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


Reporter = Callable[[str, Status], None]  # ("step" | "dev" | "checkpoint" | "start", status)


def require_torch() -> Any:
    """torch, transformers and peft, or UsageError (exit 2) with the pip command."""
    from gemmacli.errors import UsageError

    try:
        import peft  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"tune needs torch, transformers and peft ({exc.name} is missing)",
                         hint="pip install torch==2.13.0 'gemmacli[tune]'   "
                              "# torch first: the CPU build, not GBs of CUDA") from exc
    return torch


class Trainer:
    """One tuning run over already-encoded sequences."""

    def __init__(self, model: Any, train: Sequence[TrainingSequence], dev: Sequence[TrainingSequence],
                 options: TuneOptions, pad_id: int) -> None:
        torch = require_torch()
        self.torch, self.options, self.pad_id = torch, options, pad_id
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(options.seed)
        self.model = _prepare(model, options).to(self.device)
        self.train_set, self.dev_set = list(train), list(dev)
        self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        # the frozen tied head, once in bfloat16: casting 262,144 x 640 floats every step cost 0.13 s
        self.head = _embedding(self.model).weight.detach().to(torch.bfloat16)
        self.optimizer = torch.optim.AdamW(list(self.trainable.values()), lr=options.lr, weight_decay=0.0)
        self.status = Status()
        self._signal: int | None = None

    # ------------------------------------------------------------------------------------------ loop

    def run(self, checkpoint: Path, report: Reporter,
            after_step: Callable[[Status], None] | None = None) -> Status:
        """Train until the epochs or minutes are spent; checkpoints into `checkpoint` on the way and when
        interrupted (then KeyboardInterrupt / Terminated propagates)."""
        status, last_save = self.status, time.monotonic()
        report("start", status)
        with self._deferred_signals():
            for epoch, index, batch in self._batches():
                if self._done():
                    break
                started = time.monotonic()
                status.loss = self._step(batch)
                status.seconds += time.monotonic() - started
                status.step, status.examples = status.step + 1, status.examples + len(batch)
                status.epoch, status.batch_index = epoch, index + 1
                status.losses.append(round(status.loss, 5))
                self._plan(status)
                report("step", status)
                self._between_steps(checkpoint, after_step)
                if time.monotonic() - last_save >= self.options.checkpoint_minutes * 60:
                    self.evaluate_dev(report)
                    self.save(checkpoint)
                    report("checkpoint", status)
                    last_save = time.monotonic()
        self.evaluate_dev(report)
        return status

    def _between_steps(self, checkpoint: Path, after_step: Callable[[Status], None] | None) -> None:
        """The one place a run may stop early: the step is complete, so the checkpoint is consistent."""
        try:
            if after_step is not None:
                after_step(self.status)
        except KeyboardInterrupt:
            self.save(checkpoint)
            raise
        if self._signal is not None:
            self.save(checkpoint)
            raise Terminated if self._signal == signal.SIGTERM else KeyboardInterrupt

    def _batches(self) -> Iterator[tuple[int, int, list[int]]]:
        lengths = [len(s.ids) for s in self.train_set]
        epoch, start = self.status.epoch, self.status.batch_index
        while True:
            batches = epoch_batches(lengths, self.options.batch_size, self.options.seed, epoch)
            for index in range(start, len(batches)):
                yield epoch, index, batches[index]
            epoch, start = epoch + 1, 0
            self.status.epoch, self.status.batch_index = epoch, 0

    def _done(self) -> bool:
        status, options = self.status, self.options
        if options.minutes is not None and status.seconds >= options.minutes * 60:
            return True
        return status.planned_steps is not None and status.step >= status.planned_steps

    def _plan(self, status: Status) -> None:
        """The schedule's length: from the epochs, or (--minutes) from the measured step time."""
        if status.planned_steps is not None:
            return
        per_epoch = math.ceil(len(self.train_set) / self.options.batch_size)
        if self.options.epochs is not None:
            status.planned_steps = max(1, math.ceil(self.options.epochs * per_epoch))
        elif status.step >= PLAN_AFTER_STEPS and self.options.minutes is not None:
            status.planned_steps = max(status.step + 1,
                                       int(self.options.minutes * 60 / (status.seconds / status.step)))

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then a linear decay to FINAL_LR_FRACTION at the planned end."""
        peak, planned = self.options.lr, self.status.planned_steps
        if step < WARMUP_STEPS:
            return peak * (step + 1) / WARMUP_STEPS
        if not planned or planned <= WARMUP_STEPS:
            return peak
        left = max(0.0, 1 - (step - WARMUP_STEPS) / (planned - WARMUP_STEPS))
        return peak * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * left)

    # ------------------------------------------------------------------------------------------ step

    def _step(self, batch: list[int]) -> float:
        torch = self.torch
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.status.step)
        loss, _ = self._loss([self.train_set[i] for i in batch])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.trainable.values()), 1.0)
        self.optimizer.step()
        return float(loss.detach())

    def _loss(self, sequences: Sequence[TrainingSequence]) -> tuple[Any, Any]:
        """Mean cross-entropy over the answer's choices, and per sequence whether every choice's target is
        the top-1 among the tokens allowed there (what greedy, grammar-constrained decoding would write).

        Only choices are scored: a token the grammar forces is fed, as extract feeds it. A choice among a
        few tokens (an enum's labels) is scored over those rows of the head only; free text over all
        262,144 (the head is most of the compute: a bfloat16 copy of the frozen table is kept)."""
        torch = self.torch
        width = max(len(s.ids) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence.ids)] = torch.tensor(sequence.ids)
            mask[row, : len(sequence.ids)] = 1
        with torch.autocast(self.device, dtype=torch.bfloat16):
            hidden = _text_model(self.model)(input_ids=ids.to(self.device),
                                              attention_mask=mask.to(self.device)).last_hidden_state
        full = [(row, c.index - 1, s.ids[c.index]) for row, s in enumerate(sequences)
                for c in s.choices if c.allowed is None]
        small = [(row, c.index - 1, c.allowed.index(s.ids[c.index]), c.allowed)
                 for row, s in enumerate(sequences) for c in s.choices if c.allowed is not None]
        losses, wrong, rows = [], [], []
        if full:
            h = hidden[[r for r, _, _ in full], [p for _, p, _ in full]].to(torch.bfloat16)
            targets = torch.tensor([t for _, _, t in full], device=self.device)
            row_losses, right = head_cross_entropy(torch, h, self.head, targets)
            losses.append(row_losses)
            wrong.append((~right).long())
            rows += [r for r, _, _ in full]
        if small:
            losses_small, wrong_small = self._small_choices(hidden, small)
            losses.append(losses_small)
            wrong.append(wrong_small)
            rows += [r for r, _, _, _ in small]
        if not losses:  # every answer token forced: nothing to learn from these sequences
            return hidden.sum() * 0.0, torch.ones(len(sequences), dtype=torch.bool)
        wrong_per_row = torch.zeros(len(sequences), dtype=torch.long, device=self.device)
        wrong_per_row.index_add_(0, torch.tensor(rows, device=self.device), torch.cat(wrong))
        return torch.cat(losses).mean(), wrong_per_row == 0

    def _small_choices(self, hidden: Any,
                       small: list[tuple[int, int, int, tuple[int, ...]]]) -> tuple[Any, Any]:
        """Cross-entropy (and top-1 misses) of choices among few tokens: a softmax over their rows only."""
        torch = self.torch
        widest = max(len(allowed) for _, _, _, allowed in small)
        table = torch.zeros((len(small), widest), dtype=torch.long)
        valid = torch.zeros((len(small), widest), dtype=torch.bool)
        for i, (_, _, _, allowed) in enumerate(small):
            table[i, : len(allowed)] = torch.tensor(allowed)
            valid[i, : len(allowed)] = True
        table, valid = table.to(self.device), valid.to(self.device)
        h = hidden[[r for r, _, _, _ in small], [p for _, p, _, _ in small]].to(torch.bfloat16)
        logits = torch.einsum("ph,pwh->pw", h, self.head[table]).float().masked_fill(~valid, -math.inf)
        targets = torch.tensor([t for _, _, t, _ in small], device=self.device)
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        return losses, (logits.argmax(-1) != targets).long()

    def evaluate_dev(self, report: Reporter) -> None:
        """Dev loss and the share of dev answers greedy decoding would write exactly (teacher-forced top-1
        at every answer token): cheap enough to run at every checkpoint. The real scores come after the
        export, from `eval` on the exported models."""
        if not self.dev_set:
            return
        torch = self.torch
        self.model.eval()
        losses, exact = [], 0
        with torch.no_grad():
            for start in range(0, len(self.dev_set), self.options.batch_size):
                chunk = self.dev_set[start: start + self.options.batch_size]
                loss, right = self._loss(chunk)
                losses.append(float(loss) * len(chunk))
                exact += int(right.sum())
        self.status.dev.append({"step": self.status.step, "loss": round(sum(losses) / len(self.dev_set), 5),
                                "exact": round(exact / len(self.dev_set), 4)})
        report("dev", self.status)

    # ----------------------------------------------------------------------------------- checkpoints

    def save(self, path: Path) -> None:
        """Trainable weights, optimizer and status, written whole or not at all."""
        state = {"status": vars(self.status), "optimizer": self.optimizer.state_dict(),
                 "trainable": {n: p.detach().cpu() for n, p in self.trainable.items()},
                 "options": self.options.checkpoint_key()}
        temporary = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.torch.save(state, temporary)
        os.replace(temporary, path)

    def load(self, path: Path) -> None:
        from gemmacli.errors import UsageError

        state = self.torch.load(path, map_location=self.device, weights_only=False)
        if state.get("options") != self.options.checkpoint_key():
            raise UsageError(f"{path} was written by a tune with other options or data",
                             hint="run with the same options, or without --resume to start over")
        with self.torch.no_grad():
            for name, value in state["trainable"].items():
                self.trainable[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.status = Status(**state["status"])

    def merged_state(self) -> dict[str, Any]:
        """The tuned weights as transformers names them, LoRA folded into each Linear."""
        model = self.model
        if self.options.method == "lora":
            model = model.merge_and_unload()
        return {name: value.detach().cpu() for name, value in model.state_dict().items()}

    @contextmanager
    def _deferred_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM are noted and acted on after the current step (see the module docstring)."""
        def note(signum: int, _frame: object) -> None:
            self._signal = signum

        previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _prepare(model: Any, options: TuneOptions) -> Any:
    """Freeze what is not trained: everything but the LoRA adapters, or everything but the blocks."""
    for parameter in model.parameters():
        parameter.requires_grad = False
    if options.method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=options.rank, lora_alpha=2 * options.rank, lora_dropout=0.0,
                            target_modules=list(LINEAR_MODULES), bias="none")
        return get_peft_model(model, config)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = ".layers." in name or name.endswith("model.norm.weight")
    return model


def _text_model(model: Any) -> Any:
    """Gemma3TextModel (the blocks and the final norm), under a peft wrapper or not."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model


def _embedding(model: Any) -> Any:
    return _text_model(model).embed_tokens


#: Rows of the full head computed at once: 256 x 262,144 float32 logits are 268 MB.
HEAD_CHUNK = 256


def head_cross_entropy(torch: Any, hidden: Any, head: Any, targets: Any) -> tuple[Any, Any]:
    """Per-row cross-entropy over the whole vocabulary, and whether each target is the top-1.

    The logits are never kept: each chunk's gradient with respect to `hidden` is computed in the forward
    pass (softmax minus one-hot, times the frozen head), so memory holds one chunk of logits, not every
    row's (a batch of receipts, ~1,000 free-text rows, held 24 GB before). linear(h, W), not h @ W.T: on
    this CPU the transposed view took a path twice as slow (measured)."""
    return _head_function().apply(hidden, head, targets)


@functools.cache
def _head_function() -> Any:
    """The autograd Function, defined on first use (torch is imported only when a tune runs)."""
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, head: Any, targets: Any) -> tuple[Any, Any]:
            losses, right, grads = [], [], []
            for start in range(0, len(hidden), HEAD_CHUNK):
                h, t = hidden[start: start + HEAD_CHUNK], targets[start: start + HEAD_CHUNK]
                logits = torch.nn.functional.linear(h, head).float()
                top = logits.logsumexp(-1)
                losses.append(top - logits.gather(1, t[:, None]).squeeze(1))
                right.append(logits.argmax(-1) == t)
                if ctx.needs_input_grad[0]:
                    probs = (logits - top[:, None]).exp_()
                    probs[torch.arange(len(t), device=t.device), t] -= 1.0
                    grads.append((probs.to(head.dtype) @ head).to(hidden.dtype))
            ctx.save_for_backward(torch.cat(grads) if grads else hidden.new_zeros(0))
            flags = torch.cat(right)
            ctx.mark_non_differentiable(flags)
            return torch.cat(losses), flags

        @staticmethod
        def backward(ctx: Any, grad_losses: Any, _grad_flags: Any) -> tuple[Any, None, None]:
            (grads,) = ctx.saved_tensors
            return grads * grad_losses[:, None].to(grads.dtype), None, None

    return HeadCrossEntropy

