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
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
TASK_AXIS = "tasks"


def task_mesh(devices=None, axis: str = TASK_AXIS) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("task_mesh needs at least one device.")
  return Mesh(np.asarray(devices), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def check_divisible(num_tasks: int, mesh: Mesh, axis: str = TASK_AXIS) -> None:
  """Raises a clear error unless ``num_tasks`` splits evenly over the mesh axis."""
  if axis not in mesh.shape:
    raise ValueError(f"The mesh has axes {tuple(mesh.shape)}, not the task axis {axis!r}; "
                     f"build it with metagan_jax.parallel.task_mesh(axis={axis!r}).")
  n = mesh.shape[axis]
  if num_tasks % n:
    raise ValueError(
        f"T = {num_tasks} tasks per meta-step do not split evenly over the {n} devices of "
        f"mesh axis {axis!r}; use a multiple of {n} tasks (e.g. T = {n * max(1, num_tasks // n)}) "
        f"or a mesh of fewer devices.")


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
    raise ValueError(f"This process holds {local_n} tasks, which do not split evenly over its "
                     f"{per_process} devices on mesh axis {axis!r}; give each process a "
                     f"multiple of {per_process} tasks.")
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_tree)


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


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts ``jax.distributed`` when several processes are configured.

  Arguments default to the environment variables ``METAGAN_COORDINATOR``,
  ``METAGAN_NUM_PROCESSES``, ``METAGAN_PROCESS_ID``; if none is set,
  ``jax.distributed.initialize()`` is still called where JAX detects a
  cluster itself (SLURM, TPU pods, ...) only when ``METAGAN_DISTRIBUTED=1``.
  On CPU, cross-process collectives use gloo.

  Returns:
    True when ``jax.distributed`` was initialised.
  """
  coordinator_address = coordinator_address or os.environ.get("METAGAN_COORDINATOR")
  if num_processes is None and os.environ.get("METAGAN_NUM_PROCESSES"):
    num_processes = int(os.environ["METAGAN_NUM_PROCESSES"])
  if process_id is None and os.environ.get("METAGAN_PROCESS_ID"):
    process_id = int(os.environ["METAGAN_PROCESS_ID"])
  auto = os.environ.get("METAGAN_DISTRIBUTED") == "1"
  if coordinator_address is None and not auto:
    if (num_processes or 1) > 1:
      raise ValueError(f"num_processes={num_processes} needs a coordinator address "
                       f"(host:port of process 0), e.g. --coordinator localhost:12345.")
    return False
  if coordinator_address is not None and (num_processes is None or process_id is None):
    raise ValueError("With a coordinator address, also give num_processes and process_id "
                     "(flags or METAGAN_NUM_PROCESSES / METAGAN_PROCESS_ID).")
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} must be in [0, {num_processes}).")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True
