"""Packing: runs of a sweep that differ only in seed (and, where the algorithm allows a grid
of cost limits, in cost limit) are trained in one process, as the members of one vectorised
run, and then written out as one ordinary run directory each.

A *pack* lives in ``OUT/packs/pack-<hash>/``: ``pack.json`` (its members' run ids and
directories, the merged configuration, the evaluation stage), ``worker.log`` and ``run/``, the
multi-member saferl run it trains (``--seeds 0 1 2 --limits 20 40`` in one compiled program).
When it has trained, :func:`split_member` writes each member run's ``run/`` as if that run had
trained alone: its own configuration, its rows of ``progress.csv``, its TensorBoard series, its
slice of the final checkpoint (so it loads, evaluates and extends like any run) and its
curves. Its numbers equal the run's alone up to float32 reassociation (``vmap`` batches the
same arithmetic); its wall times are the pack's, which trained all of them at once.

A pack is identified by the run ids it holds, so an interrupted pack is found again and resumed
from its checkpoint on the next ``saferl sweep``; a run that has a run directory of its own (it
was trained alone before) resumes alone and is never packed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from saferl.config import config_to_dict

#: Fields that packing varies across the members of a pack (with the resources of
#: :data:`~saferl.experiments.spec.RESOURCE_FIELDS`, they are left out of the pack key).
MEMBER_FIELDS = ("seed", "seeds", "cost_limit", "limits", "eval_episodes")


@dataclass
class Pack:
    """Runs trained together: one worker process, one multi-member saferl run."""

    pack_id: str
    directory: Path
    run_ids: list[str]
    algo: str
    config: Any  # the merged, multi-member configuration

    def plan(self, runs: dict[str, Path], evaluation: dict[str, Any]) -> dict[str, Any]:
        """JSON-ready ``pack.json``: what the worker trains and where each member goes."""
        return {"pack": self.pack_id, "algo": self.algo, "config": config_to_dict(self.config),
                "members": [{"run_id": r, "directory": str(runs[r])} for r in self.run_ids],
                "evaluation": evaluation}


def evaluated_at_thresholds(algo: str, config: Any) -> bool:
    """Whether a run of ``algo`` deploys a threshold-conditioned policy or a linear-combination
    baseline (whose members are its behaviour thresholds): evaluated at the spec's thresholds
    rather than in its modes."""
    from saferl.algos.registry import get_algorithm
    from saferl.engine.behaviour import conditioning

    return (conditioning(get_algorithm(algo).module, config) is not None
            or getattr(config, "limit_grid", None) is not None)


def limits_packable(algo: str, config: Any) -> bool:
    """Whether runs of ``algo`` that differ in cost limit can share a process: the algorithm
    trains a grid of limits as members (it is not :func:`evaluated_at_thresholds`)."""
    return not evaluated_at_thresholds(algo, config)


def pack_key(algo: str, config: Any) -> str | None:
    """Runs with the same key can be packed: the hash of the algorithm and configuration
    without seed (and cost limit, where :func:`limits_packable`) and resources; ``None`` for
    a run that already trains several members (``seeds``, ``limits``)."""
    from saferl.experiments.spec import RESOURCE_FIELDS

    run = config.run
    if len(run.seed_list) > 1 or run.limits:
        return None
    data = config_to_dict(config)
    dropped = set(RESOURCE_FIELDS) | {"seed", "seeds", "limits", "eval_episodes"}
    if limits_packable(algo, config):
        dropped.add("cost_limit")
    data["run"] = {k: v for k, v in data["run"].items() if k not in dropped}
    text = json.dumps({"algo": algo, "config": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def merged_config(configs: Sequence[Any], run_dir: Path) -> Any:
    """One configuration whose members are the runs of ``configs`` (same key): their seeds
    and, if they differ, their cost limits as a grid; no end-of-training evaluation (each
    member run is evaluated in its own directory)."""
    seeds = list(dict.fromkeys(c.run.seed for c in configs))
    limits = list(dict.fromkeys(tuple(c.run.cost_limit) for c in configs))
    run = configs[0].run
    run = replace(run, seed=seeds[0], seeds=tuple(seeds) if len(seeds) > 1 else (),
                  cost_limit=limits[0], limits=tuple(limits) if len(limits) > 1 else (),
                  eval_episodes=0, run_dir=str(run_dir))
    return replace(configs[0], run=run)


def plan_packs(out: Path, planned: Sequence[Any], pending: set[str], size: int
               ) -> list[Pack]:
    """Group the pending runs into packs of at most ``size`` runs (``size`` 1: none).

    ``planned`` are the sweep's :class:`~saferl.experiments.spec.PlannedRun` in spec order,
    ``pending`` the ids of those pending with no run directory of their own. An interrupted
    pack whose runs are all still pending is taken again first (it resumes); the others are
    grouped by :func:`pack_key`: a full product of seeds × limits is one pack, otherwise one
    pack per limit, each split into chunks of ``size``.
    """
    if size == 1:
        return []
    by_id = {p.run_id: p for p in planned}
    packs: list[Pack] = []
    taken: set[str] = set()
    for plan_file in sorted((out / "packs").glob("*/pack.json")):
        try:
            ids = [m["run_id"] for m in json.loads(plan_file.read_text())["members"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        started = (plan_file.parent / "run" / "config.json").is_file()
        if started and ids and all(i in pending and i not in taken for i in ids) and \
                len(ids) <= size:
            packs.append(_pack(out, [by_id[i] for i in ids]))
            taken.update(ids)
    groups: dict[str, list[Any]] = {}
    for run in planned:
        if run.run_id in pending and run.run_id not in taken:
            key = pack_key(run.algo, run.config)
            if key is not None:
                groups.setdefault(key, []).append(run)
    for runs in groups.values():
        seeds = {r.config.run.seed for r in runs}
        limits = {tuple(r.config.run.cost_limit) for r in runs}
        if len(runs) == len(seeds) * len(limits) and len(runs) <= size:
            chunks = [runs]
        else:
            per_limit: dict[tuple[float, ...], list[Any]] = {}
            for run in runs:
                per_limit.setdefault(tuple(run.config.run.cost_limit), []).append(run)
            chunks = [same[i:i + size] for same in per_limit.values()
                      for i in range(0, len(same), size)]
        packs += [_pack(out, chunk) for chunk in chunks if len(chunk) > 1]
    return packs


def _pack(out: Path, runs: Sequence[Any]) -> Pack:
    ids = [r.run_id for r in runs]
    digest = hashlib.sha256(json.dumps(sorted(ids)).encode()).hexdigest()[:10]
    directory = out / "packs" / f"pack-{digest}"
    config = merged_config([r.config for r in runs], directory / "run")
    return Pack(f"pack-{digest}", directory, ids, runs[0].algo, config)


def split_member(pack_run: Path, run_config: Any, dest: Path) -> None:
    """Write the members of the trained multi-member run ``pack_run`` that make up the run of
    ``run_config`` as an ordinary run directory ``dest`` (replacing what is there).

    ``dest`` gets ``config.json`` (``run_config``, the pack's environment spec), its rows of
    ``progress.csv`` (columns as the run alone would write them), its TensorBoard series, its
    slice of the newest intact checkpoint, and ``curves.png``.
    """
    import jax

    from saferl.engine.members import has_limit_grid, member_label, members
    from saferl.runs import RunDirectory, plot_curves, restore_states

    record, _, pack_config, spec, states, meta = restore_states(pack_run)
    pack_members = list(members(pack_config))
    own = list(members(run_config))
    indices = [pack_members.index(m) for m in own]
    pack_grid, own_grid = has_limit_grid(pack_config), has_limit_grid(run_config)
    rename = {member_label(pack_members[i], pack_grid): member_label(m, own_grid)
              for i, m in zip(indices, own, strict=True)}
    if dest.exists():
        shutil.rmtree(dest)
    target = RunDirectory(dest)
    target.write_config({"algo": record["algo"], "config": config_to_dict(
        replace(run_config, run=replace(run_config.run, run_dir=str(dest)))),
        "spec": record.get("spec"), "packed_in": str(pack_run)})
    _split_progress(pack_run / "progress.csv", dest / "progress.csv", rename, own_grid)
    for source in sorted((pack_run / "tb").glob("seed_*")) if (pack_run / "tb").is_dir() else []:
        label = _tb_label(source.name)
        if label in rename:
            shutil.copytree(source, dest / "tb" / _tb_dir(rename[label]))
    sliced = jax.tree_util.tree_map(lambda x: np.asarray(x)[np.asarray(indices)], states)
    target.save_checkpoint(sliced, int(meta["iteration"]), {
        **{k: v for k, v in meta.items() if k not in ("iteration", "time", "sha256")},
        "seeds": [run_config.run.seed], "members": list(rename.values()),
        "packed_in": str(pack_run)})
    plot_curves(target, tuple(own[0].cost_limit), spec.cost_names)


def _split_progress(source: Path, dest: Path, rename: dict[str, str], grid: bool) -> None:
    """Copy the rows of the renamed members, dropping the limit columns unless ``grid``."""
    from saferl.runs import row_label

    if not source.is_file():
        return
    with source.open() as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    keep = [i for i, name in enumerate(header) if grid or not name.startswith("limit_")]
    with dest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([header[i] for i in keep])
        for row in body:
            values = {k: float(v) if v not in ("", "nan") else float("nan")
                      for k, v in zip(header, row, strict=True)}
            if row_label(values) in rename:
                writer.writerow([row[i] for i in keep])


def _tb_label(name: str) -> str:
    """``seed_3_limit_20`` → ``3@20``; ``seed_3`` → ``3`` (see ``saferl.runs._tb_name``)."""
    seed, _, limit = name.removeprefix("seed_").partition("_limit_")
    return f"{seed}@{limit}" if limit else seed


def _tb_dir(label: str) -> str:
    seed, _, limit = label.partition("@")
    return f"seed_{seed}_limit_{limit}" if limit else f"seed_{seed}"
