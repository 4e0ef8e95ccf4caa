"""gemmacli: unstructured text in, JSON that matches a JSON Schema out, with a local Gemma 3 270M.

The library API (the CLI is one user of it):

    from gemmacli import Extractor, extract
    extract("Call Ada Lovelace at +44 20 7946 0000", {"type": "object", ...}).data
    extractor = Extractor(schema, model="gemma-3-270m", spans="all")   # loads once, compiles once
    for text in texts:
        result = extractor.extract(text)    # ExtractionResult: .data (validated), .text, token counts

Errors are the exceptions of `gemmacli.errors`, each with the CLI's exit status. The layers, one way:
`schema` (read, check, size) -> `engine` (prompt, grammar, decoder, runtime, Extractor) -> `jobs` (batches,
checks, eval) -> `cli`; `models` makes and finds model folders (pull, import, export, synth, the store).
The names below load on first use, so `import gemmacli` stays cheap (the CLI's --help needs no model code).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from gemmacli.engine.config import ExtractionConfig
    from gemmacli.engine.extractor import ExtractionResult, Extractor, extract
    from gemmacli.errors import (
        ExtractionFailed,
        GemmacliError,
        InputOutputError,
        ModelError,
        SchemaError,
        UsageError,
    )
    from gemmacli.schema import LoadedSchema, load_schema

__all__ = [
    "ExtractionConfig",
    "ExtractionFailed",
    "ExtractionResult",
    "Extractor",
    "GemmacliError",
    "InputOutputError",
    "LoadedSchema",
    "ModelError",
    "SchemaError",
    "UsageError",
    "__version__",
    "extract",
    "load_schema",
]

_HOMES = {
    "ExtractionConfig": "gemmacli.engine.config",
    "ExtractionResult": "gemmacli.engine.extractor",
    "Extractor": "gemmacli.engine.extractor",
    "extract": "gemmacli.engine.extractor",
    "LoadedSchema": "gemmacli.schema",
    "load_schema": "gemmacli.schema",
    **dict.fromkeys(("ExtractionFailed", "GemmacliError", "InputOutputError", "ModelError", "SchemaError",
                     "UsageError"), "gemmacli.errors"),
}


def __getattr__(name: str) -> Any:
    """The public names, imported when first asked for (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gemmacli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
