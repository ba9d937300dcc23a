"""One generation at a time: a worker thread runs the page's requests in order of arrival.

Torch work from several requests at once would share the same cores and each would finish
later than alone; one after another, the first request is as fast as it can be and the page
shows everyone else where they stand (:meth:`GenerationQueue.status`, :meth:`position`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

__all__ = ["GenerationQueue", "QueueFull"]


class QueueFull(Exception):
    """The queue holds its limit of waiting requests."""


@dataclass(eq=False)
class _Entry:
    run: Callable[[], object]
    label: str
    future: Future = field(default_factory=Future)


class GenerationQueue:
    """A FIFO of generation jobs run by one worker thread; at most ``max_waiting`` wait."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self._jobs: queue.Queue[_Entry | None] = queue.Queue()
        self._waiting: list[_Entry] = []
        self._running: _Entry | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="ardiff-generation", daemon=True)
        self._thread.start()

    def submit(self, run: Callable[[], object], label: str) -> Future:
        """Queue ``run`` (called on the worker thread); its future holds the result or the error."""
        with self._lock:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"the queue is full ({len(self._waiting)} requests waiting, the limit of this "
                                f"server); try again when one has finished")
            entry = _Entry(run, label)
            self._waiting.append(entry)
        self._jobs.put(entry)
        return entry.future

    def position(self, future: Future) -> int | None:
        """0 while ``future``'s job runs, k while k jobs are ahead of it, None once it is done."""
        with self._lock:
            if self._running is not None and self._running.future is future:
                return 0
            for k, entry in enumerate(self._waiting):
                if entry.future is future:
                    return k + (self._running is not None)
        return None

    def cancel(self, future: Future) -> bool:
        """Take a waiting job out of the queue (a page that went away); False once it runs."""
        with self._lock:
            for entry in self._waiting:
                if entry.future is future and future.cancel():
                    self._waiting.remove(entry)
                    return True
        return False

    def status(self) -> dict:
        with self._lock:
            return {"running": self._running.label if self._running else None, "waiting": len(self._waiting)}

    def close(self, timeout: float | None = None) -> None:
        """Let the job under way finish, cancel the waiting ones, stop the worker."""
        with self._lock:
            for entry in self._waiting:
                entry.future.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _work(self) -> None:
        while (entry := self._jobs.get()) is not None:
            with self._lock:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                if not entry.future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                self._running = entry
            try:
                entry.future.set_result(entry.run())
            except BaseException as e:  # the job's error belongs to its request, not to the worker
                entry.future.set_exception(e)
            finally:
                with self._lock:
                    self._running = None
