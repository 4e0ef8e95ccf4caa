"""The concise schema syntax: `name, age int, email?: their email, tags [str], mood enum(a|b)`.

CONTRACT: parse_dsl(text: str) -> dict (a JSON Schema object); raises SchemaError (exit 3) naming the
field and column that could not be read. looks_like_dsl(text) -> bool.
"""

from __future__ import annotations
