"""Suite-wide set-up: one persistent XLA compilation cache for the whole test session.

Many tests compile the same programs: the tiny experiment config's pre-training and
meta-steps are built in-process, in the kill/resume subprocesses, in the CLI
fixtures and on both xdist workers. JAX's persistent cache lets every process of
one `pytest` call (workers and the subprocesses they start, which inherit the
environment) reuse an executable compiled once. It lives in a fresh temporary
folder for the session, so no test sees a cache from an earlier run; a
``JAX_COMPILATION_CACHE_DIR`` set by the user is left as it is.
"""

import os
import shutil
import tempfile

_OWNED = []


def pytest_configure(config):
  if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # an xdist worker inherits the controller's environment
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
