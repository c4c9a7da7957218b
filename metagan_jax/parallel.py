"""Meta-batches over many devices and hosts, with JAX's own machinery.

``meta_step`` always runs its per-task work under ``jax.shard_map`` over a 1-D
device mesh: the task axis is split across the mesh, meta-parameters and
optimiser state are replicated, and the meta-gradient is averaged with
``lax.pmean``. One device is a mesh of one, so there is no separate code path.
By default the mesh holds every device of every process (``jax.devices()``);
pass ``MetaConfig(mesh=...)`` for another.

Several hosts: call :func:`initialize_distributed` first in every process,
build the state identically everywhere, and feed each process's own tasks
through :func:`shard_tasks`::

    mg.parallel.initialize_distributed()            # flags or the usual env vars
    mesh = mg.parallel.task_mesh()                  # all devices of all processes
    state = mg.parallel.replicate(mg.init(key, config), mesh)
    tasks = mg.parallel.shard_tasks(local_tasks, mesh)   # [T_local, ...] -> global [T, ...]
    state, metrics = step(state, tasks, key)        # same key in every process

Ending a run: at exit JAX waits at a shutdown barrier for every process, and
aborts any process that waits there longer than its shutdown timeout (300 s by
default, with SIGABRT). A process that finishes early (while process 0 still
writes tables, figures or checkpoints alone, or on a slower host) would then
crash after its work was done. Run the whole job inside :func:`distributed`,
which waits at an explicit :func:`barrier` (timeout ``METAGAN_BARRIER_TIMEOUT_S``,
one hour by default) before the shutdown, so all processes reach the shutdown
together::

    with mg.parallel.distributed():                 # flags or the usual env vars
      ...                                           # the whole job
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
  "TASK_AXIS",
  "DEFAULT_BARRIER_TIMEOUT_S",
  "task_mesh",
  "check_divisible",
  "shard_tasks",
  "replicate",
  "to_host",
  "initialize_distributed",
  "barrier",
  "distributed",
]

PyTree = Any
#: The name of the mesh axis the task batch is sharded over (:func:`task_mesh`).
TASK_AXIS = "tasks"
#: Seconds a process waits at an explicit barrier for the others (process 0 may
#: evaluate, plot and save alone for a long time): long, and a setting.
DEFAULT_BARRIER_TIMEOUT_S = 3600.0


def task_mesh(devices=None, axis: str = TASK_AXIS) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("task_mesh needs at least one device.")
  return Mesh(np.asarray(devices), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def check_divisible(num_tasks: int, mesh: Mesh, axis: str = TASK_AXIS) -> None:
  """Raises a clear error unless ``num_tasks`` splits evenly over the mesh axis."""
  if axis not in mesh.shape:
    raise ValueError(
      f"The mesh has axes {tuple(mesh.shape)}, not the task axis {axis!r}; "
      f"build it with metagan_jax.parallel.task_mesh(axis={axis!r})."
    )
  n = mesh.shape[axis]
  if num_tasks % n:
    raise ValueError(
      f"T = {num_tasks} tasks per meta-step do not split evenly over the {n} devices of "
      f"mesh axis {axis!r}; use a multiple of {n} tasks (e.g. T = {n * max(1, num_tasks // n)}) "
      f"or a mesh of fewer devices."
    )


def shard_tasks(local_tree: PyTree, mesh: Mesh, axis: str = TASK_AXIS) -> PyTree:
  """Places this process's tasks (leading axis) as one global array sharded over ``axis``.

  With one process the local batch is the whole batch. With several, each
  process passes its own ``[T_local, ...]`` tasks and gets the global
  ``[T_local * num_processes, ...]`` array, process ``i``'s tasks at rows
  ``i * T_local ...``.
  """
  sharding = NamedSharding(mesh, P(axis))
  local_n = jax.tree.leaves(local_tree)[0].shape[0]
  per_process = mesh.shape[axis] // jax.process_count()
  if per_process and local_n % per_process:
    raise ValueError(
      f"This process holds {local_n} tasks, which do not split evenly over its "
      f"{per_process} devices on mesh axis {axis!r}; give each process a "
      f"multiple of {per_process} tasks."
    )
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_tree
  )


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places a pytree (identical in every process) replicated over ``mesh``."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, tree)


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of (replicated or addressable) arrays, in any process."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(get, tree)


def _env_seconds(name: str, default: float | None) -> float | None:
  v = os.environ.get(name)
  if v in (None, ""):
    return default
  try:
    out = float(v)
  except ValueError:
    raise ValueError(f"${name}={v!r} is not a number of seconds; set e.g. {name}=600.") from None
  if out <= 0:
    raise ValueError(f"${name}={v!r} must be a positive number of seconds.")
  return out


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  shutdown_timeout_s: float | None = None,
) -> bool:
  """Starts ``jax.distributed`` when several processes are configured.

  Arguments default to the environment variables ``METAGAN_COORDINATOR``,
  ``METAGAN_NUM_PROCESSES``, ``METAGAN_PROCESS_ID``; if none is set,
  ``jax.distributed.initialize()`` is still called where JAX detects a
  cluster itself (SLURM, TPU pods, ...) only when ``METAGAN_DISTRIBUTED=1``.
  On CPU, cross-process collectives use gloo.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: how many processes take part.
    process_id: this process's id in ``[0, num_processes)``.
    shutdown_timeout_s: how long JAX's own shutdown barrier waits for the other
      processes before it aborts this one (default ``$METAGAN_SHUTDOWN_TIMEOUT_S``,
      else JAX's 300 s). Prefer :func:`distributed`, which makes every process
      arrive there together.

  Returns:
    True when ``jax.distributed`` was initialised.
  """
  coordinator_address = coordinator_address or os.environ.get("METAGAN_COORDINATOR")
  if num_processes is None and os.environ.get("METAGAN_NUM_PROCESSES"):
    num_processes = int(os.environ["METAGAN_NUM_PROCESSES"])
  if process_id is None and os.environ.get("METAGAN_PROCESS_ID"):
    process_id = int(os.environ["METAGAN_PROCESS_ID"])
  if shutdown_timeout_s is None:
    shutdown_timeout_s = _env_seconds("METAGAN_SHUTDOWN_TIMEOUT_S", None)
  elif shutdown_timeout_s <= 0:
    raise ValueError(
      f"shutdown_timeout_s={shutdown_timeout_s} must be a positive number of seconds."
    )
  auto = os.environ.get("METAGAN_DISTRIBUTED") == "1"
  if coordinator_address is None and not auto:
    if (num_processes or 1) > 1:
      raise ValueError(
        f"num_processes={num_processes} needs a coordinator address "
        f"(host:port of process 0), e.g. --coordinator localhost:12345."
      )
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError(
      "With a coordinator address, also give num_processes and process_id "
      "(flags or METAGAN_NUM_PROCESSES / METAGAN_PROCESS_ID)."
    )
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} must be in [0, {num_processes}).")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = (
    {}
    if shutdown_timeout_s is None
    else {"shutdown_timeout_seconds": max(1, int(round(shutdown_timeout_s)))}
  )
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    **kwargs,
  )
  return True


def barrier(name: str, timeout_s: float | None = None) -> None:
  """Waits until every process has reached the barrier ``name`` (no-op with one process).

  Unlike ``multihost_utils.sync_global_devices`` (a device collective with no
  deadline of its own), this waits at the coordination service with an explicit
  deadline, so a process that never arrives is reported, by name, instead of
  hanging the others.

  Args:
    name: the barrier's id; every process must use the same names in the same order.
    timeout_s: how long to wait (default ``$METAGAN_BARRIER_TIMEOUT_S``, else one hour).

  Raises:
    TimeoutError: some process did not arrive within ``timeout_s``.
  """
  if jax.process_count() == 1:
    return
  if timeout_s is None:
    timeout_s = _env_seconds("METAGAN_BARRIER_TIMEOUT_S", DEFAULT_BARRIER_TIMEOUT_S)
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

  client = jax_distributed.global_state.client
  if client is None:  # a multi-process runtime started without jax.distributed (e.g. TPU pods)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)
    return
  try:
    client.wait_at_barrier(name, int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError: DEADLINE_EXCEEDED
    raise TimeoutError(
      f"process {jax.process_index()} waited {timeout_s:g} s at barrier {name!r} and not every "
      f"one of the {jax.process_count()} processes arrived ({type(e).__name__}: "
      f"{str(e)[:300]}). If one process does long work alone, raise "
      f"METAGAN_BARRIER_TIMEOUT_S; if one crashed, see its log."
    ) from e


@contextlib.contextmanager
def distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  barrier_timeout_s: float | None = None,
  shutdown_timeout_s: float | None = None,
) -> Iterator[bool]:
  """Runs a job over several processes and ends it in all of them together.

  Enters with :func:`initialize_distributed` (same arguments and environment
  variables). On a normal exit every process waits at :func:`barrier`
  ``"metagan_end"`` (``barrier_timeout_s``), then shuts ``jax.distributed``
  down, so no process reaches JAX's shutdown barrier long before another and
  is aborted there. With one process it does nothing. On an exception it does
  not wait (the others may never come) and re-raises.

  Yields:
    True when ``jax.distributed`` was initialised.
  """
  started = initialize_distributed(
    coordinator_address, num_processes, process_id, shutdown_timeout_s=shutdown_timeout_s
  )
  yield started
  if started:
    barrier("metagan_end", barrier_timeout_s)
    jax.distributed.shutdown()
