"""A persistent XLA compilation cache: a command's later calls load their programs, not compile them.

``metagan generate`` spends most of a first call compiling the adaptation; with
the cache on, a later call on the same machine reads the compiled programs from
disk. Where the cache lives, in order:

1. ``enable(path)``'s argument;
2. ``$JAX_COMPILATION_CACHE_DIR``, JAX's own setting, where set;
3. ``$XDG_CACHE_HOME/metagan_jax/xla`` (default ``~/.cache/metagan_jax/xla``).

Turn it off with ``METAGAN_COMPILATION_CACHE=0`` (or ``generate
--no-compilation-cache``). A corrupt or unreadable entry is not an error: JAX
warns and compiles afresh, and under :func:`repairing` the bad entry is removed
first, so that JAX writes a good one in its place (JAX alone never overwrites an
entry, so a corrupt one would cost a compilation on every later call;
``tests/test_compile_cache.py``).

Beside XLA's executables, :func:`exported_call` keeps the *traced* program
(``jax.export``, in ``<folder>/exported/``), so a later process skips Python
tracing and lowering too (about 1 s of a 3 s ``generate``). Its key must name
everything the program depends on; :func:`source_key` adds the library's own
source and JAX's version, so a changed library never runs a stale program. :func:`cached_arrays` keeps a
checkpoint's arrays as one ``.npz`` (in ``<folder>/arrays/``), so a later
process reads them without orbax (about 0.5 s of a warm ``generate``).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import tempfile
import warnings

import jax

__all__ = [
  "OFF_ENV",
  "default_dir",
  "resolve_dir",
  "Stats",
  "repairing",
  "enable",
  "disable",
  "export_dir",
  "source_key",
  "exported_call",
  "cached_arrays",
]

#: The environment variable that turns the cache off (``0``, ``off``, ``false`` or ``no``).
OFF_ENV = "METAGAN_COMPILATION_CACHE"
_OFF_VALUES = ("0", "off", "false", "no")
_EVENTS = {
  "/jax/compilation_cache/cache_hits": "hits",
  "/jax/compilation_cache/cache_misses": "misses",
}


def default_dir() -> str:
  """``$XDG_CACHE_HOME/metagan_jax/xla``, or ``~/.cache/metagan_jax/xla``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "metagan_jax", "xla")


def resolve_dir(path: str | None = None) -> str | None:
  """The cache folder :func:`enable` would use, or ``None`` where the cache is turned off."""
  if path is None and os.environ.get(OFF_ENV, "").strip().lower() in _OFF_VALUES:
    return None
  return os.path.abspath(
    os.path.expanduser(path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir())
  )


class Stats:
  """Counts this process's persistent-cache hits and misses (written entries) from JAX's events."""

  def __init__(self):
    self.hits = self.misses = self.repaired = 0
    jax.monitoring.register_event_listener(self._on_event)

  def _on_event(self, event: str, **_) -> None:
    name = _EVENTS.get(event)
    if name:
      setattr(self, name, getattr(self, name) + 1)

  def as_dict(self) -> dict:
    return {"hits": self.hits, "misses": self.misses, "repaired": self.repaired}


_READ_ERROR = "Error reading persistent compilation cache entry for '"


@contextlib.contextmanager
def repairing(stats: Stats | None = None):
  """Within it, an unreadable cache entry is deleted as JAX reports it, so JAX rewrites it.

  JAX's warning names the program (its module name), not the file; every entry
  of that program is removed (other shapes of it only compile once more). The
  warning is still shown. ``stats.repaired`` counts the entries removed. In a
  multi-process run only process 0 repairs: it alone writes entries, and another
  process that reads one mid-write must not delete it.
  """
  folder = jax.config.jax_compilation_cache_dir if jax.process_index() == 0 else None
  with warnings.catch_warnings():
    warnings.filterwarnings("always", message=_READ_ERROR[:20])
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
      text = str(message)
      if folder and text.startswith(_READ_ERROR):
        module = text[len(_READ_ERROR) :].split("'", 1)[0]
        for f in glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(module)}-*-cache")):
          try:
            os.remove(f)
            if stats is not None:
              stats.repaired += 1
          except OSError:
            pass
      shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    yield


def enable(path: str | None = None) -> str | None:
  """Turns the persistent compilation cache on; returns its folder (``None``: turned off).

  Call it before the process's first computation: JAX decides once per process,
  at its first compilation, whether a cache is in use. Every program is kept,
  however fast it compiled, since a command's small programs add up. A folder
  that cannot be created leaves the cache off, with a warning, rather than
  failing the command.
  """
  folder = resolve_dir(path)
  if folder is None:
    disable()
    return None
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    warnings.warn(
      f"compilation cache off: cannot create {folder} ({e}); set "
      f"JAX_COMPILATION_CACHE_DIR to a writable folder, or {OFF_ENV}=0 to silence this.",
      stacklevel=2,
    )
    disable()
    return None
  global _EXPORT_DIR
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  _EXPORT_DIR = os.path.join(folder, "exported")
  return folder


def disable() -> None:
  """Turns the persistent cache off for this process, ``$JAX_COMPILATION_CACHE_DIR`` included."""
  global _EXPORT_DIR
  jax.config.update("jax_enable_compilation_cache", False)
  _EXPORT_DIR = None


_EXPORT_DIR: str | None = None  # set by enable(): where exported_call keeps traced programs


def export_dir() -> str | None:
  """Where :func:`exported_call` keeps traced programs; ``None`` unless :func:`enable` ran."""
  return _EXPORT_DIR


@functools.lru_cache(maxsize=1)
def source_key() -> str:
  """A hash of metagan_jax's source files and of the JAX and jaxlib versions."""
  import jaxlib  # pylint: disable=g-import-not-at-top

  h = hashlib.sha256(f"{jax.__version__} {jaxlib.__version__}".encode())
  pkg = os.path.dirname(os.path.abspath(__file__))
  for root, dirs, files in os.walk(pkg):
    dirs.sort()
    for f in sorted(files):
      if f.endswith(".py"):
        h.update(os.path.relpath(os.path.join(root, f), pkg).encode())
        with open(os.path.join(root, f), "rb") as fh:
          h.update(fh.read())
  return h.hexdigest()


def exported_call(fn, args: list, key: str, compiler_options: dict | None = None):
  """``jax.jit(fn)(*args)``, reusing the traced program an earlier process stored under ``key``.

  Args:
    fn: a function of arrays only (flatten pytrees first), returning arrays.
    args: its arguments, arrays.
    key: a string naming everything ``fn`` computes besides ``args`` (its
      configuration); the shapes and dtypes of ``args``, the platform and
      :func:`source_key` are added here.
    compiler_options: XLA options for compiling it (``jax.jit``'s); the
      persistent cache keys its executables by them.

  Without :func:`enable`, or when the cache is off, this is just
  ``jax.jit(fn)(*args)``. An unreadable stored program is traced afresh and
  rewritten, with a warning.
  """
  if _EXPORT_DIR is None:
    return jax.jit(fn, compiler_options=compiler_options)(*args)
  sig = ";".join(f"{jax.numpy.shape(a)}{jax.numpy.result_type(a)}" for a in args)  # shapes only
  name = hashlib.sha256(f"{key}|{sig}|{jax.default_backend()}|{source_key()}".encode()).hexdigest()
  path = os.path.join(_EXPORT_DIR, f"{name[:32]}.jaxexport")
  slot = (path, tuple(sorted((compiler_options or {}).items())))
  call = _CALLS.get(slot)
  if call is None:  # once per process and program: later calls (other classes) reuse it
    exp = _load_or_export(path, fn, args)
    call = _CALLS[slot] = jax.jit(exp.call, compiler_options=compiler_options)
  return call(*args)


_CALLS: dict = {}  # (path, options) -> the jitted call of its exported program, this process's


def _load_or_export(path: str, fn, args: list):
  """The program stored at ``path``, or ``fn`` traced and stored there."""
  if os.path.exists(path):
    try:
      with open(path, "rb") as f:
        return jax.export.deserialize(bytearray(f.read()))
    except Exception as e:  # pylint: disable=broad-except
      warnings.warn(
        f"stored program {path} is unreadable ({type(e).__name__}: {e}); tracing it afresh.",
        stacklevel=2,
      )
  exp = jax.export.export(jax.jit(fn))(*args)
  try:  # written whole, then renamed: a concurrent reader never sees half a file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
      f.write(exp.serialize())
    os.replace(tmp, path)
  except OSError as e:
    warnings.warn(
      f"could not store the traced program in {os.path.dirname(path)} ({e}).", stacklevel=2
    )
  return exp


def cached_arrays(folder: str, load) -> dict:
  """``load()``, a dict of NumPy arrays read from the files in ``folder``, stored for later processes.

  The stored copy (``<cache>/arrays/*.npz``) is keyed by ``folder``'s absolute
  path and every file's name, size and modification time under it, so a
  rewritten checkpoint is read afresh. Without :func:`enable`, or when the
  cache is off, this is just ``load()``. An unreadable stored copy is read
  afresh and rewritten, with a warning.
  """
  if _EXPORT_DIR is None:
    return load()
  import numpy as np  # pylint: disable=g-import-not-at-top

  folder = os.path.abspath(folder)
  h = hashlib.sha256(folder.encode())
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for f in sorted(files):
      st = os.stat(os.path.join(root, f))
      h.update(
        f"|{os.path.relpath(os.path.join(root, f), folder)}:{st.st_size}:{st.st_mtime_ns}".encode()
      )
  path = os.path.join(os.path.dirname(_EXPORT_DIR), "arrays", f"{h.hexdigest()[:32]}.npz")
  if os.path.exists(path):
    try:
      with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
    except Exception as e:  # pylint: disable=broad-except
      warnings.warn(
        f"stored arrays {path} are unreadable ({type(e).__name__}: {e}); reading {folder} afresh.",
        stacklevel=2,
      )
  arrays = {k: np.asarray(v) for k, v in load().items()}
  try:  # written whole, then renamed: a concurrent reader never sees half a file
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except OSError as e:
    warnings.warn(
      f"could not store {folder}'s arrays in {os.path.dirname(path)} ({e}).", stacklevel=2
    )
  return arrays
