"""`--parallel N`: a batch's documents decoded N at a time in this process, their model steps batched
(gemmacli.engine.lockstep), the records still written in input order and byte-identical to one at a time.

Each of the N threads has its own Extractor (grammar, prompt head) over one stream of a shared Lockstep;
a thread takes the next source, joins the lockstep for it, and leaves when its record is made.
"""

from __future__ import annotations

import queue
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from gemmacli.jobs.batch import ExtractOptions, Outcome, build_extractor, process_source
from gemmacli.jobs.inputs import Source
from gemmacli.jobs.progress import ProgressReporter


def stream_outcomes(sources: Sequence[Source], options: ExtractOptions, progress: ProgressReporter,
                    streams: int) -> Generator[tuple[Source, Outcome], None, None]:
    """(source, outcome) in input order, `streams` documents decoded together."""
    if not sources:
        return
    from gemmacli.engine.lockstep import Lockstep
    from gemmacli.engine.runtime import Model

    count = min(streams, len(sources))
    lockstep = Lockstep(Model.load(options.model, threads=options.config.threads), count)
    extractors = [build_extractor(options, lockstep.stream(slot)) for slot in range(count)]
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(count):
        free.put(slot)

    def work(source: Source) -> Outcome:
        slot = free.get()
        lockstep.join()
        try:
            return process_source(extractors[slot], source, options)
        finally:
            lockstep.leave(slot)
            free.put(slot)

    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="gemmacli-stream")
    upcoming = iter(sources)
    in_flight: deque[tuple[Source, Future[Outcome]]] = deque()
    try:
        while True:
            while len(in_flight) < 2 * count:
                source = next(upcoming, None)
                if source is None:
                    break
                in_flight.append((source, pool.submit(work, source)))
            if not in_flight:
                break
            source, future = in_flight.popleft()
            outcome = future.result()
            progress.advance(outcome.ok, outcome.seconds)
            yield source, outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

