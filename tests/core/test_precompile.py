"""Background compilation of an engine's iteration, and the persistent compilation cache."""

import logging
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from saferl.algos.registry import get_algorithm
from saferl.envs.native import make_task
from saferl.training import build_config, make_engine
from tests.conftest import SMALL, SMALL_PPO


@pytest.mark.parametrize("algo, seeds", [("ppo_lag", [0]), ("ppo_lag", [0, 1]),
                                         ("sac_lag", [0, 1])])
def test_the_first_iteration_runs_what_the_background_thread_compiled(algo, seeds, caplog):
    """The thread compiles from abstract states with the placed shardings; the first real call
    must hit that executable (no new lowering), on one device and sharded over two."""
    overrides = {"run": {**SMALL, "seeds": seeds}, "ppo": dict(SMALL_PPO)}
    if algo == "sac_lag":
        overrides = {"run": {**SMALL, "seeds": seeds, "warmup_steps": 800,
                             "update_ratio": 0.05}}
    config = build_config(algo, overrides=overrides)
    task = make_task(config.run.env)
    engine = make_engine(get_algorithm(algo), config, task.spec, task, None)
    states = engine.init_states()
    engine._compiling.wait_all()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        for _ in range(2 if algo == "sac_lag" else 1):  # sac_lag: warm-up, then learning
            states, metrics = engine.iterate(states)
    lowered = [r.getMessage() for r in caplog.records if "jit(iteration)" in r.getMessage()]
    assert lowered == [], lowered
    assert metrics["rollout/ep_return"].shape == (len(seeds),)


def test_compilation_cache_stores_programs_and_can_be_switched_off(tmp_path):
    script = textwrap.dedent("""
        import sys, jax, jax.numpy as jnp
        import saferl
        directory = saferl.enable_compilation_cache()
        print(directory)
        jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
    """)

    def run(xdg="xdg", **env):
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("JAX_COMPILATION_CACHE_DIR", "SAFERL_COMPILATION_CACHE")}
        environment.update(XDG_CACHE_HOME=str(tmp_path / xdg), **env)
        return subprocess.run([sys.executable, "-c", script], env=environment, check=True,
                              capture_output=True, text=True).stdout.strip()

    default = tmp_path / "xdg" / "saferl" / "xla"
    assert run() == str(default)
    assert any(default.iterdir())  # the program was written
    chosen = tmp_path / "chosen"
    assert run(SAFERL_COMPILATION_CACHE=str(chosen)) == str(chosen) and any(chosen.iterdir())
    assert run(SAFERL_COMPILATION_CACHE="off") == "None"
    # A cache the user configured for JAX is left alone.
    assert run("other", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax")) == "None"
    assert not (tmp_path / "other" / "saferl").exists()


def test_stacked_initial_states_equal_eager_ones_and_trace_to_the_same_shapes():
    """The initial states come from one quickly compiled program: the eager values up to float
    rounding, and the same shapes when traced (as the background compilation does)."""
    import numpy as np

    from saferl.algos import off_policy

    config = build_config("cvpo", overrides={"run": {**SMALL, "seeds": [3, 8]}})
    task = make_task(config.run.env)
    algo = get_algorithm("cvpo").module
    stacked = off_policy.initial_states(algo, config, task.spec, task)
    networks = algo.make_networks(config, task.spec)
    for index, seed in enumerate((3, 8)):
        eager = off_policy.init_state(algo, config, task.spec, networks, seed,
                                       jax.numpy.asarray([10.0]), task)
        for x, y in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(eager),
                        strict=True):
            np.testing.assert_allclose(np.asarray(x[index]), np.asarray(y), rtol=1e-5,
                                       atol=1e-5)
    traced = jax.eval_shape(lambda: off_policy.initial_states(algo, config, task.spec, task))
    assert (jax.tree_util.tree_structure(traced) == jax.tree_util.tree_structure(stacked))
    for x, y in zip(jax.tree_util.tree_leaves(traced), jax.tree_util.tree_leaves(stacked),
                    strict=True):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)
