"""Dynamic batching on one scoring thread, fed straight from the event loop. Ray-free.

    batcher = ThreadBatcher(score, max_rows=64, wait_s=0.0005)   # score(items) -> one result per item
    result = await batcher.submit(inputs)                         # from the replica's event loop
    batcher.close()

The thread takes the queued requests itself the moment it is free: the first one starts the clock,
it waits up to `wait_s` for more, and it takes at most `max_rows` rows (a request is never split,
and one larger than `max_rows` is scored alone). Under light load a request waits `wait_s` at
most; at saturation the batch fills from what queued while the last one ran, and the thread never
waits for the event loop to hand it work. `@serve.batch` with a one-thread executor needs an event
loop turn between two batches (the batch task wakes, then hands the rows to the thread): at
saturation the ORT thread idled 12% of the time (BENCHMARKS.md, "What limits saturation").

Results go back in one event-loop callback per batch, which also hands `on_batch(rows, queued_s,
score_s)` the batch's size, how long its oldest request queued and how long scoring took (the
replica's metrics; on the event loop, not the scoring thread). A request whose caller stopped waiting (a
bid past its deadline cancels its future) is dropped before its batch is scored, if it is still
queued, and its result is discarded otherwise.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import logging
import time
from typing import Any, Callable, Sequence

__all__ = ["ThreadBatcher"]

_STOP = object()
log = logging.getLogger(__name__)


class ThreadBatcher:
    """One daemon thread scoring batches of queued requests; `submit` from any asyncio loop.

    `score(items)`: the batch's requests (each a list of inputs) in, one result per request out;
    if it raises, every request of the batch gets that exception. `rows(item)`: a request's size
    (default `len`). `max_rows` and `wait_s` can change at any time (a hot swap does).
    """

    def __init__(self, score: Callable[[list[Any]], Sequence[Any]], *, max_rows: int, wait_s: float = 0.0,
                 rows: Callable[[Any], int] = len, name: str = "scorer",
                 on_batch: Callable[[int, float, float], None] | None = None):
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows}: must be >= 1")
        if wait_s < 0:
            raise ValueError(f"wait_s={wait_s}: must be >= 0")
        self.max_rows, self.wait_s = max_rows, wait_s
        self._score, self._rows, self._on_batch = score, rows, on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._hook_failed = False
        self.batches = 0  # batches scored
        self._busy_since: float | None = None  # perf_counter() when the call in progress started
        self.dropped = 0  # requests dropped because their caller had stopped waiting
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return not self._closed and self._thread.is_alive()

    @property
    def busy_s(self) -> float:
        """Seconds the scoring call in progress has run; 0 while the thread waits for work. A call
        that never returns (a hung ONNX Runtime run) keeps growing this: the replica's health check reads it."""
        since = self._busy_since
        return 0.0 if since is None else time.perf_counter() - since

    async def submit(self, item: Any) -> Any:
        """The result of `item` (a request's inputs), scored in the next batch with room for it."""
        if not self.alive:
            raise RuntimeError("the scoring thread is stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((item, future, loop, time.perf_counter()))
        return await future

    def close(self) -> None:
        """Stop the thread after the batch in progress; queued requests get an error."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        held = None  # a request that did not fit the last batch: it opens the next one
        while True:
            first = held if held is not None else self._queue.get()
            held = None
            if first is _STOP:
                break
            batch, size = [first], self._rows(first[0])
            deadline = time.perf_counter() + self.wait_s
            while size < self.max_rows:
                try:
                    nxt = self._queue.get(timeout=max(deadline - time.perf_counter(), 0))  # 0: does not block
                except queue.Empty:
                    break
                if nxt is _STOP:
                    held = nxt
                    break
                n = self._rows(nxt[0])
                if size + n > self.max_rows:
                    held = nxt
                    break
                batch.append(nxt)
                size += n
            live = [b for b in batch if not b[1].done()]  # done: cancelled by its caller
            self.dropped += len(batch) - len(live)
            if live:
                self._score_batch(live, sum(self._rows(b[0]) for b in live))
        self._fail_queued()

    def _score_batch(self, batch: list, rows: int) -> None:
        started = self._busy_since = time.perf_counter()
        try:
            results = list(self._score([item for item, _, _, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"score returned {len(results)} results for {len(batch)} requests")
            outcome = [(future, result, None) for (_, future, _, _), result in zip(batch, results)]
        except Exception as err:  # noqa: BLE001 - every request of the batch gets it
            outcome = [(future, None, err) for _, future, _, _ in batch]
        finally:
            self._busy_since = None
        self.batches += 1
        stats = (rows, started - min(queued for _, _, _, queued in batch), time.perf_counter() - started)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for (_, _, loop, _), done in zip(batch, outcome):
            by_loop.setdefault(loop, []).append(done)
        hook = self._report if self._on_batch is not None else None
        for loop, done in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, done, hook, stats)
            except RuntimeError:  # that loop is closed: nobody is waiting
                pass
            hook = None  # once per batch

    def _report(self, rows: int, queued_s: float, score_s: float) -> None:
        """`on_batch`, on the event loop; a failing hook is logged once and never fails scoring."""
        try:
            self._on_batch(rows, queued_s, score_s)
        except Exception:  # noqa: BLE001 - metrics must not fail requests
            if not self._hook_failed:
                log.exception("on_batch hook failed (logged once; scoring goes on)")
            self._hook_failed = True

    def _fail_queued(self) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not _STOP:
                _, future, loop, _ = entry
                try:
                    loop.call_soon_threadsafe(_deliver, [(future, None, RuntimeError("the scoring thread is stopped"))],
                                              None, None)
                except RuntimeError:
                    pass


def _deliver(done: list, hook: Callable[[int, float, float], None] | None, stats: tuple | None) -> None:
    """On the event loop: each future's result or exception, unless its caller gave up; then the batch's stats."""
    for future, result, err in done:
        if future.done():
            continue
        if err is not None:
            future.set_exception(err)
        else:
            future.set_result(result)
    if hook is not None:
        hook(*stats)
