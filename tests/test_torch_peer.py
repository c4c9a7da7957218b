"""The PyTorch peer benchmark (benchmarks/torch_peer.py) computes what metagan_jax computes.

float64 cross-check on a tiny dcgan28 problem: identical parameters (converted
between the flax and torch layouts) and identical noise, so torch's ``loop``
and ``func`` meta-gradients must equal ``metagan_jax.meta_gradients`` to
rounding error. Skipped when torch is not installed.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import metagan_jax as mg  # noqa: E402
from benchmarks import common, torch_peer  # noqa: E402
from tests.helpers import HANG_TIMEOUT_S  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, K, Q, STEPS, LR = 2, 2, 2, 2, 0.05
# XLA's default optimisation takes ~1 min to compile a second-order dcgan28
# meta-gradient on a small CPU; the unoptimised build gives the same numbers.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run_jitted(f, *args, **static):
  """f(*args) through one jit compiled with _FAST_COMPILE (op by op, float64 would compile
  dozens of small programs)."""
  return (
    jax.jit(f, static_argnames=tuple(static)).lower(*args, **static).compile(_FAST_COMPILE)(*args)
  )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
  """Tiny problems: one thread avoids OpenMP spin-waits on a busy small machine."""
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def _jax_problem(model, adapt_cfg, seed=0):
  """Params, tasks, meta-gradient key and the latents metagan_jax draws for each task."""
  k_init, k_s, k_q, key = jax.random.split(jax.random.key(seed), 4)
  params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init(k_init))
  tasks = mg.Tasks(
    jax.random.uniform(k_s, (T, K, 28, 28, 1), jnp.float64, -1, 1),
    jax.random.uniform(k_q, (T, Q, 28, 28, 1), jnp.float64, -1, 1),
  )

  def noise(k):  # meta.meta_gradients -> maml_objective / _query_losses
    k_adapt, k_query = jax.random.split(k)
    z_inner = mg.inner_noise(k_adapt, adapt_cfg, K, jnp.float64).z  # [steps, 2, K, z]
    k_z, _ = jax.random.split(k_query)  # (k_z, k_gp)
    return z_inner, model.sample_z(k_z, Q, jnp.float64)

  z_inner, z_query = jax.vmap(noise)(jax.random.split(key, T))
  return params, tasks, key, z_inner, z_query


@pytest.fixture(scope="module")
def problem():
  """Params, tasks, noise and JAX reference meta-gradients (all numpy, float64)."""
  with jax.enable_x64(True):
    model = mg.models.dcgan28()
    adapt_cfg = mg.AdaptConfig(model, inner_steps=STEPS, inner_lr=LR)
    params, tasks, key, z_inner, z_query = _run_jitted(lambda: _jax_problem(model, adapt_cfg))
    ref = {}
    for alg in ("maml", "fomaml", "reptile"):
      cfg = mg.MetaConfig(adapt_cfg, algorithm=alg)  # vectorize="map" (default)
      grads, _ = _run_jitted(mg.meta_gradients, params, tasks, key, config=cfg)
      ref[alg] = jax.tree.map(np.asarray, {"g": grads.g, "d": grads.d})
    to_np = lambda x: jax.tree.map(np.asarray, x)
    return dict(
      model=model,
      params=to_np(params),
      support=np.asarray(tasks.support),
      query=np.asarray(tasks.query),
      z_inner=np.asarray(z_inner),
      z_query=np.asarray(z_query),
      ref=ref,
    )


def _rel_errs(got, want):
  """Per-leaf max |got - want| / max |want|, keyed by path."""
  flat_got = jax.tree_util.tree_flatten_with_path(got)[0]
  flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
  assert [p for p, _ in flat_got] == [p for p, _ in flat_want]
  return {
    jax.tree_util.keystr(p): float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    for (p, a), (_, b) in zip(flat_got, flat_want)
  }


def test_layout_conversion_forward_and_roundtrip(problem):
  params = problem["params"]
  model = problem["model"]
  tp = torch_peer.jax_to_torch_params(params, torch.float64)
  z = np.random.default_rng(0).standard_normal((3, model.z_dim))
  with jax.enable_x64(True):
    x_jax = np.asarray(_run_jitted(model.generate, params.g, jnp.asarray(z)))
    logits_jax = np.asarray(
      _run_jitted(model.discriminate, params.d, jnp.asarray(problem["support"][0]))
    )
  x_torch = torch_peer.generate(tp["g"], torch.tensor(z)).numpy()
  np.testing.assert_allclose(np.moveaxis(x_torch, 1, -1), x_jax, atol=1e-13)
  logits_torch = torch_peer.discriminate(
    tp["d"], torch_peer.nhwc_to_nchw(problem["support"][0], torch.float64)
  ).numpy()
  np.testing.assert_allclose(logits_torch, logits_jax, rtol=1e-12, atol=1e-13)
  back = torch_peer.torch_to_jax_grads(tp)
  for (pa, a), (_, b) in zip(
    jax.tree_util.tree_flatten_with_path(back)[0],
    jax.tree_util.tree_flatten_with_path({"g": params.g, "d": params.d})[0],
  ):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(pa))


@pytest.mark.parametrize("impl", ["loop", "func"])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_meta_gradients_match_jax_float64(problem, algorithm, impl):
  got = torch_peer.torch_meta_grads(
    problem["params"],
    problem["support"],
    problem["query"],
    problem["z_inner"],
    problem["z_query"],
    LR,
    algorithm,
    impl,
    "float64",
  )
  errs = _rel_errs(got, problem["ref"][algorithm])
  assert max(errs.values()) < 1e-8, errs


def test_naive_total_derivative_differs(problem):
  """A plain autograd.grad w.r.t. the non-leaf player params is the total derivative: wrong."""
  got = torch_peer.torch_meta_grads(
    problem["params"],
    problem["support"],
    problem["query"],
    problem["z_inner"],
    problem["z_query"],
    LR,
    "maml",
    "naive",
    "float64",
  )
  errs = _rel_errs(got, problem["ref"]["maml"])
  assert max(errs.values()) > 1e-3, errs


def _run_script(*args, timeout=HANG_TIMEOUT_S):
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "benchmarks", "torch_peer.py"),
      "--workload",
      "tiny",
      "--steps",
      "2",
      "--threads",
      "1",
      "--matmul-n",
      "256",
      *args,
    ],
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
    check=True,
  )
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("impl", ["loop", "func"])
def test_script_json_fields(impl):
  (rec,) = _run_script("--impl", impl)
  missing = [f for f in common.REQUIRED_FIELDS if f not in rec]
  assert not missing
  assert rec["backend"] == "torch" and rec["impl"] == impl and rec["algorithm"] == "maml"
  assert (rec["T"], rec["K"], rec["Q"], rec["inner_steps"]) == (T, K, Q, STEPS)
  assert rec["median_ms"] > 0 and rec["matmul_gflops_per_s"] > 0
  assert rec["useful_gflop"] == pytest.approx(
    common.useful_gflop(common.WORKLOADS["tiny"], "maml"), rel=1e-3
  )


@pytest.mark.skipif(
  not os.environ.get("METAGAN_SLOW_TESTS"),
  reason="torch.compile (inductor) of the second-order meta-gradient takes "
  "minutes on a small CPU; set METAGAN_SLOW_TESTS=1 to run",
)
def test_script_compile_json_fields():
  (rec,) = _run_script("--impl", "compile", timeout=1800)
  assert not [f for f in common.REQUIRED_FIELDS if f not in rec]
  assert "error" not in rec, rec.get("error")
  assert rec["compiled"]
