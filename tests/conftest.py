"""Suite-wide set-up: one persistent XLA compilation cache for the whole test session.

Many tests compile the same programs: the tiny experiment config's pre-training and
meta-steps are built in-process, in the kill/resume subprocesses, in the CLI
fixtures and on both xdist workers. JAX's persistent cache lets every process of
one `pytest` call (workers and the subprocesses they start, which inherit the
environment) reuse an executable compiled once. It lives in a fresh temporary
folder for the session, so no test sees a cache from an earlier run; a
``JAX_COMPILATION_CACHE_DIR`` set by the user is left as it is.

The suite is compile-bound (tiny configs, many distinct programs), so it also
asks XLA's CPU backend for its lowest LLVM optimisation level: the same HLO
programs, compiled about a quarter faster, and slower to run, which tiny
configs do not notice. A subprocess that sets its own ``XLA_FLAGS`` keeps it
through ``tests.helpers.xla_flags``.
"""

import os
import shutil
import tempfile

import pytest

_OWNED = []


TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  if hasattr(config, "workerinput"):
    # An xdist worker inherits the controller's environment. It reads the shared cache but
    # does not write to it: after a few hundred tests in one process (torch loaded beside
    # JAX), jaxlib 0.10.2 crashed in `executable.serialize()` on a cache write, in four full
    # runs out of four on 2026-12-06, each time in another test. The subprocesses the tests
    # start (fresh processes) still write, so they share their programs as before. The
    # write is skipped at JAX's own write function, since `metagan_jax.compile_cache.enable`
    # (called by the tests of `generate`) resets the write thresholds.
    from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top

    compilation_cache.put_executable_and_time = lambda *args, **kwargs: None
    return
  if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="metagan_xla_cache_")
  # cache every compilation, not only those over a second: most of the suite's are small
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  # No size limit: with one, JAX locks the folder and scans all of it on every write,
  # which made the suite 27% slower. An entry read while another process is still
  # writing it fails to decompress; JAX then warns and compiles, so it costs time only.
  _OWNED.append(os.environ["JAX_COMPILATION_CACHE_DIR"])


def pytest_unconfigure(config):
  del config
  for d in _OWNED:
    shutil.rmtree(d, ignore_errors=True)


# Tests that use `tiny_run` run on one xdist worker (`--dist loadgroup`), so it is trained once.
TINY_RUN_GROUP = pytest.mark.xdist_group("tiny_run")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """The tiny protocol end to end, once per session: pre-training, Reptile, Meta-SGD, scratch.

  The NS loss keeps Meta-SGD's second-order step quick to compile (through WGAN-GP it takes a
  minute); the WGAN-GP pipeline is covered by the kill/resume and recipe tests. One
  second-order method stands for both: Meta-SGD's run goes through the same training,
  equal-time, tuning and evaluation code as MAML's and also covers its own (learned rates,
  the rate-multiplier grid, loading ``MetaSGDParams``), while MAML's step is checked by
  tests/test_meta_math.py and its config by tests/test_experiments_train.py; a MAML run here
  cost 20 s more. The tuning grid drops the tiny config's G-parts axis (each part is another
  compiled adaptation per parameter type): rates x truncations still make a 2 x 2 grid, and
  ``test_tuning_pools_seeds_so_one_noisy_seed_cannot_flip_a_method`` covers the full one.

  Returns:
    ``{"config", "workdir", "out"}``, ``out`` being ``train_and_evaluate``'s result.
  """
  from experiments import omniglot  # pylint: disable=g-import-not-at-top
  from experiments.configs import tiny  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp("tiny_run")
  config = tiny.get_config()
  config.methods = "reptile,metasgd,transfer,scratch"
  config.train.equal_time = "metasgd"  # and a metasgd@time row
  config.loss = "ns"
  config.eval.tune_g_trainable = ""  # G: all only; the grid is tune_lrs x tune_psi
  config.features.cache_dir = str(root / "cache")
  work = str(root / "work")
  out = omniglot.train_and_evaluate(config, work, progress=False)
  return {"config": config, "workdir": work, "out": out}
