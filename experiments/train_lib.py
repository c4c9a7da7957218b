"""Training runs for the Omniglot experiments: pre-training, meta methods, scratch.

One run = one method (or ``pretrain``, the GAN trained on all meta-training
classes that ``transfer`` adapts and meta methods may start from) x one seed,
in its own folder::

  <workdir>/train/<method>_s<seed>/
    config.json        the full experiment config
    metrics.jsonl      one JSON line per logged step
    events.out.tfevents.*   TensorBoard scalars and sample grids
    samples/step_XXXXXX.png 8x8 samples of the current initialisation
    checkpoints/<step>/     orbax checkpoints (every train.ckpt_every steps and at the end)
    timing.json        median ms per step (the compiling first step apart), loop seconds
    equal_time.msgpack, equal_time.json   with equal_time_ms: the parameters at step k, and k

Checkpoints are written by orbax to a temporary folder and renamed when
complete (atomic). :func:`train_run` with ``resume=True`` restores the newest
readable checkpoint (an unreadable one is skipped with a warning) and continues;
every batch and random key is a pure function of (seed, step), so on CPU a
killed-and-resumed run ends with exactly the parameters of an uninterrupted one.

Non-finite updates are detected after every step (any non-finite loss or
parameter): the update is skipped, i.e. the state before the step is kept, as
``optax.apply_if_finite`` does, and counted (the counts are checkpointed);
after ``train.max_nonfinite`` in a row the run stops with
:class:`NonFiniteError`. The check runs outside the compiled step, so the
library's ``meta_step`` is used unchanged (wrapping the outer optimiser in
``optax.apply_if_finite`` instead costs ~40% more compile time on CPU).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import metagan_jax as mg
from metagan_jax import gan, recipes
from metagan_jax.progress import Progress

META_METHODS = mg.ALGORITHMS
BASELINES = ("transfer", "scratch")


class NonFiniteError(RuntimeError):
  """Too many non-finite updates in a row."""


def is_main_process() -> bool:
  """True in the process that writes logs, images, and results (process 0)."""
  return jax.process_index() == 0


def define_process_flags() -> None:
  """The absl flags of a run over several processes (read by ``mg.parallel.distributed``)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string(
    "coordinator",
    None,
    "Several processes: host:port of process 0 "
    "(default $METAGAN_COORDINATOR; unset = one process).",
  )
  flags.DEFINE_integer(
    "num_processes", None, "Several processes: how many (default $METAGAN_NUM_PROCESSES)."
  )
  flags.DEFINE_integer(
    "process_id",
    None,
    "Several processes: this one's id in [0, num_processes) (default $METAGAN_PROCESS_ID).",
  )


def sample_streams(config) -> int:
  """Task-sampling streams per meta-step: ``train.sample_streams``, 0 = one per process."""
  s = int(config.train.get("sample_streams", 0)) or jax.process_count()
  if s % jax.process_count():
    raise ValueError(
      f"train.sample_streams={s} must be a multiple of the {jax.process_count()} "
      f"processes (each process draws its own streams); use 0 for one per process."
    )
  if config.train.tasks % s:
    raise ValueError(
      f"train.tasks={config.train.tasks} tasks do not split over {s} sampling "
      f"streams; use a multiple of {s}."
    )
  return s


def spec_config(config) -> mg.audio.SpecConfig | None:
  """The config's spectrogram settings (``config.spec``), None for image datasets."""
  if config.dataset not in mg.data.AUDIO_NAMES:
    return None
  spec = config.get("spec")
  return mg.audio.SpecConfig(**(spec.to_dict() if hasattr(spec, "to_dict") else dict(spec or {})))


def load_split(config, split: str, **kwargs):
  """``mg.data.load_split`` with the config's dataset, data folder and preprocessing.

  Images: the config's blur. Recordings: its spectrogram (``config.spec``) and
  fold (``config.fold``, the test speaker's index), with K as the fewest clips.
  """
  if config.dataset in mg.data.AUDIO_NAMES:
    shifts = parse_list(config.get("voice_shifts", ""), float) if split == "train" else []
    kwargs = dict(
      dict(
        spec=spec_config(config),
        fold=config.get("fold"),
        min_clips=int(config.train.k),
        voice_shifts=shifts,
      ),
      **kwargs,
    )
  else:
    kwargs = dict(dict(blur=float(config.get("blur", 0.0))), **kwargs)
  return mg.data.load_split(config.dataset, split, data_dir=config.data_dir or None, **kwargs)


def parse_list(s, typ=str) -> list:
  """``"a,b"`` (or a list/tuple) -> ``[typ(a), typ(b)]``; empty string -> ``[]``."""
  if isinstance(s, (list, tuple)):
    return [typ(x) for x in s]
  return [typ(x.strip()) for x in str(s).split(",") if x.strip()]


def check_methods(methods: list[str]) -> None:
  bad = [m for m in methods if m not in META_METHODS + BASELINES]
  if bad:
    raise ValueError(
      f"unknown method(s) {bad} in config.methods; choose from {list(META_METHODS + BASELINES)}."
    )


# The config -> library objects mapping lives in the library (load_run uses it too).
get_model = recipes.model
default_rule = recipes.default_rule
inner_optimizer = recipes.inner_optimizer
adapt_config = recipes.adapt_config
meta_config = recipes.meta_config
pretrain_config = recipes.pretrain_config
pretrained_params = recipes.pretrained_params


EQUAL_TIME = "@time"  # suffix of a method's row at the reference method's meta-training time


def equal_time_name(method: str) -> str:
  """The row name of ``method`` trained for the reference's time, e.g. ``maml@time``."""
  return method + EQUAL_TIME


def base_method(name: str) -> str:
  """``maml@time`` -> ``maml``: the method a result row comes from."""
  return name.split("@")[0]


def equal_time_methods(config) -> tuple[list[str], str]:
  """``(train.equal_time methods that config.methods trains, their reference)``.

  Names that are not meta methods, or the reference itself, raise; meta methods
  that ``config.methods`` leaves out are dropped (so one config serves every
  subset), and all are dropped, with a warning, when the reference is left out.
  """
  tc = config.train
  eq = parse_list(tc.get("equal_time", ""))
  ref = str(tc.get("equal_time_of", "reptile"))
  methods = parse_list(config.methods)
  bad = [m for m in eq if m not in META_METHODS or m == ref]
  if eq and (bad or ref not in META_METHODS):
    raise ValueError(
      f"train.equal_time={tc.equal_time!r} must name meta methods {list(META_METHODS)} other "
      f"than train.equal_time_of={ref!r}, which must be one too; offending: {bad or [ref]}."
    )
  eq = [m for m in eq if m in methods]
  if eq and ref not in methods:
    warnings.warn(
      f"train.equal_time={tc.equal_time!r} needs its reference {ref!r} in "
      f"config.methods={config.methods!r}; no equal-time rows this run.",
      stacklevel=2,
    )
    eq = []
  return eq, ref


def pretrain_seed(config, meta_seed: int) -> int:
  """The pre-training run a meta seed starts from: its own, or the run's first seed."""
  if config.pretrain.per_seed:
    return meta_seed
  return min(parse_list(config.meta_seeds, int))


def _pretrain_step(train_step, state, batch: mg.Tasks, key):
  return train_step(state, batch.support[0], key)


class LabelledTasks(NamedTuple):
  """A conditional pre-training batch with each task's class index (for D's class head)."""

  tasks: mg.Tasks
  labels: np.ndarray


def _cond_pretrain_step(train_step, state, batch: mg.Tasks | LabelledTasks, key):
  # One class per task: image 0 is the real target, the other M its support set (DAGAN's pairs
  # of the same class, the target never in its own set).
  if isinstance(batch, LabelledTasks):
    s = batch.tasks.support
    return train_step(state, s[:, 0], key, support=s[:, 1:], labels=batch.labels)
  return train_step(state, batch.support[:, 0], key, support=batch.support[:, 1:])


# Fields that never enter a training step: what to evaluate, where to read and write, how
# long to run and how to log. Everything else is part of the step's key, so a new config
# field reaches the step unless it is listed here (a missing entry costs a recompile, a
# missing field in an allow-list silently trained the wrong step).
_NOT_IN_STEP = ("eval", "features", "meta_seeds", "methods", "name", "data_dir")
# pre-training's length: the step has no schedule, so a long run and its shorter stages
# (experiments/compute_curve.py) share one compiled step
_PRETRAIN_NOT_IN_STEP = ("steps",)
_TRAIN_NOT_IN_STEP = (
  "steps",
  "ckpt_every",
  "log_every",
  "sample_every",
  "sample_streams",
  "keep_checkpoints",
  "equal_time",
  "equal_time_of",
  "max_nonfinite",
  "step_sleep",
  "inject_nan_steps",
)


def _step_key(config) -> str:
  """The config a step function is built from, as JSON (its compilation cache key)."""
  keep = config.to_dict() if hasattr(config, "to_dict") else json.loads(json.dumps(config))
  for k in _NOT_IN_STEP:
    keep.pop(k, None)
  keep["train"] = {k: v for k, v in keep.get("train", {}).items() if k not in _TRAIN_NOT_IN_STEP}
  if "pretrain" in keep:
    keep["pretrain"] = {k: v for k, v in keep["pretrain"].items() if k not in _PRETRAIN_NOT_IN_STEP}
  return json.dumps(keep, sort_keys=True)


@functools.cache
def _step_fn(config_json: str, method: str):
  """The jitted step of a method, one per config (so repeated runs reuse the compilation)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(json.loads(config_json))
  if method in META_METHODS:
    return jax.jit(functools.partial(mg.meta_step, config=meta_config(config, method)))
  pc = pretrain_config(config)
  step = jax.jit(functools.partial(gan.train_step, config=pc))
  return functools.partial(_cond_pretrain_step if pc.model.conditional else _pretrain_step, step)


class Run:
  """Everything method-specific about a run: init, step function, data.

  ``method`` is a meta method, ``"pretrain"`` (the GAN that ``transfer`` adapts
  and meta methods may start from) or ``"scratch"`` (no training: the random
  initialisation of the seed).
  """

  def __init__(
    self, config, method: str, seed: int, train_split, init_params: mg.GanParams | None = None
  ):
    self.config, self.method, self.seed = config, method, seed
    tc = config.train
    self.total = {"scratch": 0, "pretrain": int(config.pretrain.steps)}.get(method, int(tc.steps))
    root = jax.random.key(seed)
    self.k_init, self.k_steps = jax.random.split(root)
    model = get_model(config)
    # D's class head needs each pre-training task's class (LabelledTasks batches)
    self.labelled = (
      method == "pretrain"
      and model.conditional
      and bool(float(config.pretrain.get("class_weight", 0.0)))
    )
    self.mesh = None
    self.step_fn = _step_fn(_step_key(config), method)
    if method in META_METHODS:
      # The meta-batch is spread over every device of every process: state
      # replicated, tasks sharded. Process p draws its own sampling streams
      # (TaskSampler process_index = stream), T / streams tasks each.
      self.mesh = mg.parallel.task_mesh()
      mg.parallel.check_divisible(tc.tasks, self.mesh)
      mc = meta_config(config, method)
      state = mg.init(self.k_init, mc)
      if init_params is not None:  # start from the pre-trained GAN
        params = (
          mg.MetaSGDParams(init=init_params, lr=state.params.lr)
          if isinstance(state.params, mg.MetaSGDParams)
          else init_params
        )
        state = mg.MetaState(params, mc.optimizer.init(params), state.step)
      self.state0 = mg.parallel.replicate(state, self.mesh)
      n = sample_streams(config)
      mine = range(
        jax.process_index() * n // jax.process_count(),
        (jax.process_index() + 1) * n // jax.process_count(),
      )
      self.samplers = [
        mg.data.TaskSampler(train_split, tc.tasks // n, tc.k, tc.q, seed=seed, process_index=i)
        for i in mine
      ]
    elif method in ("pretrain", "scratch"):
      self.state0 = gan.init(self.k_init, pretrain_config(config))
      # Batches of distinct classes: every image of the split about equally often.
      # Not task-parallel: with several processes, each runs the same updates.
      b = int(config.pretrain.batch)
      if method == "scratch":
        self.samplers = []
      elif model.conditional:  # b one-class tasks of a target and its set of cond_m images
        m = int(config.pretrain.get("cond_m", tc.k - 1))
        self.samplers = [mg.data.TaskSampler(train_split, b, m + 1, 0, seed=seed)]
        if self.labelled and model.num_classes != self.samplers[0].num_classes:
          raise ValueError(
            f"config.pretrain.class_weight needs D's class head over the training split's "
            f"{self.samplers[0].num_classes} classes, but the model has num_classes="
            f"{model.num_classes}; set config.model_kw.num_classes="
            f"{self.samplers[0].num_classes}."
          )
      else:
        self.samplers = [mg.data.TaskSampler(train_split, 1, b, 0, seed=seed, classes_per_task=b)]
    else:
      raise ValueError(
        f"Run: method {method!r} has no training run; choose from "
        f"{list(META_METHODS) + ['pretrain', 'scratch']}."
      )
    self.model = model
    self.nan_steps = set(parse_list(tc.inject_nan_steps, int))

  @property
  def sampler(self):
    return self.samplers[0] if self.samplers else None

  def batch(self, step: int) -> mg.Tasks:
    """This step's tasks: this process's streams, placed on the mesh for meta methods."""
    parts = [smp.batch(step) for smp in self.samplers]
    tasks = parts[0] if len(parts) == 1 else jax.tree.map(lambda *x: np.concatenate(x), *parts)
    if step in self.nan_steps:
      tasks = mg.Tasks(tasks.support * np.nan, tasks.query * np.nan)
    if self.labelled:  # the same draw's classes (indices() is a pure function of the step)
      return LabelledTasks(tasks, self.sampler.indices(step)[0][:, 0].astype(np.int32))
    return mg.parallel.shard_tasks(tasks, self.mesh) if self.mesh is not None else tasks

  def key(self, step: int) -> jax.Array:
    return jax.random.fold_in(self.k_steps, step)

  @staticmethod
  def init_params(state) -> mg.GanParams:
    """The GAN a state stands for: the meta-learned init, or the (EMA) pre-trained GAN."""
    if isinstance(state, gan.GanTrainState):
      return pretrained_params(state)
    p = state.params
    return p.init if isinstance(p, mg.MetaSGDParams) else p


def run_health(run_dirs: list[str]) -> dict:
  """Non-finite updates skipped and the largest |loss| logged, over the runs' metrics.jsonl."""
  skipped, worst = 0, 0.0
  for d in run_dirs:
    path = os.path.join(d, "metrics.jsonl")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      rows = [json.loads(l) for l in f if l.strip()]
    skipped += max((int(r.get("nonfinite_skipped", 0)) for r in rows), default=0)
    worst = max(
      [worst]
      + [abs(v) for r in rows for k, v in r.items() if "loss" in k and isinstance(v, (int, float))]
    )
  return {"nonfinite_skipped": skipped, "max_abs_loss": worst, "runs": len(run_dirs)}


@jax.jit
def all_finite(tree) -> jax.Array:
  """True iff every leaf of ``tree`` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# --- checkpoints --------------------------------------------------------------


def _manager(ckpt_dir: str, keep: int):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  return ocp.CheckpointManager(
    os.path.abspath(ckpt_dir),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False
    ),
    item_names=("state", "meta"),
  )


def _is_global(x) -> bool:
  """A jax.Array spread over several processes (orbax saves and restores it collectively)."""
  return isinstance(x, jax.Array) and not x.is_fully_addressable


def save_checkpoint(mngr, step: int, state, meta: dict) -> None:
  """Saves ``state`` (every process calls it; orbax writes each array once).

  Arrays spread over several processes are saved as global arrays; the rest
  (identical in every process) as numpy, written by process 0, as is ``meta``.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  leaves = {
    k: x if _is_global(x) else np.asarray(x) for k, x in mg.checkpoint.leaf_dict(state).items()
  }
  mngr.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(leaves), meta=ocp.args.JsonSave(meta)),
    force=True,
  )
  mngr.wait_until_finished()


def restore_checkpoint(
  ckpt_dir: str, keep: int, like, step: int | None = None
) -> tuple[Any, dict, int] | None:
  """Newest readable checkpoint as ``(state, meta, step)``, or None if there is none.

  An unreadable checkpoint (corrupted, truncated) is skipped with a warning and
  removed, and the previous one is tried. Arrays come back with the shardings
  of ``like``'s leaves (global arrays with several processes); every process
  must call it.

  Args:
    step: restore this step only (None if the folder has no such step); an
      unreadable one raises instead of falling back, and is kept.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(ckpt_dir):
    return None
  mngr = _manager(ckpt_dir, keep)
  leaves_like, treedef = jax.tree.flatten(like)
  target = {
    k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if _is_global(x)
    else np.asarray(x)
    for k, x in mg.checkpoint.leaf_dict(like).items()
  }
  steps = sorted(mngr.all_steps(), reverse=True)
  for s in steps if step is None else [x for x in steps if x == step]:
    try:
      out = mngr.restore(
        s,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
        ),
      )
      got = out["state"]
      leaves = [got[f"leaf_{i:05d}"] for i in range(len(leaves_like))]
      for a, b in zip(leaves, leaves_like):
        if np.shape(a) != np.shape(b):
          raise ValueError(f"leaf shape {np.shape(a)} != expected {np.shape(b)}")
      # Host copies go back where ``like``'s leaves live (e.g. replicated on the task mesh).
      leaves = [
        a
        if _is_global(b)
        else jax.device_put(np.asarray(a, np.asarray(b).dtype), getattr(b, "sharding", None))
        for a, b in zip(leaves, leaves_like)
      ]
      return jax.tree.unflatten(treedef, leaves), dict(out["meta"]), s
    except Exception as e:  # pylint: disable=broad-except
      if step is not None:
        raise
      warnings.warn(
        f"checkpoint step {s} in {ckpt_dir} is unreadable "
        f"({type(e).__name__}: {str(e)[:200]}); removing it and falling back to "
        f"the previous checkpoint.",
        RuntimeWarning,
        stacklevel=2,
      )
      if is_main_process():
        shutil.rmtree(os.path.join(ckpt_dir, str(s)), ignore_errors=True)
      _sync(f"ckpt_fallback_{s}")
      mngr = _manager(ckpt_dir, keep)
  return None


def _sync(name: str) -> None:
  """Waits for every process (no-op with one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    multihost_utils.sync_global_devices(name)


# --- logging ------------------------------------------------------------------


def image_grid(x_NxHxWxC, cols: int = 8) -> np.ndarray:
  """Tiles images in [-1, 1] into one ``[rows*H, cols*W]`` (or ``x3``) array in [0, 1]."""
  x = np.clip((np.asarray(x_NxHxWxC) + 1) / 2, 0, 1)
  n, h, w, c = x.shape
  rows = -(-n // cols)
  pad = np.ones((rows * cols - n, h, w, c), x.dtype)
  x = np.concatenate([x, pad]).reshape(rows, cols, h, w, c)
  g = x.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
  return g[..., 0] if c == 1 else g


def save_png(path: str, img: np.ndarray) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(os.path.dirname(path), exist_ok=True)
  plt.imsave(path, img, cmap="gray", vmin=0, vmax=1)


class Logger:
  """metrics.jsonl + TensorBoard; on resume, drops lines past the restored step."""

  def __init__(self, run_dir: str, start_step: int, enabled: bool = True):
    self.path = os.path.join(run_dir, "metrics.jsonl")
    self.enabled, self.tb = enabled, None
    if not enabled:  # processes other than 0 log nothing
      return
    if start_step > 0 and os.path.exists(self.path):
      with open(self.path) as f:
        keep = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= start_step]
      with open(self.path, "w") as f:
        f.writelines(keep)
    elif start_step == 0 and os.path.exists(self.path):
      os.remove(self.path)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self.tb = SummaryWriter(run_dir, purge_step=start_step + 1 if start_step else None)
    except ImportError:
      self.tb = None
      warnings.warn(
        "tensorboardX is not installed; no TensorBoard events "
        "(pip install 'metagan_jax[experiments]').",
        stacklevel=2,
      )

  def scalars(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **values}) + "\n")
    if self.tb:
      for k, v in values.items():
        if isinstance(v, (int, float)):
          self.tb.add_scalar(k, v, step)

  def image(self, step: int, grid01: np.ndarray) -> None:
    if self.tb:
      self.tb.add_image("samples", grid01, step, dataformats="HW" if grid01.ndim == 2 else "HWC")

  def close(self):
    if self.tb:
      self.tb.close()


# Meta-steps timed (after the first, which compiles) before a run fixes its equal-time step.
PROBE_STEPS = 10


def median_step_ms(run_dir: str) -> float | None:
  """A finished run's median milliseconds per step (first step excluded), from its timing.json."""
  path = os.path.join(run_dir, "timing.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("median_step_ms")


def equal_time_params(run_dir: str, like):
  """The parameters a run saved at its equal-time step, and that step's record.

  Raises:
    RuntimeError: the run has no equal-time step.
  """
  import flax.serialization  # pylint: disable=g-import-not-at-top

  path = os.path.join(run_dir, "equal_time")
  if not os.path.exists(path + ".json"):
    raise RuntimeError(
      f"{run_dir} has no equal_time.json: the run finished without an "
      f"equal-time step (trained without train.equal_time, or killed while "
      f"writing it); delete {run_dir} and train it again."
    )
  with open(path + ".msgpack", "rb") as f:
    params = flax.serialization.from_bytes(like, f.read())
  with open(path + ".json") as f:
    return params, json.load(f)


def train_run(
  config,
  method: str,
  seed: int,
  run_dir: str,
  train_split,
  resume: bool = False,
  progress: bool = True,
  init_params: mg.GanParams | None = None,
  equal_time_ms: float | None = None,
):
  """Trains (or resumes, or just loads) one run; returns its final state.

  ``method`` is a meta method, ``"pretrain"`` or ``"scratch"`` (see :class:`Run`);
  ``init_params`` (meta methods) is the pre-trained GAN to start from.

  Every step is timed; ``timing.json`` gets the median ms per step (the first
  step of a process, which compiles, excluded) and the loop's seconds. With
  ``equal_time_ms`` (a meta method; another run's median ms x its steps), the run
  also keeps the parameters after ``k = floor(equal_time_ms / its own median ms)``
  steps, the median taken over its first :data:`PROBE_STEPS` timed steps:
  ``equal_time.msgpack`` and ``equal_time.json`` (:func:`equal_time_params`). Its
  outer optimiser has no schedule, so they are exactly the result of a k-step
  run: the same method at the other run's compute time.

  Raises:
    FileExistsError: ``run_dir`` has checkpoints and ``resume`` is False.
    NonFiniteError: ``train.max_nonfinite`` non-finite updates in a row.
  """
  run = Run(config, method, seed, train_split, init_params)
  tc = config.train
  ckpt_dir = os.path.join(run_dir, "checkpoints")
  os.makedirs(run_dir, exist_ok=True)
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir) and not resume:
    raise FileExistsError(
      f"run folder {run_dir} already has checkpoints; pass --resume to "
      f"continue it or choose a new --workdir."
    )
  _sync(f"start_{run_dir}")  # every process has checked the folder before anyone writes
  restored = restore_checkpoint(ckpt_dir, tc.keep_checkpoints, run.state0) if resume else None
  state, start = (restored[0], restored[2]) if restored else (run.state0, 0)
  counts = {"in_a_row": 0, "total": 0}
  timing = {
    "step_ms": [],
    "first_step_s": [],
    "equal_time_steps": None,
    "equal_time_probe_ms": None,
    "equal_time_ms": equal_time_ms,
  }
  if restored:
    counts = {
      "in_a_row": int(restored[1].get("nonfinite_in_a_row", 0)),
      "total": int(restored[1].get("nonfinite_total", 0)),
    }
    was = restored[1].get("equal_time_ms")
    if start < run.total and was is not None and was != equal_time_ms:
      raise ValueError(
        f"{method} seed {seed}: resumed with equal_time_ms={equal_time_ms}, but the "
        f"run began with {was} (the reference run changed); delete {run_dir} and "
        f"train it again."
      )
    timing.update({k: restored[1][k] for k in timing if k in restored[1] and k != "equal_time_ms"})
  if equal_time_ms is not None and method not in META_METHODS:
    raise ValueError(f"equal_time_ms applies to meta methods {list(META_METHODS)}, not {method!r}.")
  main = is_main_process()
  resolved = (
    {"vectorize": meta_config(config, method).resolved_vectorize()}
    if method in META_METHODS
    else {}
  )
  if main:
    with open(os.path.join(run_dir, "config.json"), "w") as f:
      json.dump(
        {
          "method": method,
          "seed": seed,
          "processes": jax.process_count(),
          "devices": jax.device_count(),
          "platform": mg.backend.platform(),
          **resolved,
          "config": config.to_dict(),
        },
        f,
        indent=1,
      )
  if restored and start >= run.total:
    return state
  mngr = _manager(ckpt_dir, tc.keep_checkpoints)
  log = Logger(run_dir, start, enabled=main)
  z_fixed = run.model.sample_z(jax.random.key(1234), 64)
  gen = jax.jit(run.model.generate)
  sets_fixed = None
  if run.model.conditional and run.sampler is not None:
    # 8 training classes, a row each: every sample of a row drawn from that class's set.
    first = np.asarray(run.sampler.batch(0).support)[:8]
    sets = first[:, 1:] if method == "pretrain" else first
    sets_fixed = np.repeat(sets, 64 // len(sets), axis=0)
    z_fixed = z_fixed[: len(sets_fixed)]

  def snapshot(step):
    if not main:  # generated from a host copy: no collective, process 0 alone
      return
    if run.model.conditional and sets_fixed is None:
      return
    g = mg.parallel.to_host(run.init_params(state).g)
    grid = image_grid(gen(g, z_fixed, sets_fixed) if run.model.conditional else gen(g, z_fixed))
    save_png(os.path.join(run_dir, "samples", f"step_{step:06d}.png"), grid)
    log.image(step, grid)

  def meta(step):
    return {
      "step": step,
      "method": method,
      "seed": seed,
      "nonfinite_in_a_row": counts["in_a_row"],
      "nonfinite_total": counts["total"],
      "sampler": run.sampler.state() if run.sampler else None,
      **timing,
    }

  held = {}  # host copies of the first steps' parameters, until the equal-time step is fixed
  if equal_time_ms is not None and timing["equal_time_steps"] is None:
    held[start] = mg.parallel.to_host(state.params)  # a resumed run's k may be its start step

  def equal_time(done):
    """Fixes the equal-time step once enough steps are timed; saves its parameters."""
    if equal_time_ms is None:
      return
    k = timing["equal_time_steps"]
    if k is None:
      held[done] = mg.parallel.to_host(state.params)
      if len(timing["step_ms"]) < PROBE_STEPS and done < run.total:
        return
      ms = (
        float(np.median(timing["step_ms"]))
        if timing["step_ms"]
        else 1e3 * timing["first_step_s"][-1]
      )
      k = int(np.clip(np.floor(equal_time_ms / ms), 1, run.total))
      if jax.process_count() > 1:  # process 0's clock decides, so every process keeps one step
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

        k = int(multihost_utils.broadcast_one_to_all(np.int32(k)))
      timing.update(equal_time_steps=k, equal_time_probe_ms=ms)
      if k not in held:
        if k < done:
          raise RuntimeError(
            f"{method} seed {seed}: the equal-time step {k} was passed before it was fixed "
            f"(the run was resumed at step {start}); delete {run_dir} and train it again."
          )
        held.clear()
        return
    elif done != k:
      return
    params = held.pop(k) if k in held else mg.parallel.to_host(state.params)
    held.clear()
    if main:
      import flax.serialization  # pylint: disable=g-import-not-at-top

      path = os.path.join(run_dir, "equal_time")
      with open(path + ".msgpack", "wb") as f:
        f.write(flax.serialization.to_bytes(params))
      with open(path + ".json", "w") as f:  # written last: its presence means complete
        json.dump(
          {
            "steps": k,
            "of_steps": run.total,
            "reference_ms": equal_time_ms,
            "probe_median_ms": timing["equal_time_probe_ms"],
          },
          f,
          indent=1,
        )
    _sync(f"equal_time_{run_dir}")

  if start == 0:
    if not restored:  # a run resumed from its step-0 checkpoint has it already
      save_checkpoint(mngr, 0, state, meta(0))
    snapshot(0)
  # A tqdm bar on a terminal; in a log file, one plain line every few seconds.
  bar = Progress(
    total=run.total,
    initial=start,
    desc=f"{method} seed {seed}",
    disable=not (progress and main),
    file=sys.stderr,
    dynamic_ncols=True,
    mininterval=1.0,
  )
  t0 = time.perf_counter()
  try:
    for step in range(start, run.total):
      for smp in run.samplers:
        smp.restore({"step": step, "seed": seed})
      t_step = time.perf_counter()
      new_state, metrics = run.step_fn(state, run.batch(step), run.key(step))
      done = step + 1
      finite = bool(mg.parallel.to_host(all_finite((new_state.params, metrics))))
      dt = time.perf_counter() - t_step  # the host read above waited for the step
      if step == start:
        timing["first_step_s"].append(round(dt, 3))
      else:
        timing["step_ms"].append(round(1e3 * dt, 2))
      if finite:
        state = new_state
        counts["in_a_row"] = 0
      else:  # skip the update: keep the state from before the step
        counts["in_a_row"] += 1
        counts["total"] += 1
        warnings.warn(
          f"{method} seed {seed}: non-finite loss or update at step {done}; "
          f"update skipped ({counts['in_a_row']} in a row).",
          RuntimeWarning,
          stacklevel=2,
        )
      if counts["in_a_row"] >= tc.max_nonfinite:
        raise NonFiniteError(
          f"{method} seed {seed}: {counts['in_a_row']} non-finite updates in a row at step "
          f"{done} (train.max_nonfinite={tc.max_nonfinite}; {counts['total']} skipped in all); "
          f"last metrics { {k: float(v) for k, v in mg.parallel.to_host(metrics).items()} }. "
          f"Lower train.outer_lr or inner_lr, or check the data. The last good checkpoint is in {ckpt_dir}."
        )
      equal_time(done)
      if tc.step_sleep:
        time.sleep(tc.step_sleep)
      if done % tc.log_every == 0 or done == run.total:
        vals = {k: float(v) for k, v in mg.parallel.to_host(metrics).items()}
        vals.update(
          nonfinite_skipped=counts["total"],
          elapsed_s=round(time.perf_counter() - t0, 2),
          **resolved,
        )
        log.scalars(done, vals)
        shown = {
          k.replace("_inner_loss", "").replace("_loss", ""): f"{v:.3f}"
          for k, v in vals.items()
          if "loss" in k and "first" not in k
        }
        bar.set_postfix(shown, refresh=False)
      if done % tc.sample_every == 0 or done == run.total:
        snapshot(done)
      if done % tc.ckpt_every == 0 or done == run.total:
        save_checkpoint(mngr, done, state, meta(done))
      bar.update(1)
  finally:
    bar.close()
    log.close()
  if main and (timing["step_ms"] or timing["first_step_s"]):
    with open(os.path.join(run_dir, "timing.json"), "w") as f:
      json.dump(
        {
          "steps": run.total,
          "median_step_ms": float(np.median(timing["step_ms"]))
          if timing["step_ms"]
          else 1e3 * timing["first_step_s"][-1],
          "first_step_s": timing["first_step_s"],
          "loop_s": round(time.perf_counter() - t0, 1),
          "equal_time_steps": timing["equal_time_steps"],
          "equal_time_probe_ms": timing["equal_time_probe_ms"],
        },
        f,
        indent=1,
      )
  return state
