"""Defaults that depend on the hardware, resolved in one place.

Every setting below accepts ``"auto"`` (the default) and resolves it from the
platform of the devices that run the computation; an explicit value always
wins. The rules:

+-------------------------------+--------------+------------+------------------------------+
| setting                       | CPU          | GPU / TPU  | why                          |
+===============================+==============+============+==============================+
| ``MetaConfig.vectorize``,     | ``"map"``    | ``"vmap"`` | one task's small matmuls     |
| ``LOptTrainConfig.vectorize`` |              |            | already keep 2-16 CPU        |
|                               |              |            | cores busy, and ``map``      |
|                               |              |            | needs less memory; an        |
|                               |              |            | accelerator is mostly idle   |
|                               |              |            | unless the tasks run at once |
+-------------------------------+--------------+------------+------------------------------+
| ``models.*(conv_impl=...)``   | ``"matmul"`` | ``"xla"``  | XLA:CPU runs the grouped     |
|                               |              |            | convolutions of vmapped      |
|                               |              |            | per-task weights far below   |
|                               |              |            | its matmul rate (23x slower  |
|                               |              |            | meta-steps, measured); GPU   |
|                               |              |            | and TPU compilers have fast  |
|                               |              |            | native convolutions          |
+-------------------------------+--------------+------------+------------------------------+

The CPU column is measured (``docs/benchmarks.md``); the accelerator column is
the rule's hypothesis until ``benchmarks/device_check.sh`` has been run on one
(``docs/benchmarks.md`` says what has been).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

__all__ = [
  "ACCELERATORS",
  "VECTORIZE",
  "CONV_IMPLS",
  "platform",
  "is_accelerator",
  "resolve_vectorize",
  "resolve_conv_impl",
]

#: Platform names that count as accelerators (:func:`is_accelerator`).
ACCELERATORS = ("gpu", "tpu", "cuda", "rocm")
#: How a batch of tasks runs, ``"map"`` (one task after another) or ``"vmap"``.
VECTORIZE = ("map", "vmap")
#: The convolution implementations, ``"matmul"`` (:mod:`metagan_jax.layers`) or ``"xla"``.
CONV_IMPLS = ("matmul", "xla")


def platform(devices: Sequence[jax.Device] | None = None) -> str:
  """The platform (``"cpu"``, ``"gpu"``, ``"tpu"``, ...) of ``devices`` (default: jax's default)."""
  if devices:
    return devices[0].platform
  return jax.default_backend()


def is_accelerator(platform_name: str) -> bool:
  return platform_name.lower() in ACCELERATORS


def _resolve(
  value: str, choices: tuple, cpu: str, accelerator: str, error: str, platform_name: str | None
) -> str:
  """An explicit value in ``choices`` as is; ``"auto"`` by platform; anything else ``error``."""
  if value in choices:
    return value
  if value != "auto":
    raise ValueError(error)
  return accelerator if is_accelerator(platform_name or platform()) else cpu


def resolve_vectorize(value: str, platform_name: str | None = None) -> str:
  """``"auto"`` -> ``"map"`` on CPU, ``"vmap"`` on accelerators; explicit values unchanged."""
  return _resolve(
    value,
    VECTORIZE,
    "map",
    "vmap",
    f"vectorize must be 'auto', 'map' or 'vmap', got {value!r}.",
    platform_name,
  )


def resolve_conv_impl(value: str, platform_name: str | None = None) -> str:
  """``"auto"`` -> ``"matmul"`` on CPU, ``"xla"`` on accelerators; explicit values unchanged."""
  return _resolve(
    value,
    CONV_IMPLS,
    "matmul",
    "xla",
    f"Unknown conv_impl {value!r}; choose from {('auto',) + CONV_IMPLS}.",
    platform_name,
  )
