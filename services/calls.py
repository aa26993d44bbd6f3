"""Model calls in a bounded thread pool, each answered within a deadline.

A worker's event loop must stay free for other requests and for ``/readyz``, so a call that
can take long (any request that runs a team's hooks, and large bodies) runs in one of the
worker's ``serving.max_model_calls`` threads. The caller gets its answer, or after
``serving.model_timeout_s`` a 503 ``model_timeout``. Python cannot kill a thread, so a call past
its deadline keeps its thread until it returns: it still counts against the bound, and when every
thread is taken the next call is refused at once with a 503 ``overloaded`` instead of waiting
behind the stuck ones. Requests never queue: admitted means a thread is free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from services.errors import ModelTimeoutError, OverloadedError, problem

T = TypeVar("T")


class ModelCalls:
    """At most ``limit`` model calls at once, each answered or refused within ``timeout_s``."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        # Threads start on first use, so creating this at import (in BentoML's main process
        # too) costs nothing.
        self._executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="bentoship-model")
        self._lock = threading.Lock()
        self._busy = 0  # calls submitted and not yet returned, past their deadline included

    @property
    def busy(self) -> int:
        return self._busy

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` in a pool thread; ``OverloadedError`` when none is
        free, ``ModelTimeoutError`` when it has not returned within the deadline."""
        with self._lock:
            if self._busy >= self.limit:
                raise OverloadedError("every model-call slot is taken", [problem(
                    None, None,
                    f"{self.limit} model calls are running in this worker (some may be past "
                    f"their {self.timeout_s:g}s deadline); retry later or elsewhere",
                )])
            self._busy += 1
        try:
            future = self._executor.submit(function, *args, **kwargs)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            raise ModelTimeoutError("model call timed out", [problem(
                None, None,
                f"the model (hooks included) did not answer within {self.timeout_s:g}s",
            )]) from None

    def _release(self, _: Future[Any] | None) -> None:
        with self._lock:
            self._busy -= 1
