"""The ``saferl`` command: ``train``, ``eval`` and ``list``.

``saferl train [ALGO] [--config FILE] [flags]`` exposes every field of the algorithm's
configuration as a typed flag (``saferl train ppo_lag --help`` lists them): the shared settings
without prefix (``--env``, ``--cost-limit 10 10``, ``--steps``, ``--seeds 0 1 2 3``,
``--run-dir``), the algorithm's own under their section (``--ppo.clip-ratio``,
``--lagrange.method pid``). ``--resume RUN_DIR`` continues a run from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

USAGE = """usage: saferl COMMAND [...]

commands:
  train [ALGO] [--config FILE] [--resume RUN_DIR] [flags]
      train (default: cpo + safety predictor on native BallCircle)
  eval RUN_DIR [--episodes N] [--video out.gif]              evaluate a trained run
  list                                                       algorithms and environments

`saferl COMMAND --help` shows every flag."""

COMMANDS = ("train", "eval", "list")


def _error(message: str) -> int:
    print(f"saferl: error: {message}", file=sys.stderr)
    return 2


def _pop_option(args: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` (or ``name=VALUE``) from ``args`` and return VALUE."""
    for i, arg in enumerate(args):
        if arg == name:
            if i + 1 >= len(args):
                raise ValueError(f"{name} needs a value.")
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if arg.startswith(name + "="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def _pop_flag(args: list[str], name: str) -> bool:
    if name in args:
        args.remove(name)
        return True
    return False


def _train(args: list[str]) -> int:
    from saferl.algos.registry import get_algorithm
    from saferl.runs import new_run_dir
    from saferl.training import build_config, resolve_algorithm, train

    args = list(args)
    quiet = _pop_flag(args, "--quiet")
    resume = _pop_option(args, "--resume")
    if resume is not None:
        steps = _pop_option(args, "--steps")
        if args:
            return _error(f"--resume takes only --steps (to extend the run); got {args}.")
        if steps is not None and not steps.isdigit():
            return _error(f"--steps must be a positive integer; got {steps!r}.")
        print(f"resuming {resume}", file=sys.stderr)
        train(resume=resume, steps=int(steps) if steps else None, progress=not quiet)
        return 0
    algo, recipe = resolve_algorithm(
        args.pop(0) if args and not args[0].startswith("-") else None)
    entry = get_algorithm(algo)
    config_file = _pop_option(args, "--config")
    defaults = build_config(algo, config_file, base=recipe)
    config = tyro.cli(entry.config_class, default=defaults, args=args,
                      prog=f"saferl train {algo}",
                      description=f"{entry.description}. Flags override --config FILE.")
    if config.run.run_dir is None:
        run_dir = str(new_run_dir(algo, config.run.env))
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir=run_dir))
    try:
        train(algo, config=config, progress=not quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: saferl train --resume {config.run.run_dir}",
              file=sys.stderr)
        return 130
    return 0


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a trained run: deterministic and stochastic episode return and cost."""

    run_dir: Annotated[str, tyro.conf.Positional]
    """The run directory."""
    episodes: int = 10
    """Episodes per mode."""
    seed_index: int = 0
    """Which of the run's seeds to evaluate."""
    env_seed: int = 10_000
    """Seed of the evaluation environments."""
    video: str | None = None
    """Write the first deterministic episode to this .gif (or .mp4 with saferl[video])."""


def _eval(args: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from saferl.evaluation import evaluate
    from saferl.policy import Policy

    opts = tyro.cli(EvalArgs, args=args, prog="saferl eval")
    policy = Policy.load(opts.run_dir, seed_index=opts.seed_index)
    limits = policy.info["cost_limit"]
    table = Table(title=f"{policy.info['algo']} on {policy.info['env']} (seed "
                        f"{policy.info['seed']}), {opts.episodes} episodes per mode")
    table.add_column("mode")
    table.add_column("return", justify="right")
    rows = []
    for deterministic in (True, False):
        result = evaluate(policy, episodes=opts.episodes, deterministic=deterministic,
                          seed=opts.env_seed, video=opts.video if deterministic else None)
        summary = result.summary()
        if not table.columns[2:]:
            for i, name in enumerate(result.cost_names):
                table.add_column(f"{name} (≤ {limits[i]:g})", justify="right")
        rows.append(["deterministic" if deterministic else "stochastic",
                     f"{summary['return_mean']:.2f} ± {summary['return_std']:.2f}",
                     *(f"{summary[f'cost_{i}_mean']:.2f} ± {summary[f'cost_{i}_std']:.2f}"
                       for i in range(len(result.cost_names)))])
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if opts.video:
        print(f"video: {opts.video}")
    return 0


def _list(args: list[str]) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from saferl.algos.registry import ALGORITHMS
    from saferl.envs import list_envs

    if args:
        return _error(f"list takes no arguments; got {args}.")
    console = Console()
    algos = Table(title="algorithms (saferl train ALGO)")
    algos.add_column("name")
    algos.add_column("description")
    for name, entry in ALGORITHMS.items():
        algos.add_row(name, entry.description)
    console.print(algos)
    envs = Table(title="environments (--env ID)")
    envs.add_column("id")
    envs.add_column("description")
    for env_id, description in list_envs().items():
        envs.add_row(env_id, Text(description))  # plain text: 'saferl[bullet]' is no markup
    console.print(envs)
    return 0


def use_all_cores() -> None:
    """Give XLA one CPU device per core, so that vectorised seeds are sharded across cores.

    XLA runs the small matrix products of one seed on one core; with one device per core the
    engine places different seeds on different cores. Must run before JAX starts its backend;
    a no-op if the user already chose (``jax_num_cpu_devices`` or ``XLA_FLAGS``).
    """
    import os

    import jax

    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    try:
        jax.config.update("jax_num_cpu_devices", max(1, len(os.sched_getaffinity(0))))
    except (RuntimeError, AttributeError, ValueError):  # backend already initialised
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``saferl`` command; returns the exit status."""
    from saferl.algos.registry import UnknownAlgorithmError
    from saferl.config import ConfigError
    from saferl.envs import EnvError, MissingBackendError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    handlers = {"train": _train, "eval": _eval, "list": _list}
    if command not in handlers:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return _error(f"unknown command {command!r}.{hint} Commands: {', '.join(COMMANDS)}.")
    use_all_cores()
    from saferl.core.precompile import enable_compilation_cache

    enable_compilation_cache()
    try:
        return handlers[command](rest)
    except (UnknownAlgorithmError, ConfigError, EnvError, MissingBackendError, ValueError,
            FileExistsError, FileNotFoundError, IndexError) as error:
        return _error(str(error))
    except SystemExit as exit_:  # tyro has printed --help, or a flag's error in its own box
        return exit_.code if isinstance(exit_.code, int) else 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
