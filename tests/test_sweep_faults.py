"""`saferl sweep` under faults and on Ray: SIGKILL of the driver or of one worker mid-run, then
the same command again; a local Ray instance gives the local backend's run directories."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import saferl.runs
from saferl.cli import main
from saferl.experiments.spec import load_spec
from saferl.experiments.sweep import run_sweep
from tests.test_sweep import SPEC, without_wall_time, write_spec

# Long enough that a run is still training a few seconds after its first checkpoint: at
# 40,000 steps an idle machine finished the whole pack within the second the SIGTERM test
# waited after it, and a run was done before it was interrupted.
LONG = SPEC.replace("steps = 800", "steps = 200000").replace("seed = [0, 1]", "seed = [0]")


def wait_for_checkpoint(folder: Path, pattern: str, process: subprocess.Popen) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and not list(folder.glob(pattern)):
        assert process.poll() is None, "the sweep ended before its first checkpoint"
        time.sleep(0.1)
    assert list(folder.glob(pattern)), f"{folder / pattern} never appeared"


def saferl_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "saferl"), *args]


def test_killing_the_driver_leaves_nothing_running_and_the_rerun_finishes(tmp_path):
    spec = write_spec(tmp_path, LONG)  # two runs, packed: one process trains both
    driver = subprocess.Popen(saferl_command("sweep", str(spec)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    sweep = load_spec(spec)
    wait_for_checkpoint(sweep.out, "packs/*/run/checkpoints/iter_*.msgpack", driver)
    pack = next(sweep.out.glob("packs/*"))
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    import fcntl

    with (pack / ".lock").open("w") as handle:  # the worker died with the driver: lock free
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not any((sweep.out / "runs" / r.run_id / "status.json").exists() for r in sweep.runs)
    assert main(["sweep", str(spec)]) == 0
    index = json.loads((sweep.out / "sweep.json").read_text())
    assert index["counts"]["done"] == 2
    assert [p.name for p in (sweep.out / "packs").iterdir()] == [pack.name]  # the same pack
    assert "resuming" in (pack / "worker.log").read_text()


def test_sigterm_to_a_background_sweep_checkpoints_its_workers_and_the_rerun_resumes(tmp_path,
                                                                                     capsys):
    """A sweep started in the background has SIGINT ignored (so have its workers); SIGTERM
    (`kill`, a scheduler's time limit) stops it with every run under way checkpointed."""
    spec = write_spec(tmp_path, LONG)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited, as `cmd &` does
    try:
        driver = subprocess.Popen(saferl_command("sweep", str(spec)), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    sweep = load_spec(spec)
    wait_for_checkpoint(sweep.out, "packs/*/run/checkpoints/iter_*.msgpack", driver)
    pack = next(sweep.out.glob("packs/*"))
    time.sleep(0.3)
    driver.send_signal(signal.SIGTERM)
    err = driver.communicate(timeout=120)[1].decode()
    assert driver.returncode == 143, err
    assert "every run under way was checkpointed" in err and "Traceback" not in err
    assert "Traceback" not in (pack / "worker.log").read_text()
    assert not any((sweep.out / "runs" / r.run_id / "status.json").exists() for r in sweep.runs)
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    latest = saferl.runs.RunDirectory(pack / "run").latest_checkpoint()
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pending")]
    assert len(listed) == 2 and all(f"(resumes from {latest}, in {pack.name})" in line
                                    for line in listed), listed
    before = float((pack / "run" / "progress.csv").read_text().splitlines()[-1].split(",")[2])
    assert main(["sweep", str(spec)]) == 0
    assert json.loads((sweep.out / "sweep.json").read_text())["counts"]["done"] == 2
    assert "resuming" in (pack / "worker.log").read_text()
    # the training time counts both attempts; the wall time only the resuming worker's
    last = float((pack / "run" / "progress.csv").read_text().splitlines()[-1].split(",")[2])
    for run in sweep.runs:
        status = json.loads((sweep.out / "runs" / run.run_id / "status.json").read_text())
        assert status["training_time"] == pytest.approx(last) and last > before > 0


def worker_pids(directory: Path) -> list[int]:
    """Processes running the sweep worker on ``directory`` (from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            line = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"saferl.experiments.worker" in line and str(directory).encode() in line:
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_killed_worker_fails_alone_and_the_rerun_resumes_it(tmp_path):
    spec = write_spec(tmp_path, LONG)
    sweep = load_spec(spec)
    target = sweep.out / "runs" / sweep.runs[0].run_id
    driver = subprocess.Popen(saferl_command("sweep", str(spec), "--pack-size", "1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(target, "run/checkpoints/iter_*.msgpack", driver)
    pids = worker_pids(target)
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 1  # the other run went on and finished
    assert "failed: ppo_lag_seed0_cost5" in err and "killed?" in err and "resumes it" in err
    index = json.loads((sweep.out / "sweep.json").read_text())
    assert index["counts"] == {"done": 1, "running": 0, "pending": 0, "failed": 1}
    assert main(["sweep", str(spec), "--pack-size", "1"]) == 0
    assert "resuming" in (target / "worker.log").read_text()
    assert json.loads((target / "status.json").read_text())["state"] == "done"


def test_a_sweep_on_a_local_ray_instance_equals_the_local_backend(tmp_path):
    pytest.importorskip("ray")
    text = SPEC.replace("seed = [0, 1]", "seed = [0]").replace("cost_limit = [5, 50]",
                                                                "cost_limit = [5, 50]")
    local = load_spec(write_spec(tmp_path, text.replace('out = "out"', 'out = "local"'),
                                 "local.toml"))
    remote = load_spec(write_spec(tmp_path, text.replace('out = "out"', 'out = "ray"'),
                                  "ray.toml"))
    assert run_sweep(local, progress=False).count("done") == 2
    # The two runs are packed into one process on both backends; with the same cores (here
    # XLA devices the members are sharded over) the same program gives the same numbers.
    cores = os.cpu_count() or 1
    result = run_sweep(remote, backend="ray", cpus_per_run=cores, progress=False)
    assert result.count("done") == 2, [(r.label, r.error) for r in result.runs]
    names = sorted(p.name for p in (local.out / "runs").iterdir())
    assert names == sorted(p.name for p in (remote.out / "runs").iterdir())
    for name in names:
        a = (local.out / "runs" / name / "run" / "progress.csv").read_text()
        b = (remote.out / "runs" / name / "run" / "progress.csv").read_text()
        assert without_wall_time(a) == without_wall_time(b)
        assert json.loads((local.out / "runs" / name / "run" / "eval.json").read_text())[
            "per_seed"] == json.loads((remote.out / "runs" / name / "run" / "eval.json")
                                      .read_text())["per_seed"]


def test_the_ray_backend_without_a_cluster_is_one_sentence(tmp_path, capsys):
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, SPEC)
    assert main(["sweep", str(spec), "--backend", "ray", "--address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not connect to the Ray cluster at '127.0.0.1:1'" in err[0]


def test_the_ray_backend_without_ray_installed_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if saferl[ray] were not installed
    spec = write_spec(tmp_path, SPEC)
    assert main(["sweep", str(spec), "--backend", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'saferl[ray]'" in err[0], err
    assert not (load_spec(spec).out / "runs").exists()  # refused before anything was written


def test_after_a_driver_sigkill_the_rerun_redoes_nothing_finished_and_loses_nothing(tmp_path):
    """One job at a time: a short run finishes, a long one has checkpointed when the driver is
    killed. The rerun leaves the finished run as it was (status untouched) and resumes the
    other: its rows up to the checkpoint are the first attempt's, wall times included."""
    tiny = "\n".join(line for line in SPEC.split("[config]\n")[1].split("[evaluation]")[0]
                     .splitlines() if not line.startswith("steps"))
    text = (f'out = "out"\n[config]\n{tiny}\n'
            '[[grid]]\naxes = { algo = ["ppo_lag"], seed = [0], cost_limit = [5] }\n'
            'config = { steps = 800 }\n'
            '[[grid]]\naxes = { algo = ["ppo_lag"], seed = [0], cost_limit = [50] }\n'
            'config = { steps = 40000 }\n')
    spec = write_spec(tmp_path, text)
    sweep = load_spec(spec)
    short, long = (sweep.out / "runs" / r.run_id for r in sweep.runs)
    driver = subprocess.Popen(saferl_command("sweep", str(spec), "--jobs", "1",
                                             "--pack-size", "1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    wait_for_checkpoint(long, "run/checkpoints/iter_*.msgpack", driver)
    assert json.loads((short / "status.json").read_text())["state"] == "done"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)  # the worker dies with its driver
    stamp = (short / "status.json").stat().st_mtime_ns
    checkpoint = saferl.runs.RunDirectory(long / "run").latest_checkpoint()
    kept = int(checkpoint.split("_")[1])
    before = [row for row in (long / "run" / "progress.csv").read_text().splitlines()[1:]
              if int(row.split(",")[0]) <= kept]
    assert before and not (long / "status.json").exists()
    assert main(["sweep", str(spec), "--jobs", "1", "--pack-size", "1"]) == 0
    assert (short / "status.json").stat().st_mtime_ns == stamp  # not redone
    after = (long / "run" / "progress.csv").read_text().splitlines()[1:]
    assert after[:len(before)] == before  # nothing lost, nothing recomputed
    assert int(after[-1].split(",")[0]) == sweep.runs[1].config.run.iterations
    assert "resuming" in (long / "worker.log").read_text()
