"""Library API: text + schema + model -> validated JSON. The CLI and batch layers call only this.

CONTRACT (implemented by the decoder issue):

@dataclass
class ExtractionResult:
    data: Any               # the JSON value, already validated with jsonschema
    text: str               # the exact JSON text the model emitted
    prompt_tokens: int
    generated_tokens: int   # tokens chosen by the model
    forced_tokens: int      # tokens taken by jump-forward
    model_calls: int        # onnxruntime decoder runs
    seconds: float

class Extractor:
    '''Loads the model and compiles the schema once; call .extract(text) many times (batches).'''
    def __init__(self, schema, *, model: Model | str | Path = DEFAULT_MODEL, lenient=False,
                 max_tokens=1024, temperature=0.0, top_p=1.0, seed=None, instructions=None,
                 truncate=False, threads=None, warn=None)
        schema: a dict, or a LoadedSchema from gemmacli.schema.load_schema
        warn: optional callable(str) that receives --lenient warnings
        Raises SchemaError (3), ModelError (4).
    schema_sha256: str; model_name: str; model_sha256: str
    def extract(self, text: str) -> ExtractionResult     raises ExtractionFailed (1)

def extract(text, schema, *, model=DEFAULT_MODEL, **options) -> ExtractionResult

DEFAULT_MODEL = os.environ.get("GEMMACLI_MODEL", "gemma-3-270m-it")
"""

from __future__ import annotations
