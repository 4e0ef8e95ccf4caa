"""`gemmacli tune`: train a task-specific model from labelled records (gemmacli.jobs.tune), on this machine.

The model learns exactly the prompt extract builds for the schema, with the loss on the answer's JSON
only; the result is an ordinary model folder (`gemmacli extract --model NAME`), whose manifest records the
base model, the data, the schema, the recipe and the dev scores of the exported and the fp32 model.
Ctrl-C (or SIGTERM) writes a checkpoint first; `--resume` continues from it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gemmacli.cli.commands import add_common_flags, positive_int
from gemmacli.cli.model_cmd import destination_for
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus
from gemmacli.jobs.progress import format_duration, make_progress
from gemmacli.schema import load_schema, prepare_schema

if TYPE_CHECKING:  # the trainer imports torch's world lazily; its Status is only a type here
    from gemmacli.jobs.tune.trainer import Status

EXAMPLES = """\
examples:
  gemmacli tune --schema ../shared/datasets/banking77/schema.json \\
      --data ../shared/datasets/banking77/train.jsonl --dev ../shared/datasets/banking77/dev.jsonl \\
      --name banking77 --minutes 30
  gemmacli extract --model banking77 --schema ../shared/datasets/banking77/schema.json message.txt
  gemmacli tune … --name banking77 --minutes 30 --resume      # after Ctrl-C
"""

EXIT_CODES = """\
exit codes:
  0  tuned, exported and scored        2  usage (bad flags or records; torch/peft missing: the pip command)
  3  schema invalid or unsupported     4  base model missing or broken     5  unreadable data or output
  130/143  interrupted / terminated (a checkpoint was written first: --resume continues)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune", help="train a task-specific model from labelled records (needs gemmacli[tune])",
        description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.examples = EXAMPLES
    parser.add_argument("--schema", "-s", required=True, help="the extraction schema the model is tuned for")
    parser.add_argument("--data", "-d", required=True, type=Path, metavar="TRAIN.jsonl",
                        help='labelled JSON Lines {"id", "text", "label"} to train on')
    parser.add_argument("--dev", type=Path, metavar="DEV.jsonl",
                        help="labelled records to score on (checked during training; eval after export)")
    parser.add_argument("--name", required=True, help="the new model's name (or a folder path)")
    parser.add_argument("--base", metavar="NAME|FILE.gguf",
                        help="model to start from (default: the installed base model, gemma-3-270m)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, metavar="M", help="train for M minutes of training time")
    length.add_argument("--epochs", type=float, metavar="E", help="train for E passes over the data "
                                                                   "(default: 1 without --minutes)")
    parser.add_argument("--method", choices=("lora", "full"), default="lora",
                        help="LoRA adapters merged at the end (default), or every block weight")
    parser.add_argument("--rank", type=positive_int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-4 LoRA, "
                                                                "3e-5 full)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences a step (default 16)")
    parser.add_argument("--max-prompt-tokens", type=positive_int, default=512,
                        help="texts longer than this are cut for training (default 512)")
    parser.add_argument("--prompt", choices=("guide", "terse", "short", "bare"), default="bare",
                        help="the prompt trained on, which the model then declares and extract builds: the "
                             "instruction with the schema's field guide, a terse guide, the instruction "
                             "alone, or the text alone (default: bare; shorter prompts train faster)")
    parser.add_argument("--seed", type=int, default=0, help="data order and LoRA initialisation (default 0)")
    parser.add_argument("-n", "--limit", type=positive_int, default=None, metavar="N",
                        help="train on the first N records only")
    parser.add_argument("--dev-limit", type=positive_int, default=200, metavar="N",
                        help="score on the first N dev records (default 200)")
    parser.add_argument("--precision", choices=("auto", "int4", "int8", "fp32"), default="auto",
                        help="the exported model's weights (default auto: the base GGUF's widths)")
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="M",
                        help="checkpoint (and check the dev set) every M minutes (default 5)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: CPUs)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--no-fp32-score", dest="score_fp32", action="store_false",
                        help="skip scoring an fp32 export of the tuned weights (faster)")
    parser.add_argument("--out-dir", type=Path, help="store folder to write into")
    parser.add_argument("--force", action="store_true", help="replace an existing model of that name")
    add_common_flags(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, env: Environment) -> ExitStatus:
    # Before torch loads: spinning OpenMP threads collapse when another process holds a core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from gemmacli.jobs.tune import TuneHooks, TuneOptions, tune

    schema = prepare_schema(load_schema(args.schema))
    destination = destination_for(args.name, args.out_dir, env)
    options = TuneOptions(
        name=destination.name, out_dir=destination.parent, data=args.data, dev=args.dev, base=args.base,
        minutes=args.minutes, epochs=args.epochs, method=args.method, rank=args.rank, learning_rate=args.lr,
        batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens, seed=args.seed,
        precision=args.precision, dev_limit=args.dev_limit, checkpoint_minutes=args.checkpoint_minutes,
        prompt=args.prompt, limit=args.limit, threads=args.threads, resume=args.resume,
        force=args.force, score_fp32=args.score_fp32)
    lines = _Lines(env)
    hooks = TuneHooks(report=lines.report, info=env.info, warn=env.warn, stage_report=env.info,
                      eval_progress=lambda: make_progress(env, every=50))
    manifest = tune(schema, options, hooks)
    scores = manifest["tune"].get("scores") or {}
    shown = ", ".join(f"{k} {v['overall']:.3f}" for k, v in scores.items())
    env.info(f"[green]done[/green]: gemmacli extract --model {args.name} --schema {args.schema} …"
             + (f"  (dev overall: {shown})" if shown else ""))
    return ExitStatus.OK


class _Lines:
    """Progress lines on stderr: loss, examples/s and the ETA every 15 s (every step with -v), dev checks."""

    def __init__(self, env: Environment) -> None:
        self.env, self.last = env, 0.0

    def report(self, event: str, status: Status) -> None:
        if self.env.verbosity < 0:
            return
        if event == "dev" and status.dev:
            check = status.dev[-1]
            self.env.info(f"  dev at step {check['step']}: loss {check['loss']:.4f}, "
                          f"exact answers {check['exact']:.3f}")
        elif event == "checkpoint":
            self.env.info(f"  checkpoint at step {status.step}")
        elif event == "step" and (self.env.verbosity > 0 or time.monotonic() - self.last >= 15):
            self.last = time.monotonic()
            planned = f"/{status.planned_steps}" if status.planned_steps else ""
            self.env.info(f"  step {status.step}{planned}"
                          f"  {status.examples} examples"
                          f"  loss {status.loss:.4f}  {status.examples_per_second:.1f} examples/s"
                          f"  ETA {_eta(status)}")


def _eta(status: Status) -> str:
    if not status.planned_steps or not status.step:
        return "?"
    return format_duration(max(0.0, (status.planned_steps - status.step) * status.seconds / status.step))
