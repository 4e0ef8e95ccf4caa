"""Batches past one machine: the same records as `--jobs`, from Ray Data actors on a Ray cluster.

Why Ray Data and not a scheduler of our own: it already places actors across nodes, streams blocks with
back-pressure, restarts lost actors and reads and writes files, JSON Lines and Parquet locally or on object
stores. gemmacli contributes one actor class and keeps everything that decides a record its own:

* `ExtractActor` builds one Extractor per actor (the model loads and the schema compiles once), with as many
  onnxruntime threads as Ray gave the actor CPUs. Each source goes through gemmacli.jobs.batch's
  `process_source`, the very code a local run uses, so records are byte-identical to `--jobs N`.
* `ray_outcomes` is `batch.outcomes` for a cluster: the sources become a Dataset, `map_batches` runs the
  actor pool with `preserve_order`, and (source, outcome) pairs come back in input order as blocks finish,
  so run_batch writes, flushes and resumes exactly as it does locally.
* Problems that would fail every source (model missing, schema refused) travel back as data
  (`batch.describe_fatal`) and stop the batch with their own exit status, as with worker processes.
* The model folder reaches nodes without a shared file system through the object store
  (gemmacli.jobs.ray_ship), once per node, verified against its manifest on arrival; input files travel
  as bytes in the Dataset's rows (the driver reads them, `source_row`).

`ray` is an optional extra (`pip install 'gemmacli[ray]'`): it is imported only when a Ray run starts, and
`require_ray` turns its absence into a usage error (exit 2) that names the pip command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pickle
import sys
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.errors import GemmacliError, InputOutputError, UsageError
from gemmacli.jobs import capacity
from gemmacli.jobs.batch import (
    ExtractOptions,
    ExtractorFactory,
    Outcome,
    describe_fatal,
    process_source,
    rebuild_fatal,
    startup_failure,
)
from gemmacli.jobs.inputs import Source
from gemmacli.jobs.progress import NoProgress, ProgressReporter
from gemmacli.jobs.ray_ship import ModelShipment, materialize, ship_model

PIP_HINT = "pip install 'gemmacli[ray]'"
SHIP_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes (the CLI's --ray, --jobs, --ray-cpus, --ray-ship)."""

    address: str | None = None  # None: start a local Ray on this machine for this run, stop it after
    actors: int = 1  # actors, each with its own model (0: as many as the cluster's CPUs allow)
    cpus_per_actor: int | None = None  # None: a local Ray shares this machine's CPUs out; a cluster: 1
    batch_size: int = 4  # sources per actor call: records stream back (and are written) per batch
    ship: str = "auto"  # model and input files through the object store: auto = on a multi-node cluster
    verbose: bool = False  # Ray's own INFO logging on stderr

    def __post_init__(self) -> None:
        if self.ship not in SHIP_MODES:
            raise UsageError(f"ray_ship must be one of {', '.join(SHIP_MODES)}, not {self.ship!r}",
                             option="ray_ship")
        if self.actors < 0 or self.batch_size < 1 or (self.cpus_per_actor or 1) < 1:
            raise UsageError("Ray actors must be 0 (auto) or more, and CPUs and batch size at least 1")


def require_ray() -> Any:
    """The ray module with Ray Data, or a usage error (exit 2) saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UsageError(f"Ray runs need Ray Data, which is not installed ({exc})", hint=PIP_HINT) from exc
    return ray


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """Connected to Ray for one run: an existing connection is reused (a library caller's), else this run
    connects to `address` or starts a local Ray, and disconnects (stopping a local Ray) when it ends. Ray
    Data is set to keep input order and to draw no progress bars (gemmacli reports progress itself), and
    whatever Ray prints goes to stderr: stdout carries records only (they are written to the stream the
    Environment holds, not to sys.stdout)."""
    ray = require_ray()
    # Ray prints its raylet's messages to sys.stdout: send them to stderr
    with contextlib.redirect_stdout(sys.stderr), _connected(ray, options), _data_settings(ray, options):
        yield ray


@contextlib.contextmanager
def _connected(ray: Any, options: RayOptions) -> Iterator[None]:
    started = False
    if not ray.is_initialized():
        quiet: dict[str, Any] = {"log_to_driver": False,  # stdout carries records only
                                 "logging_level": logging.INFO if options.verbose else logging.WARNING}
        with _own_signal_handlers():
            try:
                if options.address is None:
                    ray.init(address="local", num_cpus=capacity.cpu_count(), include_dashboard=False, **quiet)
                else:
                    ray.init(address=options.address, **quiet)
            except ConnectionError as exc:
                hint = "check the address `ray start --head` printed (HOST:6379)"
                raise InputOutputError(f"cannot reach the Ray cluster at {options.address}: {exc}",
                                       hint=hint) from exc
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _data_settings(ray: Any, options: RayOptions) -> Iterator[None]:
    context = ray.data.DataContext.get_current()
    before = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    data_log = logging.getLogger("ray.data")  # "starting execution…" lines: our own report says it all
    level = data_log.level
    if not options.verbose:
        data_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = before
        data_log.setLevel(level)


@contextlib.contextmanager
def _own_signal_handlers() -> Iterator[None]:
    """ray.init installs its own SIGTERM handler (sys.exit(15)); gemmacli's turns SIGTERM into exit 143
    after the same cleanup as Ctrl-C (gemmacli.cli.core), so the handlers in place before are put back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in before.items():
            if handler is not None:
                signal.signal(number, handler)


# ----------------------------------------------------------------------------------------------- actors


@dataclass(frozen=True)
class Columns:
    """How a library caller's rows hold their texts (see gemmacli.ray.extract_dataset)."""

    text: str = "text"  # str, or bytes (ray.data.read_binary_files' "bytes"), decoded like a file
    source: str | None = None  # what records call "source" (e.g. "id", "path"); None: null


@dataclass(frozen=True)
class ActorSpec:
    """Everything an actor is built from (pickled once into the actor pool's constructor arguments)."""

    options: ExtractOptions
    factory: ExtractorFactory
    shipment: ModelShipment | None = None
    columns: Columns | None = None  # None: the CLI's rows (index + pickled Source), fatal errors as rows


class ExtractActor:
    """One model per actor, one record per row (map_batches' callable class)."""

    def __init__(self, spec: ActorSpec) -> None:
        self.spec = spec
        self.fatal: dict[str, Any] | None = None
        self.options = spec.options
        self.extractor: Any = None
        try:
            self.options = actor_options(spec)
            self.extractor = spec.factory(self.options)
        except GemmacliError as exc:
            if spec.columns is not None:
                raise
            self.fatal = describe_fatal(exc)
        except Exception as exc:
            if spec.columns is not None:
                raise
            self.fatal = startup_failure(exc)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.spec.columns is None:
            return self._cli_batch(batch)
        return self._library_batch(batch, self.spec.columns)

    def _cli_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Pickled Sources in, pickled Outcomes (or a fatal error's description) out."""
        import numpy as np

        results: list[bytes] = []
        for payload in batch["source"]:
            result: Outcome | dict[str, Any]
            if self.fatal is not None:
                result = self.fatal
            else:
                try:
                    result = process_source(self.extractor, pickle.loads(payload), self.options)
                except GemmacliError as exc:
                    result = describe_fatal(exc)
            results.append(pickle.dumps(result))
        return {"index": batch["index"], "outcome": _objects(np, results)}

    def _library_batch(self, batch: dict[str, Any], columns: Columns) -> dict[str, Any]:
        """The caller's columns, plus `ok`, `data` (JSON text), `error` (a message) and `record` (the
        JSON Lines record `gemmacli extract` writes, without its newline)."""
        import numpy as np

        from gemmacli.files import json_bytes

        names = batch[columns.source] if columns.source is not None else None
        records = []
        for row, value in enumerate(batch[columns.text]):
            name = _plain(names[row]) if names is not None else None
            outcome = process_source(self.extractor, row_source(value, name), self.options)
            records.append(outcome.record)
        out = dict(batch)
        out["ok"] = np.array([r["ok"] for r in records], dtype=bool)
        out["data"] = _objects(np, [json_bytes(r["data"]).decode() if r["ok"] else None for r in records])
        out["error"] = _objects(np, [None if r["ok"] else r["error"]["message"] for r in records])
        out["record"] = _objects(np, [json_bytes(r).decode() for r in records])
        return out


def actor_options(spec: ActorSpec) -> ExtractOptions:
    """The actor's copy of the options: its local model folder, and onnxruntime threads = its CPUs."""
    import ray

    options = spec.options
    if spec.shipment is not None:
        folder = materialize(spec.shipment, ray.get)
        options = dataclasses.replace(options, model=str(folder))
    if options.config.threads is None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        config = dataclasses.replace(options.config, threads=max(1, int(cpus)))
        options = dataclasses.replace(options, config=config)
    return options


def row_source(value: Any, name: str | None) -> Source:
    """A row's text as a Source: bytes are decoded like a file's (--encoding, --errors), other values like
    an --input-jsonl field (None is empty; numbers and objects are their JSON)."""
    if isinstance(value, bytes | bytearray):
        return Source(name=name, kind="file", path=None, data=bytes(value))  # type: ignore[arg-type]
    if not isinstance(value, str):
        value = _plain(value)
        value = "" if value is None else value if isinstance(value, str) else json.dumps(value)
    return Source(name=name, kind="jsonl", path=None, text=value)  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python values (what json and records expect)."""
    return value.tolist() if hasattr(value, "tolist") else value


def _objects(np: Any, values: list[Any]) -> Any:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


# ----------------------------------------------------------------------------------------------- driver


def plan_actors(ray: Any, options: RayOptions, count: int) -> tuple[int, int]:
    """(actors, CPUs per actor) for `count` sources on the connected cluster."""
    cpus = options.cpus_per_actor
    if cpus is None:  # a local Ray shares this machine out among the actors asked for; else one each
        local = options.address is None and options.actors > 0
        cpus = max(1, capacity.cpu_count() // options.actors) if local else 1
    actors = options.actors
    if actors == 0:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    return max(1, min(actors, count)), cpus


def shipping(ray: Any, options: RayOptions) -> bool:
    """Do the model and the input files travel through the object store? `always`, or `auto` on a cluster
    of several nodes; else every node must see the driver's paths (one machine, a shared file system)."""
    return options.ship == "always" or (options.ship == "auto" and _alive_nodes(ray) > 1)


def shipment_for(ray: Any, model: str, options: RayOptions) -> ModelShipment:
    """How the actors get the model (see `shipping`); `always` also makes them unpack it (never use a
    folder at the same path), which proves the shipped copy."""
    put = ray.put if shipping(ray, options) else None
    return ship_model(Path(model), put=put, always_unpack=options.ship == "always")


def source_row(index: int, source: Source, ship: bool) -> dict[str, Any]:
    """A Dataset row for one source. A file's path is made absolute (actors run in other folders); when
    shipping, its bytes are read here and travel with it (the node that extracts it cannot see this disk).
    Records still name it as given, and a file that cannot be read here is left for the actor to report."""
    if source.kind == "file" and source.path is not None and source.data is None:
        path = Path(os.path.abspath(source.path))
        data = None
        if ship:
            with contextlib.suppress(OSError):
                data = path.read_bytes()
        source = dataclasses.replace(source, path=path, data=data)
    return {"index": index, "source": pickle.dumps(source)}


def _alive_nodes(ray: Any) -> int:
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def map_extract(ray: Any, ds: Any, spec: ActorSpec, actors: int, cpus: int, batch_size: int) -> Any:
    """`ds.map_batches` over an ExtractActor pool: `actors` actors of `cpus` CPUs each."""
    return ds.map_batches(
        ExtractActor,
        fn_constructor_kwargs={"spec": spec},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        batch_size=batch_size,
        batch_format="numpy",
    )


def ray_outcomes(
    sources: Sequence[Source],
    options: ExtractOptions,
    factory: ExtractorFactory,
    ray_options: RayOptions,
    progress: ProgressReporter | None = None,
) -> Generator[tuple[Source, Outcome], None, None]:
    """(source, outcome) in input order from a Ray actor pool; close() ends the run (and a local Ray)."""
    progress = progress or NoProgress()
    if not sources:
        return
    from gemmacli.models.store import resolve_model

    folder = resolve_model(options.model).resolve()  # a name means this machine's store: ship the folder
    options = dataclasses.replace(options, model=str(folder))
    with ray_session(ray_options) as ray:
        actors, cpus = plan_actors(ray, ray_options, len(sources))
        spec = ActorSpec(options, factory, shipment_for(ray, options.model, ray_options))
        ship = shipping(ray, ray_options)
        rows = [source_row(index, source, ship) for index, source in enumerate(sources)]
        ds = map_extract(ray, ray.data.from_items(rows), spec, actors, cpus, ray_options.batch_size)
        for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for index, payload in zip(block["index"], block["outcome"], strict=True):
                result = pickle.loads(payload)
                if isinstance(result, dict):
                    raise rebuild_fatal(result)
                progress.advance(result.ok, result.seconds)
                yield sources[int(index)], result

