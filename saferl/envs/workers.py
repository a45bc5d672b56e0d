"""Host environments stepped in worker processes, so that simulator copies use several cores.

A simulator step (Bullet-Safety-Gym: Python and C++ on one core) is the cost of host
training; ``num_envs`` copies stepped in the learner's process take ``num_envs`` times that
(benchmarks/RESULTS.md D1). :class:`SubprocVecEnv` splits the copies
into ``workers`` contiguous shards, each a :class:`~saferl.envs.gym.GymVecEnv` (built by
:func:`saferl.envs.make`) in its own process, and steps the shards at the same time.

Shard ``j`` holds copies ``o_j … o_j + n_j − 1`` and is built and reset with ``seed + o_j``, so
copy ``i`` is still seeded with ``seed + i`` and keeps its own random streams; for Bullet's Ball
the result is the in-process batch exactly (tested equal to :class:`~saferl.envs.gym.GymVecEnv`
step for step). Bullet's car is not: its physics differs by ≈ 1e-5 at reset with how many
Bullet copies its process holds (measured: the same copy built first in one process and third
in another), so a CarCircle run's numbers depend on the worker count as they do on
``num_envs``; each layout is deterministic.

Workers are started with ``spawn`` (safe next to JAX's threads), so the environment must be an
id or a picklable factory (a module-level function, not a lambda), and a script that starts
them must guard its entry point with ``if __name__ == "__main__":`` (the workers import it), as
with any spawn-based multiprocessing. Exceptions raised in a worker (e.g.
:class:`~saferl.envs.core.EnvError`) are re-raised in the caller with their type.

Whether workers pay off depends on the machine and the simulator: on the 2-vCPU benchmark VM
two CPU-bound processes ran only 1.35× faster than one, and the per-step pipe round trips made
2 workers slower than in-process stepping for off-policy runs on BallCircle; for ``ppo_lag`` on
CarCircle, whose steps cost more, 2 workers were 1.68× faster (benchmarks/RESULTS.md, issue
16), so ``saferl train`` uses 2 for on-policy runs.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import gymnasium
import numpy as np

from saferl.envs.core import EnvError, EnvSpec, StepResult
from saferl.envs.resolve import make_local


def _worker(conn: Connection, env: str | Callable[[], gymnasium.Env], num_envs: int, seed: int,
            kwargs: dict[str, Any]) -> None:
    """Serve ``reset``/``step``/``close`` requests for one shard until closed."""
    try:
        vec = make_local(env, num_envs=num_envs, seed=seed, **kwargs)
        conn.send(("ok", vec.spec))
    except BaseException as error:  # everything goes back to the caller
        conn.send(("error", _portable(error)))
        conn.close()
        return
    try:
        while True:
            command, argument = conn.recv()
            try:
                if command == "step":
                    reply: Any = tuple(vec.step(argument))
                elif command == "reset":
                    reply = vec.reset(argument)
                elif command == "close":
                    vec.close()
                    conn.send(("ok", None))
                    return
                else:
                    raise EnvError(f"unknown worker command {command!r}")
                conn.send(("ok", reply))
            except BaseException as error:
                conn.send(("error", _portable(error)))
    except (EOFError, KeyboardInterrupt):  # the caller went away
        vec.close()


def _portable(error: BaseException) -> BaseException:
    """The exception itself if it pickles, else an EnvError carrying its traceback."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return EnvError("".join(traceback.format_exception(error)))


class SubprocVecEnv:
    """``num_envs`` host environment copies split over ``workers`` processes (a VecEnv).

    Attributes:
        spec: The batched CMDP's :class:`~saferl.envs.core.EnvSpec`.
        num_envs: Number of copies.
        workers: Number of worker processes.
    """

    def __init__(self, env: str | Callable[[], gymnasium.Env], num_envs: int, seed: int = 0,
                 workers: int = 2, **kwargs: Any) -> None:
        """Start the workers, build each shard and reset copy ``i`` with ``seed + i``.

        Args:
            env: An environment id or a picklable factory returning a fresh ``gymnasium.Env``.
            num_envs: Number of copies, ≥ ``workers``.
            seed: Base seed (copy ``i`` gets ``seed + i``).
            workers: Number of processes, ≥ 1 and ≤ ``num_envs``.
            **kwargs: Passed to :func:`saferl.envs.make` in every worker.

        Raises:
            EnvError: If ``workers`` is out of range, the factory cannot be sent to a worker, a
                worker dies, or building an environment fails there.
        """
        if isinstance(workers, bool) or not isinstance(workers, int) or not \
                1 <= workers <= num_envs:
            raise EnvError(f"workers must be an integer between 1 and num_envs={num_envs}; "
                           f"got {workers!r}.")
        self.num_envs, self.workers = num_envs, workers
        sizes = [num_envs // workers + (j < num_envs % workers) for j in range(workers)]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        context = multiprocessing.get_context("spawn")
        self._connections: list[Connection] = []
        self._processes: list[Any] = []
        try:
            for j, size in enumerate(sizes):
                parent, child = context.Pipe()
                process = context.Process(
                    target=_worker, args=(child, env, size, seed + int(self._offsets[j]), kwargs),
                    daemon=True, name=f"saferl-env-worker-{j}")
                try:
                    process.start()
                except Exception as error:  # e.g. a lambda factory cannot be pickled
                    raise EnvError(
                        f"Could not start environment worker {j}: {error}. With workers > 1 the "
                        f"environment must be an id or a picklable factory (a module-level "
                        f"function, not a lambda).") from error
                child.close()
                self._connections.append(parent)
                self._processes.append(process)
            specs = self._receive_all()
        except BaseException:
            self.close()
            raise
        self.spec: EnvSpec = specs[0]

    def _receive(self, j: int) -> Any:
        try:
            status, payload = self._connections[j].recv()
        except (EOFError, ConnectionResetError) as error:
            code = self._processes[j].exitcode
            raise EnvError(
                f"Environment worker {j} exited unexpectedly (exit code {code}). Workers are "
                f"spawned processes that import the main script: guard its entry point with "
                f"`if __name__ == '__main__':`.") from error
        if status == "error":
            raise payload
        return payload

    def _receive_all(self) -> list[Any]:
        replies, first_error = [], None
        for j in range(len(self._connections)):
            try:
                replies.append(self._receive(j))
            except BaseException as error:  # drain every pipe, then raise
                first_error = first_error or error
        if first_error is not None:
            raise first_error
        return replies

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every copy; copy ``i`` is seeded with ``seed + i``. Returns ``[n, obs_dim]``."""
        for j, conn in enumerate(self._connections):
            conn.send(("reset", None if seed is None else int(seed) + int(self._offsets[j])))
        return np.concatenate(self._receive_all())

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every copy with ``actions`` ``[n, action_dim]``; the shards step concurrently."""
        actions = np.asarray(actions)
        if actions.shape[0] != self.num_envs:
            raise EnvError(f"step got actions for {actions.shape[0]} copies; this batch has "
                           f"{self.num_envs}.")
        for j, conn in enumerate(self._connections):
            conn.send(("step", actions[self._offsets[j]:self._offsets[j + 1]]))
        parts = self._receive_all()
        return StepResult(*(np.concatenate(field) for field in zip(*parts, strict=True)))

    def close(self) -> None:
        """Close every shard and stop the workers."""
        for conn, process in zip(self._connections, self._processes, strict=False):
            try:
                if process.is_alive():
                    conn.send(("close", None))
                    conn.poll(5.0) and conn.recv()
            except (OSError, EOFError):
                pass
            process.join(timeout=5.0)
            if process.is_alive():
                process.terminate()
            conn.close()
        self._connections, self._processes = [], []

    def __repr__(self) -> str:
        return (f"SubprocVecEnv({self.spec.id!r}, num_envs={self.num_envs}, "
                f"workers={self.workers})")
