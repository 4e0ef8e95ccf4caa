"""How many worker processes a batch may start: `--jobs N` capped by CPUs, memory and the number of sources.

Why here: every worker loads its own copy of the model, so the worker count is a memory question as much
as a CPU one; `extract` and `check` both ask it before starting gemmacli.jobs.batch's worker pool.
"""

from __future__ import annotations

import os
from pathlib import Path

#: What a worker costs beyond its model files: Python, onnxruntime, llguidance, the KV cache (measured:
#: ~50 MiB a worker with the tiny test model, ~0.9 GiB with the 270m one).
WORKER_OVERHEAD = 200 * 2**20
#: Model files are memory-mapped and partly copied by onnxruntime: count them at this factor.
MODEL_MEMORY_FACTOR = 1.5


def plan_jobs(
    requested: int,
    sources: int,
    model_bytes: int,
    *,
    cpus: int | None = None,
    available: int | None = None,
) -> tuple[int, str | None]:
    """How many workers to start: `requested` (0 = auto) capped by CPUs, by available memory at one model
    per worker, and by the number of sources. Returns (jobs, why it was lowered, for stderr, or None).

    Each worker loads its own model, so `--jobs 1000` would start 1000 models: 10.6 GB with the tiny test
    model on 200 files, far more with the real one. The cap keeps a typo from exhausting the machine.
    """
    cpus = cpus if cpus is not None else cpu_count()
    available = available if available is not None else available_memory()
    per_worker = int(model_bytes * MODEL_MEMORY_FACTOR) + WORKER_OVERHEAD
    by_memory = max(1, int(available * 0.8) // per_worker) if available else cpus
    cap = max(1, min(cpus, by_memory))
    jobs = min(requested if requested > 0 else cap, cap, max(sources, 1))
    if requested > cap and sources > cap:
        why = (f"--jobs {requested} lowered to {cap}: {cpus} CPU(s), {available / 2**30:.1f} GiB available "
               f"at about {per_worker / 2**30:.2f} GiB per worker (each loads the model)")
        return jobs, why
    return jobs, None


def cpu_count() -> int:
    """CPUs this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes a new process can still get: MemAvailable, or less under a cgroup v2 memory limit; 0 unknown."""
    found = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            found = min(found, max(int(limit) - used, 0)) if found else max(int(limit) - used, 0)
    except (OSError, ValueError):
        pass
    return found
