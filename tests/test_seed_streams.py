"""Random streams: each training member's host copies, a resumed run, a deployed policy and an
unseeded native env draw from streams of their own.

A vectorised environment seeds copy ``i`` with ``seed + i``; members seeded 0 and 1 given their
own seeds shared all but one copy's stream (on Bullet: the same start states, episode after
episode). A resumed host run replayed the streams it began with (simulators cannot be
checkpointed). Both are checked on the seeds the copies were actually reset with. A deployed
policy sampled with the training run's root key, and every unseeded native gymnasium env
played the same episodes.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import saferl
from saferl.engine.host import environment_seed
from saferl.runs import RunDirectory

RESETS: list[int] = []  # every seed a SeedLog copy was reset with, in order


class SeedLog(gymnasium.Env):
    """Records the seeds it is reset with; start state from its stream; 10-step episodes."""

    observation_space = gymnasium.spaces.Box(-1, 1, (2,))
    action_space = gymnasium.spaces.Box(-1, 1, (1,))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            RESETS.append(seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        return (self.np_random.uniform(-1, 1, 2).astype(np.float32), float(action[0]), False,
                self.t >= 10, {"cost": 0.0})


gymnasium.register("SaferlTest/SeedLog-v0", entry_point=SeedLog)


def test_seed_blocks_are_disjoint_across_seeds_and_resumes_and_stay_off_evaluation():
    copies = 64
    blocks = {(s, k): range(environment_seed(s, k), environment_seed(s, k) + copies)
              for s in range(20) for k in (0, 5)}
    taken = [x for block in blocks.values() for x in block]
    assert len(set(taken)) == len(taken)  # no two (seed, resume point) share a copy's stream
    assert not set(taken) & set(range(10_000, 10_000 + 1000))  # evaluation's seeds
    assert environment_seed(3) == environment_seed(3, 0) == environment_seed(3)  # repeatable
    assert all(0 <= environment_seed(s) < 2**31 for s in range(100))


@pytest.mark.parametrize("algo", ["ppo_lag", "sac_lag"])
def test_members_and_resumed_runs_reset_their_copies_with_their_own_seeds(tmp_path, algo):
    run = {"env": "SaferlTest/SeedLog-v0", "num_envs": 3, "rollout_steps": 10, "steps": 20,
           "seeds": [0, 1], "hidden_sizes": [8, 8], "checkpoint_every": 1,
           "eval_episodes": 0}
    if algo == "sac_lag":
        run.update(warmup_steps=10, episode_length=10)
    RESETS.clear()
    saferl.train(algo, overrides={"run": run}, run_dir=tmp_path / "run", progress=False)
    first = set(RESETS)
    bases = [environment_seed(0), environment_seed(1)]
    assert first == {b + i for b in bases for i in range(3)}, (sorted(first), bases)
    latest = RunDirectory(tmp_path / "run").latest_checkpoint()
    iteration = int(latest.split("_")[1])
    assert iteration >= 1
    RESETS.clear()
    saferl.train(resume=tmp_path / "run", steps=100, progress=False)
    resumed = set(RESETS)
    assert resumed == {environment_seed(s, iteration) + i for s in (0, 1) for i in range(3)}
    assert not resumed & first


def test_a_policy_samples_from_a_stream_no_training_draw_used(tmp_path):
    # PRNGKey(seed) is the training run's root: its splits initialised the networks and drew
    # the first rollout's actions. The deployed policy's sampling key is none of them.
    import jax

    run = saferl.train("ppo_lag", "saferl/BallCircle-v0", steps=2000, seed=3,
                       run_dir=tmp_path / "run", progress=False,
                       overrides={"run": {"num_envs": 4, "rollout_steps": 50,
                                          "hidden_sizes": [8, 8], "eval_episodes": 0}})
    policy = run.policy()
    root = jax.random.PRNGKey(3)
    used = [root, *jax.random.split(root, 4), *jax.random.split(root, 3),
            *jax.random.split(root)]
    key = np.asarray(policy._key)
    assert not any(np.array_equal(key, np.asarray(k)) for k in used)
    obs = np.zeros((2, 8), np.float32)
    again = run.policy()
    np.testing.assert_array_equal(policy(obs, deterministic=False),
                                  again(obs, deterministic=False))  # still reproducible


def test_an_unseeded_native_gym_env_draws_fresh_episodes_and_a_seeded_one_repeats():
    first, second = (gymnasium.make("saferl/BallCircle-v0") for _ in range(2))
    assert not np.array_equal(first.reset()[0], second.reset()[0])  # was PRNGKey(0) for all
    np.testing.assert_array_equal(first.reset(seed=4)[0], second.reset(seed=4)[0])
    np.testing.assert_array_equal(first.reset()[0], second.reset()[0])  # stream continues
