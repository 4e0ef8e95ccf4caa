"""Command-line layer: argument parsing, streams, exit codes. The work lives in the library modules."""
