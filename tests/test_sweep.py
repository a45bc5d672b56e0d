"""`saferl sweep`: spec checks, run identity, skip / resume / retry, failure isolation,
packing (kills of the driver or a worker, and the Ray backend: ``test_sweep_faults.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from saferl.cli import main
from saferl.experiments.spec import SpecError, load_spec, parse_spec, run_hash
from saferl.experiments.sweep import prepare, run_sweep, slot_cpus
from saferl.training import build_config

TINY = {"env": "saferl/BallRun-v0", "num_envs": 4, "rollout_steps": 100, "steps": 800,
        "checkpoint_every": 1, "hidden_sizes": [16, 16], "eval_episodes": 0}


def without_wall_time(text: str) -> list[str]:
    """``progress.csv`` rows without the wall-clock column (the third)."""
    return [",".join(v for i, v in enumerate(row.split(",")) if i != 2)
            for row in text.splitlines()]


def write_spec(folder: Path, text: str, name: str = "spec.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


SPEC = f"""
out = "out"
[axes]
algo = ["ppo_lag"]
seed = [0, 1]
cost_limit = [5, 50]
[config]
{chr(10).join(f"{k} = {json.dumps(v)}" for k, v in TINY.items())}
[config.ppo]
epochs = 1
minibatches = 2
[evaluation]
episodes = 2
modes = ["deterministic"]
"""


@pytest.mark.parametrize(("text", "message"), [
    ("[axis]\nalgo = ['ppo_lag']", "unknown key 'axis' in the sweep spec. Did you mean 'axes'?"),
    ("[axes]\nalgo = ['ppo_lag']\nseeds_ = [0]", "unknown axis 'seeds_'"),
    ("[axes]\nalgo = ['ppo_lag']\n'lagrange.lrr' = [0.1]", "Did you mean 'lagrange.lr'?"),
    ("[axes]\nalgo = ['ppo_lag']\nseed = []", "axis 'seed' is empty"),
    ("[axes]\nalgo = ['ppo_lag']\nseed = 3", "axis 'seed' must be a list of values"),
    ("[axes]\nalgo = ['ppo_lag']\nseed = [0, 'one']", "mixes values of different types"),
    ("[axes]\nalgo = ['ppo_lag']\nsteps = [800]\n'run.steps' = [1600]",
     "axis 'steps' and axis 'run.steps' both set run.steps"),
    ("[axes]\nalgo = ['ppo_lag']\nseed = [0]\n[config]\nseed = 1",
     "axis 'seed' and [config] field 'seed' both set run.seed"),
    ("[axes]\nalgo = ['ppo_lagg']", "Did you mean 'ppo_lag'?"),
    ("[axes]\nalgo = ['ppo_lag']\n'ppo.epochs' = ['ten']", "ppo.epochs must be an integer"),
    ("[axes]\nalgo = ['ccpo']\nlimits = [[20, 40]]", "leave limits out"),
    ("[axes]\nalgo = ['ppo_lag']\n[evaluation]\nmodes = ['greedy']", "evaluation.modes must"),
    ("[axes]\nseed = [0]", "no algorithm"),
    # checked at planning, not first in the worker
    ("[axes]\nalgo = ['ppo_lag']\n[config]\nenv = 'saferl/BalRun-v0'",
     "Unknown environment id 'saferl/BalRun-v0'; did you mean 'saferl/BallRun-v0'"),
    ("[axes]\nalgo = ['ppo_lag']\n[config]\nenv = 'saferl/BallRun-v0'\nenv_kwargs = {nope = 1}",
     "env_kwargs key 'nope' is not a parameter of 'saferl/BallRun-v0'"),
])
def test_bad_specs_are_one_sentence_before_anything_runs(tmp_path, text, message):
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "sweeps").exists()


def test_the_grid_expands_to_every_combination_with_stable_identities(tmp_path):
    sweep = load_spec(write_spec(tmp_path, SPEC))
    assert len(sweep.runs) == 4
    assert [r.values for r in sweep.runs] == [
        {"algo": "ppo_lag", "seed": s, "cost_limit": c} for s in (0, 1) for c in (5, 50)]
    assert sweep.runs[0].label == "ppo_lag_seed0_cost5"
    assert sweep.runs[0].config.run.cost_limit == (5.0,) and sweep.runs[0].config.ppo.epochs == 1
    again = load_spec(write_spec(tmp_path, SPEC, "again.toml"))
    assert [r.run_id for r in again.runs] == [r.run_id for r in sweep.runs]
    assert len({r.run_id for r in sweep.runs}) == 4


def test_the_run_hash_ignores_resources_and_nothing_else():
    base = build_config("ppo_lag", overrides={"run": TINY})
    same = build_config("ppo_lag", overrides={"run": {**TINY, "run_dir": "elsewhere",
                                                      "checkpoint_every": 7}})
    other = build_config("ppo_lag", overrides={"run": {**TINY, "steps": 1600}})
    assert run_hash("ppo_lag", base) == run_hash("ppo_lag", same)
    assert run_hash("ppo_lag", base) != run_hash("ppo_lag", other)
    assert run_hash("ppo_lag", base) != run_hash("trpo_lag", build_config(
        "trpo_lag", overrides={"run": TINY}))
    # Pinned: a change of the hash renames every sweep's run directories.
    assert len(run_hash("ppo_lag", base)) == 10


def test_overlapped_collection_names_another_run_and_the_default_keeps_its_name():
    # Overlapped collection steps with the actor from before the last updates: other data,
    # so another run (and another pack, and another report row). It was once hashed as a
    # resource; at its default it stays out of the hash, so existing sweep folders keep
    # their run directories.
    import hashlib
    import json

    from saferl.config import config_to_dict
    from saferl.experiments.packing import pack_key
    from saferl.experiments.report import IGNORED

    plain = build_config("sac_lag", overrides={"env": "SafetyBallCircle-v0"})
    overlapped = build_config("sac_lag", overrides={"env": "SafetyBallCircle-v0",
                                                    "run": {"overlap_collection": True}})
    assert run_hash("sac_lag", plain) != run_hash("sac_lag", overlapped)
    assert pack_key("sac_lag", plain) != pack_key("sac_lag", overlapped)
    assert "overlap_collection" not in IGNORED
    data = config_to_dict(plain)
    dropped = ("run_dir", "env_workers", "overlap_collection", "checkpoint_every")
    data["run"] = {k: v for k, v in data["run"].items() if k not in dropped}
    before = hashlib.sha256(json.dumps({"algo": "sac_lag", "config": data}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:10]
    assert run_hash("sac_lag", plain) == before


def test_skip_done_resume_interrupted_isolate_and_retry_failed(tmp_path):
    text = SPEC.replace('env = "saferl/BallRun-v0"\n', '').replace(
        'cost_limit = [5, 50]', 'cost_limit = [5, 50]\nenv = '
        '["saferl/BallRun-v0", "saferl_no_such_module:NoSuchTask-v0"]')  # fails in the worker
    sweep = load_spec(write_spec(tmp_path, text))
    assert len(sweep.runs) == 8
    result = run_sweep(sweep, jobs=2, progress=False, pack_size=1)
    assert result.count("done") == 4 and result.count("failed") == 4
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2:
        pinned = {next(line for line in (r.directory / "worker.log").read_text().splitlines()
                       if line.startswith("worker ")).split("CPUs ")[1] for r in result.runs}
        assert pinned == {str(c) for c in sorted(os.sched_getaffinity(0))[:2]}, pinned
    failed = result.failed[0]
    assert "NoSuchTask" in failed.label and "NoSuchTask" in failed.error
    index = json.loads((sweep.out / "sweep.json").read_text())
    assert index["counts"] == {"done": 4, "running": 0, "pending": 0, "failed": 4}
    done = [r for r in result.runs if r.state == "done"]
    for run in done:
        run_dir = run.directory / "run"
        assert (run_dir / "eval.json").is_file() and (run_dir / "progress.csv").is_file()
        record = json.loads((run_dir / "eval.json").read_text())
        assert list(next(iter(record["per_seed"].values()))) == ["deterministic"]

    # Interrupted: forget one run's status and its newest checkpoints; it resumes from the
    # oldest one left (alone: a run with a directory of its own is never packed) and ends with
    # the same numbers.
    target = done[0].directory
    before = (target / "run" / "progress.csv").read_text()
    (target / "status.json").unlink()
    checkpoints = sorted((target / "run" / "checkpoints").glob("iter_*.msgpack"))
    for path in checkpoints[1:]:
        path.unlink()
        path.with_suffix(".json").unlink()
    (target / "run" / "checkpoints" / "latest.json").unlink()
    stamps = {r.run_id: (r.directory / "status.json").stat().st_mtime_ns for r in done[1:]}
    failed_stamps = {r.run_id: ((r.directory / "status.json").stat().st_mtime_ns,
                                (r.directory / "worker.log").stat().st_size)
                     for r in result.failed}
    kept = int(checkpoints[0].stem.split("_")[1])
    again = run_sweep(load_spec(tmp_path / "spec.toml"), jobs=1, progress=False)
    assert again.count("done") == 4 and again.count("failed") == 4  # failed ones skipped
    after = (target / "run" / "progress.csv").read_text()
    assert without_wall_time(after) == without_wall_time(before)
    # resumed from the checkpoint, not trained again from scratch: the rows up to it are the
    # first attempt's, wall times included
    def up_to_kept(text: str) -> list[str]:
        return [row for row in text.splitlines()[1:] if int(row.split(",")[0]) <= kept]
    assert up_to_kept(after) == up_to_kept(before) and up_to_kept(before)
    # failed runs are not retried unless asked: their status and log are untouched
    assert {r.run_id: ((r.directory / "status.json").stat().st_mtime_ns,
                       (r.directory / "worker.log").stat().st_size)
            for r in result.failed} == failed_stamps
    assert not any((r.directory / "status.failed.json").exists() for r in result.failed)
    assert {r.run_id: (r.directory / "status.json").stat().st_mtime_ns
            for r in done[1:]} == stamps  # finished runs were not redone
    assert "failed" in json.loads((failed.directory / "status.json").read_text())["state"]

    retried = run_sweep(load_spec(tmp_path / "spec.toml"), retry_failed=True, progress=False)
    assert retried.count("failed") == 4 and (failed.directory / "status.failed.json").is_file()
    # Retried packed: the four failing runs differ only in seed and limit, one process.
    assert [p.name for p in (sweep.out / "packs").iterdir()] == [
        json.loads((failed.directory / "status.json").read_text())["packed_in"].split("/")[-1]]


def test_sweep_command_bad_input_and_dry_run(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    spec = write_spec(tmp_path, SPEC)
    assert main(["sweep", str(spec), "--jobs", "0"]) == 2
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("pending") == 4 and "4 runs in" in out
    # one column per field, whatever the notes: each run's directory starts at one offset
    listed = [line for line in out.splitlines() if line.startswith("pending")]
    assert len({line.index(str(tmp_path)) for line in listed}) == 1, listed


def test_a_dry_run_beside_a_running_sweep_says_which_runs_are_training(tmp_path, capsys):
    # A run whose lock a live saferl process holds is listed as running, by that process;
    # the listing takes no lock itself (the holder keeps it), and a stale lock file whose
    # process has gone says nothing.
    import subprocess
    import sys

    from saferl.runs import LOCK_FILE, lock_holder

    spec = write_spec(tmp_path, SPEC)
    sweep = load_spec(spec)
    busy = sweep.out / "runs" / sweep.runs[0].run_id
    busy.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, saferl.runs; h = saferl.runs.try_lock("
         "sys.argv[1]); print(h is not None, flush=True); time.sleep(60)", str(busy)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "True"
        assert lock_holder(busy) == holder.pid
        assert main(["sweep", str(spec), "--dry-run", "--pack-size", "1"]) == 0
        out = capsys.readouterr().out
        (line,) = [line for line in out.splitlines() if str(busy) in line]
        assert line.startswith("running") and f"(in process {holder.pid})" in line
        assert out.count("pending") == 3
        assert (busy / LOCK_FILE).read_text().strip() == str(holder.pid)
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(busy) is None  # the file still names the process; it has exited
    assert main(["sweep", str(spec), "--dry-run", "--pack-size", "1"]) == 0
    assert capsys.readouterr().out.count("pending") == 4


def test_parse_spec_names_the_sweep_after_its_file(tmp_path):
    sweep = parse_spec({"axes": {"algo": ["ppo_lag"]}, "config": {"steps": 800}}, "study",
                       tmp_path)
    assert sweep.name == "study" and sweep.out == tmp_path / "sweeps" / "study"


def planned(text: str, tmp_path: Path) -> list:
    return load_spec(write_spec(tmp_path, text, "plan.toml")).runs


def test_runs_differing_only_in_seed_or_limit_are_packed(tmp_path):
    from saferl.experiments.packing import plan_packs

    runs = planned(SPEC, tmp_path)
    ids = {r.run_id for r in runs}
    (pack,) = plan_packs(tmp_path, runs, ids, size=10)
    assert pack.run_ids == [r.run_id for r in runs]
    assert pack.config.run.seeds == (0, 1) and pack.config.run.limits == ((5.0,), (50.0,))
    assert pack.config.run.eval_episodes == 0  # each run is evaluated in its own directory
    # Not a full product of seeds x limits (one run done): one pack per limit; the run left
    # alone at its limit is not a pack.
    (pack,) = plan_packs(tmp_path, runs, ids - {runs[0].run_id}, size=10)
    assert pack.run_ids == [runs[1].run_id, runs[3].run_id]  # seeds 0 and 1 at limit 50
    assert [len(p.run_ids) for p in plan_packs(tmp_path, runs, ids, size=2)] == [2, 2]
    assert plan_packs(tmp_path, runs, ids, size=1) == []
    # Another setting: never packed together; a conditioned algorithm packs seeds only.
    other = planned(SPEC.replace("seed = [0, 1]", "seed = [0, 1]\n'ppo.epochs' = [1, 2]")
                    .replace("[config.ppo]\nepochs = 1\n", "[config.ppo]\n"), tmp_path)
    assert sorted(len(p.run_ids) for p in plan_packs(tmp_path, other, {r.run_id for r in other},
                                                     size=10)) == [4, 4]
    versatile = planned("[axes]\nalgo = ['vsac_lag']\nseed = [0, 1, 2]\ncost_limit = [5, 50]\n"
                        "[config]\nsteps = 1000", tmp_path)
    packs = plan_packs(tmp_path, versatile, {r.run_id for r in versatile}, size=10)
    assert sorted(p.config.run.seeds for p in packs) == [(0, 1, 2), (0, 1, 2)]
    assert all(p.config.run.limits == () for p in packs)


def test_packed_runs_are_written_out_as_runs_trained_alone(tmp_path, capsys):
    import numpy as np

    import saferl
    from saferl.experiments.report import find_runs
    from saferl.runs import RunDirectory
    from tests.algos.test_engine import assert_same_rows, rows_without_time

    spec = write_spec(tmp_path, SPEC)
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert "4 of them in 1 pack" in capsys.readouterr().out
    sweep = load_spec(spec)
    result = run_sweep(sweep, progress=False)
    assert result.count("done") == 4
    (pack,) = (sweep.out / "packs").iterdir()
    pack_rows = RunDirectory(pack / "run").read_progress()
    for run in sweep.runs:
        run_dir = sweep.out / "runs" / run.run_id / "run"
        record = json.loads((run_dir / "config.json").read_text())
        assert record["config"]["run"] == {**json.loads(json.dumps(
            run.record()["config"]["run"])), "run_dir": str(run_dir)}
        own = rows_without_time(RunDirectory(run_dir).read_progress())
        seed, limit = run.config.run.seed, run.config.run.cost_limit[0]
        assert own == [{k: v for k, v in r.items() if k != "limit_0"}
                       for r in rows_without_time(pack_rows)
                       if r["seed"] == seed and r["limit_0"] == limit]
        evaluation = json.loads((run_dir / "eval.json").read_text())
        assert list(evaluation["per_seed"]) == [str(seed)]
        assert evaluation["cost_limit"] == [limit]
        assert sorted(p.name for p in (run_dir / "tb").iterdir()) == [f"seed_{seed}"]
        assert (run_dir / "curves.png").is_file()
    assert sorted(find_runs([sweep.out])) == sorted(
        sweep.out / "runs" / r.run_id / "run" for r in sweep.runs)  # not the pack's run

    # One of them trained alone: the same numbers up to float32 reassociation, the same
    # actions from the deployed policy.
    last = sweep.runs[-1]
    alone = saferl.train(last.algo, config=last.config, run_dir=tmp_path / "alone",
                         progress=False)
    packed_dir = sweep.out / "runs" / last.run_id / "run"
    assert_same_rows(rows_without_time(RunDirectory(packed_dir).read_progress()),
                     rows_without_time(alone.history), rtol=2e-3, atol=2e-3)
    obs = np.random.default_rng(0).normal(size=(16, saferl.load(packed_dir).obs_dim))
    np.testing.assert_allclose(saferl.load(packed_dir)(obs), saferl.load(alone.run_dir)(obs),
                               atol=1e-3)
    # A packed run extends like any run.
    more = saferl.train(resume=packed_dir, steps=1200, progress=False)
    assert max(r["env_steps"] for r in more.history) == 1200


def test_runs_another_sweep_finished_are_copied_not_retrained(tmp_path, capsys):
    """--reuse: a run with the same configuration and evaluation, under another label, is
    copied; a new seed trains; a different evaluation stage trains again."""
    first = load_spec(write_spec(tmp_path, SPEC.replace("seed = [0, 1]\ncost_limit = [5, 50]",
                                                        "seed = [0, 1]\ncost_limit = [5]"),
                                 "first.toml"))
    assert run_sweep(first, progress=False).count("done") == 2
    # Another label (a new axis at its default value), the same configurations up to a
    # resource (checkpoint frequency: not part of a run's identity), and seed 2.
    text = SPEC.replace("seed = [0, 1]\ncost_limit = [5, 50]",
                        "seed = [0, 1, 2]\ncost_limit = [5]\n'ppo.clip_ratio' = [0.2]").replace(
        "checkpoint_every = 1", "checkpoint_every = 2")
    assert "checkpoint_every = 2" in text
    second = write_spec(tmp_path, text.replace('out = "out"', 'out = "second"'), "second.toml")
    assert main(["sweep", str(second), "--reuse", str(tmp_path / "nowhere")]) == 2
    assert "--reuse folder" in capsys.readouterr().err and not (tmp_path / "second").exists()
    assert main(["sweep", str(second), "--dry-run", "--reuse", str(first.out)]) == 0
    assert capsys.readouterr().out.count("(reuses ") == 2
    assert main(["sweep", str(second), "--reuse", str(first.out)]) == 0
    assert "sweep: 2 run(s) copied, finished, from" in capsys.readouterr().err
    runs = {r.run_id: r for r in prepare(load_spec(second), write=False)}
    by_seed = {r.config.run.seed: r.run_id for r in load_spec(second).runs}
    originals = {r.config.run.seed: first.out / "runs" / r.run_id for r in first.runs}
    for seed in (0, 1):
        copied = runs[by_seed[seed]]
        assert copied.state == "done" and copied.reused == str(originals[seed])
        assert "clipratio" in copied.label and copied.run_id != originals[seed].name
        assert (copied.directory / "run" / "progress.csv").read_text() == \
            (originals[seed] / "run" / "progress.csv").read_text()
        assert (copied.directory / "run" / "eval.json").is_file()
        assert not (copied.directory / "run" / ".lock").exists()
    trained = runs[by_seed[2]]
    assert trained.state == "done" and trained.reused is None
    # A different evaluation stage is not the same run: nothing to copy.
    third = write_spec(tmp_path, SPEC.replace('out = "out"', 'out = "third"').replace(
        "episodes = 2", "episodes = 3"), "third.toml")
    assert not any(s.reused for s in prepare(load_spec(third), write=False,
                                             reuse=[first.out]))


def test_slots_get_their_own_cpus_of_those_the_driver_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6, 7, 9}, raising=False)
    assert slot_cpus(2) == [(4, 5), (6, 7)]
    assert slot_cpus(5) == [(4,), (5,), (6,), (7,), (9,)]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert slot_cpus(3) == [(0,), (1,), (0,)]  # more slots than CPUs: they share, in turn


def test_workers_get_their_threads_and_devices_before_jax_and_no_preexec_fn(monkeypatch,
                                                                            tmp_path):
    """A worker's XLA devices and thread pools are fixed in its environment (read when its
    JAX starts), a device count already set is replaced, and the driver starts it with a plain
    fork-exec: no Python runs between fork and exec (``preexec_fn``) in a process whose JAX
    threads may be running."""
    from saferl.experiments import sweep as sweep_module

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=7 --xla_other=1")
    env = sweep_module.worker_environment(2, (0, 1))
    assert env["XLA_FLAGS"].split() == ["--xla_other=1",
                                        "--xla_force_host_platform_device_count=2"]
    assert [env[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")] \
        == ["2", "2", "2"]
    assert env["SAFERL_WORKER_CPUS"] == "0,1" and env["SAFERL_SWEEP_DRIVER"] == str(os.getpid())

    started = []

    class Recorded:
        def __init__(self, *args, **kwargs):
            started.append(kwargs)
            self.pid, self.returncode = 12345, 0

        def poll(self):
            return 0

    monkeypatch.setattr(sweep_module.subprocess, "Popen", Recorded)
    monkeypatch.setattr(sweep_module, "_finish", lambda job, code: None)
    sweep_module.run_local([sweep_module.Job(tmp_path, [])], 1, lambda: None)
    assert len(started) == 1 and "preexec_fn" not in started[0]
    assert started[0]["env"]["XLA_FLAGS"].endswith("--xla_force_host_platform_device_count="
                                                   f"{len(sweep_module.slot_cpus(1)[0])}")


def test_a_conditioned_policy_is_evaluated_at_the_specs_thresholds(tmp_path):
    """The evaluation stage of a threshold-conditioned run: ``episodes`` at each of the spec's
    ``thresholds`` (not its behaviour thresholds), written as ``versatile.*`` into the run
    directory; packed seeds each get their own."""
    run_fields = {"env": "saferl/BallRun-v0", "num_envs": 4, "rollout_steps": 10,
                  "steps": 400, "warmup_steps": 80, "batch_size": 32, "update_ratio": 0.5,
                  "hidden_sizes": [16, 16]}
    spec = write_spec(tmp_path, "out = \"out\"\n[axes]\nalgo = [\"vsac_lag\"]\nseed = [0, 1]\n"
                      "[config]\n" + "\n".join(f"{k} = {json.dumps(v)}"
                                               for k, v in run_fields.items())
                      + "\n[evaluation]\nepisodes = 2\nthresholds = [10, 35]\n")
    sweep = load_spec(spec)
    result = run_sweep(sweep, progress=False)
    assert result.count("done") == 2
    for run in sweep.runs:
        run_dir = sweep.out / "runs" / run.run_id / "run"
        record = json.loads((run_dir / "versatile.json").read_text())
        assert record["thresholds"] == [[10.0], [35.0]] and record["episodes"] == 2
        assert record["seeds"] == [run.config.run.seed] and record["deterministic"] is True
        assert [row["threshold_0"] for row in record["table"]] == [10.0, 35.0]
        assert (run_dir / "versatile.csv").is_file() and (run_dir / "versatile.png").is_file()
        assert not (run_dir / "eval.json").exists()
