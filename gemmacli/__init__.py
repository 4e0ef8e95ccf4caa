"""gemmacli: unstructured text in, JSON that matches a JSON Schema out, with a local Gemma 3 270M."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
