"""Loading a trained meta-GAN: ``load_run(path)`` -> model, meta-parameters, adaptation rule.

A run folder of ``experiments/omniglot.py`` holds ``config.json``, one training
folder per method and seed (``train/<method>_s<seed>/`` with orbax
checkpoints) and, after its evaluation, ``eval/results.json`` (the tuned
test-time rule of every run and the table that ranks the methods). A run
folder of ``experiments/lopt_omniglot.py`` holds ``lopt/params.msgpack`` (the
learned optimisers and the initialisation they adapt) and ``tuning.json``.
:func:`load_run` rebuilds everything from those files, so that::

    run = metagan_jax.load_run("runs/omniglot_short")        # the best method
    support = run.preprocessing.apply(my_images)               # [K, 28, 28, 1] in [-1, 1]
    samples = run.generate(support, n=64, seed=0)              # adapt, then sample

adapts exactly as the run's own evaluation did.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from metagan_jax import backend, compile_cache, gan, recipes
from metagan_jax.inner import AdaptConfig, adapt
from metagan_jax.lopt import LOptMetaParams, LOptSpec, init_lopt_params
from metagan_jax.meta import ALGORITHMS
from metagan_jax.meta import init as meta_init
from metagan_jax.models import GanModel

__all__ = [
  "GAN_METHODS",
  "LOPT_METHODS",
  "RunError",
  "Preprocessing",
  "LoadedRun",
  "N_AVG",
  "load_run",
]

#: The methods a meta-GAN run can hold (the algorithms, ``transfer`` and ``scratch``).
GAN_METHODS = ALGORITHMS + ("transfer", "scratch")
#: The methods a learned-optimiser run holds.
LOPT_METHODS = ("lopt", "sgd", "adam")


class RunError(ValueError):
  """A run folder that cannot be loaded; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How a run's data were prepared: images (size, channels, polarity, blur) or sound.

  Attributes:
    image_size: side length of the model's square images (a spectrogram's mel bins).
    channels: 1 (grey) or 3 (RGB).
    invert: the raw images had dark strokes on a light background and were
      inverted (Omniglot), so the model draws light strokes on a dark one.
    blur: Gaussian blur sigma in pixels after resizing (0: none).
    spectrogram: for a run on recordings, its :class:`metagan_jax.audio.Spectrogram`
      (settings and the training voices' moments); None for images.
  """

  image_size: int
  channels: int
  invert: bool
  blur: float = 0.0
  spectrogram: Any = None

  @property
  def modality(self) -> str:
    """``"audio"`` for a run on recordings, else ``"image"``."""
    return "image" if self.spectrogram is None else "audio"

  def prepare_audio(self, waves, rates: Sequence[int], what: Sequence[str] | None = None):
    """Recordings (1-D float arrays in [-1, 1] at ``rates``) -> clips ``[N, num_samples]``.

    Each clip is resampled to the run's rate, trimmed of silence,
    loudness-normalised and cut or padded to the run's length, as in training; a
    silent clip, or one shorter than an STFT window, is a ``DataError`` naming it
    (``what``: the clips' names). Nothing is compiled.
    """
    from metagan_jax.data import audio  # pylint: disable=g-import-not-at-top

    if self.spectrogram is None:
      raise RunError("this run draws images, not sound; use apply(images).")
    spec = self.spectrogram.spec
    names = list(what) if what is not None else [f"clip {i}" for i in range(len(waves))]
    return np.stack([audio.prepare_clip(w, r, spec, n) for w, r, n in zip(waves, rates, names)])

  def apply_audio(self, waves, rates: Sequence[int], what: Sequence[str] | None = None):
    """Recordings (1-D float arrays in [-1, 1] at ``rates``) -> ``[N, n_mels, frames, 1]``:
    :meth:`prepare_audio`, then the run's spectrogram."""
    return self.spectrogram.encode(self.prepare_audio(waves, rates, what))

  def apply(self, imgs, invert: bool | None = None) -> np.ndarray:
    """Raw images (uint8 0..255 or float 0..1, any size) -> float32 ``[N, S, S, C]`` in [-1, 1].

    ``invert`` overrides the run's own polarity handling (``None``: the run's).
    """
    from metagan_jax.data import preprocess  # pylint: disable=g-import-not-at-top

    if self.spectrogram is not None:
      raise RunError("this run models sound: use apply_audio(waves, rates).")

    return preprocess.preprocess_images(
      imgs,
      image_size=self.image_size,
      channels=self.channels,
      invert=self.invert if invert is None else invert,
      blur_sigma=self.blur,
      what="images",
    )


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
  """A trained meta-GAN and the rule it adapts with at test time.

  Attributes:
    path: the run folder.
    method, seed: which training run was loaded.
    model: the generator/discriminator pair.
    meta_params: ``GanParams`` (an initialisation), ``MetaSGDParams`` or
      ``LOptMetaParams`` -- whatever :func:`metagan_jax.adapt` takes.
    adapt_config: the test-time rule, ``inner_steps`` = the run's headline T.
    preprocessing: how the run's training images were prepared.
    headline: the run's headline number of adaptation steps.
    train_k: support images per task the run was meta-trained with.
    config: the experiment config (a plain dict, from ``config.json``).
    rule: the rule's description (optimiser, rate, what adapts, and ``psi``, the
      sampling truncation the run's tuning chose; absent means 1, none).
  """

  path: str
  method: str
  seed: int
  model: GanModel
  meta_params: Any
  adapt_config: AdaptConfig
  preprocessing: Preprocessing
  headline: int
  train_k: int
  config: dict
  rule: dict
  per_steps: dict = dataclasses.field(default_factory=dict)
  # (key, adapt_config, per_steps) from load_run: the key names the rule for
  # compile_cache.exported_call while the run still holds those very objects.
  _program_key: tuple | None = dataclasses.field(default=None, repr=False, compare=False)

  def adapt_config_for(self, steps: int | None = None) -> AdaptConfig:
    """The test-time rule with ``steps`` adaptation steps (default: the headline).

    Runs whose evaluation tuned a rule per T (the SGD / Adam baselines of a
    learned-optimiser run) use that T's rule; otherwise the headline's rule
    with ``steps`` steps, as the evaluation did for every T.
    """
    steps = self.headline if steps is None else int(steps)
    if steps < 0:
      raise ValueError(
        f"steps must be >= 0 (0: sample the meta-learned GAN as it is), got {steps}."
      )
    if steps in self.per_steps:
      return self.per_steps[steps]
    return dataclasses.replace(self.adapt_config, inner_steps=steps)

  def keys(self, seed: int) -> tuple[jax.Array, jax.Array]:
    """``(adaptation key, latent key)`` that :meth:`generate` uses for ``seed``."""
    return _keys(seed)

  def generate(self, support, n: int, seed: int = 0, steps: int | None = None) -> np.ndarray:
    """Adapts to ``support [K, *data_shape]`` (in [-1, 1]) and draws ``n`` samples.

    Equal to ``model.generate(adapt(meta_params, support, k_adapt, rule).g,
    model.sample_z(k_z, n))`` (a conditional model's ``G(z, support)``) with
    ``k_adapt, k_z = keys(seed)``; with a
    truncation ``psi < 1`` in the rule, ``model.generate_truncated`` of the same
    latents, centred on ``N_AVG`` latents from ``fold_in(k_z, 1)``. One compiled
    program, the same for every call with the same rule, support shape and
    ``n`` (so a persistent compilation cache serves later processes).
    """
    return self._run(self.adapt_config_for(steps), _support(support, self.model), seed, int(n))

  @property
  def psi(self) -> float:
    """The rule's sampling truncation (1 for none; see ``GanModel.generate_truncated``)."""
    return float(self.rule.get("psi", 1.0))

  def generate_many(
    self,
    supports: Sequence,
    n: int,
    seed: int = 0,
    steps: int | None = None,
    vectorize: str = "auto",
  ) -> list[np.ndarray]:
    """:meth:`generate` for several classes: one support set each, samples of each class.

    Class ``c``'s samples equal ``generate(supports[c], n, seed, steps)``: every
    class adapts separately from the same keys. ``vectorize``: ``"map"`` runs
    the one-class program class after class (CPU's default: one class already
    keeps the cores busy, and the program is the one a one-class call compiled);
    ``"vmap"`` adapts the classes of each support size at once (accelerators'
    default); ``"auto"`` picks by platform.
    """
    ac = self.adapt_config_for(steps)
    sups = [_support(s, self.model) for s in supports]
    if backend.resolve_vectorize(vectorize) == "map":
      return [self._run(ac, s, seed, int(n)) for s in sups]
    out: list = [None] * len(sups)
    for k in sorted({s.shape[0] for s in sups}):  # one batched program per support size
      idx = [i for i, s in enumerate(sups) if s.shape[0] == k]
      got = np.asarray(
        _adapt_and_sample_classes(
          self.meta_params, np.stack([sups[i] for i in idx]), _seed(seed), ac, int(n), self.psi
        )
      )
      for j, i in enumerate(idx):
        out[i] = got[j]
    return out

  def _run(self, ac: AdaptConfig, support: np.ndarray, seed, n: int) -> np.ndarray:
    """One class: adapt and sample, as one program (stored by compile_cache when it is on)."""
    pk = self._program_key
    if (
      compile_cache.export_dir() is None
      or pk is None
      or pk[1] is not self.adapt_config
      or pk[2] is not self.per_steps
    ):
      return np.asarray(_adapt_and_sample(self.meta_params, support, _seed(seed), ac, n, self.psi))
    leaves, treedef = jax.tree.flatten(self.meta_params)

    def flat(*arrays):  # arrays only: what jax.export serialises
      return _one_class(jax.tree.unflatten(treedef, arrays[:-2]), *arrays[-2:], ac, n, self.psi)

    return np.asarray(
      compile_cache.exported_call(
        flat,
        [*leaves, support, _seed(seed)],
        f"{pk[0]}|steps={ac.inner_steps}|n={n}|psi={self.psi}|{treedef}",
        compiler_options=_COMPILER_OPTIONS,
      )
    )


def _keys(seed) -> tuple[jax.Array, jax.Array]:
  k_adapt, k_z = jax.random.split(jax.random.key(seed))
  return k_adapt, k_z


def _seed(seed) -> np.uint32:
  if not 0 <= int(seed) < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
  return np.uint32(seed)


def _support(support, model: GanModel) -> np.ndarray:
  s = np.asarray(support, np.float32)
  if s.ndim != len(model.data_shape) + 1 or s.shape[1:] != tuple(model.data_shape):
    raise ValueError(
      f"support has shape {s.shape}; this run's model takes [K, "
      f"{', '.join(map(str, model.data_shape))}] (run.preprocessing.apply makes it)."
    )
  return s


#: Latents whose mapped mean centres a truncated sample.
N_AVG = 2048


def _one_class(meta_params, support, seed, ac: AdaptConfig, n: int, psi: float = 1.0):
  k_adapt, k_z = _keys(seed)
  adapted = adapt(meta_params, support, k_adapt, ac)
  z = ac.model.sample_z(k_z, n)
  cond = (support,) if ac.model.conditional else ()  # a conditional G draws from the support
  if psi == 1.0:
    return ac.model.generate(adapted.g, z, *cond)
  z_avg = ac.model.sample_z(jax.random.fold_in(k_z, 1), N_AVG)
  return ac.model.generate_truncated(adapted.g, z, psi, z_avg, *cond)


# XLA options for generate's programs. LLVM's -O2 instead of XLA's default -O3 on CPU: on
# specgan's adaptation program the samples came out bitwise the same, the run time within
# noise, and the compilation that a cold ``generate`` waits for 21% shorter
# (benchmarks/compile_options.py; docs/benchmarks.md). Options that change the samples even by
# rounding (XLA's classic fusion emitters: 1 s less compile) are not used: ten adversarial
# steps amplify rounding, and generate must equal the run's evaluation.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}

# Keys are derived inside the program, so a call is one compiled program and no eager ops.
_adapt_and_sample = jax.jit(
  _one_class, static_argnames=("ac", "n", "psi"), compiler_options=_COMPILER_OPTIONS
)


@functools.partial(jax.jit, static_argnames=("ac", "n", "psi"), compiler_options=_COMPILER_OPTIONS)
def _adapt_and_sample_classes(
  meta_params, supports_CxK, seed, ac: AdaptConfig, n: int, psi: float = 1.0
):
  return jax.vmap(lambda s: _one_class(meta_params, s, seed, ac, n, psi))(supports_CxK)


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise RunError(f"{what}: {path} does not exist.") from None
  except json.JSONDecodeError as e:
    raise RunError(f"{what}: {path} is not valid JSON ({e}).") from None


def _find_root(path: str) -> tuple[str, dict | None]:
  """The run folder of ``path`` (itself, or two levels up for a training folder)."""
  path = os.path.abspath(os.path.expanduser(str(path)))
  if not os.path.isdir(path):
    raise RunError(
      f"run folder {path} does not exist; pass the --workdir of "
      f"experiments/omniglot.py (or one of its train/<method>_s<seed> folders)."
    )
  cfg_path = os.path.join(path, "config.json")
  if not os.path.exists(cfg_path):
    raise RunError(
      f"{path} is not a run folder: it has no config.json (a run of "
      f"experiments/omniglot.py or experiments/lopt_omniglot.py writes one)."
    )
  cfg = _read_json(cfg_path, "run config")
  if "method" in cfg and "config" in cfg:  # a training folder: train/<method>_s<seed>
    return os.path.dirname(os.path.dirname(path)), cfg
  return path, None


def _restore_leaves(ckpt_dir: str, like, what: str):
  """The newest checkpoint in ``ckpt_dir`` as a pytree shaped like ``like`` (arrays or shapes)."""
  steps = (
    sorted((int(d) for d in os.listdir(ckpt_dir) if d.isdigit()), reverse=True)
    if os.path.isdir(ckpt_dir)
    else []
  )
  if not steps:
    raise RunError(
      f"{what}: no checkpoint in {ckpt_dir}; train it first (or finish the run with --resume)."
    )

  def restore() -> dict:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    mngr = ocp.CheckpointManager(os.path.abspath(ckpt_dir), item_names=("state", "meta"))
    out = mngr.restore(steps[0], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return dict(out["state"])

  # With the compilation cache on (generate), later processes read the arrays without orbax.
  got = compile_cache.cached_arrays(os.path.join(ckpt_dir, str(steps[0]), "state"), restore)
  leaves_like, treedef = jax.tree.flatten(like)
  if len(got) != len(leaves_like):
    raise RunError(
      f"{what}: the checkpoint in {ckpt_dir} has {len(got)} arrays but the "
      f"run's config builds {len(leaves_like)}: it holds another model; load "
      f"it with the config it was trained with."
    )
  leaves = []
  for i, b in enumerate(leaves_like):
    a = np.asarray(got[f"leaf_{i:05d}"])
    if a.shape != np.shape(b):
      raise RunError(
        f"{what}: array {i} of the checkpoint in {ckpt_dir} has shape {a.shape}, "
        f"but the run's config.json builds {np.shape(b)}: the checkpoint holds "
        f"another model or shape; load it with the config it was trained with."
      )
    leaves.append(a.astype(b.dtype))
  return jax.tree.unflatten(treedef, leaves)


def _seeds(cfg: dict) -> list[int]:
  return [int(x) for x in str(cfg["meta_seeds"]).split(",") if x.strip()]


def _best_method(root: str, candidates, headline: int) -> str:
  """The candidate with the lowest mean KID at the headline T in the run's own evaluation."""
  res_path = os.path.join(root, "eval", "results.json")
  if not os.path.exists(res_path):
    raise RunError(
      f"{root} has no evaluation ({res_path} is missing), so there is no ranking "
      f"to pick the best method from; pass method= one of {list(candidates)} "
      f"(or run the evaluation: experiments/omniglot.py --resume)."
    )
  doc = _read_json(res_path, "run evaluation")
  fixed = doc.get("info", {}).get("headline_method")  # a voices run: chosen on validation
  if fixed in candidates:
    return fixed
  metrics = doc["summary"]["metrics"]
  ranked = {
    m: metrics[f"{m}|{headline}|kid"]["mean"]
    for m in candidates
    if f"{m}|{headline}|kid" in metrics
  }
  if not ranked:
    raise RunError(f"{res_path} ranks none of {list(candidates)} at T={headline}; pass method=.")
  return min(ranked, key=ranked.get)


def load_run(
  path: str | os.PathLike, method: str | None = None, seed: int | None = None
) -> LoadedRun:
  """Loads a trained meta-GAN with its test-time rule and preprocessing.

  Args:
    path: a run folder of ``experiments/omniglot.py`` or ``lopt_omniglot.py``,
      or one method's training folder (``<run>/train/<method>_s<seed>``).
    method: which method to load (``maml``, ``fomaml``, ``reptile``,
      ``metasgd``, ``transfer``, ``scratch``; ``lopt``, ``sgd``, ``adam`` for a
      learned-optimiser run). ``None``: the training folder's own, else the
      method the run's evaluation ranked best (lowest KID at the headline T).
    seed: the meta-training seed (default: the folder's own, else the smallest).

  Raises:
    RunError: missing files, no checkpoint, a checkpoint of another model or
      shape, an unknown method or seed, a config.json of another version, or no
      evaluation to rank methods by.
  """
  try:
    return _load_run(path, method, seed)
  except KeyError as e:
    raise RunError(
      f"run folder {path}: its config.json lacks the field {e}; it was written "
      f"by another version of experiments/ (load it with that version, or "
      f"re-run it)."
    ) from None


def _load_run(path, method, seed) -> LoadedRun:
  root, folder_cfg = _find_root(path)
  cfg = (
    folder_cfg["config"]
    if folder_cfg
    else _read_json(os.path.join(root, "config.json"), "run config")
  )
  if folder_cfg:
    m0 = folder_cfg["method"]
    method = method or ("transfer" if m0 == "pretrain" else m0)
    seed = int(folder_cfg["seed"]) if seed is None else seed
  is_lopt = "lopt" in cfg
  candidates = (
    LOPT_METHODS
    if is_lopt
    else tuple(
      m for m in GAN_METHODS if m in [x.strip() for x in str(cfg.get("methods", "")).split(",")]
    )
  )
  headline = int(cfg["eval"]["headline"])
  if method is None:
    method = _best_method(root, candidates, headline)
  if method not in candidates:
    raise RunError(f"unknown method {method!r} for {root}: this run has {list(candidates)}.")
  model = recipes.model(cfg)
  spectrogram = None
  if cfg.get("spectrogram"):  # a run on recordings (experiments/voices.py writes its moments)
    from metagan_jax.audio import Spectrogram  # pylint: disable=g-import-not-at-top

    spectrogram = Spectrogram.from_dict(cfg["spectrogram"])
  prep = Preprocessing(
    image_size=int(model.data_shape[0]),
    channels=int(model.data_shape[-1]),
    invert=bool(cfg.get("invert", str(cfg["dataset"]).startswith(("omniglot", "tfds:omniglot")))),
    blur=float(cfg.get("blur", 0.0)),
    spectrogram=spectrogram,
  )
  train_k = int(cfg["lopt"]["k"] if is_lopt else cfg["train"]["k"])
  per_steps = {}
  if is_lopt:
    meta, ac, rule, seed, per_steps = _load_lopt(root, cfg, method, headline, model)
  else:
    seed = min(_seeds(cfg)) if seed is None else int(seed)
    if seed not in _seeds(cfg):
      raise RunError(f"seed {seed} is not a meta seed of {root} (its seeds: {_seeds(cfg)}).")
    meta, rule = _load_gan(root, cfg, method, seed, model)
    ac = recipes.adapt_config(cfg, headline, rule)
    meta = recipes.with_rule(meta, rule)
  key = json.dumps(
    {
      "run": root,
      "method": method,
      "seed": seed,
      "config": cfg,
      "rule": rule,
      "headline": headline,
    },
    sort_keys=True,
    default=str,
  )
  return LoadedRun(
    path=root,
    method=method,
    seed=seed,
    model=model,
    meta_params=meta,
    adapt_config=ac,
    preprocessing=prep,
    headline=headline,
    train_k=train_k,
    config=cfg,
    rule=rule,
    per_steps=per_steps,
    _program_key=(key, ac, per_steps),
  )


def _load_gan(root: str, cfg: dict, method: str, seed: int, model: GanModel):
  """Meta-parameters and test-time rule of one run of experiments/omniglot.py."""
  train = os.path.join(root, "train")
  if method in ALGORITHMS:
    mc = recipes.meta_config(cfg, method)
    like = jax.eval_shape(lambda: meta_init(jax.random.key(0), mc))
    folder = os.path.join(train, f"{method}_s{seed}")
    params = _restore_leaves(
      os.path.join(folder, "checkpoints"), like, f"{method} seed {seed}"
    ).params
  else:
    like = jax.eval_shape(lambda: gan.init(jax.random.key(0), recipes.pretrain_config(cfg)))
    pseed = seed if cfg["pretrain"]["per_seed"] or method == "scratch" else min(_seeds(cfg))
    name = "pretrain" if method == "transfer" else "scratch"
    folder = os.path.join(train, f"{name}_s{pseed}")
    params = recipes.pretrained_params(
      _restore_leaves(os.path.join(folder, "checkpoints"), like, f"{method} seed {seed}")
    )
  rule = recipes.default_rule(cfg)
  res_path = os.path.join(root, "eval", "results.json")
  if os.path.exists(res_path):
    rules = _read_json(res_path, "run evaluation").get("info", {}).get("rule_dicts", {})
    rule = rules.get(f"{method}_s{seed}", rule)
  return params, rule


def _load_lopt(root: str, cfg: dict, method: str, headline: int, model: GanModel):
  """The learned optimisers (or tuned SGD / Adam) of a run of experiments/lopt_omniglot.py."""
  import flax.serialization  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  lc = cfg["lopt"]
  spec = LOptSpec(step_mult=float(lc["step_mult"]))
  hidden = tuple(int(h) for h in str(lc["hidden"]).split(",") if h.strip())
  path = os.path.join(root, "lopt", "params.msgpack")
  if not os.path.exists(path):
    raise RunError(
      f"learned-optimiser run {root}: {path} is missing; run "
      f"experiments/lopt_omniglot.py to the end first."
    )
  like = LOptMetaParams(
    model.init(jax.random.key(0)),
    *(init_lopt_params(jax.random.key(0), hidden, 0.01, spec) for _ in range(2)),
  )
  with open(path, "rb") as f:
    try:
      meta = flax.serialization.from_bytes(like, f.read())
    except (ValueError, KeyError) as e:
      raise RunError(f"{path} holds another model or optimiser shape ({e}).") from None
  base = dict(
    model=model,
    d_steps=int(cfg["d_steps"]),
    g_steps=int(cfg["g_steps"]),
    loss=cfg["loss"],
    lopt_spec=spec,
  )
  if method == "lopt":
    return (
      meta,
      AdaptConfig(**base, inner_steps=headline),
      {"opt": "learned optimiser"},
      int(lc["seed"]),
      {},
    )
  best = _read_json(os.path.join(root, "tuning.json"), "tuning")["best"]

  def tuned(t: int) -> AdaptConfig:  # the evaluation tuned one rate per T
    lr = float(best[f"{method}|{t}"])
    opt = optax.sgd(lr) if method == "sgd" else optax.adam(lr, b1=float(lc["adam_b1"]))
    return AdaptConfig(**base, inner_steps=t, inner_lr=lr, inner_opt=opt)

  per_steps = {
    int(k.split("|")[1]): tuned(int(k.split("|")[1])) for k in best if k.startswith(f"{method}|")
  }
  return (
    meta.init,
    per_steps[headline],
    {"opt": method, "lr": float(best[f"{method}|{headline}"])},
    int(lc["seed"]),
    per_steps,
  )
