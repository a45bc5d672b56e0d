"""The ``saferl`` command: ``train``, ``eval``, ``sweep``, ``report`` and ``list``.

``saferl train [ALGO] [--config FILE] [flags]`` exposes every field of the algorithm's
configuration as a typed flag (``saferl train ppo_lag --help`` lists them): the shared settings
without prefix (``--env``, ``--cost-limit 10 10``, ``--steps``, ``--seeds 0 1 2 3``,
``--run-dir``), the algorithm's own under their section (``--ppo.clip-ratio``,
``--lagrange.method pid``). ``--resume RUN_DIR`` continues a run from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

USAGE = """usage: saferl COMMAND [...]

commands:
  train [ALGO] [--config FILE] [--resume RUN_DIR] [flags]
      train (default: cpo + safety predictor on native BallCircle)
  eval RUN_DIR [--episodes N] [--video out.gif]              evaluate a trained run
  eval RUN_DIR --thresholds 10 20 ... 70 [--episodes N]      a ccpo run at each threshold
  sweep SPEC.toml [--jobs K] [--retry-failed] [--backend ray] a grid of runs, restartable
  report DIR [DIR ...] [--out FOLDER]                        tables and figures across runs
  list                                                       algorithms and environments

`saferl COMMAND --help` shows every flag."""

COMMANDS = ("train", "eval", "sweep", "report", "list")


def _error(message: str) -> int:
    _say(f"saferl: error: {message}")
    return 2


def _say(message: str) -> None:
    """Print to stderr; a closed pipe (``| tee`` ended by Ctrl-C) is not an error."""
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


def parse_count(text: str) -> int:
    """An integer written as ``2000000``, ``2_000_000``, ``2,000,000`` or ``2e6``.

    Raises:
        ValueError: ``text`` is not a whole number (the message says which forms work).
    """
    cleaned = text.strip().replace("_", "").replace(",", "")
    try:
        return int(cleaned)
    except ValueError:
        pass
    try:
        value = float(cleaned)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value == int(value):
        return int(value)
    raise ValueError(f"must be a whole number (such as 2000000, 2_000_000 or 2e6); got {text!r}")


def _registry() -> Any:
    """tyro's parser for ``int`` fields and items: :func:`parse_count`."""
    from tyro.constructors import ConstructorRegistry, PrimitiveConstructorSpec

    registry = ConstructorRegistry()

    @registry.primitive_rule
    def integers(type_info: Any) -> Any:
        if type_info.type is not int:
            return None
        return PrimitiveConstructorSpec(
            nargs=1, metavar="INT", instance_from_str=lambda args: parse_count(args[0]),
            is_instance=lambda value: isinstance(value, int) and not isinstance(value, bool),
            str_from_instance=lambda value: [str(value)])

    @registry.primitive_rule
    def limit_grids(type_info: Any) -> Any:
        if type_info.type != tuple[tuple[float, ...], ...]:
            return None
        return PrimitiveConstructorSpec(
            nargs="*", metavar="LIMIT [LIMIT ...]",
            instance_from_str=lambda args: tuple(parse_limit(arg) for arg in args),
            is_instance=lambda value: isinstance(value, tuple),
            str_from_instance=lambda value: [",".join(f"{x:g}" for x in v) for v in value])

    return registry


def parse_limit(text: str) -> tuple[float, ...]:
    """One limit of ``--limits``: ``20``, or ``20,5`` with one value per constraint.

    Raises:
        ValueError: ``text`` is not such a list of numbers (the message shows the form).
    """
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"each limit is a number, or one number per constraint joined by "
                         f"commas (20 or 20,5); got {text!r}") from None


_BORDER = "│|┃╭╮╰╯+ "


def tyro_message(text: str, prog: str) -> str:
    """One sentence from one of tyro's error boxes (what it prints on bad flags).

    tyro draws a titled box (Unicode on a terminal, plain dashes elsewhere) whose blocks are
    split by rules: the first block under the title is the message; "Perhaps you meant"
    suggestions become a "did you mean" clause; tyro's "Error parsing SECTION:" prefix is
    dropped.
    """
    blocks: list[list[str]] = [[]]
    for raw in text.splitlines():
        line = raw.strip().strip(_BORDER).strip()
        if "╭" in raw or "╰" in raw or (line and set(line) <= set("─-")):
            blocks.append([])
        elif line:
            blocks[-1].append(line)
    blocks = [b for b in blocks if b]
    if "╭" not in text and len(blocks) > 1:
        blocks = blocks[1:]  # plain rendering: the first block is the box's title
    message = " ".join(blocks[0]) if blocks else "invalid arguments"
    message = re.sub(r"^Error parsing (--[\w.\-]+): ", r"\1 ", message)
    message = re.sub(r"^Error parsing [\w.\-]+: ", "", message)
    suggestion = ""
    for block in blocks[1:]:
        if block[0].startswith("Perhaps you meant"):
            flags = [line.split()[0] for line in block[1:] if line.startswith("--")]
            if flags:
                suggestion = f" Did you mean {' or '.join(dict.fromkeys(flags[:2]))}?"
    if message.startswith("Unrecognized options: "):
        options = message.removeprefix("Unrecognized options: ")
        message = f"unrecognized option {options.split(',')[0]}"
    message = message.rstrip(".") + "."
    return f"{message}{suggestion} ({prog} --help lists every flag.)"


def _parse(cls: Any, args: list[str], prog: str, description: str, default: Any = None) -> Any:
    """``tyro.cli`` with one-sentence errors: tyro's boxes are turned into :func:`_error` lines
    (``--help`` text passes through unchanged)."""
    kwargs = {"default": default} if default is not None else {}
    if "-h" in args or "--help" in args:  # help goes to the real terminal, in its own layout
        return tyro.cli(cls, args=args, prog=prog, description=description,
                        registry=_registry(), **kwargs)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
            return tyro.cli(cls, args=args, prog=prog, description=description,
                            registry=_registry(), **kwargs)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            print(captured.getvalue(), end="")
            raise
        raise CommandLineError(tyro_message(captured.getvalue(), prog)) from None


class CommandLineError(ValueError):
    """A flag of the command line is unknown or has a bad value."""


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


def _peek_option(args: list[str], name: str) -> str | None:
    """The VALUE of ``name VALUE`` (or ``name=VALUE``) in ``args``, leaving ``args`` as it is."""
    return _pop_option(list(args), name)


def _pop_flag(args: list[str], name: str) -> bool:
    if name in args:
        args.remove(name)
        return True
    return False


TRAIN_OPTIONS = """Also:
  --config FILE      a TOML or JSON file of configuration fields (flags override it)
  --resume RUN_DIR   continue a run from its newest intact checkpoint; takes only
                     --steps N (a new, larger total) and --checkpoint N (continue from
                     iteration N instead)
  --quiet            no progress display and no summary"""


#: The exit status of a run stopped by Ctrl-C (what a shell reports for SIGINT).
INTERRUPTED = 130


def _interrupted(run_dir: str | None) -> int:
    """The message and exit status of a Ctrl-C (:data:`INTERRUPTED`) or a SIGTERM (143:
    :func:`saferl.interrupts.exit_status`)."""
    from saferl import interrupts

    if run_dir is not None and (Path(run_dir) / "config.json").is_file():
        _say(f"\ninterrupted; continue with: saferl train --resume {run_dir}")
    else:
        _say("\ninterrupted before anything was written; nothing to resume.")
    return interrupts.exit_status()


def _train(args: list[str]) -> int:
    from saferl.algos.registry import get_algorithm
    from saferl.runs import new_run_dir
    from saferl.training import CLI_HOST_WORKERS, build_config, resolve_algorithm, train

    args = list(args)
    quiet = _pop_flag(args, "--quiet")
    resume = _pop_option(args, "--resume")
    if resume is not None:
        steps = _pop_option(args, "--steps")
        checkpoint = _pop_option(args, "--checkpoint")
        if args:
            return _error(f"--resume takes only --steps N (to extend the run) and --checkpoint "
                          f"N (the iteration to continue from); got {' '.join(args)}.")
        try:
            total = parse_count(steps) if steps is not None else None
        except ValueError as error:
            return _error(f"--steps {error}.")
        if total is not None and total < 1:
            return _error(f"--steps must be a positive integer; got {steps!r}.")
        if checkpoint is not None and not checkpoint.isdigit():
            return _error(f"--checkpoint must be an iteration number; got {checkpoint!r}.")
        try:
            train(resume=resume, steps=total, checkpoint=checkpoint, progress=not quiet)
        except KeyboardInterrupt:
            return _interrupted(resume)
        return 0
    named = args.pop(0) if args and not args[0].startswith("-") else None
    algo, recipe = resolve_algorithm(named)
    entry = get_algorithm(algo)
    config_file = _pop_option(args, "--config")
    # The defaults depend on the environment's kind (native or host), so read --env first;
    # and the worker processes' default on the copies asked for.
    env, copies = _peek_option(args, "--env"), _peek_option(args, "--num-envs")
    peeked: dict[str, Any] = {"env": env} if env else {}
    if copies is not None and copies.isdigit() and int(copies) > 0:
        peeked["num_envs"] = int(copies)
    defaults = build_config(algo, config_file, peeked or None, base=recipe,
                            host_workers=CLI_HOST_WORKERS)
    if named is None:
        prog = "saferl train"
        description = (f"Without ALGO: {algo} with CPO's learned safety predictor (α = "
                       f"{defaults.run.predictor_alpha:g}); the defaults below are that recipe's "
                       f"(`saferl train {algo} --help` shows plain {algo}'s).")
    else:
        prog, description = f"saferl train {algo}", f"{entry.description}."
    config = _parse(entry.config_class, args, prog, f"{description}\n\n{TRAIN_OPTIONS}",
                    default=defaults)
    if config.run.run_dir is None:
        run_dir = str(new_run_dir(algo, config.run.env))
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, run_dir=run_dir))
    try:
        train(algo, config=config, progress=not quiet)
    except KeyboardInterrupt:
        return _interrupted(config.run.run_dir)
    return 0


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a trained run: deterministic and stochastic episode return and cost per seed,
    against the run's cost limits."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")]
    """The run directory."""
    episodes: int = 10
    """Episodes per mode and seed."""
    member: Annotated[str | None, tyro.conf.arg(metavar="LABEL")] = None
    """Which member to evaluate: its label (the seed, 3; in a grid of cost limits seed@limit,
    3@20) or its index (default: all)."""
    seed_index: Annotated[int | None, tyro.conf.arg(metavar="INDEX")] = None
    """Which of the run's members to evaluate, by index (default: all; see --member)."""
    checkpoint: Annotated[int | None, tyro.conf.arg(metavar="ITERATION")] = None
    """The iteration whose checkpoint to evaluate (default: the newest intact one)."""
    env_seed: int = 10_000
    """Seed of the evaluation environments."""
    video: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    """Write the first deterministic episode (of the first evaluated seed) to this .gif (or
    .mp4 with saferl[video])."""
    out: Annotated[str | None, tyro.conf.arg(metavar="FILE.json")] = None
    """Also write the evaluation (episodes, env seed, checkpoint, per member and mode) to this
    JSON file; RUN/eval.json replaces the run's end-of-run evaluation, which saferl report
    reads. For a threshold-conditioned run (or with --thresholds) FILE.json, FILE.csv and
    FILE.png hold the evaluation across thresholds; without --out it replaces RUN/versatile.*."""
    thresholds: Annotated[tuple[str, ...] | None, tyro.conf.arg(metavar="EPS [EPS ...]")] = None
    """A threshold-conditioned run (ccpo, the versatile baselines): evaluate the deterministic
    policy at each of these episode-cost thresholds (m numbers per threshold with m
    constraints; default: its behaviour thresholds); prints return and cost per threshold, Avg
    R, Avg CV, R-G and CV-G, and writes RUN/versatile.csv, .json and .png."""


def _eval(args: list[str]) -> int:
    from saferl.evaluation import check_video_path, evaluate, evaluate_policies, write_evaluation
    from saferl.policy import Policy, deployed_members, member_index
    from saferl.progress import print_evaluation, wide_console
    from saferl.runs import checkpoint_name, restore_states

    opts = _parse(EvalArgs, args, "saferl eval", EvalArgs.__doc__ or "")
    if opts.episodes < 1:
        return _error(f"--episodes must be >= 1; got {opts.episodes}.")
    if opts.video:
        check_video_path(Path(opts.video))
    if opts.out:
        if not opts.out.endswith(".json"):
            return _error(f"--out must name a .json file; got {opts.out!r}.")
        if not Path(opts.out).parent.is_dir():
            return _error(f"--out {opts.out!r}: folder {str(Path(opts.out).parent)!r} does "
                          f"not exist.")
    # One restore serves every seed and gives the spec (cost names) without building an env.
    _, entry, config, spec, states, meta = restore_states(
        opts.run_dir, opts.checkpoint,
        on_damaged=lambda m: _say(f"saferl: {m} Evaluating an older one."))
    deployed = deployed_members(config)
    if opts.member is not None and opts.seed_index is not None:
        return _error("--member and --seed-index both choose a member; give one of them.")
    if opts.member is not None:
        chosen: Any = int(opts.member) if opts.member.isdigit() and not any(
            label == opts.member for label, _ in deployed) else opts.member
        try:
            indices: Any = [member_index(config, chosen)]
        except IndexError as error:
            return _error(str(error).replace("member ", "--member ", 1))
    elif opts.seed_index is not None:
        if not 0 <= opts.seed_index < len(deployed):
            return _error(f"--seed-index must be from 0 to {len(deployed) - 1} (this run has "
                          f"{len(deployed)} member(s) {[label for label, _ in deployed]}); got "
                          f"{opts.seed_index}.")
        indices = [opts.seed_index]
    else:
        indices = range(len(deployed))
    info = {"run_dir": opts.run_dir, "iteration": int(meta["iteration"])}
    policies = [Policy.from_states(entry, config, spec, states, index, info)
                for index in indices]
    first = policies[0]
    if opts.thresholds is not None or first.conditioning is not None:
        return _eval_versatile(opts, policies, f"{entry.name} on {spec.id}")
    record = evaluate_policies(policies, episodes=opts.episodes, seed=opts.env_seed)
    record["checkpoint"] = checkpoint_name(info["iteration"])
    console = wide_console()
    console.print(f"{entry.name} on {spec.id}, checkpoint of iteration {info['iteration']}",
                  highlight=False)
    print_evaluation(record, spec.cost_names, tuple(config.run.cost_limit), console)
    if opts.out:
        write_evaluation(opts.run_dir, record, opts.out)
        console.print(f"evaluation: {opts.out}", highlight=False, soft_wrap=True)
    if opts.video:
        evaluate(first, episodes=1, deterministic=True, seed=opts.env_seed, video=opts.video)
        print(f"video: {opts.video}")
    return 0


def _eval_versatile(opts: EvalArgs, policies: list[Any], title: str) -> int:
    """``saferl eval RUN --thresholds …``: the versatile evaluation of a conditioned run."""
    from saferl.progress import print_versatile, wide_console
    from saferl.versatile import evaluate_versatile, write_versatile

    if policies[0].conditioning is None:
        return _error(f"--thresholds evaluates threshold-conditioned runs (ccpo); "
                      f"{opts.run_dir!r} is a {policies[0].info['algo']} run trained for fixed "
                      f"cost limits {policies[0].info['cost_limit']} (evaluate it without "
                      f"--thresholds).")
    if opts.video:
        return _error("--video records one fixed-limit policy and does not combine with "
                      "--thresholds or a threshold-conditioned run; leave --video out." if
                      opts.thresholds is None else "--video and --thresholds do not combine; "
                      "record a video without --thresholds.")
    if opts.thresholds is None:  # a conditioned run: at its behaviour thresholds
        behaviour = policies[0].conditioning.behaviour
        opts = dataclasses.replace(opts, thresholds=tuple(
            f"{x:g}" for x in behaviour.ravel()))
    values: list[Any] = []
    for text in opts.thresholds or ():
        try:
            values.append(float(text))
        except ValueError:
            return _error(f"--thresholds must be numbers (episode-cost thresholds); got "
                          f"{text!r}.")
    try:
        result = evaluate_versatile(policies, values, episodes=opts.episodes,
                                    seed=opts.env_seed)
    except ValueError as error:
        return _error(str(error).replace("thresholds must", "--thresholds must", 1))
    console = wide_console()
    console.print(f"{title}, checkpoint of iteration {policies[0].info['iteration']}",
                  highlight=False)
    print_versatile(result.record(), console)
    target = Path(opts.out) if opts.out else Path(opts.run_dir) / "versatile.json"
    replaced = opts.out is None and target.is_file()
    paths = write_versatile(opts.run_dir, result, title, stem=target.with_suffix(""))
    console.print(f"table: {paths['csv']}; metrics: {paths['json']}; plot: {paths['plot']}"
                  + (" (these replace the run's earlier evaluation, which saferl report reads; "
                     "--out FILE.json writes elsewhere)" if replaced else ""),
                  highlight=False, soft_wrap=True)  # paths stay whole, to copy
    return 0


@dataclass(frozen=True)
class SweepArgs:
    """Run every pending run of a sweep spec (a TOML grid of algorithms, environments, seeds,
    limits and any configuration field): finished runs are skipped, interrupted ones resume
    from their last checkpoint, failed ones are retried only with --retry-failed. Each run gets
    its own directory under the spec's out folder, named by a hash of its configuration;
    OUT/sweep.json indexes them."""

    spec: Annotated[str | None, tyro.conf.Positional, tyro.conf.arg(metavar="[SPEC.toml]")] = None
    """The sweep spec (.toml); or give --recipe."""
    recipe: Annotated[str | None, tyro.conf.arg(metavar="NAME")] = None
    """Run one of the papers' experiments shipped with saferl (--list-recipes)."""
    scale: Annotated[str, tyro.conf.arg(metavar="SCALE")] = "quick"
    """With --recipe: quick (native tasks, small budgets), native (the published protocol on native
    tasks), paper (the published protocol on the paper's tasks; library: 5 seeds on the native
    tasks), or another scale a recipe has (--list-recipes)."""
    list_recipes: bool = False
    """Describe every recipe and scale with its size, run nothing."""
    out: Annotated[str | None, tyro.conf.arg(metavar="FOLDER")] = None
    """Write the sweep here instead of the spec's out folder (a recipe's: sweeps/NAME-SCALE)."""
    jobs: int = 1
    """Local backend: runs at once, each in its own process with cores // jobs cores."""
    retry_failed: bool = False
    """Run the runs that failed before again."""
    backend: Annotated[str, tyro.conf.arg(metavar="{local,ray}")] = "local"
    """local (subprocesses, nothing to install) or ray (pip install 'saferl[ray]')."""
    address: Annotated[str | None, tyro.conf.arg(metavar="HOST:PORT")] = None
    """Ray: the address of a running cluster (default: start a local Ray instance)."""
    cpus_per_run: int = 1
    """Ray: CPUs each run asks for."""
    gpus_per_run: float = 0.0
    """Ray: GPUs each run asks for."""
    pack_size: int = 0
    """Most runs trained together in one process when they differ only in seed (or cost
    limit): 0, no limit; 1, every run in its own process."""
    dry_run: bool = False
    """Check and expand the spec, list its runs and their states (which are packed together,
    which another sweep is training now), run nothing."""
    reuse: Annotated[tuple[str, ...], tyro.conf.arg(metavar="OTHER_OUT")] = ()
    """Other sweeps' out folders: a run one of them finished with the same configuration and
    evaluation stage is copied from there instead of trained again."""


def _sweep(args: list[str]) -> int:
    from saferl import interrupts
    from saferl.experiments.spec import SpecError, load_spec
    from saferl.experiments.sweep import run_sweep

    opts = _parse(SweepArgs, args, "saferl sweep", SweepArgs.__doc__ or "")
    if opts.backend not in ("local", "ray"):
        return _error(f"--backend must be local or ray; got {opts.backend!r}.")
    if opts.jobs < 1:
        return _error(f"--jobs must be >= 1; got {opts.jobs}.")
    if opts.pack_size < 0:
        return _error(f"--pack-size must be >= 0 (0: no limit, 1: no packing); got "
                      f"{opts.pack_size}.")
    if opts.list_recipes:
        from saferl.experiments.recipe import listing

        print(listing())
        return 0
    if (opts.spec is None) == (opts.recipe is None):
        return _error("saferl sweep needs a spec file or --recipe NAME (one of them; "
                      "--list-recipes shows the recipes).")
    try:
        if opts.recipe is not None:
            from saferl.experiments.recipe import load_recipe

            sweep = load_recipe(opts.recipe, opts.scale, opts.out)
        else:
            sweep = load_spec(opts.spec)
            if opts.out is not None:
                sweep = dataclasses.replace(sweep, out=Path(opts.out))
    except SpecError as error:
        return _error(f"{opts.spec}: {error}" if opts.spec else str(error))
    if opts.dry_run:
        try:
            return _dry_run(sweep, opts.pack_size, opts.reuse)
        except ValueError as error:
            return _error(str(error))
    try:
        result = run_sweep(sweep, jobs=opts.jobs, retry_failed=opts.retry_failed,
                           backend=opts.backend, address=opts.address,
                           cpus_per_run=opts.cpus_per_run, gpus_per_run=opts.gpus_per_run,
                           pack_size=opts.pack_size, reuse=opts.reuse)
    except (RuntimeError, ValueError) as error:
        return _error(str(error))
    except KeyboardInterrupt:
        again = shlex.join(["saferl", "sweep", *args])
        _say(f"\ninterrupted; every run under way was checkpointed. Continue with: {again}")
        return interrupts.exit_status()
    return 1 if result.failed else 0


def _dry_run(sweep: Any, pack_size: int, reuse: tuple[str, ...] = ()) -> int:
    """List a sweep's runs (state, label, directory, then notes: where an interrupted run
    resumes, the run it would copy, its pack, the process training it now); run nothing."""
    from saferl.experiments.sweep import packs, prepare, reuse_folders
    from saferl.runs import RunDirectory, lock_holder

    def resumes(training: Path) -> str | None:
        """Where an interrupted training run (a run's or a pack's) would resume from."""
        if not (training / "config.json").is_file():
            return None
        latest = RunDirectory(training).latest_checkpoint()
        return f"resumes from {latest}" if latest else "resumes from scratch"

    states = prepare(sweep, write=False, reuse=reuse_folders(reuse))
    pack_of = {run_id: pack.pack_id for pack in packs(sweep, states, pack_size)
               for run_id in pack.run_ids}
    width = max((len(state.label) for state in states), default=0)
    for state in states:
        shown, notes = state.state, []
        if state.state == "pending":
            packed = state.run_id in pack_of
            holder = lock_holder(state.directory)
            if holder is not None:  # another sweep's worker is training it now
                shown, notes = "running", [f"in process {holder}"]
            else:
                notes.append(resumes(sweep.out / "packs" / pack_of[state.run_id] / "run"
                                     if packed else state.directory / "run"))
        if state.reused:
            notes.append(f"reuses {state.reused}")
        if state.run_id in pack_of:
            notes.append(f"in {pack_of[state.run_id]}")
        said = ", ".join(note for note in notes if note)
        print(f"{shown:8s} {state.label:{width}s}  {state.directory}"
              + (f"  ({said})" if said else ""))
    packs = len(set(pack_of.values()))
    print(f"{len(sweep.runs)} runs in {sweep.out}" + (
        f"; {len(pack_of)} of them in {packs} pack{'s' if packs != 1 else ''} (one process "
        f"each)" if packs else ""))
    return 0


@dataclass(frozen=True)
class ReportArgs:
    """Write report.md (tables of final return and cost per task, algorithm and limit, the
    aggregates with confidence intervals, the versatile metrics of conditioned policies, and
    curves), with each table as CSV and LaTeX, from run directories or sweep folders."""

    dirs: Annotated[tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="DIR [DIR ...]")]
    """Run directories, or folders holding them (a sweep's out folder)."""
    out: Annotated[str, tyro.conf.arg(metavar="FOLDER")] = "report"
    """Where to write report.md, tables/ and figures/."""


def _report(args: list[str]) -> int:
    from saferl.experiments.report import write_report

    opts = _parse(ReportArgs, args, "saferl report", ReportArgs.__doc__ or "")
    if not opts.dirs:
        return _error("report needs at least one run directory or sweep folder.")
    path = write_report(list(opts.dirs), opts.out)
    print(f"report: {path}")
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
    """Entry point of the ``saferl`` command; returns the exit status.

    Every error is one ``saferl: error:`` sentence with exit status 2; Ctrl-C at any moment
    exits with 130 after saving what was trained (``--resume`` continues it).
    """
    from saferl import interrupts

    interrupts.install()
    try:
        with interrupts.deferred():  # Ctrl-C inside jaxlib's import would abort the process
            import saferl.algos.registry  # noqa: F401  (JAX, Flax, Optax and every algorithm)
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return _interrupted(None)


def _main(argv: list[str]) -> int:
    from saferl.algos.registry import UnknownAlgorithmError
    from saferl.config import ConfigError
    from saferl.envs import EnvError, MissingBackendError

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    handlers = {"train": _train, "eval": _eval, "sweep": _sweep, "report": _report,
                "list": _list}
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
    except BrokenPipeError:  # `saferl train --help | head`: the reader has gone, say nothing
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except OSError as error:  # a file system refusal, e.g. the disk filled up mid-run
        where = f" {error.filename!r}" if error.filename else ""
        return _error(f"cannot write{where}: {(error.strerror or str(error)).lower()}.")
    except SystemExit as exit_:  # tyro has printed --help
        return exit_.code if isinstance(exit_.code, int) else 2


def entry() -> None:
    """The ``saferl`` console command: :func:`main`, then exit with its status.

    After Ctrl-C the run is already saved and its files and environments closed, so the process
    leaves at once with 130 (``os._exit``) instead of going through interpreter shutdown. That
    shutdown is where two wrong statuses came from: when the interrupt landed inside an
    extension's embedded Python code during start-up, CPython re-raises SIGINT at exit (status
    -2, not 130), and XLA's threads torn down mid-compile crashed it now and then (-11).
    """
    from saferl import interrupts

    status = main()
    if status in {128 + int(signum) for signum in interrupts.SIGNALS}:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe
                pass
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    entry()
