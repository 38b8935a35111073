"""Gathering the clips of concurrent requests into one forward pass (a Serve replica's model).

Ray Serve's @serve.batch forms the next batch while the model still runs the last one: it closes
a batch `batch_wait_timeout_s` after its first request with whatever came by then and queues it
for the model, so under load batches stay small (mean 2.1 with 8 requests in flight and room for
8), and a lone request always pays the timeout. The Batcher forms a batch only when the model is
free, and it knows which requests are still on their way (receiving their upload, decoding):

- when the model is free, the queued clips go as one batch of up to `max_batch` as soon as the
  batch is full or none of the requests that were on their way when its first clip was queued
  still is: a lone request never waits, and a batch never waits for requests that came after;
- it waits for those at most `wait_s` after its first clip was queued;
- clips that come while the model runs queue for the next batch (continuous batching).

The model runs in one thread of its own, one batch at a time; the event loop goes on receiving
and decoding meanwhile. Nothing here imports Ray.

    batcher = Batcher(predict_many, max_batch=8, wait_s=0.01)
    with batcher.expect() as ticket:       # this request is on its way
        clip = await decode(...)           # (an error here: it is no longer expected)
        row = await ticket.submit(clip)    # queued; answered with its batch
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("cg_ray.serve")

# Why a batch was closed, as counted in Batcher.stats()["batches_closed"].
FULL, NONE_COMING, WAIT_CAP = "full", "none_coming", "wait_cap"


@dataclass
class _Queued:
    item: Any
    future: asyncio.Future
    horizon: int
    """The last ticket issued when this item was queued: a batch it leads waits for no later one."""
    since: float = field(default_factory=time.monotonic)


class Ticket:
    """One request on its way to the batcher: counted as coming until it submits or leaves."""

    def __init__(self, batcher: Batcher, number: int):
        self._batcher, self.number = batcher, number

    async def submit(self, item: Any) -> Any:
        """Queue `item` for the next batch; its result once the batch has run."""
        return await self._batcher._submit(self.number, item)


class Batcher:
    """Runs `run(items) -> results` (one result per item, in order) on batches of items."""

    def __init__(
        self,
        run: Callable[[list], list],
        max_batch: int,
        wait_s: float,
        on_batch: Callable[[int, float, str], None] | None = None,
    ):
        """`on_batch(size, waited_s, reason)` is told of every batch before it runs (metrics)."""
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch {max_batch} must be >= 1 and wait_s {wait_s} >= 0")
        self.run, self.max_batch, self.wait_s, self.on_batch = run, max_batch, wait_s, on_batch
        self._queue: collections.deque[_Queued] = collections.deque()
        self._coming: set[int] = set()  # the numbers of the tickets on their way
        self._issued = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._model_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cg_ray-model")
        self.sizes: collections.Counter[int] = collections.Counter()
        self.closed: collections.Counter[str] = collections.Counter()
        self.waited: collections.Counter[str] = collections.Counter()  # seconds, by why closed

    @contextmanager
    def expect(self) -> Iterator[Ticket]:
        """Count a request as on its way to the batcher for as long as the block runs or until
        it submits."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        self._issued += 1
        number = self._issued
        self._coming.add(number)
        try:
            yield Ticket(self, number)
        finally:
            self._arrived(number)

    async def _submit(self, number: int, item: Any) -> Any:
        if number not in self._coming:
            raise RuntimeError("a ticket submits once, inside its expect() block")
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(item, future, self._issued))
        self._arrived(number)
        return await future

    def _arrived(self, number: int) -> None:
        """The request `number` is no longer on its way: it queued its item, or left."""
        if number in self._coming:
            self._coming.discard(number)
            self._changed.set()

    def stats(self) -> dict:
        """Batches run so far by size and by why they closed, how long their first clips waited
        in all (ms, by why they closed); requests coming and queued now."""
        return {
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
            "batches_closed": dict(sorted(self.closed.items())),
            "waited_ms": {k: round(1000 * v, 3) for k, v in sorted(self.waited.items())},
            "coming": len(self._coming),
            "queued": len(self._queue),
        }

    async def _wait(self, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _drop_cancelled(self) -> None:
        # A request whose client went away is cancelled by Serve: its clip is not run.
        if any(q.future.done() for q in self._queue):
            self._queue = collections.deque(q for q in self._queue if not q.future.done())

    async def _next_batch(self) -> tuple[list[_Queued], str]:
        while True:
            self._changed.clear()
            self._drop_cancelled()
            if self._queue:
                first = self._queue[0]
                left = first.since + self.wait_s - time.monotonic()
                if len(self._queue) >= self.max_batch:
                    reason = FULL
                elif not any(number <= first.horizon for number in self._coming):
                    reason = NONE_COMING
                elif left <= 0:
                    reason = WAIT_CAP
                else:
                    await self._wait(left)
                    continue
                size = min(self.max_batch, len(self._queue))
                return [self._queue.popleft() for _ in range(size)], reason
            await self._wait()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, reason = await self._next_batch()
            self.sizes[len(batch)] += 1
            self.closed[reason] += 1
            waited = time.monotonic() - batch[0].since
            self.waited[reason] += waited
            try:
                if self.on_batch:
                    self.on_batch(len(batch), waited, reason)
                results = await loop.run_in_executor(self._model_thread, self.run, [q.item for q in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the model answered {len(results)} results for {len(batch)} items")
            except Exception as exc:  # every request of the batch gets the error, the loop goes on
                log.exception("a batch of %d failed", len(batch))
                for q in batch:
                    if not q.future.done():
                        q.future.set_exception(exc)
                continue
            for q, result in zip(batch, results):
                if not q.future.done():
                    q.future.set_result(result)
