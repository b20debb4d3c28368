"""Dynamic batching: concurrent requests coalesced into model batches.

Requests wait in one queue. The collector takes the first waiting request, then keeps taking requests until the batch
holds `max_batch_size` samples or `max_wait` seconds have passed since the first, and encodes each side's samples
(queries, documents) in one call of the model's one-call `encode`, which runs `modeling_ret2.encode_samples`, the
package's one batching engine (sorted by modality and length, `max_batch_size` samples per forward pass). The model
runs in one worker thread, so the event loop keeps reading requests while a batch encodes: what arrives meanwhile forms
the next batch. A request larger than `max_batch_size` is encoded alone, in forward passes of `max_batch_size`.

Overload: the queue holds at most `max_queue` inputs; a request that would pass it is refused at once (`Overloaded`,
429) rather than queued. A request given a deadline that passes before it is answered raises `DeadlineExceeded` (503),
and one whose client has gone raises `ClientGone`: either way its inputs are dropped if they are still queued, so no
batch encodes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from .metrics import Metrics

EncodeFn = Callable[[list, str], np.ndarray]  # (samples, "query" | "document") -> (N, D) float32


class Overloaded(Exception):
    """The queue is full: the request is refused without being queued; `retry_after` is the seconds to wait."""

    def __init__(self, inputs: int, queued: int, max_queue: int, retry_after: int):
        super().__init__(f"the server is over capacity: {queued} inputs are queued and this request's {inputs} would "
                         f"pass the limit max_queue={max_queue}; retry after {retry_after} s")  # fmt: skip
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed before its embeddings were ready."""


class ClientGone(Exception):
    """The request's client closed its connection before its embeddings were ready."""


@dataclass
class _Pending:
    samples: list
    side: str
    future: asyncio.Future = field(repr=False)
    queued_at: float = 0.0


class DynamicBatcher:
    """Coalesces `encode(samples, side)` calls from concurrent requests into batches.

    Args:
        encode: `(samples, side) -> (N, D) float32` embeddings, rows in input order.
        max_batch_size: most samples per batch (and per forward pass).
        max_wait: seconds the first request of a batch waits for others to join it.
        max_queue: most inputs waiting in the queue (None: no limit); past it, `submit` raises `Overloaded`.
        metrics: the server's `Metrics`, or None.
    """

    def __init__(self, encode: EncodeFn, max_batch_size: int = 32, max_wait: float = 0.005,
                 max_queue: int | None = None, metrics: Metrics | None = None):  # fmt: skip
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be at least 1")
        if max_wait < 0:
            raise ValueError(f"max_wait={max_wait} must be at least 0 seconds")
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue={max_queue} must be at least 1 input (or None: no limit)")
        self.encode, self.max_batch_size, self.max_wait = encode, max_batch_size, max_wait
        self.max_queue, self.metrics = max_queue, metrics
        self.batch_sizes: Counter[int] = Counter()  # samples per batch formed -> how many such batches
        self.queued = 0  # inputs in the queue (and the leftover), not yet taken into a batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._leftover: _Pending | None = None  # taken from the queue, too big to join the last batch
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ret2-encode")
        self._rate = 0.0  # inputs per second of recent batches (a moving average): for Retry-After

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Encode what is still queued, then stop (the server stops only after its open requests are answered)."""
        if self._task is not None:
            await self._queue.join()  # every request taken from the queue is marked done once answered
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def check_room(self, inputs: int) -> None:
        """Raise `Overloaded` when `inputs` more would pass `max_queue` (a request can be refused before it is read)."""
        if self.max_queue is not None and self.queued and self.queued + inputs > self.max_queue:
            # an empty queue takes any request, even one larger than max_queue: it could never fit otherwise
            if self.metrics is not None:
                self.metrics.shed.labels("queue_full").inc(inputs)
            raise Overloaded(inputs, self.queued, self.max_queue, self.retry_after())

    def retry_after(self) -> int:
        """Whole seconds a refused client should wait: the time to encode the queue at the recent rate, at least 1."""
        rate = self._rate
        return max(1, int(-(-self.queued // rate)) if rate > 0 else 1)

    async def submit(self, samples: list, side: str, deadline: float | None = None,
                     gone: Awaitable | None = None) -> np.ndarray:  # fmt: skip
        """(len(samples), D) embeddings of `samples`, encoded as `side`, batched with other requests.

        Raises `Overloaded` when the queue has no room; with `deadline` (a `time.monotonic()` time), `DeadlineExceeded`
        once it passes; with `gone` (an awaitable that completes when the client disconnects), `ClientGone`. In both
        cases inputs still queued are dropped."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started: await start() first")
        self.check_room(len(samples))
        future = asyncio.get_running_loop().create_future()
        self.queued += len(samples)
        self._set_gauges(len(samples))
        self._queue.put_nowait(_Pending(samples, side, future, time.monotonic()))
        watcher = asyncio.ensure_future(gone) if gone is not None else None
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait([future] + ([watcher] if watcher else []), timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if future in done:
                return future.result()
            reason, error = ("client_gone", ClientGone()) if watcher in done else ("deadline", DeadlineExceeded())
            if future.cancel() and self.metrics is not None:  # still queued or encoding: its answer is not awaited
                self.metrics.shed.labels(reason).inc(len(samples))
            raise error
        finally:
            if watcher is not None:
                watcher.cancel()
            if not future.done():
                future.cancel()  # the request's task was cancelled: nobody waits for the answer
            self._set_gauges(-len(samples))

    def _set_gauges(self, in_flight: int = 0) -> None:
        if self.metrics is not None:
            self.metrics.queue_inputs.set(self.queued)
            self.metrics.inputs_in_flight.inc(in_flight)

    async def _take(self, timeout: float | None = None) -> _Pending:
        """The next queued request (`asyncio.TimeoutError` after `timeout`); its inputs leave the queue's count."""
        if timeout is None:
            item = await self._queue.get()
        elif self._queue.empty():
            item = await asyncio.wait_for(self._queue.get(), timeout)
        else:
            item = self._queue.get_nowait()
        self.queued -= len(item.samples)
        self._set_gauges()
        return item

    async def _collect(self) -> list[_Pending]:
        """The next batch: the request left over from the last one (or the next to arrive), and those that join it.
        Requests whose future is done (their client gone, their deadline passed) are dropped here, not encoded."""
        batch, count, deadline = [], 0, None
        first, self._leftover = self._leftover, None
        if first is not None:
            self.queued -= len(first.samples)
            self._set_gauges()
            if first.future.done():
                self._queue.task_done()
            else:
                batch, count, deadline = [first], len(first.samples), time.monotonic() + self.max_wait
        while count < self.max_batch_size:
            try:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                item = await self._take(wait)
            except asyncio.TimeoutError:
                break
            if item.future.done():
                self._queue.task_done()
                continue
            if batch and count + len(item.samples) > self.max_batch_size:
                self._leftover = item  # starts the next batch; until then still counted as queued
                self.queued += len(item.samples)
                self._set_gauges()
                break
            batch.append(item)
            count += len(item.samples)
            if deadline is None:
                deadline = time.monotonic() + self.max_wait
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            for side in ("query", "document"):
                group = [p for p in batch if p.side == side and not p.future.done()]
                if not group:
                    continue
                samples = [s for p in group for s in p.samples]
                self.batch_sizes[len(samples)] += 1
                started = time.monotonic()
                if self.metrics is not None:
                    self.metrics.batch_inputs.observe(len(samples))
                    for p in group:
                        self.metrics.queue_wait.observe(started - p.queued_at)
                try:
                    embeddings = await loop.run_in_executor(self._executor, self.encode, samples, side)
                    self._rate = 0.8 * self._rate + 0.2 * len(samples) / max(time.monotonic() - started, 1e-6)
                    if self.metrics is not None:
                        self.metrics.inputs_encoded.inc(len(samples))
                except Exception as err:  # noqa: BLE001 - the requests of the batch get the error, the server lives on
                    for p in group:
                        if not p.future.done():
                            p.future.set_exception(err)
                    continue
                start = 0
                for p in group:
                    if not p.future.done():  # a client that went away cancelled its future
                        p.future.set_result(embeddings[start : start + len(p.samples)])
                    start += len(p.samples)
            for _ in batch:
                self._queue.task_done()
