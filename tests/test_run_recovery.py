"""Runs survive what users do to them: damaged checkpoints, Ctrl-C at any moment, closed pipes.

- A damaged checkpoint (truncated or scrambled msgpack, truncated metadata or pointer) is named,
  resume and eval fall back to the newest intact one and say how many iterations are redone, and
  the resumed run still equals the uninterrupted one (native tasks are deterministic).
- ``--checkpoint N`` picks a checkpoint for resume and eval.
- An interrupt before anything was trained leaves a folder that ``--resume`` trains from
  scratch; an interrupt that something swallowed still stops the run at the next iteration.
- A real SIGINT to the command, at start-up and mid-run, exits with 130 and no traceback.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import saferl
from saferl import interrupts
from saferl.cli import main
from tests.conftest import SMALL

FLAGS = ["--env", SMALL["env"], "--num-envs", "8", "--rollout-steps", "100", "--hidden-sizes",
         "16", "16", "--ppo.epochs", "1", "--checkpoint-every", "1", "--eval-episodes", "0"]


def numbers(run_dir: Path) -> list[dict[str, str]]:
    """progress.csv without the wall-clock column."""
    with (run_dir / "progress.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "wall_time"}
                for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 3-iteration run (checkpoints 1, 2, 3) and the uninterrupted 4-iteration reference."""
    root = tmp_path_factory.mktemp("recovery")
    made = {}
    for name, steps in (("three", "2400"), ("four", "3200")):
        made[name] = root / name
        assert main(["train", "ppo_lag", *FLAGS, "--steps", steps, "--run-dir",
                     str(made[name]), "--quiet"]) == 0
    return made


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _scramble(path: Path) -> None:
    path.write_bytes(os.urandom(len(path.read_bytes())))


DAMAGE = {
    "truncated msgpack": ("iter_0000003.msgpack", _truncate),
    "scrambled msgpack": ("iter_0000003.msgpack", _scramble),
    "truncated metadata": ("iter_0000003.json", _truncate),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_resume_names_the_damaged_checkpoint_and_falls_back(runs, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    name, damage = DAMAGE[kind]
    damage(run / "checkpoints" / name)
    assert main(["train", "--resume", str(run), "--steps", "3200"]) == 0
    err = capsys.readouterr().err
    assert f"{run / 'checkpoints' / name}" in err and "is damaged" in err, err
    assert "resuming" in err and "from iteration 2 (step 1,600 of 3,200 per seed); redoing 1 " \
           "iteration logged after it" in err, err
    assert "Traceback" not in err
    assert numbers(run) == numbers(runs["four"])  # the resumed run is the uninterrupted one
    assert (run / "checkpoints" / f"{name}.damaged").is_file()  # set aside, not deleted


def test_a_damaged_pointer_is_not_needed(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    _truncate(run / "checkpoints" / "latest.json")
    assert main(["train", "--resume", str(run), "--steps", "3200"]) == 0
    err = capsys.readouterr().err
    assert "from iteration 3 (step 2,400 of 3,200 per seed); nothing to redo" in err, err
    assert numbers(run) == numbers(runs["four"])


def _files(run: Path, keep: dict[str, tuple[str, ...]], pointer: str | None) -> None:
    """Leave only the checkpoint files in ``keep`` (name -> suffixes) and the given pointer."""
    for path in (run / "checkpoints").iterdir():
        stem, suffix = path.stem, path.suffix
        if path.name == "latest.json" or suffix not in keep.get(stem, ()):
            path.unlink()
    if pointer is not None:
        (run / "checkpoints" / "latest.json").write_text(f'{{"name": "{pointer}"}}')


# (files left, pointer) -> the checkpoints that count as unfinished (each a kill -9 while saving
# or pruning), everything else being complete or damage.
UNFINISHED = [
    ({"iter_0000001": (".msgpack",)}, None, ["iter_0000001"]),  # first save cut short
    ({"iter_0000001": (".json",)}, None, ["iter_0000001"]),
    ({"iter_0000001": (".msgpack", ".json"), "iter_0000002": (".msgpack",)}, "iter_0000001",
     ["iter_0000002"]),  # killed between a later checkpoint's two files
    ({"iter_0000002": (".msgpack", ".json"), "iter_0000003": (".msgpack",)}, "iter_0000003",
     []),  # the pointer names it: it was complete, so its missing metadata is damage
    ({"iter_0000001": (".json",), "iter_0000002": (".msgpack", ".json"),
      "iter_0000003": (".msgpack", ".json"), "iter_0000004": (".msgpack", ".json")},
     "iter_0000004", ["iter_0000001"]),  # a prune cut short: three complete ones are newer
    ({"iter_0000001": (".json",), "iter_0000002": (".msgpack", ".json"),
      "iter_0000003": (".msgpack", ".json")}, "iter_0000003", []),  # within the kept three
]


@pytest.mark.parametrize("keep, pointer, expected", UNFINISHED)
def test_unfinished_checkpoints_are_told_from_damaged_ones(tmp_path, keep, pointer, expected):
    run = saferl.runs.RunDirectory(tmp_path)
    run.checkpoint_dir.mkdir()
    for name in ("iter_0000001", "iter_0000002", "iter_0000003", "iter_0000004"):
        for suffix in (".msgpack", ".json"):
            (run.checkpoint_dir / f"{name}{suffix}").write_bytes(b"x")
    _files(tmp_path, keep, pointer)
    assert run.unfinished_checkpoints() == expected


def test_a_first_checkpoint_cut_short_trains_from_scratch(runs, tmp_path, capsys):
    """kill -9 between the first checkpoint's two files: resume starts over, nothing damaged."""
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    _files(run, {"iter_0000001": (".msgpack",)}, None)
    assert main(["train", "--resume", str(run), "--steps", "3200"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint iter_0000001 was being written or removed when the run stopped" in err
    assert "has no checkpoint yet: training from scratch" in err, err
    assert "damaged" not in err and "Traceback" not in err, err
    assert numbers(run) == numbers(runs["four"])


def test_a_later_checkpoint_cut_short_resumes_from_the_one_before(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    _files(run, {"iter_0000001": (".msgpack", ".json"), "iter_0000002": (".msgpack", ".json"),
                 "iter_0000003": (".msgpack",)}, "iter_0000002")
    assert main(["eval", str(run), "--episodes", "1"]) == 0  # eval skips it without a word
    captured = capsys.readouterr()
    assert "checkpoint of iteration 2" in captured.out and "damaged" not in captured.err
    assert main(["train", "--resume", str(run), "--steps", "3200"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint iter_0000003 was being written" in err and "damaged" not in err, err
    assert "from iteration 2 (step 1,600 of 3,200 per seed); redoing 1 iteration" in err, err
    assert numbers(run) == numbers(runs["four"])
    assert not list((run / "checkpoints").glob("*.damaged"))


def test_resume_from_a_chosen_checkpoint(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    assert main(["train", "--resume", str(run), "--checkpoint", "1", "--steps", "3200"]) == 0
    assert "from iteration 1" in capsys.readouterr().err
    assert numbers(run) == numbers(runs["four"])


def test_eval_falls_back_and_takes_a_checkpoint(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    _truncate(run / "checkpoints" / "iter_0000003.msgpack")
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    captured = capsys.readouterr()
    assert "iter_0000003.msgpack" in captured.err and "Evaluating an older one" in captured.err
    assert "checkpoint of iteration 2" in captured.out
    assert main(["eval", str(run), "--episodes", "2", "--checkpoint", "1"]) == 0
    assert "checkpoint of iteration 1" in capsys.readouterr().out
    assert main(["eval", str(run), "--episodes", "2", "--checkpoint", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saferl: error: checkpoint ") and "iter_0000003.msgpack" in err
    assert len(err.splitlines()) == 1


def test_a_damaged_configuration_is_one_sentence(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    _truncate(run / "config.json")
    for args in (["train", "--resume", str(run)], ["eval", str(run)]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config.json" in err[0] and "is damaged" in err[0], err


def test_every_checkpoint_damaged_is_one_sentence(runs, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    for path in (run / "checkpoints").glob("*.msgpack"):
        _truncate(path)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every checkpoint of" in err[0], err
    # eval says "an older one" only while one is left: 3 checkpoints, 2 such lines
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("Evaluating an older one.") == 2 and ".;" not in err, err


@pytest.fixture
def clean_interrupt_flag():
    interrupts._requested.clear()
    yield
    interrupts._requested.clear()


@pytest.mark.parametrize("where", ["make_environment", "make_engine"])
def test_interrupt_before_training_leaves_a_resumable_folder(runs, tmp_path, capsys,
                                                             monkeypatch, where):
    import saferl.training as training

    real = getattr(training, where)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, where, interrupted)
    run = tmp_path / "run"
    assert main(["train", "ppo_lag", *FLAGS, "--steps", "3200", "--run-dir", str(run),
                 "--quiet"]) == 130
    err = capsys.readouterr().err
    assert f"continue with: saferl train --resume {run}" in err and "Traceback" not in err
    assert (run / "config.json").is_file() and not (run / "checkpoints").exists()
    monkeypatch.setattr(training, where, real)
    assert main(["train", "--resume", str(run)]) == 0
    assert "has no checkpoint yet: training from scratch" in capsys.readouterr().err
    assert numbers(run) == numbers(runs["four"])


def test_a_swallowed_interrupt_still_stops_at_the_next_iteration(tmp_path,
                                                                 clean_interrupt_flag):
    def swallow(iteration, metrics):
        interrupts._requested.set()  # what a gc callback that ate the KeyboardInterrupt leaves

    with pytest.raises(KeyboardInterrupt):
        saferl.train("ppo_lag", SMALL["env"], steps=3200, run_dir=tmp_path / "run",
                     overrides={"run": {"num_envs": 8, "rollout_steps": 100,
                                        "hidden_sizes": [16, 16], "checkpoint_every": 3}},
                     progress=False, callback=swallow)
    rows = numbers(tmp_path / "run")
    assert [r["iteration"] for r in rows] == ["1"]
    assert saferl.runs.RunDirectory(tmp_path / "run").latest_checkpoint() == "iter_0000001"


def test_a_ctrl_c_inside_tensorboard_writing_lets_it_finish_then_stops(runs, tmp_path,
                                                                         monkeypatch, capsys,
                                                                         clean_interrupt_flag):
    """Ctrl-C landing inside TensorBoard's queue once made a later notify wake nobody, and
    closing the run hung in the writer thread's join; bookkeeping now runs to its end first."""
    import tensorboardX.writer

    real = tensorboardX.writer.FileWriter.add_summary
    written = []

    def interrupted(self, summary, global_step=None, walltime=None):
        if global_step == 1600:  # the second iteration's event
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs at the next bytecode
        real(self, summary, global_step, walltime)
        written.append(global_step)

    monkeypatch.setattr(tensorboardX.writer.FileWriter, "add_summary", interrupted)
    run = tmp_path / "run"
    assert main(["train", "ppo_lag", *FLAGS, "--steps", "3200", "--run-dir", str(run),
                 "--quiet"]) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert written == [800, 1600]  # the interrupted write finished; nothing after it ran
    assert [r["iteration"] for r in numbers(run)] == ["1", "2"]
    assert saferl.runs.RunDirectory(run).latest_checkpoint() == "iter_0000002"
    monkeypatch.setattr(tensorboardX.writer.FileWriter, "add_summary", real)
    interrupts._requested.clear()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert numbers(run) == numbers(runs["four"])


def test_deferred_blocks_nest_and_shielded_ones_only_remember():
    script = textwrap.dedent("""
        import os, signal
        from saferl import interrupts
        interrupts.install()
        try:
            with interrupts.deferred():
                with interrupts.deferred():
                    os.kill(os.getpid(), signal.SIGINT)
                print("inner block ended", flush=True)
        except KeyboardInterrupt:
            print("raised after the outer block", flush=True)
        interrupts._requested.clear()
        with interrupts.shielded():
            os.kill(os.getpid(), signal.SIGINT)
        print("shielded block ended without raising", flush=True)
        try:
            interrupts.check()
        except KeyboardInterrupt:
            print("the next check raised", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split("\n")[:4] == [
        "inner block ended", "raised after the outer block",
        "shielded block ended without raising", "the next check raised"], out


def test_a_ctrl_c_inside_a_deferred_block_is_raised_when_the_block_ends():
    # Ctrl-C landing inside jaxlib's import aborted the interpreter ('terminate called after
    # throwing an instance of nanobind::python_error'); the CLI imports JAX inside deferred().
    script = textwrap.dedent("""
        import os, signal
        from saferl import interrupts
        interrupts.install()
        try:
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                print("block ran to its end", flush=True)
        except KeyboardInterrupt:
            print("raised after the block", flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split("\n")[:2] == ["block ran to its end", "raised after the block"], out


def _command(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "saferl.cli", "train", "ppo_lag", *FLAGS, "--steps", "400000",
            "--run-dir", str(run_dir)]


def _spawn(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "SAFERL_PROGRESS_INTERVAL": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _wait_for_progress(process: subprocess.Popen, prefix: bytes) -> None:
    """Read the child's output until a line starts with ``prefix`` (at most 120 s)."""
    deadline = time.time() + 120
    line = b""
    while time.time() < deadline and not line.startswith(prefix):
        line = process.stdout.readline()
    assert line.startswith(b"train "), line


@pytest.mark.parametrize("delay", [0.6, 2.0])
def test_sigint_during_start_up_exits_cleanly_and_resumes(tmp_path, delay):
    run = tmp_path / "run"
    process = _spawn(_command(run))
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 130, out
    for bad in ("Traceback", "terminate called", "Aborted", "FATAL"):
        assert bad not in out, out
    if (run / "config.json").is_file():
        assert f"continue with: saferl train --resume {run}" in out
        latest = saferl.runs.RunDirectory(run).latest_checkpoint()
        iterations = 2 if latest is None else max(2, int(latest.split("_")[1]) + 1)
        assert main(["train", "--resume", str(run), "--steps", str(800 * iterations),
                     "--quiet"]) == 0
        assert len(numbers(run)) == iterations
    else:
        assert "nothing to resume" in out, out


def test_sigint_mid_run_with_a_closed_pipe_still_checkpoints(tmp_path):
    """`saferl train ... 2>&1 | tee log` and Ctrl-C: tee dies first, the run must still save."""
    run = tmp_path / "run"
    process = _spawn(_command(run))
    _wait_for_progress(process, b"train 1,600/")
    process.stdout.close()  # the reader (tee) is gone: every later write hits a closed pipe
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    latest = saferl.runs.RunDirectory(run).latest_checkpoint()
    assert latest is not None and int(latest.split("_")[1]) >= 2


def test_sigterm_stops_a_run_like_ctrl_c_with_its_checkpoint(tmp_path):
    """`kill PID` or a cluster scheduler's time limit: save, say how to resume, exit 143."""
    run = tmp_path / "run"
    process = _spawn(_command(run))
    _wait_for_progress(process, b"train 1,600/")
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 143, out
    assert f"continue with: saferl train --resume {run}" in out and "Traceback" not in out
    latest = saferl.runs.RunDirectory(run).latest_checkpoint()
    assert latest is not None and int(latest.split("_")[1]) >= 2
    iterations = int(latest.split("_")[1]) + 1
    assert main(["train", "--resume", str(run), "--steps", str(800 * iterations),
                 "--quiet"]) == 0
    assert len(numbers(run)) == iterations


def test_a_run_directory_in_use_turns_a_second_process_away(runs, tmp_path, capsys):
    """Two processes never train into one folder; the holder's lock dies with it (kill -9)."""
    run = tmp_path / "run"
    shutil.copytree(runs["three"], run)
    before = (run / "progress.csv").read_text()
    process = _spawn(_command(run.with_name("live")))
    _wait_for_progress(process, b"train ")
    live = run.with_name("live")
    try:
        assert main(["train", "--resume", str(live), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another saferl process (process {process.pid})" in err, err
        assert "Traceback" not in err
    finally:
        process.kill()  # SIGKILL: no clean-up runs, the lock file stays behind
        process.communicate(timeout=60)
    assert (live / ".lock").is_file()
    latest = saferl.runs.RunDirectory(live).latest_checkpoint()
    iterations = 1 if latest is None else int(latest.split("_")[1]) + 1
    assert main(["train", "--resume", str(live), "--steps", str(800 * iterations),
                 "--quiet"]) == 0
    # A lock held in this process (another open file) turns a resume away and changes nothing.
    held = saferl.runs.try_lock(run)
    assert held is not None
    try:
        assert main(["train", "--resume", str(run), "--steps", "3200", "--quiet"]) == 2
        assert "is in use by another saferl process" in capsys.readouterr().err
        assert (run / "progress.csv").read_text() == before
    finally:
        held.close()
    assert main(["train", "--resume", str(run), "--steps", "3200", "--quiet"]) == 0
    assert numbers(run) == numbers(runs["four"])
    # A new run into a folder another process holds: turned away, the folder left as it was.
    empty = tmp_path / "empty"
    empty.mkdir()
    held = saferl.runs.try_lock(empty)
    try:
        assert main(["train", "ppo_lag", *FLAGS, "--steps", "800", "--run-dir", str(empty),
                     "--quiet"]) == 2
        assert "is in use by another saferl process" in capsys.readouterr().err
        assert [p.name for p in empty.iterdir()] == [".lock"]
    finally:
        held.close()


def test_a_progress_row_cut_short_is_redone_and_a_garbled_one_is_named(runs, tmp_path, capsys):
    """A kill or a full disk while progress.csv's last row is written leaves it cut short:
    resume drops it and redoes its iteration, and report reads the rest (both crashed with a
    traceback). A value that is not a number is one sentence naming the line and column."""
    run = tmp_path / "cut"
    shutil.copytree(runs["three"], run)
    text = (run / "progress.csv").read_bytes()
    (run / "progress.csv").write_bytes(text[:-20])  # the last row without its end
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2  # unfinished now
    assert "holds no finished run directory" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "3200"]) == 0
    assert numbers(run) == numbers(runs["four"])
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "every iteration is logged" in capsys.readouterr().err

    garbled = tmp_path / "garbled"
    shutil.copytree(runs["three"], garbled)
    lines = (garbled / "progress.csv").read_text().splitlines()
    header, second = lines[0].split(","), lines[2].split(",")
    second[header.index("rollout/ep_return")] = "-@@#xx"
    lines[2] = ",".join(second)
    (garbled / "progress.csv").write_text("\n".join(lines) + "\n")
    assert main(["report", str(garbled), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "progress.csv' is damaged at line 3, column " \
        "'rollout/ep_return': '-@@#xx' is not a number." in err, err
