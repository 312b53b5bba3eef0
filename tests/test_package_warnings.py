"""pyproject's warning policy: a deprecation raised by the libraries we build
on, or attributed to our own code, fails the test that triggers it; other
libraries' internal ones do not."""

import warnings

import pytest


def _warn(category, module):
  warnings.warn_explicit("old API", category, filename="x.py", lineno=1,
                         module=module)


@pytest.mark.parametrize("module", ["jax._src.deprecations", "flax.linen.module",
                                    "optax._src.alias", "orbax.checkpoint.x"])
def test_library_deprecations_are_errors(module):
  with pytest.raises(DeprecationWarning):
    _warn(DeprecationWarning, module)


@pytest.mark.parametrize("module", ["cvlg_jax.step.train_step", "launch.sweep",
                                    "studies.memorisation.report"])
def test_deprecated_calls_from_our_code_are_errors(module):
  # JAX, flax and optax warn with a stacklevel that names the caller: us.
  with pytest.raises(DeprecationWarning):
    _warn(DeprecationWarning, module)
  with pytest.raises(FutureWarning):
    _warn(FutureWarning, module)


@pytest.mark.parametrize("module", ["tensorflow.python.framework", "google.protobuf",
                                    "jaxtyping_like_but_not_jax"])
def test_other_libraries_internal_deprecations_stay_quiet(module):
  with warnings.catch_warnings(record=True):
    _warn(DeprecationWarning, module)  # no error
