"""Layer 3, jobs over many inputs: reading them (`inputs`), ordered resumable batches over worker
processes (`batch`, `outfile`), policy checks for CI (`policy`, `reports`, `cache`) and scoring against
labels (`evaluate`). Jobs drive `gemmacli.engine`; the CLI drives jobs.
"""
