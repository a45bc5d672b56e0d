"""`saferl sweep --recipe`: the papers' experiments as shipped sweep specs."""

from __future__ import annotations

import pytest

from saferl.cli import main
from saferl.experiments.recipe import describe, listing, load_recipe, recipe_file, recipes
from saferl.experiments.spec import SpecError

PAPER_THRESHOLDS = tuple(float(t) for t in range(10, 75, 5))  # {10, 15, ..., 70}


def all_scales():
    return [(name, scale) for name, recipe in recipes().items() for scale in recipe.files]


def test_the_recipes_the_issue_names_exist_with_quick_and_paper_scales():
    assert set(recipes()) == {"ccpo-main", "ccpo-sampling", "ccpo-ablation",
                              "cpo-circle-gather", "library"}
    for recipe in recipes().values():
        assert {"quick", "paper"} <= set(recipe.files)


@pytest.mark.parametrize(("name", "scale"), all_scales())
def test_every_recipe_expands_into_valid_runs(name, scale, tmp_path):
    sweep = load_recipe(name, scale, out=tmp_path / "out")
    assert sweep.runs and sweep.out == tmp_path / "out"
    assert sweep.description and sweep.source
    if scale == "quick":  # minutes on 2 cores: native tasks only, small budgets
        assert all(r.config.run.env.startswith("saferl/") for r in sweep.runs)
        assert sum(r.config.run.steps for r in sweep.runs) <= 5_000_000
    if scale in ("native", "paper"):  # the published protocol: 5 seeds, 50 episodes
        assert describe(sweep)["seeds"] == [0, 1, 2, 3, 4]
        assert sweep.evaluation.episodes == 50
    if scale == "paper" and name != "library":  # library: saferl's own, on the native tasks
        assert not any(r.config.run.env.startswith("saferl/") for r in sweep.runs)
    if scale == "bullet-quick":  # the paper's Bullet tasks, a budget for one 2-core machine
        assert {r.config.run.env for r in sweep.runs} == {"SafetyBallCircle-v0",
                                                          "SafetyDroneRun-v0"}
        assert sum(r.config.run.steps for r in sweep.runs) <= 5_000_000


def test_ccpo_main_is_table_1s_protocol():
    sweep = load_recipe("ccpo-main", "paper")
    assert describe(sweep)["algorithms"] == ["ccpo", "vsac_lag", "vddpg_lag", "cppo_lag",
                                             "ctrpo_lag"]
    # Table 1's five tasks, in its order (Drone-Circle was once left out)
    assert describe(sweep)["envs"] == ["SafetyBallCircle-v0", "SafetyCarCircle-v0",
                                       "SafetyDroneCircle-v0", "SafetyDroneRun-v0",
                                       "SafetyAntRun-v0"]
    assert sweep.evaluation.thresholds == PAPER_THRESHOLDS
    for run in sweep.runs:
        trained = (run.config.ccpo.behaviour_thresholds if run.algo == "ccpo"
                   else run.config.versatile.behaviour_thresholds)
        assert tuple(trained) == (20.0, 40.0, 60.0)
    assert len(sweep.runs) == 5 * 5 * 5


def test_ccpo_sampling_and_ablation_match_tables_2_and_3():
    sampling = load_recipe("ccpo-sampling", "paper")
    sets = {(r.algo, tuple(r.config.ccpo.behaviour_thresholds if r.algo == "ccpo"
                           else r.config.versatile.behaviour_thresholds))
            for r in sampling.runs}
    assert sets == {("ccpo", (20.0, 40.0, 60.0)), ("ctrpo_lag", (20.0, 40.0, 60.0)),
                    ("ctrpo_lag", (20.0, 30.0, 40.0, 50.0, 60.0, 70.0))}
    ablation = load_recipe("ccpo-ablation", "paper")
    variants = {(r.config.ccpo.vve, r.config.ccpo.cvi) for r in ablation.runs}
    assert variants == {(True, True), (False, True), (True, False)}
    assert len(ablation.runs) == 3 * 5 * 5


def test_unknown_recipe_or_scale_is_one_sentence(capsys):
    with pytest.raises(SpecError, match="Did you mean 'ccpo-main'"):
        recipe_file("ccpo-mian", "quick")
    with pytest.raises(SpecError, match="has no scale 'native'; its scales: quick, paper"):
        recipe_file("cpo-circle-gather", "native")
    assert main(["sweep", "--recipe", "libary"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Did you mean 'library'" in err[0]
    assert main(["sweep"]) == 2
    assert "needs a spec file or --recipe" in capsys.readouterr().err


def test_list_recipes_gives_each_scale_its_size(capsys):
    assert main(["sweep", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert out == listing() + "\n"
    for name, scale in all_scales():
        size = describe(load_recipe(name, scale))
        assert f"--scale {scale}: {size['runs']} runs, " in out
    assert "ccpo-main" in out and "Table 1" in out


def test_a_recipe_dry_run_lists_its_packs_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["sweep", "--recipe", "ccpo-ablation", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "6 runs in" in text and "6 of them in 3 packs" in text
    assert "ccpo_BallCircle_seed1_vveFalse" in text
    assert not out.exists()


def test_the_step_total_counts_each_policy_of_a_combination_baseline(tmp_path):
    # C-TRPO-Lag trains one policy per behaviour threshold, each for the run's steps: on
    # {20, 40, 60} a 12,000-step run is 36,000 environment steps (CCPO's is 12,000). The
    # listing once counted each run's steps once (175M for ccpo-main's paper scale, not 315M).
    import tomllib

    from saferl.experiments.spec import parse_spec
    from saferl.training import build_config

    spec = tomllib.loads('''
        [axes]
        algo = ["ctrpo_lag", "ccpo"]
        [config]
        env = "saferl/BallCircle-v0"
        steps = 12000
    ''')
    sweep = parse_spec(spec, "size", tmp_path)
    per_run = {run.algo: run.config.run.iterations * run.config.run.steps_per_iteration
               for run in sweep.runs}
    assert build_config("ctrpo_lag").versatile.behaviour_thresholds == (20.0, 40.0, 60.0)
    assert describe(sweep)["env_steps"] == 3 * per_run["ctrpo_lag"] + per_run["ccpo"]
    assert per_run["ccpo"] >= 12000
