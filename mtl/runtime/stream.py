"""``Pipeline.run_stream``: frames through preprocess -> inference -> postprocess as a pipeline of threads, so
the numpy stages of one frame overlap the inference of another. Torch-free.

    pre thread        pulls the next frame from the iterable and preprocesses it    -> to_infer (1 slot)
    inference         one thread per session (the pipeline's backend + clones)       -> to_post  (1 slot)
    post thread       postprocess, in frame order                                    -> done     (2 slots)
    caller            the generator: yields each Result as soon as it is done, in input order

The stages call the pipeline's own ``preprocess`` / ``infer`` / ``finish`` on the same inputs, so every
Result equals ``run_frame``'s (tests/test_stream.py). The bounded queues keep at most a few frames in flight:
when frames arrive slower than they are processed (a sensor), each one goes straight through and nothing
waits; when they are all available (offline), the stages stay busy. numpy and onnxruntime release the GIL
in their kernels, which is what lets the threads overlap.

A failure anywhere (a bad frame, a backend error, the iterable raising) travels down the pipeline as that
frame's item and is raised by the generator at its position, after the results before it; then every stage
stops. Closing the generator early (``break``) stops the threads and joins them.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MtlError
from .backends import Backend
from .frames import RuntimeFrame
from .postprocess import Result
from .preprocess import StageTimer

_POLL_S = 0.05          # how often a blocked stage looks at the stop flag (only matters when stopping)


@dataclass
class _Item:
    """One frame on its way through the stages (or the error that stopped it)."""

    seq: int
    frame: RuntimeFrame | None = None
    t0: float = 0.0
    timer: StageTimer = field(default_factory=StageTimer)
    feeds: dict[str, np.ndarray] | None = None
    info: dict[str, Any] | None = None
    image: np.ndarray | None = None
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


@dataclass
class _End:
    """No more frames: ``count`` were sent."""

    count: int


class _Stop(Exception):
    pass


class _Stages:
    """The queues, the stop flag and the thread bodies of one ``run_stream`` call."""

    def __init__(self, pipe: Any, backends: list[Backend], keep_image: bool, keep_outputs: bool):
        # pipe: the calling ``Pipeline`` (not imported here: pipeline.py imports this module)
        self.pipe, self.backends = pipe, backends
        self.keep_image, self.keep_outputs = keep_image, keep_outputs
        self.to_infer: queue.Queue = queue.Queue(1)
        self.to_post: queue.Queue = queue.Queue(1)
        self.done: queue.Queue = queue.Queue(2)
        self.stop = threading.Event()

    def put(self, q: queue.Queue, item: Any) -> None:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue
        raise _Stop

    def get(self, q: queue.Queue) -> Any:
        while not self.stop.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        raise _Stop

    def preprocess(self, frames: Iterable[RuntimeFrame]) -> None:
        seq = 0
        try:
            it = iter(frames)
            while not self.stop.is_set():
                item = _Item(seq)
                try:
                    frame = next(it)
                except StopIteration:
                    break
                except Exception as e:          # noqa: BLE001 - the iterable's error, raised at its position
                    item.error = e
                else:
                    item.frame, item.t0 = frame, time.perf_counter()
                    try:
                        item.feeds, item.info, item.image = self.pipe.preprocess(frame, item.timer, self.keep_image)
                    except Exception as e:      # noqa: BLE001 - raised by the generator at this frame
                        item.error = e
                self.put(self.to_infer, item)
                seq += 1
                if item.error is not None:
                    break
            for _ in self.backends:
                self.put(self.to_infer, _End(seq))
        except _Stop:
            pass

    def infer(self, backend: Backend) -> None:
        try:
            while True:
                item = self.get(self.to_infer)
                if isinstance(item, _Item) and item.error is None:
                    try:
                        item.outputs = self.pipe.infer(item.feeds, item.timer, backend)
                    except Exception as e:      # noqa: BLE001
                        item.error = e
                    item.feeds = None
                self.put(self.to_post, item)
                if isinstance(item, _End):
                    return
        except _Stop:
            pass

    def postprocess(self) -> None:
        """Finish the frames in input order (several sessions may complete them out of order)."""
        pending: dict[int, _Item] = {}
        nxt, ends, count = 0, 0, None
        try:
            while ends < len(self.backends) or (count is not None and nxt < count):
                item = self.get(self.to_post)
                if isinstance(item, _End):
                    ends, count = ends + 1, item.count
                    continue
                pending[item.seq] = item
                while nxt in pending:
                    self.put(self.done, self._finish(pending.pop(nxt)))
                    nxt += 1
            self.put(self.done, _End(nxt))
        except _Stop:
            pass

    def _finish(self, item: _Item) -> Result | BaseException:
        if item.error is not None:
            return item.error
        try:
            return self.pipe.finish(item.frame, item.outputs, item.timer, item.t0, item.info, item.image,
                                    self.keep_outputs)
        except Exception as e:                  # noqa: BLE001
            return e


def stream_results(pipe: Any, frames: Iterable[RuntimeFrame], backends: list[Backend], keep_image: bool,
                   keep_outputs: bool) -> Iterator[Result]:
    """The generator behind ``Pipeline.run_stream`` (see there)."""
    st = _Stages(pipe, backends, keep_image, keep_outputs)
    threads = [threading.Thread(target=st.preprocess, args=(frames,), name="mtl-stream-pre", daemon=True),
               *[threading.Thread(target=st.infer, args=(b,), name=f"mtl-stream-infer{i}", daemon=True)
                 for i, b in enumerate(backends)],
               threading.Thread(target=st.postprocess, name="mtl-stream-post", daemon=True)]
    for t in threads:
        t.start()
    try:
        while True:
            try:
                out = st.done.get(timeout=_POLL_S)
            except queue.Empty:
                if not any(t.is_alive() for t in threads):
                    raise MtlError(None, "run_stream: the stage threads ended without a result") from None
                continue
            if isinstance(out, _End):
                return
            if isinstance(out, BaseException):
                raise out
            yield out
    finally:
        st.stop.set()
        for t in threads:
            t.join()


__all__ = ["stream_results"]
