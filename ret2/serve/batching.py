"""Dynamic batching: concurrent requests coalesced into model batches.

Requests wait in one queue. The collector takes the first waiting request, then keeps taking requests until the batch
holds `max_batch_size` samples or `max_wait` seconds have passed since the first, and encodes each side's samples
(queries, documents) in one call of the model's one-call `encode`, which runs `modeling_ret2.encode_samples`, the
package's one batching engine (sorted by modality and length, `max_batch_size` samples per forward pass). The model
runs in one worker thread, so the event loop keeps reading requests while a batch encodes: what arrives meanwhile forms
the next batch. A request larger than `max_batch_size` is encoded alone, in forward passes of `max_batch_size`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

EncodeFn = Callable[[list, str], np.ndarray]  # (samples, "query" | "document") -> (N, D) float32


@dataclass
class _Pending:
    samples: list
    side: str
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """Coalesces `encode(samples, side)` calls from concurrent requests into batches.

    Args:
        encode: `(samples, side) -> (N, D) float32` embeddings, rows in input order.
        max_batch_size: most samples per batch (and per forward pass).
        max_wait: seconds the first request of a batch waits for others to join it.
    """

    def __init__(self, encode: EncodeFn, max_batch_size: int = 32, max_wait: float = 0.005):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be at least 1")
        if max_wait < 0:
            raise ValueError(f"max_wait={max_wait} must be at least 0 seconds")
        self.encode, self.max_batch_size, self.max_wait = encode, max_batch_size, max_wait
        self.batch_sizes: Counter[int] = Counter()  # samples per batch formed -> how many such batches
        self._queue: asyncio.Queue[_Pending] | None = None
        self._leftover: _Pending | None = None  # taken from the queue, too big to join the last batch
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ret2-encode")

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

    async def submit(self, samples: list, side: str) -> np.ndarray:
        """(len(samples), D) embeddings of `samples`, encoded as `side`, batched with other requests."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started: await start() first")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(samples, side, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        """The next batch: the request left over from the last one (or the next to arrive), and those that join it."""
        first, self._leftover = self._leftover, None
        batch = [first if first is not None else await self._queue.get()]
        count, deadline = len(batch[0].samples), time.monotonic() + self.max_wait
        while count < self.max_batch_size:
            try:
                if self._queue.empty():
                    item = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except asyncio.TimeoutError:
                break
            if count + len(item.samples) > self.max_batch_size:
                self._leftover = item  # starts the next batch
                break
            batch.append(item)
            count += len(item.samples)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            for side in ("query", "document"):
                group = [p for p in batch if p.side == side]
                if not group:
                    continue
                samples = [s for p in group for s in p.samples]
                self.batch_sizes[len(samples)] += 1
                try:
                    embeddings = await loop.run_in_executor(self._executor, self.encode, samples, side)
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
