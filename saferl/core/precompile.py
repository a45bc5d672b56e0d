"""Compile an engine's jitted functions in a background thread while start-up goes on.

A training run starts with work that does not need the compiled iteration: building the
networks' initial values (Flax initialisers, eager), resetting the environments and, on host
environments, collecting the first batch. XLA compilation of the iteration (several seconds
for the fused learning scans) releases the GIL, so it can run beside that work. The jobs here
trace, lower and compile each function from abstract arguments
(:class:`jax.ShapeDtypeStruct` with the shardings the real arguments will have). JAX keeps
the executable in the jitted function's cache, so the first real call runs it without
compiling again; :meth:`BackgroundCompile.wait` makes that call wait for its own job only.

A job that fails is ignored: the real call then compiles (and reports any error) as usual.

:func:`enable_compilation_cache` turns on JAX's persistent compilation cache, so that a second
run of the same configuration loads its executables from disk instead of compiling them (the
``saferl`` command does this unless told not to).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import jax

#: ``compiler_options`` for programs that run once (initial states): XLA's backend optimisations
#: off, which compiles several times faster; the program runs a little slower, once.
QUICK_COMPILE: dict[str, Any] = {"xla_backend_optimization_level": 0}

#: Environment variable: the cache directory for :func:`enable_compilation_cache`, or ``off``.
CACHE_VARIABLE = "SAFERL_COMPILATION_CACHE"


def enable_compilation_cache(path: str | Path | None = None) -> Path | None:
    """Store compiled XLA programs on disk and reuse them in later runs.

    A no-op when JAX already has a cache directory (``JAX_COMPILATION_CACHE_DIR`` or
    ``jax.config``), or when ``$SAFERL_COMPILATION_CACHE`` is ``off`` (also ``0``, ``false``,
    ``no``). Call it before the first computation: JAX decides once per process whether it uses
    the cache.

    Args:
        path: The cache directory; default ``$SAFERL_COMPILATION_CACHE``, else
            ``$XDG_CACHE_HOME/saferl/xla`` (``~/.cache/saferl/xla``). JAX keys entries by the
            program, the JAX/XLA versions and the compiler flags, so one directory serves every
            configuration and version.

    Returns:
        The directory in use, or ``None`` if the cache stays off or was configured elsewhere.
    """
    setting = os.environ.get(CACHE_VARIABLE, "")
    if setting.strip().lower() in ("off", "0", "false", "no"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return None
    if path is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        path = setting or base / "saferl" / "xla"
    directory = Path(path).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # read-only home, for example: run without the cache
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # Every program (the fused iterations take seconds, the many small eager ones add up).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory


def abstract(tree: Any, sharding: Any = None) -> Any:
    """``ShapeDtypeStruct`` leaves for a pytree of arrays or of shapes (``jax.eval_shape``).

    Args:
        tree: Arrays (their own shardings are kept unless ``sharding`` is given) or
            ``ShapeDtypeStruct`` leaves.
        sharding: The sharding every leaf will have, or ``None`` for the leaves' own (for
            ``ShapeDtypeStruct`` leaves without one: uncommitted, like a fresh ``jnp`` array).
    """
    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        own = sharding if sharding is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=own,
                                    weak_type=getattr(x, "weak_type", False))

    return jax.tree_util.tree_map(leaf, tree)


class BackgroundCompile:
    """Runs compile jobs one after another in a background thread.

    The thread is not a daemon: a daemon thread still inside XLA when the interpreter exits (a
    Ctrl-C during start-up) is torn down mid-C++ and aborts the process ("terminate called …
    FATAL: exception not rethrown"). :meth:`close` drops the jobs not started yet and waits for
    the one running; the interpreter also waits for it at exit.

    Args:
        jobs: ``(name, job)`` pairs; each job traces, lowers and compiles one function (for
            example ``lambda: fn.lower(*abstract_args).compile()``). They run in order.
    """

    def __init__(self, jobs: Sequence[tuple[Hashable, Callable[[], Any]]]) -> None:
        self._futures: dict[Hashable, Future] = {name: Future() for name, _ in jobs}
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(list(jobs),),
                                        name="saferl-compile", daemon=False)
        self._thread.start()

    def close(self) -> None:
        """Skip the jobs not started yet and wait for the running one to finish."""
        self._cancelled.set()
        self._thread.join()

    def _run(self, jobs: list[tuple[Hashable, Callable[[], Any]]]) -> None:
        for name, job in jobs:
            future = self._futures[name]
            if self._cancelled.is_set():
                future.cancel()
                future.set_running_or_notify_cancel()
                continue
            try:
                job()
            except Exception as error:
                future.set_exception(error)
            else:
                future.set_result(None)

    def wait(self, name: Hashable) -> bool:
        """Block until job ``name`` has finished; ``True`` if it compiled, ``False`` if it failed
        or there is no such job (the caller's own call then compiles as usual)."""
        future = self._futures.get(name)
        if future is None or future.cancelled():
            return False
        return future.exception() is None

    def wait_all(self) -> None:
        """Block until every job has finished."""
        for future in self._futures.values():
            if not future.cancelled():
                future.exception()
