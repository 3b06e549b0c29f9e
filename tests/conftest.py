"""Checked claims for the whole test run: the core's jaxtyping annotations are enforced by
beartype at every call, and JAX's dtype promotion is strict (no silent float64 or int->float)."""

import jax
import pytest
from jaxtyping import install_import_hook

CHECKED_MODULES = [
    "jaxcal._adam",
    "jaxcal._defaults",
    "jaxcal._fit",
    "jaxcal._gates",
    "jaxcal._loss",
    "jaxcal._matrix",
    "jaxcal._model",
    "jaxcal._objective",
    "jaxcal._optimizers",
    "jaxcal._sharding",
    "jaxcal._sweep",
]
"""The engine core: pure JAX, whose annotations are exact."""

install_import_hook(CHECKED_MODULES, "beartype.beartype")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def ill_typed_input():
    """For tests that hand the engine ill-typed values on purpose, to check the ``ValueError`` a
    caller without a type checker gets: the annotations' runtime check steps aside."""
    import jaxtyping

    jaxtyping.config.update("jaxtyping_disable", True)
    yield
    jaxtyping.config.update("jaxtyping_disable", False)
