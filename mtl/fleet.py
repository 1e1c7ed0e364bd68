"""Running mtl's batch jobs on a Ray cluster (``--ray ADDRESS|local``; the optional extra ``[fleet]``). Torch-free;
``ray`` is imported only inside these functions, so mtl works (and refuses ``--ray`` with one line) without it.

- ``ray_cluster(address, workers)`` connects for the duration of a job: ``local`` starts a private cluster of
  ``workers`` CPUs in this process (stopped at the end); an address joins an existing cluster (``host:port`` of
  ``ray start --head``, ``auto``, or ``ray://host:10001`` for Ray Client). A process already connected to Ray
  (``ray.is_initialized()``, e.g. a notebook or a test) keeps its connection.
- ``run_tasks`` keeps at most ``window`` tasks in flight and hands each result to the caller as it completes
  (progress, records); anything that stops the driver (an error, Ctrl-C, SIGTERM) cancels the rest.
- Tasks run through ``call_safely``: mtl's one-line errors cross the process boundary as plain tuples (an
  ``MtlError`` does not survive pickling) and are raised again on the driver with their own type and exit code.
- A worker that dies (SIGKILL, OOM killer, a lost node) is retried by Ray ``MAX_RETRIES`` times; a task that
  still fails stops the job with ``BackendUnavailableError`` (exit 6), its finished shards kept for a rerun.

Workers read and write the paths the driver names: inputs and outputs must be on a file system every node mounts
at the same path (README, "Running on a Ray cluster"). Worker processes get the driver's ``MTL_MAX_*`` caps;
the driver's write-point fault injection (``MTL_FAULT_AT_WRITE``) stays on the driver, and ``MTL_FAULT_SHARD=k``
(tests) makes the first attempt of shard / chunk task ``k`` SIGKILL its worker, a real fault Ray must recover from.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import errors
from .errors import BackendUnavailableError, MtlError

INSTALL_HINT = "pip install 'mtl[fleet]'"
MAX_RETRIES = 3                   # attempts after the first when a worker process dies
FAULT_SHARD_ENV = "MTL_FAULT_SHARD"
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> Any:
    """The ``ray`` module, or one line naming the extra that installs it (exit 6)."""
    try:
        import ray
    except ImportError:
        raise BackendUnavailableError(None, f"--ray needs the ray package, which is not installed: {INSTALL_HINT}"
                                      ) from None
    return ray


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def _check_reachable(address: str) -> None:
    """A plain ``host:port`` that nothing answers: one line now, instead of ray.init retrying for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "//" in address:
        return                                        # "auto", "ray://...": ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise BackendUnavailableError(address, f"no Ray cluster answers at this address ({e.strerror or e}); start "
                                               "one with `ray start --head` and pass the address it prints") from None


@contextmanager
def ray_cluster(address: str, workers: int | None) -> Iterator[int]:
    """Connect to Ray for one job; yields how many tasks to keep in flight (``workers``, else ``local``: the CPUs
    it started, an existing cluster: all its CPUs)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if address == "local":
            workers = workers or default_workers()
            # address="local": always a new cluster (a bare init would join one a stale
            # /tmp/ray/ray_current_cluster names); the object store only carries task arguments and small records
            ray.init(address="local", num_cpus=workers, include_dashboard=False, object_store_memory=256 << 20, **quiet)
        else:
            _check_reachable(address)
            try:
                ray.init(address=address, **quiet)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
                raise BackendUnavailableError(address, f"cannot join the Ray cluster ({_first_line(e)})") from None
        started = True
    try:
        yield workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()


def worker_env() -> dict[str, str]:
    """Environment for task workers: the driver's resource caps, none of its fault injection."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MTL_MAX_")}
    env.update(MTL_FAULT_AT_WRITE="", MTL_FAULT_LOG="", **{FAULT_SHARD_ENV: os.environ.get(FAULT_SHARD_ENV, "")})
    return env


def remote(num_cpus: float = 1) -> Any:
    """``call_safely`` as a Ray task (retried when its worker dies) with ``worker_env``."""
    ray = import_ray()
    return ray.remote(call_safely).options(num_cpus=num_cpus, max_retries=MAX_RETRIES, retry_exceptions=False,
                                           runtime_env={"env_vars": worker_env()})


def call_safely(fn: Callable, *args: Any) -> tuple:
    """Run ``fn(*args)`` in a worker: ``("ok", value)`` or ``("error", type name, path, reason)`` for mtl's
    errors and the environment's refusals (disk full, read-only, ...)."""
    from .io import storage_error

    try:
        return ("ok", fn(*args))
    except MtlError as e:
        return ("error", type(e).__name__, e.path, e.reason)
    except OSError as e:
        err = storage_error(e)
        if err is None:
            raise
        return ("error", "StorageError", err.path, err.reason)


def unwrap(result: tuple) -> Any:
    """The value of a ``call_safely`` result, or its error raised again with its own type."""
    if result[0] == "ok":
        return result[1]
    _, name, path, reason = result
    cls = getattr(errors, name, None)
    raise (cls if isinstance(cls, type) and issubclass(cls, MtlError) else MtlError)(path, reason)


def fault_point(task: int, marker_dir: Path) -> None:
    """Test hook (``MTL_FAULT_SHARD=k``): the first attempt of task ``k`` SIGKILLs its own worker process. A marker
    file in the job's staging folder tells the retry that the fault already happened."""
    if os.environ.get(FAULT_SHARD_ENV) != str(task):
        return
    marker = marker_dir / f".fault-{task}"
    if marker.exists():
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)


def run_tasks(submit: Callable[[Any], Any], items: Iterable, window: int, on_done: Callable[[Any, Any], None],
              what: str) -> None:
    """Submit ``submit(item)`` (an ObjectRef of a ``call_safely`` task) for every item with at most ``window`` in
    flight; ``on_done(item, value)`` runs on this thread in completion order. Any exception cancels what is in
    flight. A task Ray gave up on (its worker died ``MAX_RETRIES + 1`` times) -> ``BackendUnavailableError``."""
    ray = import_ray()
    from ray.exceptions import RayError, RayTaskError

    pending: dict[Any, Any] = {}
    todo, end = iter(items), object()
    try:
        while True:
            while len(pending) < window:           # checked first: a wait that timed out adds nothing
                item = next(todo, end)
                if item is end:
                    break
                pending[submit(item)] = item
            if not pending:
                return
            # a timeout keeps the driver responsive to Ctrl-C / SIGTERM while it waits
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                item = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError:
                    raise                          # a bug in mtl: keep its traceback
                except RayError as e:
                    raise BackendUnavailableError(None, f"ray: {what} {item_label(item)} failed after "
                                                        f"{MAX_RETRIES + 1} attempts ({_first_line(e)}); finished "
                                                        "work is kept: run the same command again to continue"
                                                  ) from None
                on_done(item, unwrap(result))
    finally:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except ValueError:                     # an actor task: the caller stops its actors
                ray.cancel(ref)


def item_label(item: Any) -> str:
    return str(getattr(item, "index", item))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def progress_bar(total: int, unit: str, desc: str, enabled: bool) -> Any:
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, file=sys.stderr)


__all__ = ["INSTALL_HINT", "MAX_RETRIES", "call_safely", "default_workers", "fault_point", "import_ray",
           "progress_bar", "ray_cluster", "remote", "run_tasks", "unwrap", "worker_env"]
