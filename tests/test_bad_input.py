"""Bad input through the `saferl` command: one sentence, exit status 2, no traceback, and
nothing lost — every existing run folder is byte-identical afterwards.

Each row is a command line and a fragment of the sentence it must print. The table covers the
mistakes a new user makes (typos in names and flags, impossible values, unwritable folders,
a misspelled env parameter, an env whose observations do not match its space, resume and eval
misuse) and those that already worked, so that none regresses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium
import numpy as np
import pytest

from saferl.cli import main, parse_count, tyro_message
from saferl.envs.gym import bullet_installed
from saferl.envs.resolve import UnknownEnvError, make_local
from tests.conftest import SMALL


def small_flags(run_dir: Path | str) -> list[str]:
    return ["--env", SMALL["env"], "--num-envs", "8", "--rollout-steps", "100", "--steps",
            "1600", "--hidden-sizes", "16", "16", "--ppo.epochs", "1", "--eval-episodes", "2",
            "--run-dir", str(run_dir), "--quiet"]


class ObservationOutsideItsSpace(gymnasium.Env):
    """Declares 2 observation values and returns 3."""

    observation_space = gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {"cost": 0.0}


if "saferl-test/BadObservation-v0" not in gymnasium.registry:
    gymnasium.register("saferl-test/BadObservation-v0", entry_point=ObservationOutsideItsSpace,
                       max_episode_steps=20)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> Path:
    """A finished run (2 iterations, checkpoints at both)."""
    run_dir = tmp_path_factory.mktemp("existing") / "run"
    assert main(["train", "ppo_lag", *small_flags(run_dir), "--checkpoint-every", "1"]) == 0
    return run_dir


def cases(existing: Path, tmp: Path) -> list[tuple[list[str], str]]:
    run = str(existing)
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder")
    bad_toml = tmp / "bad.toml"
    bad_toml.write_text("steps = [1, 2\n")
    unknown_key = tmp / "unknown.toml"
    unknown_key.write_text("stesp = 100\n")
    return [
        # names
        (["trian"], "Did you mean 'train'"),
        (["train", "ppo_lgs"], "Did you mean 'ppo_lag'"),
        (["train", "PPO_LAG"], "Did you mean 'ppo_lag'"),  # names are lower case
        (["train", "ppo_lag", "--env", "SafetyBalCircle-v0"], "SafetyBallCircle-v0"),
        (["train", "ppo_lag", "--env", "native:BallCircle"],
         "Environment id 'native:BallCircle': no module named 'native' to import"),
        (["train", "ppo_lag", "--env", "math:Foo-v0"],
         "Environment id 'math:Foo-v0': importing 'math' did not register 'Foo-v0'"),
        (["list", "extra"], "list takes no arguments"),
        # flags and values (tyro's boxes become one sentence)
        (["train", "ppo_lag", "--stepz", "10"],
         "unrecognized option --stepz. Did you mean --steps?"),
        (["train", "ppo_lag", "--steps", "abc"], "--steps must be a whole number"),
        (["train", "ppo_lag", "--steps", "0"], "steps must be a positive integer; got 0"),
        (["train", "ppo_lag", "--cost-limit", "-5"], "cost_limit values must be finite and >= 0"),
        (["train", "ppo_lag", "--cost-limit", "10", "10"], "one limit per cost"),
        (["train", "ppo_lag", "--eval-episodes", "-1"], "eval_episodes must be >= 0"),
        (["train", "ppo_lag", "--lagrange.method", "pdi"], "pdi"),
        # configuration files
        (["train", "ppo_lag", "--config", "missing.toml"], "does not exist"),
        (["train", "ppo_lag", "--config", str(bad_toml)], "is not valid TOML"),
        (["train", "ppo_lag", "--config", str(unknown_key)], "Did you mean steps?"),
        # environment parameters and contracts
        (["train", "ppo_lag", *small_flags(tmp / "kw"), "--env-kwargs", "speeed_limit", "2"],
         "env_kwargs key 'speeed_limit' is not a parameter of 'saferl/BallRun-v0'"),
        (["train", "ppo_lag", *small_flags(tmp / "obs"), "--env",
          "saferl-test/BadObservation-v0"], "returned an observation of shape (3,)"),
        # versatile (ccpo): behaviour thresholds and range, before any compilation
        (["train", "ccpo", "--env", "saferl/BallCircle-v0", "--run-dir", str(tmp / "c1"),
          "--ccpo.behaviour-thresholds", "20", "40", "80"],
         "ccpo.behaviour_thresholds must lie inside ccpo.threshold_range [10, 70]; got 80"),
        (["train", "ccpo", "--run-dir", str(tmp / "c2"), "--ccpo.behaviour-thresholds", "40",
          "20"], "must be strictly increasing (sorted, no duplicates); got unsorted values"),
        (["train", "ccpo", "--run-dir", str(tmp / "c3"), "--ccpo.behaviour-thresholds", "20",
          "20"], "got a duplicate: 20 then 20"),
        (["train", "ccpo", "--run-dir", str(tmp / "c4"), "--ccpo.behaviour-thresholds", "nan"],
         "ccpo.behaviour_thresholds must hold finite thresholds >= 0; got nan"),
        (["train", "ccpo", "--run-dir", str(tmp / "c5"), "--ccpo.threshold-range", "70", "10"],
         "ccpo.threshold_range must have finite ends with 0 <= low < high; got (70.0, 10.0)"),
        (["eval", run, "--thresholds", "10"], "--thresholds evaluates threshold-conditioned "
                                              "runs (ccpo)"),
        (["train", "vsac_lag", "--run-dir", str(tmp / "c6"), "--versatile.behaviour-thresholds",
          "5", "20"], "versatile.behaviour_thresholds must lie inside versatile.threshold_range "
                      "[10, 70]; got 5"),
        # run directories
        (["train", "ppo_lag", *small_flags(a_file)], "is an existing file, not a folder"),
        (["train", "ppo_lag", *small_flags("/proc/saferl-run")], "cannot write the run directory"),
        (["train", "ppo_lag", *small_flags(run)], "already holds a run"),
        # resume
        (["train", "--resume", "no/such/run"], "does not exist"),
        (["train", "--resume", run, "--steps", "800"], "fewer than the 1,600 steps"),
        (["train", "--resume", run, "--steps", "2.5e0"], "--steps must be a whole number"),
        (["train", "--resume", run, "--checkpoint", "7"], "has no checkpoint 'iter_0000007'"),
        (["train", "--resume", run, "--checkpoint", "last"], "must be an iteration number"),
        (["train", "--resume", run, "--env", "x"], "--resume takes only --steps"),
        # eval
        (["eval", "no/such/run"], "does not exist"),
        (["eval", run, "--episodes", "0"], "--episodes must be >= 1"),
        (["eval", run, "--seed-index", "3"], "--seed-index must be from 0 to 0"),
        (["eval", run, "--member", "0@20"], "--member '0@20' is not in this run; its members "
                                            "are ['0']"),
        (["eval", run, "--member", "0", "--seed-index", "0"], "--member and --seed-index"),
        (["train", "ppo_lag", "--limits", "20", "4x"], "got '4x'"),
        (["train", "ppo_lag", "--limits", "20", "20"], "limits must be distinct"),
        (["train", "ppo_lag", "--limits", "20,5", "40"], "the same number of constraints"),
        (["train", "ppo_lag", "--limits", "20,5", "40,5"], "give one value per cost"),
        (["train", "ccpo", "--limits", "20", "40"], "leave limits out"),
        (["train", "cppo_lag", "--limits", "20", "40"], "not as limits"),
        (["eval", run, "--checkpoint", "9"], "has no checkpoint 'iter_0000009'"),
        (["eval", run, "--video", str(tmp / "episode.avi")], "must end in .gif"),
    ]


def test_bad_input_table(existing, tmp_path, monkeypatch, capsys):
    before = snapshot(existing)
    failures = []
    for args, fragment in cases(existing, tmp_path):
        monkeypatch.chdir(tmp_path)
        status = main(args)
        captured = capsys.readouterr()
        err = captured.err.strip()
        lines = err.splitlines()
        problems = []
        if status != 2:
            problems.append(f"exit status {status}")
        if len(lines) != 1 or not lines[0].startswith("saferl: error: "):
            problems.append(f"not one 'saferl: error:' line: {err!r}")
        if "Traceback" in captured.err + captured.out or "╭" in err:
            problems.append("a traceback or a box")
        if fragment not in err:
            problems.append(f"missing {fragment!r}: {err!r}")
        if problems:
            failures.append((args, problems))
    assert not failures, "\n".join(f"{a}: {p}" for a, p in failures)
    assert snapshot(existing) == before  # nothing lost
    # A failed start leaves no half-made run folder behind.
    for name in ("kw", "obs", "c1", "c2", "c3", "c4", "c5", "c6"):
        assert not (tmp_path / name).exists(), name
    assert (tmp_path / "a_file.txt").read_text() == "not a folder"


def test_read_only_working_directory_is_one_sentence(monkeypatch, capsys):
    monkeypatch.chdir("/proc")  # the default run folder, ./runs, cannot be created here
    assert main(["train", "ppo_lag", "--steps", "800", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the run directory 'runs/ppo_lag_saferl-BallCircle" in \
        err[0], err


@pytest.mark.skipif(not bullet_installed(), reason="needs saferl[bullet]")
def test_a_module_id_whose_own_import_fails_keeps_its_real_error(tmp_path, monkeypatch):
    # Only a missing module *named in the id* is a bad id; a module that exists but cannot
    # import a dependency of its own keeps Python's error, which names that dependency.
    (tmp_path / "saferl_test_broken_envs.py").write_text("import saferl_test_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="saferl_test_missing_dependency"):
        make_local("saferl_test_broken_envs:Foo-v0")
    with pytest.raises(UnknownEnvError, match=r"no module named 'saferl_test_absent\.sub'"):
        make_local("saferl_test_absent.sub:Foo-v0")


@pytest.mark.skipif(not bullet_installed(), reason="needs saferl[bullet]")
def test_misspelled_bullet_env_kwargs_key_is_one_sentence(tmp_path, capsys):
    status = main(["train", "ppo_lag", "--env", "SafetyBallCircle-v0", "--env-kwargs", "agnet",
                   "Ball", "--steps", "800", "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "env_kwargs key 'agnet' is not a parameter of 'SafetyBallCircle-v0'. Did you mean " \
           "'agent'?" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,value", [("2000000", 2_000_000), ("2_000_000", 2_000_000),
                                        ("2,000,000", 2_000_000), ("2e6", 2_000_000),
                                        ("1.5e3", 1500), ("-3", -3)])
def test_counts_accept_the_usual_spellings(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["abc", "2.5", "1e-3", "inf", "nan", ""])
def test_counts_reject_fractions_and_words(text):
    with pytest.raises(ValueError, match="must be a whole number"):
        parse_count(text)


def test_steps_flag_accepts_scientific_and_underscored_integers(tmp_path):
    import json

    for text, expected in (("1.6e3", 1600), ("1_600", 1600)):
        run_dir = tmp_path / text
        flags = small_flags(run_dir)
        flags[flags.index("--steps") + 1] = text
        assert main(["train", "ppo", *flags, "--eval-episodes", "0"]) == 0
        config = json.loads((run_dir / "config.json").read_text())["config"]
        assert config["run"]["steps"] == expected


def test_tyro_boxes_become_one_sentence():
    box = ("╭─ Unrecognized options ─────────╮\n"
           "│ Unrecognized options: --stepz, 10 │\n"
           "│ ───────────────────────────────── │\n"
           "│ Perhaps you meant:                │\n"
           "│     --steps INT                   │\n"
           "│         Environment steps to train│\n"
           "│ ───────────────────────────────── │\n"
           "│ For full helptext, run x --help   │\n"
           "╰───────────────────────────────────╯\n")
    assert tyro_message(box, "saferl train ppo") == (
        "unrecognized option --stepz. Did you mean --steps? (saferl train ppo --help lists "
        "every flag.)")
    wrapped = ("╭─ Value error ──────────────────────────────╮\n"
               "│ Error parsing run: steps must be a positive │\n"
               "│ integer; got 0.                             │\n"
               "│ ─────────────────────────────────────────── │\n"
               "│ For full helptext, see x --help             │\n"
               "╰─────────────────────────────────────────────╯\n")
    assert tyro_message(wrapped, "saferl train ppo").startswith(
        "steps must be a positive integer; got 0. (")


def test_train_help_names_the_recipe_and_every_option(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: saferl train " in out and "saferl train cpo [" not in out
    for option in ("--config FILE", "--resume RUN_DIR", "--checkpoint", "--quiet",
                   "safety predictor"):
        assert option in out, option


def test_a_copy_of_the_existing_run_still_resumes_after_the_table(existing, tmp_path):
    """The table's resume and eval attempts left the run usable, not only unchanged."""
    copy = tmp_path / "copy"
    shutil.copytree(existing, copy)
    assert main(["train", "--resume", str(copy), "--steps", "2400", "--quiet"]) == 0
    rows = (copy / "progress.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3


def test_a_failed_start_removes_the_parent_folders_it_made(tmp_path, monkeypatch, capsys):
    # the default run folder is runs/<algo>-…: a bad --env left an empty runs/ behind
    monkeypatch.chdir(tmp_path)
    assert main(["train", "ppo_lag", "--env", "saferl/BallCirc-v0"]) == 2
    assert "did you mean 'saferl/BallCircle-v0'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "keep").mkdir()
    assert main(["train", "ppo_lag", "--env", "saferl/BallCirc-v0", "--run-dir",
                 str(tmp_path / "keep" / "a" / "b")]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]  # one it did not make stays
    assert list((tmp_path / "keep").iterdir()) == []
