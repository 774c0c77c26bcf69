"""Dynamic batching: images from concurrent requests go through one forward pass, run off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More images are waiting than the queue holds; the caller should retry later."""


@dataclass
class _Item:
    x: torch.Tensor  # (C, S, S)
    future: asyncio.Future


class DynamicBatcher:
    """Collects preprocessed images into batches of up to ``max_batch`` and runs ``run_batch`` on them in one
    worker thread, so the event loop keeps accepting requests during a forward pass.

    A batch leaves as soon as it is full, when its first image has waited ``max_wait_ms``, or at once when no
    other request is on its way (:meth:`arriving` counts requests still being decoded), so a lone client pays
    no waiting time. At most ``max_queue`` images wait; :meth:`submit` raises :class:`QueueFull` beyond that.
    :meth:`close` finishes every batch already queued before it returns.
    """

    def __init__(
        self, run_batch: Callable[[torch.Tensor], np.ndarray], max_batch: int, max_wait_ms: float, max_queue: int
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.batches = 0
        self.images = 0
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._arriving = 0
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sedensenet-forward")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def arriving(self) -> Arrival:
        """A context manager around a request's decoding: batches wait for it (up to ``max_wait_ms``) until it
        submits its images or leaves the block."""
        return Arrival(self)

    async def submit(self, images: list[torch.Tensor], arrival: Arrival | None = None) -> list[np.ndarray]:
        """Class probabilities ``(K,)`` for each image ``(C, S, S)``, in order; ``arrival`` ends when the images
        are queued."""
        try:
            if self._closing or self._task is None:
                raise QueueFull("the server is shutting down")
            if len(self._queue) + len(images) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} images are waiting (limit {self.max_queue})")
            loop = asyncio.get_running_loop()
            items = [_Item(x, loop.create_future()) for x in images]
            self._queue.extend(items)
        finally:
            if arrival is not None:
                arrival.end()
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def close(self) -> None:
        """Run every queued batch, then stop the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather_more(loop)
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            batch = [item for item in batch if not item.future.done()]  # a client that went away
            if not batch:
                continue
            try:
                probs = await loop.run_in_executor(self._executor, self.run_batch, torch.stack([i.x for i in batch]))
            except Exception as exc:  # a failed forward pass fails its requests, not the server
                log.error("a batch of %d images failed: %s: %s", len(batch), type(exc).__name__, exc)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            for item, p in zip(batch, probs, strict=True):
                if not item.future.done():
                    item.future.set_result(p)

    async def _gather_more(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait (at most ``max_wait``) for the batch to fill while other requests are still being decoded."""
        deadline = loop.time() + self.max_wait
        while len(self._queue) < self.max_batch and self._arriving > 0 and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return


class Arrival:
    """One request on its way to the queue (see :meth:`DynamicBatcher.arriving`)."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self.batcher = batcher
        self.active = False

    def __enter__(self) -> Arrival:
        self.active = True
        self.batcher._arriving += 1
        return self

    def end(self) -> None:
        if self.active:
            self.active = False
            self.batcher._arriving -= 1
            self.batcher._wakeup.set()

    def __exit__(self, *exc: object) -> None:
        self.end()
