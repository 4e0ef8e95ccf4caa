"""Extraction as one stage of a Ray Data pipeline: `gemmacli.ray.extract_dataset(ds, schema, ...)`.

    import ray, gemmacli.ray
    ds = ray.data.read_parquet("s3://bucket/tickets/")          # or read_json, read_binary_files, ...
    out = gemmacli.ray.extract_dataset(ds, "ticket", source_column="id", actors=8)
    out.write_parquet("s3://bucket/triage/")

For people who already build Ray pipelines: the dataset keeps its columns and gains `ok` (bool), `data`
(the extracted JSON as text), `error` (a message, for a failed row) and `record` (the JSON Lines record
`gemmacli extract` writes for the same text, without its newline). The work is `gemmacli extract --ray`'s
(gemmacli.jobs.ray_data): one model per actor, the schema compiled once per actor, the model folder shipped
through the object store when the cluster has several nodes. Nothing runs until the dataset is consumed,
as with any Ray Data transform. Needs `pip install 'gemmacli[ray]'`.
"""

from __future__ import annotations

from typing import Any

from gemmacli.engine.config import ExtractionConfig
from gemmacli.jobs.batch import ExtractOptions, build_extractor
from gemmacli.jobs.ray_data import (
    ActorSpec,
    Columns,
    RayOptions,
    map_extract,
    plan_actors,
    require_ray,
    shipment_for,
)

__all__ = ["extract_dataset"]


def extract_dataset(
    ds: Any,
    schema: Any,
    config: ExtractionConfig | None = None,
    *,
    model: str | None = None,
    text_column: str = "text",
    source_column: str | None = None,
    actors: int = 1,
    cpus_per_actor: int = 1,
    batch_size: int = 4,
    ship: str = "auto",
    encoding: str = "utf-8",
    errors: str = "strict",
    allow_empty: bool = False,
    with_meta: bool = False,
) -> Any:
    """`ds` with every row's `text_column` (str, or bytes decoded with `encoding`) extracted into `schema`.

    `schema` is what `gemmacli.Extractor` takes (a dict, a path, a bundled name, the concise syntax); it is
    loaded and checked here, on the driver, so a bad schema fails before any actor starts. `model` is a
    name or folder (default: $GEMMACLI_MODEL or the best installed model). `source_column` names the
    column records call "source" (None: null). Must be called with Ray initialized (`ray.init(...)`).
    """
    ray = require_ray()
    from gemmacli.models.store import default_model, resolve_model
    from gemmacli.schema import load_schema, prepare_schema

    config = config or ExtractionConfig()
    prepared = prepare_schema(load_schema(schema), lenient=config.lenient)
    folder = resolve_model(model or default_model())
    options = ExtractOptions(schema=prepared, model=str(folder.resolve()), config=config, encoding=encoding,
                             errors=errors, allow_empty=allow_empty, with_meta=with_meta)
    ray_options = RayOptions(address="", actors=actors, cpus_per_actor=cpus_per_actor,
                             batch_size=batch_size, ship=ship)
    if not ray.is_initialized():
        ray.init()
    spec = ActorSpec(options, build_extractor, shipment_for(ray, options.model, ray_options),
                     Columns(text_column, source_column))
    actors, cpus = plan_actors(ray, ray_options, count=1 << 62)  # actors=0: as many as the CPUs allow
    return map_extract(ray, ds, spec, actors, cpus, batch_size)
