"""PyTorch peer of the JAX MAML-GAN benchmark (issue 3): the same meta-step in torch.

The workload, FLOP count, timing and JSON format come from ``benchmarks/common.py``,
so a line printed here is directly comparable with one from the JAX benchmark.
The model is dcgan28 written with ``torch.nn.functional`` on explicit parameter
tensors (NCHW); the math is that of ``metagan_jax.meta`` exactly (checked
against it in float64 by ``tests/test_torch_peer.py``).

Three implementations of one meta-step (``--impl``):

* ``loop``: the learn2learn / higher way. A Python loop over tasks;
  ``torch.autograd.grad(..., create_graph=True)`` in the inner loop; the two
  query meta-losses are back-propagated through the whole unrolled graph;
  meta-gradients are accumulated over tasks and fed to ``torch.optim.Adam``.
* ``func``: the ``torch.func`` way. ``torch.func.grad`` in the inner loop,
  ``torch.func.vjp`` of the per-task meta-objective, ``torch.func.vmap`` of
  the per-task meta-gradient over tasks (all noise drawn before the vmap).
* ``compile``: ``torch.compile`` of the ``func`` meta-gradient function; if it
  cannot be compiled, the loop's per-task function is compiled instead, and
  the JSON line says what was compiled (field ``compiled``) or why nothing was
  (field ``error``).

Partial gradients. Each inner update uses the gradient of a player's own loss
w.r.t. its own parameters with the other player's parameters held fixed, as
``jax.grad(d_obj)(d, fake)`` does in ``metagan_jax.inner``. In second-order
MAML the players' parameters depend on each other after the first step (D_1
depends on G_0 through the fakes; G_1 on D_1), so a plain
``torch.autograd.grad(loss, d)`` w.r.t. the non-leaf ``d`` returns the *total*
derivative: it also follows the paths from the loss into ``d`` through the
other player (e.g. loss -> fake -> G_1 -> D_1). The ``loop`` impl therefore
differentiates w.r.t. fresh aliases (``d.view_as(d)``) that only the player's
own forward pass uses; the graph through the aliases still carries every
meta-derivative. ``torch_meta_grads(..., impl="naive")`` is the plain version,
kept to show the difference.

Examples::

  python benchmarks/torch_peer.py --workload omniglot28-dcgan --algorithm maml --impl all
  python benchmarks/torch_peer.py --workload tiny --impl loop --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks import common  # noqa: E402

IMPLS = ("loop", "func", "compile")
ALGORITHMS = ("maml", "fomaml", "reptile")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}

Params = dict[str, dict[str, torch.Tensor]]  # {"g": {"fc.weight": ...}, "d": {...}}

# --- dcgan28 in torch.nn.functional (NCHW) ------------------------------------


def generate(g: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
  """G(z): [N, z_dim] -> [N, C, 28, 28]."""
  c = g["deconv1.weight"].shape[0]
  h = F.relu(F.linear(z, g["fc.weight"], g["fc.bias"])).reshape(z.shape[0], c, 7, 7)
  h = F.relu(F.conv_transpose2d(h, g["deconv1.weight"], g["deconv1.bias"], stride=2, padding=1))
  return torch.tanh(
    F.conv_transpose2d(h, g["deconv2.weight"], g["deconv2.bias"], stride=2, padding=1)
  )


def discriminate(d: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
  """D(x): [N, C, 28, 28] -> logits [N]."""
  h = F.leaky_relu(F.conv2d(x, d["conv1.weight"], d["conv1.bias"], stride=2, padding=1), 0.2)
  h = F.leaky_relu(F.conv2d(h, d["conv2.weight"], d["conv2.bias"], stride=2, padding=1), 0.2)
  return F.linear(h.reshape(h.shape[0], -1), d["fc.weight"], d["fc.bias"])[:, 0]


def d_loss(d, real, fake):
  """Non-saturating D loss on one D call over [real; fake] (as losses.GanLoss.d_objective)."""
  n = real.shape[0]
  logits = discriminate(d, torch.cat([real, fake], dim=0))
  return F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()


def g_loss_logits(fake_logits):
  return F.softplus(-fake_logits).mean()


def g_loss(g, d, z):
  """Non-saturating G loss softplus(-D(G(z)))."""
  return g_loss_logits(discriminate(d, generate(g, z)))


def query_losses(g, d, query, z_query):
  """(L_D, L_G) of an adapted pair with one draw of query noise (as meta._query_losses)."""
  fake = generate(g, z_query)
  return d_loss(d, query, fake), g_loss_logits(discriminate(d, fake))


def init_params(
  z_dim: int = 64, channels: int = 1, base: int = 32, dtype=torch.float32, seed: int = 0
) -> Params:
  """LeCun-normal weights, zero biases (flax's default init), in torch layout."""
  gen = torch.Generator().manual_seed(seed)

  def w(shape, fan_in):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) / fan_in**0.5).to(dtype)

  zeros = lambda n: torch.zeros(n, dtype=dtype)
  g = {
    "fc.weight": w((7 * 7 * 2 * base, z_dim), z_dim),
    "fc.bias": zeros(7 * 7 * 2 * base),
    "deconv1.weight": w((2 * base, base, 4, 4), 16 * 2 * base),
    "deconv1.bias": zeros(base),
    "deconv2.weight": w((base, channels, 4, 4), 16 * base),
    "deconv2.bias": zeros(channels),
  }
  d = {
    "conv1.weight": w((base, channels, 4, 4), 16 * channels),
    "conv1.bias": zeros(base),
    "conv2.weight": w((2 * base, base, 4, 4), 16 * base),
    "conv2.bias": zeros(2 * base),
    "fc.weight": w((1, 7 * 7 * 2 * base), 7 * 7 * 2 * base),
    "fc.bias": zeros(1),
  }
  return {"g": g, "d": d}


# --- layout conversion between flax (NHWC) and torch (NCHW) -------------------

# (player, flax module name) -> torch name prefix
_NAMES = {
  "g": {"fc": "fc", "deconv1": "deconv1", "deconv2": "deconv2"},
  "d": {"conv1": "conv1", "conv2": "conv2", "fc": "fc"},
}


def _to_torch_kernel(player: str, name: str, k: np.ndarray, c_hidden: int) -> np.ndarray:
  if player == "g" and name == "fc":
    # flax output index (h, w, c) -> torch (c, h, w); kernel [in, out] -> weight [out, in]
    return k.reshape(k.shape[0], 7, 7, c_hidden).transpose(0, 3, 1, 2).reshape(k.shape[0], -1).T
  if player == "d" and name == "fc":
    # flax input index (h, w, c) -> torch (c, h, w)
    return k.reshape(7, 7, c_hidden, k.shape[1]).transpose(3, 2, 0, 1).reshape(k.shape[1], -1)
  if name.startswith("deconv"):
    # flax ConvTranspose does not flip its kernel; torch's conv_transpose2d is the
    # adjoint of conv2d, i.e. flips. [kh, kw, Ci, Co] -> [Ci, Co, kh, kw], flipped.
    return k[::-1, ::-1].transpose(2, 3, 0, 1)
  return k.transpose(3, 2, 0, 1)  # conv: [kh, kw, Ci, Co] -> [Co, Ci, kh, kw]


def _to_flax_kernel(player: str, name: str, w: np.ndarray, c_hidden: int) -> np.ndarray:
  """Inverse of :func:`_to_torch_kernel` (all are permutations, so grads map the same way)."""
  if player == "g" and name == "fc":
    n_in = w.shape[1]
    return w.T.reshape(n_in, c_hidden, 7, 7).transpose(0, 2, 3, 1).reshape(n_in, -1)
  if player == "d" and name == "fc":
    return w.reshape(w.shape[0], c_hidden, 7, 7).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
  if name.startswith("deconv"):
    return w.transpose(2, 3, 0, 1)[::-1, ::-1]
  return w.transpose(2, 3, 1, 0)


def _to_torch_bias(player, name, b, c_hidden):
  if player == "g" and name == "fc":
    return b.reshape(7, 7, c_hidden).transpose(2, 0, 1).reshape(-1)
  return b


def _to_flax_bias(player, name, b, c_hidden):
  if player == "g" and name == "fc":
    return b.reshape(c_hidden, 7, 7).transpose(1, 2, 0).reshape(-1)
  return b


def _players(params) -> dict:
  if hasattr(params, "_asdict"):  # metagan_jax.GanParams
    params = params._asdict()
  return {"g": params["g"], "d": params["d"]}


def _c_hidden(params_flax_or_torch, torch_layout: bool) -> dict:
  """Channels of the 7x7 maps: G's fc reshape (= deconv1 in), D's conv2 out."""
  p = params_flax_or_torch
  if torch_layout:
    return {"g": p["g"]["deconv1.weight"].shape[0], "d": p["d"]["conv2.weight"].shape[0]}
  return {
    "g": np.shape(p["g"]["deconv1"]["kernel"])[2],
    "d": np.shape(p["d"]["conv2"]["kernel"])[3],
  }


def jax_to_torch_params(params, dtype=torch.float32) -> Params:
  """dcgan28 flax params (GanParams or {'g', 'd'}) -> torch layout {'g': {'fc.weight': ..}, ..}."""
  params = _players(params)
  ch = _c_hidden(params, torch_layout=False)
  out = {}
  for player, names in _NAMES.items():
    out[player] = {}
    for name, tname in names.items():
      leaf = params[player][name]
      k = _to_torch_kernel(player, name, np.asarray(leaf["kernel"]), ch[player])
      b = _to_torch_bias(player, name, np.asarray(leaf["bias"]), ch[player])
      out[player][f"{tname}.weight"] = torch.tensor(np.ascontiguousarray(k), dtype=dtype)
      out[player][f"{tname}.bias"] = torch.tensor(np.ascontiguousarray(b), dtype=dtype)
  return out


def torch_to_jax_grads(grads: Params) -> dict:
  """Torch-layout tensors (grads or params) -> numpy in the flax layout {'g': {'fc': {..}}, ..}."""
  ch = _c_hidden(grads, torch_layout=True)
  out = {}
  for player, names in _NAMES.items():
    out[player] = {}
    for name, tname in names.items():
      w = grads[player][f"{tname}.weight"].detach().cpu().numpy()
      b = grads[player][f"{tname}.bias"].detach().cpu().numpy()
      out[player][name] = {
        "kernel": np.ascontiguousarray(_to_flax_kernel(player, name, w, ch[player])),
        "bias": np.ascontiguousarray(_to_flax_bias(player, name, b, ch[player])),
      }
  return out


def nhwc_to_nchw(x: np.ndarray, dtype=torch.float32) -> torch.Tensor:
  """[..., H, W, C] numpy images -> [..., C, H, W] torch."""
  x = np.asarray(x)
  return torch.tensor(np.ascontiguousarray(np.moveaxis(x, -1, -3)), dtype=dtype)


# --- impl "loop": explicit autograd.grad(create_graph=True), tasks one by one -----


def _alias(p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """Fresh graph nodes equal to ``p``: gradients w.r.t. them are partial derivatives."""
  return {k: v.view_as(v) for k, v in p.items()}


def _sgd(p, grads, lr):
  return {k: v - lr * gr for (k, v), gr in zip(p.items(), grads)}


def loop_adapt(meta: Params, support, z_inner, lr: float, mode: str):
  """Inner loop of one task. ``mode``: 'second' (MAML), 'first' (FOMAML), 'none'
  (Reptile: no graph to the meta-params), or 'naive' (MAML with total derivatives).

  ``z_inner``: [steps, 2, K, z_dim]; index 0 feeds the D update, 1 the G update.
  """
  g, d = meta["g"], meta["d"]
  if mode == "none":
    g = {k: v.detach().requires_grad_() for k, v in g.items()}
    d = {k: v.detach().requires_grad_() for k, v in d.items()}
  create = mode in ("second", "naive")
  alias = _alias if mode == "second" else (lambda p: p)
  for s in range(z_inner.shape[0]):
    fake = generate(g, z_inner[s, 0])
    d_in = alias(d)
    grads = torch.autograd.grad(
      d_loss(d_in, support, fake),
      list(d_in.values()),
      create_graph=create,
      retain_graph=mode != "none",
    )
    if mode == "none":
      with torch.no_grad():
        d = _sgd(d, grads, lr)
      d = {k: v.requires_grad_() for k, v in d.items()}
    else:
      d = _sgd(d_in, grads, lr)  # first order: grads carry no graph (constants)
    g_in = alias(g)
    grads = torch.autograd.grad(
      g_loss(g_in, d, z_inner[s, 1]),
      list(g_in.values()),
      create_graph=create,
      retain_graph=mode != "none",
    )
    if mode == "none":
      with torch.no_grad():
        g = _sgd(g, grads, lr)
      g = {k: v.requires_grad_() for k, v in g.items()}
    else:
      g = _sgd(g_in, grads, lr)
  return g, d


def loop_task_grads(
  meta: Params, support, query, z_inner, z_query, lr: float, algorithm: str, naive: bool = False
) -> Params:
  """One task's meta-gradient (reptile: direction theta - theta'), torch layout.

  ``meta`` leaves must require grad (except for reptile).
  """
  if algorithm == "reptile":
    g, d = loop_adapt(meta, support, z_inner, lr, "none")
    return {
      "g": {k: (meta["g"][k] - v).detach() for k, v in g.items()},
      "d": {k: (meta["d"][k] - v).detach() for k, v in d.items()},
    }
  mode = "first" if algorithm == "fomaml" else ("naive" if naive else "second")
  g, d = loop_adapt(meta, support, z_inner, lr, mode)
  l_d, l_g = query_losses(g, d, query, z_query)
  gd = torch.autograd.grad(l_d, list(meta["d"].values()), retain_graph=True)
  gg = torch.autograd.grad(l_g, list(meta["g"].values()))
  return {"g": dict(zip(meta["g"], gg)), "d": dict(zip(meta["d"], gd))}


def loop_meta_grads(
  meta: Params,
  support_T,
  query_T,
  z_inner_T,
  z_query_T,
  lr: float,
  algorithm: str,
  naive: bool = False,
  task_fn: Callable | None = None,
) -> Params:
  """Task-averaged meta-gradient: a Python loop over tasks."""
  task_fn = task_fn or loop_task_grads
  total = None
  n = support_T.shape[0]
  for i in range(n):
    gi = task_fn(meta, support_T[i], query_T[i], z_inner_T[i], z_query_T[i], lr, algorithm, naive)
    if total is None:
      total = gi
    else:
      total = {p: {k: total[p][k] + v for k, v in gi[p].items()} for p in gi}
  return {p: {k: v / n for k, v in total[p].items()} for p in total}


# --- impl "func": torch.func.grad / vjp / vmap --------------------------------


def func_adapt(meta: Params, support, z_inner, lr: float):
  """Inner loop with torch.func.grad (partial derivatives by construction)."""
  g, d = meta["g"], meta["d"]
  d_grad = torch.func.grad(d_loss)  # w.r.t. d; fake is another argument
  g_grad = torch.func.grad(g_loss)  # w.r.t. g; d is another argument
  for s in range(z_inner.shape[0]):
    fake = generate(g, z_inner[s, 0])
    gd = d_grad(d, support, fake)
    d = {k: v - lr * gd[k] for k, v in d.items()}
    gg = g_grad(g, d, z_inner[s, 1])
    g = {k: v - lr * gg[k] for k, v in g.items()}
  return g, d


def func_task_grads(meta: Params, support, query, z_inner, z_query, lr: float, algorithm: str):
  """One task's meta-gradient (reptile: direction), written for torch.func.vmap."""
  if algorithm == "reptile":
    g, d = func_adapt(meta, support, z_inner, lr)
    return {
      "g": {k: meta["g"][k] - v for k, v in g.items()},
      "d": {k: meta["d"][k] - v for k, v in d.items()},
    }
  if algorithm == "fomaml":
    # Inner gradients are constants, so d theta'/d theta = I: the meta-gradient
    # is the query losses' gradient at the adapted pair.
    g, d = func_adapt(meta, support, z_inner, lr)
    gd = torch.func.grad(lambda d_: query_losses(g, d_, query, z_query)[0])(d)
    gg = torch.func.grad(lambda g_: query_losses(g_, d, query, z_query)[1])(g)
    return {"g": gg, "d": gd}

  def objective(mp):
    g, d = func_adapt(mp, support, z_inner, lr)
    return torch.stack(query_losses(g, d, query, z_query))

  losses, vjp_fn = torch.func.vjp(objective, meta)
  eye = torch.eye(2, dtype=losses.dtype)
  (grads_d,) = vjp_fn(eye[0])
  (grads_g,) = vjp_fn(eye[1])
  return {"g": grads_g["g"], "d": grads_d["d"]}


def func_meta_grads(
  meta: Params, support_T, query_T, z_inner_T, z_query_T, lr: float, algorithm: str
) -> Params:
  """Task-averaged meta-gradient: torch.func.vmap of the per-task function over tasks."""
  fn = lambda mp, s, q, zi, zq: func_task_grads(mp, s, q, zi, zq, lr, algorithm)
  grads_T = torch.func.vmap(fn, in_dims=(None, 0, 0, 0, 0))(
    meta, support_T, query_T, z_inner_T, z_query_T
  )
  return {p: {k: v.mean(0) for k, v in grads_T[p].items()} for p in grads_T}


# --- entry point for tests ----------------------------------------------------


def torch_meta_grads(
  params_np,
  support_np,
  query_np,
  z_inner_np,
  z_query_np,
  inner_lr: float,
  algorithm: str,
  impl: str = "loop",
  dtype: str = "float64",
) -> dict:
  """Meta-gradients (reptile: directions) of a dcgan28 pair, in the flax layout, as numpy.

  Args:
    params_np: flax dcgan28 params (``GanParams`` or ``{'g': .., 'd': ..}``).
    support_np / query_np: ``[T, K|Q, 28, 28, C]`` (NHWC, as in metagan_jax).
    z_inner_np: ``[T, steps, 2, K, z_dim]`` (``metagan_jax.inner_noise(...).z`` per task).
    z_query_np: ``[T, Q, z_dim]``.
    inner_lr: inner SGD learning rate.
    algorithm: ``maml``, ``fomaml`` or ``reptile``.
    impl: ``loop``, ``func``, ``compile`` or ``naive`` (loop with total derivatives).
    dtype: ``float32`` or ``float64``.

  Returns:
    ``{'g': {'fc': {'kernel', 'bias'}, ...}, 'd': {...}}`` numpy arrays.
  """
  tdt = _DTYPES[dtype]
  meta = jax_to_torch_params(params_np, tdt)
  s, q = nhwc_to_nchw(support_np, tdt), nhwc_to_nchw(query_np, tdt)
  zi = torch.tensor(np.asarray(z_inner_np), dtype=tdt)
  zq = torch.tensor(np.asarray(z_query_np), dtype=tdt)
  if impl in ("loop", "naive"):
    if algorithm != "reptile":
      meta = {p: {k: v.requires_grad_() for k, v in meta[p].items()} for p in meta}
    grads = loop_meta_grads(meta, s, q, zi, zq, inner_lr, algorithm, naive=impl == "naive")
  elif impl == "func":
    grads = func_meta_grads(meta, s, q, zi, zq, inner_lr, algorithm)
  elif impl == "compile":
    fn, _ = _compiled_grad_fn(inner_lr, algorithm)
    grads = fn(meta, s, q, zi, zq)
  else:
    raise ValueError(f"Unknown impl {impl!r}; choose from {IMPLS + ('naive',)}.")
  return torch_to_jax_grads(grads)


# --- torch.compile ------------------------------------------------------------


def _compiled_grad_fn(lr: float, algorithm: str, force_fallback: bool = False):
  """(fn(meta, s, q, zi, zq) -> grads, what was compiled); compilation happens at first call."""
  if not force_fallback:

    def step_grads(meta, s, q, zi, zq):
      return func_meta_grads(meta, s, q, zi, zq, lr, algorithm)

    return torch.compile(step_grads), (
      "func_meta_grads: torch.func.vmap over tasks of the "
      "per-task torch.func meta-gradient (inductor)"
    )

  # Fallback: the loop impl with its per-task function compiled (graph breaks
  # at autograd.grad are allowed; dynamo compiles the forward pieces).
  task = torch.compile(loop_task_grads)

  def fn(meta, s, q, zi, zq):
    if algorithm != "reptile":
      meta = {p: {k: v.detach().requires_grad_() for k, v in meta[p].items()} for p in meta}
    return loop_meta_grads(meta, s, q, zi, zq, lr, algorithm, task_fn=task)

  return fn, "loop_task_grads (per task; graph breaks around autograd.grad)"


# --- benchmark ----------------------------------------------------------------


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
  """Best-of-``reps`` float32 n x n matmul rate in this process (GFLOP/s)."""
  a = torch.randn(n, n)
  b = torch.randn(n, n)
  torch.mm(a, b)
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    torch.mm(a, b)
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9


def _make_step(
  impl: str,
  w: common.Workload,
  algorithm: str,
  dtype,
  seed: int = 0,
  compiled_fn: Callable | None = None,
  autocast: str | None = None,
):
  """Returns (step(), info dict). ``step`` runs one full meta-step incl. the Adam update.

  Tasks are fixed random images; the latents are drawn afresh (torch.randn) every step.
  ``compiled_fn`` (impl ``compile`` only) replaces the default compiled gradient function.
  ``autocast="bfloat16"`` runs the meta-gradient under ``torch.autocast("cpu", bf16)``
  (PyTorch's own bf16: convolutions and matmuls in bf16, parameters and Adam in float32).
  """
  gen = torch.Generator().manual_seed(seed)
  meta = init_params(w.z_dim, w.channels, dtype=dtype, seed=seed)
  leaves = [v.requires_grad_() for p in ("g", "d") for v in meta[p].values()]
  opt = torch.optim.Adam(leaves, lr=w.outer_lr)
  shape = (w.channels, w.image_hw, w.image_hw)
  support = torch.rand((w.T, w.K, *shape), generator=gen, dtype=dtype) * 2 - 1
  query = torch.rand((w.T, w.Q, *shape), generator=gen, dtype=dtype) * 2 - 1
  info: dict[str, Any] = {}
  detached = lambda: {p: {k: v.detach() for k, v in meta[p].items()} for p in meta}

  if impl == "loop":
    grad_fn = lambda zi, zq: loop_meta_grads(meta, support, query, zi, zq, w.inner_lr, algorithm)
  elif impl == "func":
    grad_fn = lambda zi, zq: func_meta_grads(
      detached(), support, query, zi, zq, w.inner_lr, algorithm
    )
  elif impl == "compile":
    if compiled_fn is None:
      compiled_fn, info["compiled"] = _compiled_grad_fn(w.inner_lr, algorithm)
    grad_fn = lambda zi, zq: compiled_fn(detached(), support, query, zi, zq)
  else:
    raise ValueError(f"Unknown impl {impl!r}; choose from {IMPLS}.")

  def step():
    zi = torch.randn((w.T, w.inner_steps, 2, w.K, w.z_dim), generator=gen, dtype=dtype)
    zq = torch.randn((w.T, w.Q, w.z_dim), generator=gen, dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
      grads = grad_fn(zi, zq)
    for p in ("g", "d"):
      for k, v in meta[p].items():
        v.grad = grads[p][k].detach()
    opt.step()

  return step, info


def run_one(
  impl: str,
  w: common.Workload,
  algorithm: str,
  dtype_name: str,
  steps: int,
  matmul: float,
  autocast: str | None = None,
) -> dict:
  dtype = _DTYPES[dtype_name]
  record: dict[str, Any] = {
    "backend": "torch",
    "device": common.cpu_name(),
    "impl": impl,
    "algorithm": algorithm,
    "workload": w.name,
    "T": w.T,
    "K": w.K,
    "Q": w.Q,
    "inner_steps": w.inner_steps,
    "dtype": dtype_name,
    "autocast": autocast,
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "matmul_gflops_per_s": matmul,
  }
  step, info = _make_step(impl, w, algorithm, dtype, autocast=autocast)
  record.update(info)
  t0 = time.perf_counter()
  try:
    step()
  except Exception as e:  # noqa: BLE001 - report, then try the fallback
    if impl != "compile":
      raise
    first_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]
    record["compile_error_func"] = first_error
    torch._dynamo.reset()
    fn, what = _compiled_grad_fn(w.inner_lr, algorithm, force_fallback=True)
    record["compiled"] = what
    step, _ = _make_step("compile", w, algorithm, dtype, compiled_fn=fn, autocast=autocast)
    t0 = time.perf_counter()
    try:
      step()
    except Exception as e2:  # noqa: BLE001
      record.update({f: None for f in common.REQUIRED_FIELDS if f not in record})
      record["compiled"] = None
      record["error"] = (
        f"torch.compile failed for the func impl ({first_error}) and for "
        f"the loop's per-task fn ({type(e2).__name__}: {str(e2)[:300]})"
      )
      return record
  record["compile_s"] = time.perf_counter() - t0
  record.update(common.time_steps(step, steps))
  return common.finish(record, w, algorithm)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--workload", default="omniglot28-dcgan", choices=sorted(common.WORKLOADS))
  p.add_argument("--algorithm", default="maml", choices=ALGORITHMS)
  p.add_argument("--impl", default="loop", choices=IMPLS + ("all",))
  p.add_argument("--steps", type=int, default=20, help="timed meta-steps (after 2 warm-up)")
  p.add_argument("--T", type=int, default=None)
  p.add_argument("--K", type=int, default=None)
  p.add_argument("--Q", type=int, default=None)
  p.add_argument("--inner-steps", type=int, default=None)
  p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
  p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
  p.add_argument(
    "--autocast",
    default=None,
    choices=["bfloat16"],
    help="the meta-gradient under torch.autocast (PyTorch's bf16 mixed precision)",
  )
  p.add_argument(
    "--matmul-n",
    type=int,
    default=2048,
    help="size of the float32 matmul that gives matmul_gflops_per_s",
  )
  args = p.parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  w = common.WORKLOADS[args.workload]
  overrides = {
    k: v
    for k, v in (("T", args.T), ("K", args.K), ("Q", args.Q), ("inner_steps", args.inner_steps))
    if v is not None
  }
  if overrides:
    import dataclasses

    w = dataclasses.replace(w, **overrides)
  matmul = matmul_gflops(args.matmul_n)
  impls = IMPLS if args.impl == "all" else (args.impl,)
  for impl in impls:
    common.emit(run_one(impl, w, args.algorithm, args.dtype, args.steps, matmul, args.autocast))


if __name__ == "__main__":
  main()
