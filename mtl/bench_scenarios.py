"""``mtl bench`` scenarios after MLPerf's: how frames reach the runtime and how their latency is counted.

- **single-stream** (``mtl.bench.time_backends``): one frame at a time, back to back; a query's latency is
  from handing the frame to ``Pipeline.run_frame`` to getting its ``Result``. Backends are timed
  interleaved in rounds.
- **constant-stream** (``constant_stream``): frames arrive at ``rate_hz`` on a schedule fixed before the
  run starts (arrival i at t0 + i / rate), whether or not the runtime is done with the one before. They are
  *served* (``SERVE``) through ``Pipeline.run_stream`` (``stream``: the next frame is preprocessed while one
  is in inference: throughput) or one at a time through ``Pipeline.run_frame`` in arrival order (``frame``:
  every frame gets all cores, a frame arriving while one runs waits for it: latency at a sensor rate). A
  query's latency is from its scheduled arrival to its ``Result``, so
  the time a frame waits for the runtime counts. A frame is *late* when the runtime could start on it only
  more than ``LATE_MS`` after its arrival (it queued behind the previous one).
- **find-max-rate** (``find_max_rate``): the highest rate whose constant-stream p99.9 stays under the
  deadline, by bisection over short probe runs.
- **offline** (``offline``): every frame available at once; ``Pipeline.run_stream`` (pre / postprocess of
  one frame overlapped with the inference of another, ``sessions`` inference sessions) against
  ``run_frame`` back to back (the single-stream rate), interleaved in rounds: frames/s of both and the ratio.

Percentiles: nearest rank (``mtl.bench_stats``).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from .bench_stats import latency_stats, stats
from .runtime.frames import RuntimeFrame
from .runtime.pipeline import Pipeline

LATE_MS = 1.0               # a frame the runtime starts on later than this after its arrival queued behind another
START_DELAY_S = 0.05        # the first arrival is this far in the future when the schedule is fixed
SERVE = ("stream", "frame")  # how constant-stream arrivals reach the runtime: run_stream / run_frame in turn


def arrival_schedule(n: int, rate_hz: float, t0: float) -> np.ndarray:
    """(n,) arrival times in seconds (``time.perf_counter`` clock): t0 + i / rate_hz."""
    return t0 + np.arange(n, dtype=np.float64) / float(rate_hz)


def _scheduled(frames: list[RuntimeFrame], arrivals: np.ndarray, pulled: list[float]) -> Iterator[RuntimeFrame]:
    """Frame i no earlier than its arrival; records when the runtime actually took each one."""
    for i, t in enumerate(arrivals):
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        pulled.append(time.perf_counter())
        yield frames[i % len(frames)]


def _served(pipe: Pipeline, frames: Iterator[RuntimeFrame], serve: str, sessions: int) -> Iterator:
    """Results of ``frames`` in order: through ``run_stream`` (``stream``) or ``run_frame`` one at a time."""
    if serve == "stream":
        return pipe.run_stream(frames, keep_outputs=False, sessions=sessions)
    return (pipe.run_frame(f, keep_outputs=False) for f in frames)


def _stage_stats(per_stage: dict[str, list[float]]) -> dict:
    return {k: stats(v) for k, v in per_stage.items()}


def constant_stream(pipe: Pipeline, frames: list[RuntimeFrame], queries: int, rate_hz: float, deadline_ms: float,
                    sessions: int = 1, tick: Callable[[], None] | None = None, serve: str = "stream") -> dict:
    """``queries`` frames at ``rate_hz`` on a fixed schedule, served by ``serve`` (``SERVE``); see the module
    doc."""
    arrivals = arrival_schedule(queries, rate_hz, time.perf_counter() + START_DELAY_S)
    pulled: list[float] = []
    done = np.empty(queries, np.float64)
    per_stage: dict[str, list[float]] = {}
    for i, res in enumerate(_served(pipe, _scheduled(frames, arrivals, pulled), serve, sessions)):
        done[i] = time.perf_counter()
        for k, v in res.timings_ms.items():
            per_stage.setdefault(k, []).append(v)
        if tick:
            tick()
    latency = (done - arrivals) * 1e3
    start_delay = (np.asarray(pulled) - arrivals) * 1e3
    over = int((latency > deadline_ms).sum())
    late = start_delay > LATE_MS
    return {"rate_hz": float(rate_hz), "deadline_ms": float(deadline_ms), "queries": queries, "serve": serve,
            "sessions": sessions if serve == "stream" else 1,
            "latency": latency_stats(latency), "latencies_ms": np.round(latency, 3).tolist(),
            "over_deadline": {"count": over, "share": round(over / queries, 6)},
            "late_frames": {"count": int(late.sum()), "threshold_ms": LATE_MS,
                            "max_start_delay_ms": round(float(start_delay.max()), 4)},
            "achieved_rate_hz": round((queries - 1) / (done[-1] - done[0]), 4) if queries > 1 else None,
            "stages": _stage_stats(per_stage)}


def search_max_rate(passes: Callable[[float], bool], start_hz: float, steps: int = 8, tolerance: float = 0.03
                    ) -> tuple[float | None, float | None, list[float]]:
    """Bracket and bisect the highest passing rate: from ``start_hz`` grow (x1.25) while ``passes`` and shrink
    (/1.25) while not, until a passing rate ``lo`` and a failing rate ``hi`` bracket it; then bisect until
    (hi - lo) / hi <= ``tolerance`` or ``steps`` probes ran. Returns (lo, hi, the rates probed in order)."""
    lo = hi = None
    rate, probed = float(start_hz), []
    for _ in range(steps):
        probed.append(rate)
        if passes(rate):
            lo = rate
        else:
            hi = rate
        if lo is not None and hi is not None:
            if (hi - lo) / hi <= tolerance:
                break
            rate = (lo + hi) / 2
        else:
            rate = rate * 1.25 if hi is None else rate / 1.25
    return lo, hi, probed


def find_max_rate(pipe: Pipeline, frames: list[RuntimeFrame], deadline_ms: float, probe_queries: int,
                  start_hz: float, sessions: int = 1, steps: int = 8, tolerance: float = 0.03,
                  tick: Callable[[], None] | None = None, serve: str = "stream") -> dict:
    """The highest rate whose p99.9 over ``probe_queries`` constant-stream queries is under ``deadline_ms``
    (``search_max_rate`` from ``start_hz``). ``max_rate_hz`` is the best passing rate (None if none passed)."""
    probes: list[dict] = []

    def passes(rate: float) -> bool:
        r = constant_stream(pipe, frames, probe_queries, rate, deadline_ms, sessions, tick, serve)
        ok = r["latency"]["p99.9"] < deadline_ms
        probes.append({"rate_hz": round(rate, 3), "p50": r["latency"]["p50"], "p99.9": r["latency"]["p99.9"],
                       "max": r["latency"]["max"], "late_frames": r["late_frames"]["count"], "passed": ok})
        return ok

    lo, _, _ = search_max_rate(passes, start_hz, steps, tolerance)
    return {"max_rate_hz": None if lo is None else round(lo, 3), "deadline_ms": float(deadline_ms),
            "probe_queries": probe_queries, "criterion": f"p99.9 < {deadline_ms:g} ms over {probe_queries} queries",
            "probes": probes}


def offline(pipe: Pipeline, frames: list[RuntimeFrame], queries: int, rounds: int = 3, sessions: int = 1,
            tick: Callable[[], None] | None = None) -> dict:
    """frames/s of ``run_stream`` (all frames available) and of ``run_frame`` back to back, ``queries`` frames
    each, interleaved in ``rounds`` so that machine drift hits both alike."""
    rounds = max(1, min(rounds, queries))
    wall, cpu = {"stream": 0.0, "single": 0.0}, {"stream": 0.0, "single": 0.0}
    per_stage: dict[str, list[float]] = {}
    done = 0
    for r in range(rounds):
        n = queries * (r + 1) // rounds - queries * r // rounds
        batch = [frames[i % len(frames)] for i in range(done, done + n)]
        t0, c0 = time.perf_counter(), time.process_time()
        for f in batch:
            pipe.run_frame(f, keep_outputs=False)
            if tick:
                tick()
        t1, c1 = time.perf_counter(), time.process_time()
        for res in pipe.run_stream(batch, keep_outputs=False, sessions=sessions):
            for k, v in res.timings_ms.items():
                per_stage.setdefault(k, []).append(v)
            if tick:
                tick()
        wall["single"] += t1 - t0
        wall["stream"] += time.perf_counter() - t1
        cpu["single"] += c1 - c0
        cpu["stream"] += time.process_time() - c1
        done += n
    fps = {k: queries / v for k, v in wall.items()}
    # cores this process kept busy (CPU time of all its threads / wall time): back to back, the idle share of the
    # cores bounds what overlapping can win; a stream at (about) every core and no faster is CPU-bound
    busy = {k: round(cpu[k] / wall[k], 3) for k in wall}
    return {"queries": queries, "rounds": rounds, "sessions": sessions,
            "stream_fps": round(fps["stream"], 3), "single_stream_fps": round(fps["single"], 3),
            "ratio": round(fps["stream"] / fps["single"], 4),
            "busy_cores": busy, "stream_latency": latency_stats(per_stage.get("total", [])),
            "latencies_ms": np.round(per_stage.get("total", []), 3).tolist(),
            "stages": _stage_stats(per_stage)}


__all__ = ["LATE_MS", "arrival_schedule", "constant_stream", "find_max_rate", "offline", "search_max_rate"]
