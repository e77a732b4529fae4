"""Running generations off the event loop: a worker pool behind a bounded queue, with per-request time limits.

The pipelines are CPU/GPU-bound and not meant to be shared between threads, so each worker thread gets its own
pipeline objects (sharing the weights, which inference only reads, but with their own tokenizer and scheduler).
torch releases the GIL while it computes, so the event loop keeps answering (e.g. /health) during generation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Task = Literal["text2image", "img2img", "inpaint"]


class QueueFull(Exception):
    """Every worker is busy and the waiting queue is full."""


class TimedOut(Exception):
    """The request did not finish within its time limit; its work was cancelled."""


class Cancelled(Exception):
    """Raised inside a running generation to stop it at the next step."""


@dataclass
class Job:
    task: Task
    kwargs: dict[str, Any]
    cancel: threading.Event
    postprocess: Callable[[list], Any] | None = None


def pipelines_for_worker(pipeline) -> dict[str, Any]:
    """The three task pipelines on `pipeline`'s weights, with a private tokenizer copy (fast tokenizers are not
    thread-safe) and progress bars off."""
    from ...pipelines import MeissonicImg2ImgPipeline, MeissonicInpaintPipeline, MeissonicPipeline

    components = dict(pipeline.components, tokenizer=copy.deepcopy(pipeline.tokenizer))
    pipelines = {
        "text2image": MeissonicPipeline(**components, **pipeline.settings),
        "img2img": MeissonicImg2ImgPipeline(**components, **pipeline.settings),
        "inpaint": MeissonicInpaintPipeline(**components, **pipeline.settings),
    }
    for pipe in pipelines.values():
        pipe.set_progress_bar_config(disable=True)
    return pipelines


class GenerationService:
    """Runs jobs on `concurrency` worker threads; at most `queue_size` more wait. `timeout` (seconds) counts from
    submission, queue wait included."""

    def __init__(self, pipeline, concurrency: int = 1, queue_size: int = 8, timeout: float = 300.0):
        if concurrency < 1 or queue_size < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, queue_size >= 0 and timeout > 0")
        self.pipeline = pipeline
        self.concurrency, self.queue_size, self.timeout = concurrency, queue_size, timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pending = 0  # submitted and not finished (running or waiting)
        self._running = 0
        self.completed = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="meissonic-worker")

    # ----- bookkeeping --------------------------------------------------------------------------------------------
    def status(self) -> dict[str, int]:
        with self._lock:
            running = self._running
            return {"running": running, "waiting": self._pending - running, "concurrency": self.concurrency,
                    "queue_size": self.queue_size, "completed": self.completed}

    def _release(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending -= 1

    # ----- running ------------------------------------------------------------------------------------------------
    def _pipelines(self) -> dict[str, Any]:
        if not hasattr(self._local, "pipelines"):
            self._local.pipelines = pipelines_for_worker(self.pipeline)
        return self._local.pipelines

    def _run(self, job: Job) -> Any:
        if job.cancel.is_set():
            raise Cancelled()
        with self._lock:
            self._running += 1
        try:
            pipe = self._pipelines()[job.task]
            user_callback = job.kwargs.pop("callback_on_step_end", None)

            def on_step(pipeline, step: int, remaining: int, state: dict) -> dict | None:
                if job.cancel.is_set():
                    raise Cancelled()
                return user_callback(pipeline, step, remaining, state) if user_callback else None

            if job.task == "inpaint" and "extend" in job.kwargs:
                left, right, top, bottom = job.kwargs.pop("extend")
                images = pipe.outpaint(left=left, right=right, top=top, bottom=bottom, callback_on_step_end=on_step,
                                       **job.kwargs).images
            else:
                images = pipe(callback_on_step_end=on_step, **job.kwargs).images
            result = job.postprocess(images) if job.postprocess else images
            with self._lock:
                self.completed += 1
            return result
        finally:
            with self._lock:
                self._running -= 1

    def run_sync(self, task: Task, kwargs: dict[str, Any]) -> list:
        """Run one job in the calling thread (no queue, no time limit): for the web UI and tests."""
        return self._run(Job(task, dict(kwargs), threading.Event()))

    async def submit(self, task: Task, kwargs: dict[str, Any], postprocess: Callable[[list], Any] | None = None,
                     timeout: float | None = None) -> Any:
        """Queue a job and await its result (its images, or `postprocess(images)` computed in the worker).

        Raises QueueFull at once when the queue is full, TimedOut when the time limit passes (the job is then
        cancelled before it starts or at its next decoding step); pipeline errors propagate."""
        with self._lock:
            if self._pending >= self.concurrency + self.queue_size:
                raise QueueFull()
            self._pending += 1
        job = Job(task, dict(kwargs), threading.Event(), postprocess)
        try:
            future = self._executor.submit(self._run, job)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), limit)
        except (asyncio.TimeoutError, TimeoutError):
            job.cancel.set()
            future.cancel()
            raise TimedOut() from None
        except asyncio.CancelledError:  # the client went away
            job.cancel.set()
            future.cancel()
            raise

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting work and wait (bounded) for running jobs."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        while self.status()["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
