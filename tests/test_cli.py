"""The `saferl` command: train / eval / list, and one-sentence errors for bad input."""

import json

import pytest

from saferl.cli import main
from tests.conftest import SMALL


def small_flags(run_dir):
    return ["--env", SMALL["env"], "--num-envs", "8", "--rollout-steps", "100", "--steps",
            "1600", "--hidden-sizes", "16", "16", "--ppo.epochs", "1", "--run-dir", str(run_dir),
            "--quiet"]


@pytest.mark.core
def test_list_shows_algorithms_and_environments(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ppo_lag", "ppo", "saferl/BallCircle-v0", "SafetyBallCircle-v0"):
        assert name in out


@pytest.mark.core
def test_train_then_eval_then_resume(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "ppo_lag", *small_flags(run_dir), "--lagrange.method", "pid"]) == 0
    record = json.loads((run_dir / "config.json").read_text())
    assert record["algo"] == "ppo_lag" and record["config"]["lagrange"]["method"] == "pid"
    assert record["config"]["run"]["env"] == SMALL["env"]
    assert main(["eval", str(run_dir), "--episodes", "2", "--video",
                 str(tmp_path / "ep.gif")]) == 0
    out = capsys.readouterr().out
    assert "deterministic" in out and "stochastic" in out and (tmp_path / "ep.gif").is_file()
    assert main(["train", "--resume", str(run_dir), "--steps", "2400", "--quiet"]) == 0
    rows = (run_dir / "progress.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + 3 iterations of 800 steps


def test_config_file_then_flags_override(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('env = "saferl/BallRun-v0"\nsteps = 800\n[ppo]\nepochs = 1\n'
                      '[lagrange]\nlr = 0.5\n')
    run_dir = tmp_path / "run"
    assert main(["train", "ppo_lag", "--config", str(config), "--num-envs", "8",
                 "--rollout-steps", "100", "--lagrange.lr", "0.25", "--run-dir", str(run_dir),
                 "--quiet"]) == 0
    cfg = json.loads((run_dir / "config.json").read_text())["config"]
    assert cfg["run"]["steps"] == 800 and cfg["ppo"]["epochs"] == 1
    assert cfg["lagrange"]["lr"] == 0.25


@pytest.mark.core
@pytest.mark.parametrize("args,message", [
    (["train", "ppo_lgs"], "Did you mean 'ppo_lag'"),
    (["train", "ppo_lag", "--env", "SafetyBalCircle-v0"], "SafetyBallCircle-v0"),
    (["train", "ppo_lag", "--steps", "0"], "steps must be a positive integer; got 0"),
    (["train", "ppo_lag", "--cost-limit", "-5"], "cost_limit values must be finite and >= 0"),
    (["train", "ppo_lag", "--cost-limit", "10", "10"], "one limit per cost"),
    (["train", "ppo_lag", "--config", "missing.toml"], "does not exist"),
    (["trian"], "Did you mean 'train'"),
    (["eval", "no/such/run"], "run directory 'no/such/run' does not exist"),
    (["train", "--resume", "no/such/run"], "run directory 'no/such/run' does not exist"),
    (["train", "--resume", "no/such/run", "--steps", "2.5e0"],
     "--steps must be a whole number (such as 2000000, 2_000_000 or 2e6); got '2.5e0'"),
])
def test_bad_input_is_one_clear_error(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_train_refuses_to_overwrite_a_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "ppo", *small_flags(run_dir)]) == 0
    assert main(["train", "ppo", *small_flags(run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_train_without_an_algorithm_runs_cpo(tmp_path):
    run_dir = tmp_path / "default"
    flags = [f for f in small_flags(run_dir) if f not in ("--ppo.epochs", "1")]
    assert main(["train", *flags]) == 0
    record = json.loads((run_dir / "config.json").read_text())
    assert record["algo"] == "cpo" and "trust_region" in record["config"]
    assert record["config"]["run"]["safety_predictor"] is True
    assert record["config"]["run"]["predictor_alpha"] == 0.3
    rows = (run_dir / "progress.csv").read_text().splitlines()
    assert "cpo/case" in rows[0] and len(rows) == 3


def test_naming_cpo_gives_its_defaults_and_flags_override_the_default_recipe(tmp_path):
    from saferl.algos.cpo import PREDICTOR_ALPHA

    named = tmp_path / "named"
    flags = [f for f in small_flags(named) if f not in ("--ppo.epochs", "1")]
    assert main(["train", "cpo", *flags]) == 0
    run = json.loads((named / "config.json").read_text())["config"]["run"]
    assert run["safety_predictor"] is True and run["predictor_alpha"] == PREDICTOR_ALPHA
    plain = tmp_path / "plain"
    flags = [f for f in small_flags(plain) if f not in ("--ppo.epochs", "1")]
    assert main(["train", "cpo", *flags, "--no-safety-predictor"]) == 0
    run = json.loads((plain / "config.json").read_text())["config"]["run"]
    assert run["safety_predictor"] is False
    default = tmp_path / "default"
    flags = [f for f in small_flags(default) if f not in ("--ppo.epochs", "1")]
    assert main(["train", *flags, "--predictor-alpha", "0.5"]) == 0
    run = json.loads((default / "config.json").read_text())["config"]["run"]
    assert run["safety_predictor"] is True and run["predictor_alpha"] == 0.5


@pytest.mark.parametrize(("command", "usage", "options"), [
    ("eval", "usage: saferl eval [-h] [OPTIONS] RUN",
     ["--member LABEL", "--checkpoint ITERATION", "--video FILE"]),
    ("report", "usage: saferl report [-h] DIR [DIR ...] [--out FOLDER]", []),
    ("sweep", "usage: saferl sweep [-h] [OPTIONS] [SPEC.toml]",
     ["--recipe NAME", "--scale SCALE", "--out FOLDER", "--address HOST:PORT",
      "--reuse OTHER_OUT"]),
])
def test_help_names_what_each_argument_is(capsys, command, usage, options):
    """Not tyro's type names (`STR`, `{None}|STR`): what a user must give."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert usage in out, out
    for option in options:
        assert option in out, (option, out)
    assert "{None}" not in out and " STR" not in out, out


def test_eval_out_writes_the_evaluation_that_evaluate_run_gives(tmp_path, capsys):
    from saferl.evaluation import evaluate_run

    run_dir = tmp_path / "run"
    assert main(["train", "ppo_lag", *small_flags(run_dir)]) == 0
    out = run_dir / "eval.json"
    before = json.loads(out.read_text())
    assert main(["eval", str(run_dir), "--episodes", "3", "--out", str(out)]) == 0
    assert f"evaluation: {out}" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["episodes"] == 3 and before["episodes"] != 3
    assert written == json.loads(json.dumps(evaluate_run(run_dir, episodes=3)))
    for bad, message in ((str(tmp_path / "e.txt"), "--out must name a .json file"),
                         (str(tmp_path / "no" / "e.json"), "does not exist"),
                         ):
        assert main(["eval", str(run_dir), "--out", bad]) == 2
        assert message in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--out", str(out), "--thresholds", "10"]) == 2
    assert "--thresholds evaluates threshold-conditioned runs" in capsys.readouterr().err
    assert json.loads(out.read_text()) == written  # bad input changed nothing


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """``saferl train ppo_lag --help | head -c 10``: the pipe closes under the help text; the
    command stops with the shell's SIGPIPE status and no 'cannot write: broken pipe'."""
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "saferl"), "train", "ppo_lag", "--help"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()  # gone before the help is written (its start-up takes seconds): a
    # reader that read a little first might leave the whole text in the pipe's buffer
    err = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 141 and err == "", (process.returncode, err)
