"""Run directories: the resolved config, ``progress.csv``, TensorBoard events, checkpoints, plots.

Layout of a run directory::

    config.json          algorithm, resolved configuration, environment spec, saferl version
    progress.csv         one row per (iteration, seed): env steps, wall time, every metric
    tb/seed_<s>/         TensorBoard event files (x axis: environment steps)
    checkpoints/         iter_<k>.msgpack (Flax msgpack of the whole training state) and
                         iter_<k>.json (metadata); ``latest.json`` names the newest one
    curves.png           return and each cost vs steps, the limits drawn
    .lock                held (``flock``) by the process training or resuming the run

Checkpoints never use pickle: loading a file cannot execute code. They are written to a temporary
file and moved into place atomically, so a run killed at any moment leaves its last complete
checkpoint intact and resumable; a checkpoint whose save (or prune) was cut short between its two
files is recognised as unfinished, not damaged, and discarded on resume. Each checkpoint's
metadata records the SHA-256 of its msgpack file; a file damaged afterwards (truncated,
scrambled) is detected, named, and loading falls back to the newest intact checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import flax.serialization
import gymnasium
import jax
import numpy as np

import saferl
from saferl.algos.registry import get_algorithm
from saferl.config import config_from_dict
from saferl.engine.members import Member, limit_text, member_label
from saferl.envs.core import EnvSpec
from saferl.envs.native import NATIVE_TASKS
from saferl.envs.wrappers import build_task
from saferl.files import atomic_write, write_json

KEEP_CHECKPOINTS = 3
LOCK_FILE = ".lock"  # held (flock) by the process training into a run directory

#: Fields of the training states added since checkpoints were first written, as paths of
#: field names from the top of a state. A checkpoint written before a field existed loads with
#: that field taken from the template (the fresh initial state, whose value is the old
#: behaviour); every other difference from the template is a different configuration.
ADDED_STATE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("behaviour",),  # off-policy: each copy's behaviour threshold (conditioned algorithms)
    ("replay", "conditions"),  # off-policy replay: the threshold stored with each transition
    ("cost_limit",),  # each member's cost limits (a grid of limits; before: run.cost_limit)
)


class RunDirectoryError(ValueError):
    """A run directory cannot be written, or one of its files is missing or damaged."""


class DamagedCheckpointError(RunDirectoryError):
    """A checkpoint's files are missing, truncated or do not match their recorded checksum."""


class RunDirectoryInUseError(RunDirectoryError):
    """Another process holds the run directory's lock: it is training or resuming there."""


def try_lock(directory: str | Path) -> IO[str] | None:
    """An exclusive lock on ``directory/.lock``, held while the returned handle is open.

    The lock is advisory (``flock``): the operating system releases it when the holder exits,
    however it exits (``kill -9`` included), so a stale lock file never blocks a resume. The
    holder writes its process id into the file, for the message of the one turned away.

    Returns:
        The open handle, or ``None`` when another process holds the lock.
    """
    handle = (Path(directory) / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def lock_holder(directory: str | Path) -> int | None:
    """The id of a live saferl process recorded in ``directory/.lock``, or ``None``.

    A look that takes no lock (a probe that took one could turn away a worker starting at
    that moment): the lock file keeps its holder's id after the holder exits, so the id
    counts only while that process is alive and runs saferl (its command line says so).
    For listings; :func:`try_lock` is what decides who trains.
    """
    try:
        text = (Path(directory) / LOCK_FILE).read_text().strip()
        if not text.isdigit() or int(text) == os.getpid():
            return None
        command = Path(f"/proc/{text}/cmdline").read_bytes()
    except OSError:
        return None
    return int(text) if b"saferl" in command else None


@contextlib.contextmanager
def exclusive(directory: str | Path) -> Iterator[None]:
    """Hold ``directory``'s lock (:func:`try_lock`) for the ``with`` block.

    Raises:
        RunDirectoryInUseError: Another process holds it; one sentence naming the folder and
            that process's id.
    """
    handle = try_lock(directory)
    if handle is None:
        try:
            pid = (Path(directory) / LOCK_FILE).read_text().strip()
        except OSError:
            pid = ""
        holder = f" (process {pid})" if pid.isdigit() else ""
        raise RunDirectoryInUseError(
            f"run directory {str(directory)!r} is in use by another saferl process{holder}; "
            f"wait for it to end (or stop it) before training or resuming there, or choose "
            f"another run directory.")
    try:
        yield
    finally:
        handle.close()


def safe_name(text: str) -> str:
    """``text`` as one portable path component: ``/``, ``:`` and other separators become ``-``."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "env"


def new_run_dir(algo: str, env_id: str, root: str | Path = "runs") -> Path:
    """A fresh, unique folder ``runs/<algo>_<env>_<timestamp>`` (the env id made path-safe)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{safe_name(algo)}_{safe_name(env_id)}_{stamp}"
    path, suffix = base, 1
    while path.exists():
        suffix += 1
        path = base.with_name(f"{base.name}_{suffix}")
    return path


def check_writable(path: str | Path) -> None:
    """Fail in one sentence, before any work, if a run directory cannot be created and written.

    Creates ``path`` (and its parents) and writes and removes a probe file in it.

    Raises:
        RunDirectoryError: The path is a file, lies on a read-only file system, or is not
            writable (the message names the path and the reason).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"run directory {str(path)!r} is an existing file, not a folder; "
                                f"choose another --run-dir.")
    probe = path / f".saferl-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise RunDirectoryError(
            f"cannot write the run directory {str(path)!r} ({reason.lower()}); choose a "
            f"writable folder with --run-dir (Python: run_dir=...).") from None


def _read_json(path: Path, what: str) -> Any:
    """A JSON file's content, or one sentence naming the file when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirectoryError(f"{what} {str(path)!r} is missing.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunDirectoryError(f"{what} {str(path)!r} is damaged (not valid JSON: {error}).") \
            from None


class RunDirectory:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.checkpoint_dir = self.path / "checkpoints"
        self._writers: dict[int, Any] = {}
        self._csv_columns: list[str] | None = None

    # -- configuration -----------------------------------------------------------------------
    def write_config(self, record: dict[str, Any]) -> None:
        """Create the folder and write ``config.json`` (algorithm, config, spec, version)."""
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"saferl_version": saferl.__version__, **record}
        write_json(self.path / "config.json", record)

    def read_config(self) -> dict[str, Any]:
        """The stored ``config.json``.

        Raises:
            FileNotFoundError: The folder holds no ``config.json`` (not a run directory).
            RunDirectoryError: ``config.json`` is damaged (named in the message).
        """
        path = self.path / "config.json"
        if not self.path.exists():
            raise FileNotFoundError(f"run directory {str(self.path)!r} does not exist.")
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(self.path)!r} is not a saferl run directory (no config.json).")
        record = _read_json(path, "configuration file")
        if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
                and isinstance(record.get("algo"), str)):
            raise RunDirectoryError(f"configuration file {str(path)!r} is damaged (it lacks the "
                                    f"algorithm or the configuration).")
        return record

    # -- metrics -----------------------------------------------------------------------------
    def log(self, iteration: int, env_steps: int, wall_time: float, seeds: Sequence[int],
            metrics: dict[str, np.ndarray],
            limits: Sequence[Sequence[float]] | None = None) -> None:
        """Append one row per member to ``progress.csv`` and write TensorBoard scalars.

        ``seeds`` are the members' seeds; in a grid of cost limits ``limits`` holds each
        member's limit vector, written as the columns ``limit_0 … limit_{m-1}`` beside
        ``seed`` (TensorBoard: ``tb/seed_<s>_limit_<l>``).
        """
        names = sorted(metrics)
        m = 0 if limits is None else len(limits[0])
        columns = ["iteration", "env_steps", "wall_time", "seed",
                   *(f"limit_{i}" for i in range(m)), *names]
        path = self.path / "progress.csv"
        if self._csv_columns is None:
            if path.is_file() and path.stat().st_size > 0:
                with path.open() as handle:
                    self._csv_columns = next(csv.reader(handle))
            else:
                self._csv_columns = columns
                with path.open("w", newline="") as handle:
                    csv.writer(handle).writerow(columns)
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            for index, seed in enumerate(seeds):
                values = {"iteration": iteration, "env_steps": env_steps,
                          "wall_time": round(wall_time, 3), "seed": seed}
                if limits is not None:
                    values.update({f"limit_{i}": x for i, x in enumerate(limits[index])})
                values.update({k: float(np.asarray(v)[index]) for k, v in metrics.items()})
                writer.writerow([_format(values.get(c, "")) for c in self._csv_columns])
        from tensorboardX.proto.summary_pb2 import Summary

        for index, seed in enumerate(seeds):
            tb = self._writer(_tb_name(seed, None if limits is None else limits[index]))
            if tb is None:
                continue
            # One event holding every metric of the iteration instead of one `add_scalar`
            # event per metric: TensorBoard reads the same series, much faster (RESULTS.md D5).
            values = [(name, float(np.asarray(metrics[name])[index])) for name in names]
            tb.file_writer.add_summary(Summary(value=[
                Summary.Value(tag=name, simple_value=value)
                for name, value in values if math.isfinite(value)]), env_steps)

    def _writer(self, name: str, purge_step: int | None = None) -> Any:
        if name not in self._writers:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                self._writers[name] = None
            else:
                # tensorboardX names event files by the second and opens them with "wb": a
                # resumed session starting in the same second as the last one would overwrite
                # its events. A nanosecond suffix keeps every session's file, and name order
                # (which TensorBoard reads in) stays chronological.
                self._writers[name] = SummaryWriter(
                    str(self.path / "tb" / name), purge_step=purge_step,
                    flush_secs=10, filename_suffix=f".{time.time_ns()}")
        return self._writers[name]

    def _progress_rows(self) -> tuple[list[str], list[tuple[int, list[str]]]]:
        """``progress.csv``'s header and its complete rows with their line numbers.

        A last line without its newline (a process killed while writing it, a full disk) is an
        unfinished row and is left out; any other row whose field count differs from the
        header's makes the file damaged.

        Raises:
            RunDirectoryError: A row in the middle is cut or has extra fields (one sentence
                naming the file and the line).
        """
        path = self.path / "progress.csv"
        if not path.is_file():
            return [], []
        text = path.read_text(errors="replace")
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines = lines[:-1]  # unfinished: written again when its iteration is redone
        if not lines:
            return [], []
        rows = list(csv.reader(lines))
        header = rows[0]
        for number, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise RunDirectoryError(
                    f"progress file {str(path)!r} is damaged at line {number}: {len(row)} "
                    f"fields where its header has {len(header)}.")
        return header, list(enumerate(rows[1:], start=2))

    def logged_iteration(self) -> int:
        """The last iteration ``progress.csv`` has a complete row of (0 for none)."""
        return max((int(row[0]) for _, row in self._progress_rows()[1] if row[0].isdigit()),
                   default=0)

    def read_progress(self) -> list[dict[str, float]]:
        """All complete rows of ``progress.csv`` as dicts of floats (NaN where empty).

        Raises:
            RunDirectoryError: The file is damaged: a row cut in the middle of the file, or a
                value that is not a number (one sentence naming the line and the column).
        """
        header, rows = self._progress_rows()
        out = []
        for number, row in rows:
            values = {}
            for name, value in zip(header, row, strict=True):
                try:
                    values[name] = float(value) if value not in ("", "nan") else math.nan
                except ValueError:
                    raise RunDirectoryError(
                        f"progress file {str(self.path / 'progress.csv')!r} is damaged at line "
                        f"{number}, column {name!r}: {value!r} is not a number.") from None
            out.append(values)
        return out

    def truncate_progress(self, iteration: int, env_steps: int, seeds: Sequence[int],
                          limits: Sequence[Sequence[float]] | None = None) -> None:
        """Drop rows after ``iteration`` (resume) and purge later TensorBoard events (the
        members as :meth:`log` names them)."""
        path = self.path / "progress.csv"
        if path.is_file():
            header, rows = self._progress_rows()
            kept = [row for _, row in rows if row[0].isdigit() and int(row[0]) <= iteration]
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerows([header, *kept] if header else [])
        for index, seed in enumerate(seeds):
            self._writer(_tb_name(seed, None if limits is None else limits[index]),
                         purge_step=env_steps + 1)

    def close(self) -> None:
        """Flush and close the TensorBoard writers."""
        for writer in self._writers.values():
            if writer is not None:
                writer.close()
        self._writers.clear()

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, state: Any, iteration: int, metadata: dict[str, Any]) -> Path:
        """Write the training state (Flax msgpack) and its metadata (with a checksum) atomically."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        name = checkpoint_name(iteration)
        data = flax.serialization.to_bytes(jax.device_get(state))
        atomic_write(self.checkpoint_dir / f"{name}.msgpack", data)
        meta = {"iteration": iteration, "time": time.time(), **metadata,
                "sha256": hashlib.sha256(data).hexdigest()}
        write_json(self.checkpoint_dir / f"{name}.json", meta)
        write_json(self.checkpoint_dir / "latest.json", {"name": name})
        self._prune(keep=name)
        return self.checkpoint_dir / f"{name}.msgpack"

    def _prune(self, keep: str) -> None:
        names = sorted(p.stem for p in self.checkpoint_dir.glob("iter_*.msgpack"))
        for name in names[:-KEEP_CHECKPOINTS]:
            if name != keep:
                for suffix in (".msgpack", ".json"):
                    (self.checkpoint_dir / f"{name}{suffix}").unlink(missing_ok=True)

    def checkpoint_names(self) -> list[str]:
        """Names of the stored checkpoints (intact or not), newest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        names = {p.stem for p in self.checkpoint_dir.glob("iter_*.msgpack")}
        names |= {p.stem for p in self.checkpoint_dir.glob("iter_*.json")}
        return sorted(names, reverse=True)

    def unfinished_checkpoints(self) -> list[str]:
        """Checkpoints left half-written by a process killed while saving or pruning, newest
        first.

        Each file is written atomically, but a checkpoint is two files (msgpack, then its
        metadata) followed by the ``latest.json`` pointer, and pruning removes an old pair one
        file at a time. A checkpoint with exactly one of its files is unfinished when it is
        newer than the checkpoint the pointer names (or there is no valid pointer: the first
        save never finished), or when :data:`KEEP_CHECKPOINTS` complete checkpoints are newer
        (a prune was cut short). Any other missing file is damage, reported as such.
        """
        names = self.checkpoint_names()
        if not names:
            return []
        present = {name: ((self.checkpoint_dir / f"{name}.msgpack").is_file(),
                          (self.checkpoint_dir / f"{name}.json").is_file()) for name in names}
        pointed = self._pointer()
        pointed = pointed if pointed in present else None
        unfinished = []
        complete_newer = 0
        for name in names:  # newest first
            if all(present[name]):
                complete_newer += 1
            elif (pointed is None or name > pointed) or complete_newer >= KEEP_CHECKPOINTS:
                unfinished.append(name)
        return unfinished

    def discard_unfinished(self) -> list[str]:
        """Delete the files of :meth:`unfinished_checkpoints` (they cannot be verified: the
        checksum is in the metadata) and return their names."""
        unfinished = self.unfinished_checkpoints()
        for name in unfinished:
            for suffix in (".msgpack", ".json"):
                (self.checkpoint_dir / f"{name}{suffix}").unlink(missing_ok=True)
        return unfinished

    def _pointer(self) -> str | None:
        """The checkpoint ``latest.json`` names, or ``None`` when it is missing or damaged."""
        pointer = self.checkpoint_dir / "latest.json"
        if not pointer.is_file():
            return None
        try:
            name = json.loads(pointer.read_text()).get("name")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        return name if isinstance(name, str) else None

    def latest_checkpoint(self) -> str | None:
        """Name of the newest checkpoint whose files are present, or ``None``.

        ``latest.json`` names it; when that pointer is missing or damaged, the newest
        ``iter_*`` pair is taken (checkpoints are numbered by iteration).
        """
        name = self._pointer()
        if name is not None and (self.checkpoint_dir / f"{name}.msgpack").is_file():
            return name
        unfinished = set(self.unfinished_checkpoints())
        for candidate in self.checkpoint_names():
            if candidate not in unfinished and \
                    (self.checkpoint_dir / f"{candidate}.msgpack").is_file():
                return candidate
        return None

    def read_checkpoint(self, template: Any, name: str) -> tuple[Any, dict]:
        """Restore one named checkpoint, shaped like ``template``, and its metadata.

        Raises:
            DamagedCheckpointError: A file is missing, its checksum does not match, or it does
                not hold a state of the template's structure (the message names the file).
        """
        meta_path = self.checkpoint_dir / f"{name}.json"
        data_path = self.checkpoint_dir / f"{name}.msgpack"
        try:
            meta = _read_json(meta_path, "checkpoint metadata")
        except RunDirectoryError as error:
            raise DamagedCheckpointError(str(error)) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("iteration"), int):
            raise DamagedCheckpointError(f"checkpoint metadata {str(meta_path)!r} is damaged "
                                         f"(no iteration number).")
        try:
            data = data_path.read_bytes()
        except FileNotFoundError:
            raise DamagedCheckpointError(f"checkpoint {str(data_path)!r} is missing.") from None
        digest = meta.get("sha256")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise DamagedCheckpointError(
                f"checkpoint {str(data_path)!r} is damaged ({len(data):,} bytes that do not "
                f"match the checksum written with it).")
        try:
            state = restore_state(jax.device_get(template), data)
        except Exception as error:  # msgpack and Flax raise many types for malformed bytes
            raise DamagedCheckpointError(
                f"checkpoint {str(data_path)!r} is damaged or belongs to another configuration "
                f"({type(error).__name__}: {str(error).splitlines()[0][:120]}).") from None
        return state, meta

    def load_checkpoint(self, template: Any, name: str | None = None,
                        on_damaged: Callable[[str], None] | None = None
                        ) -> tuple[Any, dict]:
        """Restore a training state shaped like ``template`` and its metadata.

        Args:
            template: A state of the run's structure (fresh initial states).
            name: A checkpoint to load exactly (``iter_0000012``); its damage is an error.
            on_damaged: Called with each damaged checkpoint's error message while loading falls
                back from the newest checkpoint to older ones (default: ignored).

        Raises:
            FileNotFoundError: The run has no checkpoint yet, or ``name`` does not exist.
            DamagedCheckpointError: ``name`` is damaged, or every checkpoint is.
        """
        if name is not None:
            if name not in self.checkpoint_names():
                available = [int(n.split("_")[1]) for n in self.checkpoint_names()]
                raise FileNotFoundError(
                    f"run directory {str(self.path)!r} has no checkpoint {name!r}; iterations "
                    f"with a checkpoint: {sorted(available) or 'none'}.")
            return self.read_checkpoint(template, name)
        unfinished = set(self.unfinished_checkpoints())
        names = [name for name in self.checkpoint_names() if name not in unfinished]
        if not names:
            raise FileNotFoundError(f"Run directory {str(self.path)!r} has no checkpoint yet.")
        errors = []
        for index, candidate in enumerate(names):
            try:
                return self.read_checkpoint(template, candidate)
            except DamagedCheckpointError as error:
                errors.append(str(error).rstrip("."))
                if on_damaged is not None and index + 1 < len(names):  # an older one is left
                    on_damaged(str(error))
        raise DamagedCheckpointError(
            f"every checkpoint of {str(self.path)!r} is damaged ({'; '.join(errors)}); start a "
            f"new run.")

    def set_aside(self, name: str) -> None:
        """Rename a damaged checkpoint's files to ``*.damaged`` so they are neither loaded nor
        kept in place of intact ones (resume calls this for checkpoints it skipped)."""
        for suffix in (".msgpack", ".json"):
            path = self.checkpoint_dir / f"{name}{suffix}"
            if path.exists():
                os.replace(path, path.with_name(path.name + ".damaged"))


def restore_state(template: Any, data: bytes) -> Any:
    """A state shaped like ``template`` from Flax msgpack ``data``; fields of
    :data:`ADDED_STATE_FIELDS` that ``data`` lacks come from ``template``."""
    restored = flax.serialization.msgpack_restore(data)
    target = flax.serialization.to_state_dict(template)
    for path in ADDED_STATE_FIELDS:
        source, destination = target, restored
        for name in path[:-1]:
            source, destination = source.get(name), destination.get(name)
            if not (isinstance(source, dict) and isinstance(destination, dict)):
                break
        else:
            if path[-1] in source and path[-1] not in destination:
                destination[path[-1]] = source[path[-1]]
    return flax.serialization.from_state_dict(template, restored)


def spec_record(spec: Any) -> dict[str, Any]:
    """The JSON form of an environment spec that ``config.json`` keeps (host environments are
    not rebuilt to load a policy)."""
    return {"id": spec.id, "obs_dim": spec.obs_dim, "action_dim": spec.action_dim,
            "num_costs": spec.num_costs, "cost_names": list(spec.cost_names),
            "max_episode_steps": spec.max_episode_steps,
            "action_low": np.asarray(spec.action_space.low).tolist(),
            "action_high": np.asarray(spec.action_space.high).tolist()}


def spec_from_record(record: dict[str, Any]) -> Any:
    """The environment spec a run directory's ``config.json`` recorded (spaces as boxes)."""
    s = record["spec"]
    return EnvSpec(s["id"], gymnasium.spaces.Box(-np.inf, np.inf, (s["obs_dim"],), np.float32),
                   gymnasium.spaces.Box(np.asarray(s["action_low"], np.float32),
                                        np.asarray(s["action_high"], np.float32)),
                   s["num_costs"], tuple(s["cost_names"]), s["max_episode_steps"])


def read_run_config(run_dir: str | Path) -> tuple[dict, Any, Any]:
    """The ``config.json`` record of a run directory, its registry entry and its configuration.

    Raises:
        FileNotFoundError: Not a run directory.
        RunDirectoryError: ``config.json`` is damaged or no longer a valid configuration.
    """
    run = RunDirectory(run_dir)
    record = run.read_config()
    entry = get_algorithm(record["algo"])
    try:
        config = config_from_dict(entry.config_class, record["config"])
    except ValueError as error:
        raise RunDirectoryError(f"configuration file {str(run.path / 'config.json')!r} is "
                                f"damaged or edited: {error}") from None
    return record, entry, config


def checkpoint_stem(checkpoint: str | int | None) -> str | None:
    """A checkpoint given as an iteration number (``12``, ``"12"``) or name, as its file stem."""
    if checkpoint is None:
        return None
    if isinstance(checkpoint, int) or str(checkpoint).isdigit():
        return checkpoint_name(int(checkpoint))
    return str(checkpoint)


def restore_states(run_dir: str | Path, checkpoint: str | int | None = None,
                   on_damaged: Callable[[str], None] | None = None
                   ) -> tuple[dict, Any, Any, Any, Any, dict]:
    """Rebuild the configuration, spec and training state stored in a run directory.

    Args:
        run_dir: The run directory.
        checkpoint: An iteration number or checkpoint name; default: the newest intact one.
        on_damaged: Called with one sentence per damaged checkpoint skipped on the way.

    Returns:
        ``(record, entry, config, spec, states, metadata)``: ``config.json``, the algorithm's
        registry entry, the configuration, the environment spec, the member-stacked states and
        the checkpoint's metadata.
    """
    run = RunDirectory(run_dir)
    record, entry, config = read_run_config(run_dir)
    if config.run.env in NATIVE_TASKS:
        task = build_task(config.run)
        spec = task.spec
    else:
        task = None
        if not run.checkpoint_names():
            raise FileNotFoundError(f"Run directory {str(run.path)!r} has no checkpoint yet.")
        spec = spec_from_record(record)
    template = entry.engine.initial_states(entry.module, config, spec, task)
    states, meta = run.load_checkpoint(template, checkpoint_stem(checkpoint),
                                       on_damaged=on_damaged)
    return record, entry, config, spec, states, meta


def checkpoint_name(iteration: int) -> str:
    """The file stem of iteration ``iteration``'s checkpoint (``iter_0000012``)."""
    return f"iter_{iteration:07d}"


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _tb_name(seed: int, limit: Sequence[float] | None) -> str:
    """A member's TensorBoard folder: ``seed_3``, or in a grid of limits ``seed_3_limit_20``."""
    return f"seed_{seed}" if limit is None else f"seed_{seed}_limit_{limit_text(limit)}"


def row_limit(row: dict[str, float]) -> tuple[float, ...] | None:
    """The limit vector of a ``progress.csv`` row of a grid of limits (``None`` otherwise)."""
    count = sum(1 for key in row if key.startswith("limit_"))
    return tuple(row[f"limit_{i}"] for i in range(count)) if count else None


def row_label(row: dict[str, float]) -> str:
    """The member a ``progress.csv`` row belongs to, labelled as
    :func:`~saferl.engine.members.member_label` labels it (``3``, ``3@20``)."""
    limit = row_limit(row)
    member = Member(int(row["seed"]), limit or ())
    return member_label(member, grid=limit is not None)


def carried_series(rows: list[dict[str, float]], name: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One metric per (iteration, seed), carried forward over iterations that finished no episode.

    Episode figures (``rollout/ep_return``, ``rollout/ep_cost_i``) are blank in
    ``progress.csv`` for an iteration in which a seed finished no episode (off-policy runs
    finish one every few iterations). Curves and the progress bar show the latest finished
    episodes instead, marked as carried.

    Returns:
        ``(steps [T], values [T, S], fresh [T, S])``: the environment steps of each iteration,
        the value per member (NaN before its first finished episode; members ordered by
        limit, then seed), and whether the value was measured in that iteration (``False``:
        carried forward).
    """
    steps = np.array(sorted({r["env_steps"] for r in rows}))
    keys = sorted({(row_limit(r) or (), r["seed"]) for r in rows})  # limit major, then seed
    raw = np.full((len(steps), len(keys)), np.nan)
    index = {s: i for i, s in enumerate(steps)}
    column = {key: j for j, key in enumerate(keys)}
    for r in rows:
        raw[index[r["env_steps"]], column[(row_limit(r) or (), r["seed"])]] = r.get(name,
                                                                                    math.nan)
    fresh = np.isfinite(raw)
    values = raw.copy()
    for t in range(1, len(steps)):
        values[t] = np.where(fresh[t], raw[t], values[t - 1])
    return steps, values, fresh


def steps_formatter(value: float, _position: int) -> str:
    """An axis tick in environment steps: ``200k``, ``1.5M``."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def draw_curves(run: RunDirectory, cost_limit: tuple[float, ...], cost_names: tuple[str, ...]
                ) -> Any:
    """The curves figure of a run: return and each cost vs environment steps.

    The line is the mean over seeds of the latest finished episodes (carried forward over
    iterations that finished none: :func:`carried_series`), the band its min–max over seeds;
    dots mark the iterations where every seed finished an episode when some did not. The title
    names the algorithm, the task and the seeds. A grid of cost limits draws one line and band
    per limit, each limit dashed in its line's colour (``cost_limit`` is then not used).

    Returns:
        A matplotlib ``Figure`` (``None`` when ``progress.csv`` is empty).
    """
    rows = run.read_progress()
    if not rows:
        return None
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    try:
        record = run.read_config()
        title = f"{record['algo']} on {record['config']['run']['env']}"
    except (FileNotFoundError, RunDirectoryError, KeyError, TypeError):
        title = run.path.name
    seeds = sorted({int(r["seed"]) for r in rows})
    title += f" — seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
    grid = sorted({row_limit(r) for r in rows if row_limit(r) is not None})
    if grid:  # a grid of limits: one line (and band over seeds) per limit, in its colour
        title += f" × limits {' '.join(limit_text(x) for x in grid)}"
        groups = [(f"limit {limit_text(limit)}", f"C{k % 10}", limit,
                   [r for r in rows if row_limit(r) == limit]) for k, limit in enumerate(grid)]
    else:
        groups = [("", "", tuple(cost_limit), rows)]
    panels = [("rollout/ep_return", "episode return", None)]
    panels += [(f"rollout/ep_cost_{i}", f"episode cost: {n}", i)
               for i, n in enumerate(cost_names)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.8), squeeze=False)
    for ax, (name, ylabel, constraint) in zip(axes[0], panels, strict=True):
        for group, group_color, limits, group_rows in groups:
            color = group_color or ("C0" if constraint is None else "C3")
            prefix = f"{group}: " if group else ""
            steps, values, fresh = carried_series(group_rows, name)
            members = values.shape[1]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows before episodes
                mean = np.nanmean(values, axis=1)
                low, high = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
            carried = not fresh[np.isfinite(values)].all()
            label = "mean of the latest episodes" if carried else "mean"
            if members > 1:
                line_label = f"{prefix}{label}"
            else:
                line_label = group or ("latest episodes" if carried else None)
            ax.plot(steps, mean, color=color, label=line_label)
            if members > 1:
                ax.fill_between(steps, low, high, alpha=0.2, color=color,
                                label=None if group else f"min–max over {members} seeds")
            if carried:
                every = fresh.all(axis=1)
                ax.plot(steps[every], mean[every], "o", color=color, markersize=2.5,
                        label=None if group else "episodes finished this iteration")
            if constraint is not None:
                limit = limits[constraint]
                ax.axhline(limit, color="k" if not group else color, linestyle="--",
                           linewidth=1, label=None if group else f"limit {limit:g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("environment steps (per seed)")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(FuncFormatter(steps_formatter))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(run: RunDirectory, cost_limit: tuple[float, ...], cost_names: tuple[str, ...],
                path: Path | None = None) -> Path | None:
    """Write :func:`draw_curves`'s figure to ``curves.png`` (or ``path``); ``None`` if no rows."""
    fig = draw_curves(run, cost_limit, cost_names)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    path = path or run.path / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
