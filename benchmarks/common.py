"""Shared helpers of the benchmark scripts: machine description, timing, tables, JSON output.

Every benchmark script imports JAX through :func:`setup_jax`, which gives XLA one CPU device per
core (as the ``saferl`` command does) before any computation, so that vectorised seeds are
sharded across cores exactly as in a command-line run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
OUT_DIR = BENCH_DIR / "out"
DEFAULT_CPU_DEVICES = 2


def setup_jax(num_cpu_devices: int = DEFAULT_CPU_DEVICES) -> Any:
    """Import JAX and ask for ``num_cpu_devices`` XLA CPU devices (before any computation).

    Args:
        num_cpu_devices: XLA CPU devices (one per core on the 2-core benchmark machine).

    Returns:
        The ``jax`` module.
    """
    import jax

    jax.config.update("jax_num_cpu_devices", num_cpu_devices)
    return jax


def code_info() -> dict[str, Any]:
    """Which saferl code was measured: git commit, modified files, a hash of the sources.

    The repository is edited while benchmarks run, so the commit alone does not identify the
    code: the SHA-256 over every ``saferl/**/*.py`` file does. Only read-only git commands run.
    """
    import hashlib

    root = BENCH_DIR.parent
    digest = hashlib.sha256()
    for path in sorted((root / "saferl").rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    info: dict[str, Any] = {"saferl_sources_sha256": digest.hexdigest()[:16]}
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, check=True).stdout

        info["git_commit"] = git("rev-parse", "--short", "HEAD").strip()
        # Porcelain lines are "XY path": the status column may start with a space, so the
        # output is not stripped before the path is cut out.
        info["modified_saferl_files"] = [line[3:] for line in
                                         git("status", "--porcelain", "--", "saferl").splitlines()
                                         if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def machine_info() -> dict[str, Any]:
    """CPU model, core count, Python, JAX and saferl versions, and the date of the run."""
    import jax

    import saferl

    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "cpu_model": model,
        "cores": len(os.sched_getaffinity(0)),
        "jax_devices": len(jax.local_devices()),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "saferl": saferl.__version__,
        "date": date.today().isoformat(),
        "load_average_at_end": list(os.getloadavg()),
    }


def _system_busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (``/proc/stat``, every core)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class CpuSnapshot(NamedTuple):
    """Wall clock, CPU seconds of every process and CPU seconds of this process, at one time."""

    wall: float
    busy: float
    own: float


def cpu_snapshot() -> CpuSnapshot:
    """The counters now (``/proc/stat`` has a resolution of one clock tick, usually 10 ms)."""
    return CpuSnapshot(time.perf_counter(), _system_busy_seconds(), _own_cpu_seconds())


def cores_between(start: CpuSnapshot, end: CpuSnapshot) -> tuple[float, float]:
    """Cores used by this process and by all other processes between two snapshots."""
    wall = max(end.wall - start.wall, 1e-9)
    own = (end.own - start.own) / wall
    return own, max(0.0, (end.busy - start.busy) / wall - own)


class CpuMonitor:
    """Cores used by this process and by everything else during a block (Linux ``/proc/stat``).

    The machine is shared: ``other_cores`` (CPU seconds of other processes per wall second)
    tells whether a measurement was disturbed; ``own_cores`` how many cores the measured code
    kept busy.
    """

    def __init__(self) -> None:
        self.own_cores = float("nan")
        self.other_cores = float("nan")

    def __enter__(self) -> CpuMonitor:
        self._start = cpu_snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.own_cores, self.other_cores = cores_between(self._start, cpu_snapshot())


def wait_for_quiet(max_other_cores: float = 0.3, probe_seconds: float = 2.0,
                   timeout: float = 900.0) -> float:
    """Wait until other processes use at most ``max_other_cores`` over a probe window.

    Returns:
        Seconds waited (the wait gives up after ``timeout`` and the measurement goes on; the
        disturbance is then visible in its ``other_cores``).
    """
    start = time.perf_counter()
    while True:
        with CpuMonitor() as monitor:
            time.sleep(probe_seconds)
        if monitor.other_cores <= max_other_cores or time.perf_counter() - start > timeout:
            return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else float("nan")


class IterationClock:
    """A ``saferl.train`` callback that timestamps the end of every iteration.

    ``rate(steps_per_iteration)`` is the env-steps/s between the end of the first iteration
    (which holds the compilation, and for host simulators the first action jit) and the end of
    the last one, so that environment construction and compilation are excluded. CPU counters
    are read at every stamp too, giving the cores used in that window by this process
    (``own_cores``) and by other processes (``other_cores``, i.e. disturbance).
    """

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._cpu: list[CpuSnapshot] = []

    def __call__(self, iteration: int, metrics: dict[str, Any]) -> None:
        """Record the time at which ``iteration`` finished (metrics are ignored)."""
        del iteration, metrics
        snapshot = cpu_snapshot()
        self.stamps.append(snapshot.wall)
        self._cpu.append(snapshot)

    @property
    def timed_seconds(self) -> float:
        """Seconds from the end of iteration 1 to the end of the last iteration."""
        if len(self.stamps) < 2:
            raise ValueError("need at least two iterations to time past the first")
        return self.stamps[-1] - self.stamps[0]

    @property
    def timed_iterations(self) -> int:
        """Iterations inside :attr:`timed_seconds`."""
        return len(self.stamps) - 1

    @property
    def own_cores(self) -> float:
        """CPU seconds of this process per wall second in the timed window."""
        return cores_between(self._cpu[0], self._cpu[-1])[0]

    @property
    def other_cores(self) -> float:
        """CPU seconds of other processes per wall second in the timed window."""
        return cores_between(self._cpu[0], self._cpu[-1])[1]

    def rate(self, steps_per_iteration: int) -> float:
        """Env steps per second past the first iteration."""
        return steps_per_iteration * self.timed_iterations / self.timed_seconds


class MethodTimer:
    """Wall time of every call of some ``Engine`` methods, recorded while patched in.

    The methods are wrapped on the class at run time inside :meth:`patched` and restored
    afterwards; no saferl file is changed. Two ``perf_counter`` calls per call are the only cost.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.calls: dict[str, list[float]] = {name: [] for name in names}

    @contextlib.contextmanager
    def patched(self) -> Iterator[MethodTimer]:
        """Wrap the methods on the ``Engine`` class for the duration of the block."""
        from saferl.algos.on_policy import Engine

        originals = {name: getattr(Engine, name) for name in self.names}
        for name, original in originals.items():
            setattr(Engine, name, self._wrap(name, original))
        try:
            yield self
        finally:
            for name, original in originals.items():
                setattr(Engine, name, original)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        record = self.calls[name]

        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                record.append(time.perf_counter() - start)

        return wrapper


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned numeric columns."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "nan"
            if abs(value) >= 1000:
                return f"{value:,.0f}"
            return f"{value:.3f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    return "\n".join(lines)


def write_json(name: str, payload: dict[str, Any], path: str | Path | None = None,
               code_at_start: dict[str, Any] | None = None) -> Path:
    """Write ``payload`` with the machine and code description to ``results/<name>.json``.

    Args:
        name: Benchmark name (the default file name).
        payload: The figures.
        path: Another output path.
        code_at_start: :func:`code_info` taken when the benchmark started (the modules were
            imported then); the record says whether the sources changed during the run.
    """
    target = Path(path) if path else RESULTS_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    code = code_at_start or code_info()
    code = {**code, "changed_during_run": code["saferl_sources_sha256"]
            != code_info()["saferl_sources_sha256"]}
    record = {"benchmark": name, "machine": machine_info(), "code": code, **payload}
    target.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
    return target


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def fresh_run_dir(prefix: str) -> Path:
    """A new, unique run directory under ``benchmarks/out/`` (not created)."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = OUT_DIR / f"{prefix}_{stamp}"
    path, suffix = base, 1
    while path.exists():
        suffix += 1
        path = base.with_name(f"{base.name}_{suffix}")
    return path


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call of ``function`` and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result
