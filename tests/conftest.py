"""Shared test settings: a persistent XLA compilation cache keeps repeated compiles cheap."""

import os
import signal

import jax

# A test suite started in the background by a non-interactive shell (as CI scripts do) has
# SIGINT ignored, and every process it starts would inherit that: the Ctrl-C tests' children
# could not be interrupted. Give SIGINT back its default here, once, instead of in each child
# between fork and exec (preexec_fn), where running Python beside JAX's threads can deadlock.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Two XLA CPU devices, as the `saferl` command sets up: vectorised seeds are sharded across them.
jax.config.update("jax_num_cpu_devices", 2)

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("SAFERL_TEST_JAX_CACHE", "/tmp/saferl-test-jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

SMALL = {"env": "saferl/BallRun-v0", "num_envs": 8, "rollout_steps": 100, "steps": 4000,
         "checkpoint_every": 2, "hidden_sizes": [32, 32]}
SMALL_PPO = {"epochs": 2, "minibatches": 4}


def pytest_collection_modifyitems(session, config, items):
    """The slowest files first (the learning tests and the sweeps' subprocess tests), each file
    kept whole and in order: pytest-xdist hands out whole files in this order
    (``--no-loadscope-reorder``), so no slow file is left to run alone at the end while the
    other worker idles."""
    def slow(item) -> bool:
        return (item.get_closest_marker("learning") is not None
                or item.path.name.startswith("test_sweep"))

    items.sort(key=lambda item: not slow(item))
