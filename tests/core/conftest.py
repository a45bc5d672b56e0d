"""Fixtures of the core-maths tests."""

import jax
import pytest


@pytest.fixture(scope="module")
def enable_x64():
    """float64 for the using module only; the previous setting is restored afterwards."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)
