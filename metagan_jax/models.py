"""Generator/discriminator pairs as pure ``apply(params, inputs)`` functions.

Every model is a :class:`GanModel`: two players, each an ``init``/``apply`` pair
of pure functions of parameter pytrees, so that ``jax.grad``/``jax.vmap`` in the
inner and outer loops only ever see pytrees (no module state). The built-in
pairs are flax linen modules; your own pair can be flax NNX modules
(:meth:`GanModel.from_nnx`) or any pure functions (:meth:`GanModel.from_functions`,
which covers equinox, haiku and hand-written models). No layer keeps running
statistics: BatchNorm's would make the inner loop impure, so the conv pairs offer
only stateless normalisation (LayerNorm / GroupNorm / none).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from metagan_jax import backend, layers

PyTree = Any

__all__ = [
  "CONV_IMPLS",
  "MATMUL_DTYPES",
  "CondDiscriminator28",
  "CondGenerator28",
  "SupportEncoder",
  "ConvDiscriminator",
  "ConvGenerator",
  "DCGAN28Discriminator",
  "DCGAN28Generator",
  "FSGAN28Discriminator",
  "FSGAN28Generator",
  "GanModel",
  "GanParams",
  "MLP",
  "Mapping",
  "cfsgan28",
  "dcgan",
  "dcgan28",
  "dcgan32",
  "dcgan64",
  "fsgan28",
  "get_model",
  "mlp",
  "specgan",
]


class GanParams(NamedTuple):
  """Parameters of a GAN pair: ``g`` for the generator, ``d`` for the discriminator."""

  g: PyTree
  d: PyTree


@dataclasses.dataclass(frozen=True, eq=False)
class GanModel:
  """A generator/discriminator pair as pure functions.

  Build one from your own players with :meth:`from_nnx` (flax NNX modules),
  :meth:`from_functions` (any pure ``init``/``apply`` functions) or
  :meth:`from_linen` (flax linen modules); the registered pairs come from
  :func:`get_model`.

  Attributes:
    name: registry name, e.g. ``"dcgan28"``.
    z_dim: latent size; ``z ~ N(0, I)`` of shape ``[n, z_dim]``.
    data_shape: shape of one sample, e.g. ``(28, 28, 1)`` (channels-last).
    generator: the player mapping ``z_NxZ -> x_Nx...``: a flax linen module, or
      any object with linen's ``init(key, z) -> {"params": p}`` and
      ``apply({"params": p}, z)``.
    discriminator: the player mapping ``x_Nx... -> logits_N``, likewise.
    mapping: the generator's latent mapping ``z -> w`` (its parameters under
      ``"mapping"``), or ``None`` when the generator has none (then ``w = z``).
    synthesis: the rest of the generator, ``w -> x`` (parameters under ``"synthesis"``).
    conditional: the players also see a support set of the class to draw: the
      generator maps ``(z_NxZ, support_NxMx...)`` to ``x_Nx...`` and the
      discriminator ``(x_Nx..., support_NxMx...)`` to ``logits_N``, each row of
      ``support`` the ``M`` images that sample is conditioned on
      (:func:`cfsgan28`; ``conditional=True`` in :meth:`from_functions`,
      :meth:`from_nnx`, :meth:`from_linen`).
  """

  name: str
  z_dim: int
  data_shape: tuple[int, ...]
  generator: nn.Module
  discriminator: nn.Module
  mapping: nn.Module | None = None
  synthesis: nn.Module | None = None
  conditional: bool = False

  @classmethod
  def from_linen(
    cls,
    generator: nn.Module,
    discriminator: nn.Module,
    *,
    z_dim: int,
    data_shape: Sequence[int],
    name: str = "linen",
    conditional: bool = False,
  ) -> GanModel:
    """A pair of flax linen modules: ``generator(z_NxZ) -> x_Nx...``, ``discriminator(x) -> logits_N``.

    With ``conditional=True`` both modules take the support sets as a second argument,
    ``generator(z_NxZ, support_NxMx...)`` and ``discriminator(x, support_NxMx...)``.
    The shapes are checked (abstractly, before anything compiles); see :meth:`from_functions`.
    """
    model = cls(
      name, int(z_dim), _shape(data_shape), generator, discriminator, conditional=bool(conditional)
    )
    _check_pair(model)
    return model

  @classmethod
  def from_functions(
    cls,
    *,
    g_init: Callable[[jax.Array], PyTree],
    g_apply: Callable[[PyTree, jax.Array], jax.Array],
    d_init: Callable[[jax.Array], PyTree],
    d_apply: Callable[[PyTree, jax.Array], jax.Array],
    z_dim: int,
    data_shape: Sequence[int],
    name: str = "functions",
    conditional: bool = False,
  ) -> GanModel:
    """A pair of pure functions: equinox, haiku or hand-written models.

    Parameters should be nested dicts of arrays (string keys), so that
    ``AdaptConfig.g_trainable`` / ``d_trainable`` path prefixes, Meta-SGD's
    per-parameter rates, sharding and checkpoints work as for the built-in pairs.

    Example (a hand-written MLP generator)::

      def g_init(key):
        return {"fc": {"w": 0.1 * jax.random.normal(key, (8, 2)), "b": jnp.zeros(2)}}

      def g_apply(p, z):
        return z @ p["fc"]["w"] + p["fc"]["b"]

      model = GanModel.from_functions(g_init=g_init, g_apply=g_apply,
                                      d_init=d_init, d_apply=d_apply,
                                      z_dim=8, data_shape=(2,))

    Args:
      g_init: ``key -> params`` of the generator.
      g_apply: ``(params, z_NxZ) -> x_Nx...`` with ``x.shape[1:] == data_shape``.
      d_init: ``key -> params`` of the discriminator.
      d_apply: ``(params, x_Nx...) -> logits_N``.
      z_dim: latent size.
      data_shape: shape of one sample, e.g. ``(28, 28, 1)`` (channels-last).
      name: a name for error messages and logs.
      conditional: the applies take the support sets too:
        ``g_apply(params, z_NxZ, support_NxMx...)`` and
        ``d_apply(params, x_Nx..., support_NxMx...)`` (``M >= 1`` images per row).

    Returns:
      The :class:`GanModel`.

    Raises:
      TypeError: an argument is not callable.
      ValueError: the generator's output is not ``[N, *data_shape]`` or the
        discriminator's is not ``[N]`` (checked with ``jax.eval_shape``, before
        any compile).
    """
    for arg, f in (
      ("g_init", g_init),
      ("g_apply", g_apply),
      ("d_init", d_init),
      ("d_apply", d_apply),
    ):
      if not callable(f):
        raise TypeError(
          f"GanModel.from_functions: {arg} must be a function, got {type(f).__name__}."
        )
    model = cls(
      name,
      int(z_dim),
      _shape(data_shape),
      _FunctionPlayer(g_init, g_apply, f"{name} generator"),
      _FunctionPlayer(d_init, d_apply, f"{name} discriminator"),
      conditional=bool(conditional),
    )
    _check_pair(model)
    return model

  @classmethod
  def from_nnx(
    cls,
    generator: Any,
    discriminator: Any,
    *,
    z_dim: int,
    data_shape: Sequence[int],
    name: str = "nnx",
    conditional: bool = False,
  ) -> GanModel:
    """A pair of flax NNX modules, split once so that the loops see only pytrees.

    Each player is split with ``nnx.split`` into its graph and its ``nnx.Param``
    state; parameters are that state's pure dict (nested dicts of arrays, list
    indices as string keys), and ``apply`` merges them back into the module for
    one call. Nothing else of the module is used: a module holding other
    variables (``nnx.BatchNorm``'s batch statistics, counters, a stored
    ``nnx.Rngs``) raises an error, since a pure inner loop cannot carry state
    that a forward pass updates.

    Example::

      class G(nnx.Module):
        def __init__(self, rngs):
          self.fc = nnx.Linear(8, 2, rngs=rngs)
        def __call__(self, z):
          return self.fc(z)

      model = GanModel.from_nnx(G(nnx.Rngs(0)), D(nnx.Rngs(1)), z_dim=8, data_shape=(2,))
      # or factories, so that model.init(key) draws new parameters from the key:
      model = GanModel.from_nnx(lambda rngs: G(rngs), lambda rngs: D(rngs), z_dim=8, data_shape=(2,))

    Args:
      generator: an ``nnx.Module`` mapping ``z [N, z_dim]`` to ``x [N, *data_shape]``,
        or a factory ``rngs -> module``. With a module, :meth:`init` returns its
        current parameters whatever the key; with a factory, parameters drawn
        from ``nnx.Rngs(key)``.
      discriminator: an ``nnx.Module`` (or factory) mapping ``x`` to logits ``[N]``.
      z_dim: latent size.
      data_shape: shape of one sample, e.g. ``(28, 28, 1)`` (channels-last).
      name: a name for error messages and logs.
      conditional: the modules take the support sets as a second argument,
        ``generator(z, support_NxMx...)`` and ``discriminator(x, support_NxMx...)``.

    Returns:
      The :class:`GanModel`.

    Raises:
      TypeError: a player is neither an ``nnx.Module`` nor a factory of one.
      ValueError: a module holds variables other than ``nnx.Param``, or the
        output shapes are wrong (checked before any compile).
    """
    model = cls(
      name,
      int(z_dim),
      _shape(data_shape),
      _nnx_player(generator, "generator", name),
      _nnx_player(discriminator, "discriminator", name),
      conditional=bool(conditional),
    )
    _check_pair(model)
    return model

  def init(self, key: jax.Array) -> GanParams:
    """Returns freshly initialised parameters of both players."""
    # One compiled program: op by op, a first call compiles every initialiser's
    # primitives one at a time (about 4 s against under 1 s on a 2-core CPU).
    return _init(self, key)

  def generate(self, g_params: PyTree, z_NxZ: jax.Array, support=None) -> jax.Array:
    """Samples ``x = G(z)`` (``G(z, support)`` when conditional), shape ``[N, *data_shape]``.

    Args:
      g_params: generator parameters.
      z_NxZ: latents.
      support: conditional models only: ``[M, *data_shape]`` images that every
        sample is conditioned on, or ``[N, M, *data_shape]``, one set per sample.
    """
    if not self.conditional:
      _no_support(self, support)
      return self.generator.apply({"params": g_params}, z_NxZ)
    return self.generator.apply({"params": g_params}, z_NxZ, self.support_sets(support, len(z_NxZ)))

  def discriminate(self, d_params: PyTree, x_Nx: jax.Array, support=None) -> jax.Array:
    """Discriminator logits, shape ``[N]`` (support as in :meth:`generate`)."""
    if not self.conditional:
      _no_support(self, support)
      return self.discriminator.apply({"params": d_params}, x_Nx)
    return self.discriminator.apply(
      {"params": d_params}, x_Nx, self.support_sets(support, len(x_Nx))
    )

  @property
  def num_classes(self) -> int:
    """The number of classes of the discriminator's class head, or 0 when it has none."""
    return int(getattr(self.discriminator, "num_classes", 0) or 0)

  def classify(self, d_params: PyTree, x_Nx: jax.Array) -> jax.Array:
    """The discriminator's class head: logits ``[N, num_classes]`` over the training classes.

    A discriminator has one when it is a linen module with an attribute ``num_classes > 0``
    whose ``__call__`` returns those logits given ``classes=True`` (``cfsgan28(num_classes=C)``).

    Raises:
      ValueError: the discriminator has no class head.
    """
    if not self.num_classes:
      raise ValueError(
        f"GanModel {self.name!r}: the discriminator has no class head (num_classes = 0); "
        "build it with one, e.g. models.cfsgan28(num_classes=C)."
      )
    return self.discriminator.apply({"params": d_params}, x_Nx, classes=True)

  def critic(self, d_params: PyTree, sets=None) -> Callable[[jax.Array], jax.Array]:
    """The discriminator as a function of ``x`` alone, as the losses and penalties call it.

    For a conditional model, ``sets`` is ``[N, M, *data_shape]`` and an input of ``r N``
    rows (real and fake concatenated, ``r = 2``) is judged block by block: row ``i`` of
    each block beside set ``i``.
    """
    if not self.conditional:
      return lambda x: self.discriminate(d_params, x)

    def disc(x):
      n = sets.shape[0]
      if x.shape[0] == n:
        return self.discriminate(d_params, x, sets)
      if x.shape[0] % n:
        raise ValueError(
          f"GanModel {self.name!r}: {x.shape[0]} samples to judge beside {n} support sets; "
          "give a multiple of the number of sets."
        )
      return self.discriminate(
        d_params, x, jnp.tile(sets, (x.shape[0] // n,) + (1,) * (sets.ndim - 1))
      )

    return disc

  def support_sets(self, support, n: int) -> jax.Array:
    """``support`` as ``[n, M, *data_shape]``: one conditioning set per sample.

    Args:
      support: ``[M, *data_shape]`` (one set for all ``n`` samples, broadcast) or
        ``[n, M, *data_shape]``.
      n: the number of samples.

    Raises:
      ValueError: a missing support, a wrong shape, or ``M = 0``.
    """
    want = tuple(self.data_shape)
    shape = getattr(support, "shape", None)
    if shape is None:
      raise ValueError(
        f"GanModel {self.name!r} is conditional: pass support=[M, {', '.join(map(str, want))}] "
        f"images of the class to draw (got {type(support).__name__})."
      )
    shape = tuple(shape)
    if shape[1:] == want and len(shape) == len(want) + 1:
      sets = jnp.broadcast_to(support[None], (n, *shape))
    elif shape[2:] == want and len(shape) == len(want) + 2 and shape[0] == n:
      sets = support
    else:
      raise ValueError(
        f"GanModel {self.name!r}: support has shape {shape}; give [M, {', '.join(map(str, want))}] "
        f"(one set for all {n} samples) or [{n}, M, {', '.join(map(str, want))}] (one per sample)."
      )
    if sets.shape[1] < 1:
      raise ValueError(
        f"GanModel {self.name!r}: the support set is empty (M = 0, shape {shape}); a "
        "conditional model needs at least one image of the class."
      )
    return sets

  def sample_z(self, key: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
    """Draws ``n`` latents ``z ~ N(0, I)``."""
    return jax.random.normal(key, (n, self.z_dim), dtype)

  def map_latents(self, g_params: PyTree, z_NxZ: jax.Array) -> jax.Array:
    """The generator's intermediate latents ``w`` (``z`` itself without a mapping)."""
    if self.mapping is None or self.conditional:
      return z_NxZ
    return self.mapping.apply({"params": g_params["mapping"]}, z_NxZ)

  def synthesize(self, g_params: PyTree, w_NxW: jax.Array, support=None) -> jax.Array:
    """Samples from intermediate latents: ``generate(g, z) == synthesize(g, map_latents(g, z))``."""
    if self.mapping is None or self.conditional:
      return self.generate(g_params, w_NxW, support)
    return self.synthesis.apply({"params": g_params["synthesis"]}, w_NxW)

  def generate_truncated(
    self, g_params: PyTree, z_NxZ: jax.Array, psi, z_avg_MxZ: jax.Array, support=None
  ) -> jax.Array:
    """StyleGAN's truncation trick: ``x = G(w_avg + psi (w - w_avg))``.

    ``w_avg`` is the mean of :meth:`map_latents` over ``z_avg_MxZ`` (a few
    thousand latents), so it is the mean of *these* parameters' mapping: after
    adaptation, the adapted class's centre. ``psi = 1`` samples as
    :meth:`generate` does (up to float rounding), ``psi = 0`` draws the one
    image at ``w_avg``; in between, samples trade diversity for typicality.

    Args:
      g_params: generator parameters.
      z_NxZ: the latents to sample.
      psi: the truncation, a scalar in [0, 1] (may be traced).
      z_avg_MxZ: latents whose mapped mean is the centre.
      support: conditional models: the support, as in :meth:`generate` (their
        truncation shrinks ``z`` toward the mean of ``z_avg_MxZ``).
    """
    w = self.map_latents(g_params, z_NxZ)
    w_avg = jnp.mean(self.map_latents(g_params, z_avg_MxZ), axis=0)
    return self.synthesize(g_params, w_avg + psi * (w - w_avg), support)


@functools.partial(jax.jit, static_argnums=0)
def _init(model: GanModel, key: jax.Array) -> GanParams:
  kg, kd = jax.random.split(key)
  z = jnp.zeros((1, model.z_dim), jnp.float32)
  x = jnp.zeros((1, *model.data_shape), jnp.float32)
  cond = (jnp.zeros((1, 2, *model.data_shape), jnp.float32),) if model.conditional else ()
  return GanParams(
    g=model.generator.init(kg, z, *cond)["params"],
    d=model.discriminator.init(kd, x, *cond)["params"],
  )


def _no_support(model: GanModel, support) -> None:
  if support is not None:
    raise ValueError(
      f"GanModel {model.name!r} is unconditional: it takes no support (use a conditional "
      "pair such as models.cfsgan28(), or drop the support argument)."
    )


def _shape(data_shape: Sequence[int]) -> tuple[int, ...]:
  try:
    shape = tuple(int(d) for d in data_shape)
  except TypeError:
    raise TypeError(
      f"data_shape must be a sequence of ints such as (28, 28, 1), got {data_shape!r}."
    ) from None
  if not shape or min(shape) < 1:
    raise ValueError(f"data_shape={data_shape!r}: give the shape of one sample, e.g. (28, 28, 1).")
  return shape


@dataclasses.dataclass(frozen=True, eq=False)
class _FunctionPlayer:
  """A player from pure functions, with linen's ``init``/``apply`` calling convention."""

  init_fn: Callable[[jax.Array], PyTree]
  apply_fn: Callable[[PyTree, jax.Array], jax.Array]
  what: str

  def init(self, key: jax.Array, x: jax.Array, *support) -> dict:
    del x, support  # the parameters' shapes are the function's to know
    return {"params": self.init_fn(key)}

  def apply(self, variables: dict, x: jax.Array, *support) -> jax.Array:
    return self.apply_fn(variables["params"], x, *support)


def _str_keys(tree: PyTree) -> PyTree:
  # NNX's pure dicts key list items by int; string keys keep paths uniform for
  # trainable prefixes and orbax, and ``nnx.replace_by_pure_dict`` accepts them.
  if isinstance(tree, dict):
    return {str(k): _str_keys(v) for k, v in tree.items()}
  return tree


def _nnx_player(module_or_factory: Any, role: str, model_name: str) -> _FunctionPlayer:
  from flax import nnx  # pylint: disable=g-import-not-at-top

  where = f"GanModel.from_nnx(name={model_name!r}) {role}"
  if isinstance(module_or_factory, nnx.Module):
    module, factory = module_or_factory, None
  elif callable(module_or_factory) and not isinstance(module_or_factory, nn.Module):
    factory = module_or_factory
    module = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
    if not isinstance(module, nnx.Module):
      raise TypeError(f"{where}: the factory returned {type(module).__name__}, not an nnx.Module.")
  else:
    hint = (
      " For a flax linen module use GanModel.from_linen."
      if isinstance(module_or_factory, nn.Module)
      else ""
    )
    raise TypeError(
      f"{where} must be an nnx.Module or a factory `rngs -> nnx.Module`, got "
      f"{type(module_or_factory).__name__}.{hint}"
    )
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  others = [("/".join(map(str, path)), type(v).__name__) for path, v in nnx.to_flat_state(rest)]
  if others:
    shown = ", ".join(f"{p} ({t})" for p, t in others[:4])
    more = f" and {len(others) - 4} more" if len(others) > 4 else ""
    raise ValueError(
      f"{where} ({type(module).__name__}) holds variables other than nnx.Param: "
      f"{shown}{more}. The inner loop is a pure function of parameters, so state a forward "
      "pass updates (BatchNorm statistics, counters, stored Rngs) cannot be carried: use a "
      "stateless normalisation (nnx.LayerNorm, nnx.GroupNorm) or none, and pass randomness "
      "as inputs instead of storing nnx.Rngs in the module."
    )
  template = params

  def apply(p, x, *support):
    state = jax.tree.map(lambda v: v, template)  # fresh Variables; the template stays intact
    nnx.replace_by_pure_dict(state, p)
    return nnx.merge(graphdef, state)(x, *support)

  if factory is None:
    pure = _str_keys(nnx.to_pure_dict(params))

    def init(key):
      del key  # an instance's parameters are already drawn
      return jax.tree.map(jnp.asarray, pure)
  else:

    def init(key):
      return _str_keys(nnx.to_pure_dict(nnx.split(factory(nnx.Rngs(key)), nnx.Param)[1]))

  return _FunctionPlayer(init, apply, f"{model_name} {role}")


def _check_pair(model: GanModel) -> None:
  """Checks both players' output shapes with ``jax.eval_shape`` (traces, never compiles)."""
  n = 2
  z = jax.ShapeDtypeStruct((n, model.z_dim), jnp.float32)
  x = jax.ShapeDtypeStruct((n, *model.data_shape), jnp.float32)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  cond = (
    (jax.ShapeDtypeStruct((n, 2, *model.data_shape), jnp.float32),) if model.conditional else ()
  )

  def run(role, f, *args):
    try:
      return jax.eval_shape(f, *args)
    except Exception as e:  # the user's code failed: say which player and on what input
      raise ValueError(
        f"GanModel {model.name!r}: calling the {role} failed ({type(e).__name__}: {e})."
      ) from e

  with_cond = " and support sets of shape (2, 2, ...)" if cond else ""
  g = run(
    "generator's init", lambda k, z, *c: model.generator.init(k, z, *c)["params"], key, z, *cond
  )
  d = run(
    "discriminator's init",
    lambda k, x, *c: model.discriminator.init(k, x, *c)["params"],
    key,
    x,
    *cond,
  )
  out = run(
    f"generator on z of shape {z.shape}{with_cond}",
    lambda p, z, *c: model.generator.apply({"params": p}, z, *c),
    g,
    z,
    *cond,
  )
  want = (n, *model.data_shape)
  if getattr(out, "shape", None) != want:
    raise ValueError(
      f"GanModel {model.name!r}: the generator maps z of shape {z.shape} to "
      f"{getattr(out, 'shape', type(out).__name__)}, but data_shape={model.data_shape} needs "
      f"{want}: make it return [N, *data_shape] (reshape its output), or pass the data_shape "
      "it produces."
    )
  logits = run(
    f"discriminator on x of shape {x.shape}{with_cond}",
    lambda p, x, *c: model.discriminator.apply({"params": p}, x, *c),
    d,
    x,
    *cond,
  )
  if getattr(logits, "shape", None) != (n,):
    raise ValueError(
      f"GanModel {model.name!r}: the discriminator maps x of shape {x.shape} to "
      f"{getattr(logits, 'shape', type(logits).__name__)}; it must return one logit per "
      f"sample, shape [N] = {(n,)}: e.g. `return logits.reshape(-1)` for [N, 1]."
    )
  if not jnp.issubdtype(out.dtype, jnp.floating) or not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(
      f"GanModel {model.name!r}: the players must return floating-point arrays "
      f"(generator {out.dtype}, discriminator {logits.dtype})."
    )


def _norm(kind: str | None, name: str) -> Callable[[jax.Array], jax.Array]:
  if kind is None or kind == "none":
    return lambda x: x
  if kind == "layer":
    return nn.LayerNorm(name=name)
  if kind == "group":
    return nn.GroupNorm(num_groups=8, name=name)
  if kind == "pixel":  # PixelNorm (Karras et al., 2018): unit RMS over channels, no params
    return lambda x: x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-8)
  raise ValueError(
    f"Unknown normalisation {kind!r}; use 'none', 'layer', 'group' or 'pixel' "
    "(BatchNorm is not offered: its running statistics break a pure inner loop)."
  )


#: The convolution implementations the conv pairs take (the same tuple as ``backend.CONV_IMPLS``).
CONV_IMPLS = backend.CONV_IMPLS


def _conv(impl: str, features: int, name: str, matmul_dtype=None) -> nn.Module:
  """4x4 stride-2 conv, padding 1: as im2col + matmul, or XLA's convolution."""
  if impl == "matmul":
    return layers.Conv4x4s2(features, name=name, compute_dtype=matmul_dtype)
  return nn.Conv(features, (4, 4), (2, 2), padding=((1, 1), (1, 1)), name=name)


def _deconv(impl: str, features: int, name: str, matmul_dtype=None) -> nn.Module:
  """4x4 stride-2 transposed conv (x2 upsampling), == PyTorch ConvTranspose2d(k=4, s=2, p=1)."""
  if impl == "matmul":
    return layers.ConvTranspose4x4s2(features, name=name, compute_dtype=matmul_dtype)
  # Explicit padding (2, 2) on the stride-dilated input is exactly PyTorch's
  # ConvTranspose2d(k=4, s=2, p=1) up to the kernel flip.
  return nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)), name=name)


def _check_impl(conv_impl: str) -> str:
  """Validates ``conv_impl`` and resolves ``"auto"`` for the default backend."""
  return backend.resolve_conv_impl(conv_impl)


#: The ``matmul_dtype`` values: ``None`` (float32 products) or ``"bfloat16"``.
MATMUL_DTYPES = (None, "bfloat16")


def _check_matmul_dtype(matmul_dtype, conv_impl: str):
  """``None`` or ``"bfloat16"`` (as a jnp dtype); bf16 products need the matmul layers."""
  try:
    name = None if matmul_dtype is None else str(jnp.dtype(matmul_dtype))
  except TypeError:
    name = repr(matmul_dtype)
  if name not in MATMUL_DTYPES:
    raise ValueError(
      f"matmul_dtype={matmul_dtype!r}: choose None (float32 products) or "
      f"'bfloat16' (bf16 products, float32 accumulation)."
    )
  if matmul_dtype is not None and conv_impl != "matmul":
    raise ValueError(
      f"matmul_dtype={matmul_dtype!r} needs conv_impl='matmul' (got "
      f"{conv_impl!r}): only the matmul layers compute in bfloat16."
    )
  return None if matmul_dtype is None else jnp.bfloat16


def _fc(features: int, name: str, matmul_dtype=None) -> nn.Module:
  # nn.Dense by default, so float32 models keep their exact numbers.
  if matmul_dtype is None:
    return nn.Dense(features, name=name)
  return layers.Dense(features, name=name, compute_dtype=matmul_dtype)


# --- dcgan28: the standard benchmark config "omniglot28-dcgan" --------------


class DCGAN28Generator(nn.Module):
  """Dense(64->7*7*64)+ReLU -> 7x7x64 -> ConvT(32,4,s2)+ReLU -> ConvT(1,4,s2)+tanh."""

  base: int = 32
  channels: int = 1
  conv_impl: str = "matmul"
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, z_NxZ):
    n = z_NxZ.shape[0]
    md = self.matmul_dtype
    h = nn.relu(_fc(7 * 7 * 2 * self.base, "fc", md)(z_NxZ))
    h_Nx7x7xC = h.reshape(n, 7, 7, 2 * self.base)
    h = nn.relu(_deconv(self.conv_impl, self.base, "deconv1", md)(h_Nx7x7xC))  # 14x14
    x = _deconv(self.conv_impl, self.channels, "deconv2", md)(h)  # 28x28
    return jnp.tanh(x)


class DCGAN28Discriminator(nn.Module):
  """Conv(32,4,s2)+LReLU(0.2) -> Conv(64,4,s2)+LReLU(0.2) -> flatten -> Dense(1)."""

  base: int = 32
  conv_impl: str = "matmul"
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x_NxHxWxC):
    # == PyTorch Conv2d(k=4, s=2, p=1): 28 -> 14 -> 7
    md = self.matmul_dtype
    h = nn.leaky_relu(_conv(self.conv_impl, self.base, "conv1", md)(x_NxHxWxC), 0.2)
    h = nn.leaky_relu(_conv(self.conv_impl, 2 * self.base, "conv2", md)(h), 0.2)
    h = h.reshape(h.shape[0], -1)
    return _fc(1, "fc", md)(h)[:, 0]


def dcgan28(
  z_dim: int = 64, channels: int = 1, conv_impl: str = "auto", matmul_dtype=None
) -> GanModel:
  """The ``omniglot28-dcgan`` pair (28x28xC images, z_dim 64, no normalisation).

  Args:
    z_dim: latent size.
    channels: image channels.
    conv_impl: ``"matmul"`` (convolutions as im2col + matmul, which stays
      fast on CPU when vmapped over per-task weights), ``"xla"`` (flax's
      ``nn.Conv``/``nn.ConvTranspose``) or ``"auto"`` (default: matmul on CPU,
      xla on accelerators; :mod:`metagan_jax.backend`). Same parameters, same numbers.
    matmul_dtype: ``None`` (float32 products) or ``"bfloat16"``: every matmul,
      and every matmul of every derivative, rounds its operands to bf16 and
      accumulates in float32 (:func:`metagan_jax.layers.matmul`). Faster on CPUs
      with bf16 matmul units (AVX512-BF16, AMX), slower on others; the
      parameters stay float32. Needs ``conv_impl="matmul"``.
  """
  conv_impl = _check_impl(conv_impl)
  md = _check_matmul_dtype(matmul_dtype, conv_impl)
  return GanModel(
    "dcgan28",
    z_dim,
    (28, 28, channels),
    DCGAN28Generator(channels=channels, conv_impl=conv_impl, matmul_dtype=md),
    DCGAN28Discriminator(conv_impl=conv_impl, matmul_dtype=md),
  )


# --- fsgan28: the pair that draws Omniglot (few-shot experiments) -------------


class Mapping(nn.Module):
  """Latent mapping ``z -> w``: an MLP of ``layers`` LeakyReLU(0.2) layers (StyleGAN's idea).

  Few-shot adaptation can move only this part (``AdaptConfig.g_trainable="mapping"``):
  the synthesis network keeps drawing strokes while the mapping moves the samples
  toward the new class.
  """

  w_dim: int = 128
  layers: int = 2
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, z_NxZ):
    w = z_NxZ
    for i in range(self.layers):
      w = nn.leaky_relu(
        layers.Dense(self.w_dim, name=f"fc{i}", compute_dtype=self.matmul_dtype)(w), 0.2
      )
    return w


class FSGAN28Generator(nn.Module):
  """Mapping -> Dense -> 7x7x2W -> ConvT(W) 14x14 -> ConvT(W/2) 28x28 -> Conv3x3 -> tanh.

  Each hidden layer is followed by a stateless normalisation (``norm``) and ReLU.
  With ``up="nearest"`` each ConvT is a nearest-neighbour x2 upsampling and a 3x3
  conv instead (FIGR's generator). Parameters: ``{"mapping": ..., "synthesis": ...}``.
  """

  width: int = 32
  channels: int = 1
  w_dim: int = 128
  mapping_layers: int = 2
  norm: str | None = "group"
  up: str = "transposed"
  matmul_dtype: Any = None
  seed_hw: tuple[int, int] = (7, 7)  # the first feature map; x4 per side is the output

  @nn.compact
  def __call__(self, z_NxZ):
    n = z_NxZ.shape[0]
    w = (
      Mapping(self.w_dim, self.mapping_layers, self.matmul_dtype, name="mapping")(z_NxZ)
      if self.mapping_layers
      else z_NxZ
    )
    return _Synthesis(
      self.width,
      self.channels,
      self.norm,
      self.up,
      self.matmul_dtype,
      self.seed_hw,
      name="synthesis",
    )(w.reshape(n, -1))


class _Synthesis(nn.Module):
  width: int
  channels: int
  norm: str | None
  up: str = "transposed"
  matmul_dtype: Any = None
  seed_hw: tuple[int, int] = (7, 7)

  @nn.compact
  def __call__(self, w_NxW):
    n, c = w_NxW.shape[0], 2 * self.width
    (sh, sw), md = self.seed_hw, dict(compute_dtype=self.matmul_dtype)
    h = layers.Dense(sh * sw * c, name="fc", **md)(w_NxW).reshape(n, sh, sw, c)
    h = nn.relu(_norm(self.norm, "norm0")(h))
    for i, width in enumerate((self.width, self.width // 2)):
      if self.up == "nearest":  # FIGR's G: no transposed-conv overlap pattern
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = layers.Conv3x3(width, name=f"upconv{i + 1}", **md)(h)
      else:
        h = layers.ConvTranspose4x4s2(width, name=f"deconv{i + 1}", **md)(h)
      h = nn.relu(_norm(self.norm, f"norm{i + 1}")(h))
    return jnp.tanh(layers.Conv3x3(self.channels, name="out", **md)(h))


class FSGAN28Discriminator(nn.Module):
  """Conv(W, 4, s2) -> Conv(2W, 4, s2) -> Conv3x3(2W) -> Dense(1), LeakyReLU(0.2) between.

  No normalisation layers (their statistics would couple the samples, which
  gradient penalties assume independent); optionally spectral normalisation
  of every weight, as in SNGAN.
  """

  width: int = 32
  spectral: bool = False
  power_iters: int = 5
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, x_NxHxWxC):
    sn = dict(spectral=self.spectral, power_iters=self.power_iters, compute_dtype=self.matmul_dtype)
    h = nn.leaky_relu(layers.Conv4x4s2(self.width, name="conv1", **sn)(x_NxHxWxC), 0.2)
    h = nn.leaky_relu(layers.Conv4x4s2(2 * self.width, name="conv2", **sn)(h), 0.2)
    h = nn.leaky_relu(layers.Conv3x3(2 * self.width, name="conv3", **sn)(h), 0.2)
    return layers.Dense(1, name="fc", **sn)(h.reshape(h.shape[0], -1))[:, 0]


def _check_group_width(name: str, g_norm: str | None, g_width: int) -> None:
  """The 28x28 generators' GroupNorm (8 groups) needs ``g_width // 2`` a multiple of 8."""
  if g_norm == "group" and (g_width // 2) % 8:
    raise ValueError(
      f"{name}: g_norm='group' uses 8 groups, so the 28x28 layer's "
      f"g_width // 2 = {g_width // 2} channels must be a multiple of 8; "
      f"use g_width = 16, 32, 48, ... or another g_norm."
    )


def fsgan28(
  z_dim: int = 64,
  channels: int = 1,
  g_width: int = 32,
  d_width: int = 32,
  w_dim: int = 128,
  mapping_layers: int = 2,
  g_norm: str | None = "group",
  spectral: bool = False,
  power_iters: int = 5,
  up: str = "transposed",
  matmul_dtype=None,
) -> GanModel:
  """The 28x28 pair that draws Omniglot: a latent mapping and a normalised G; a 3-conv D.

  The defaults are the recipe of the few-shot experiments (trained with WGAN-GP,
  two critic steps per G step; docs/research_log.md has the ablation that chose it).

  Args:
    z_dim: latent size.
    channels: image channels.
    g_width: generator channels at 14x14 (twice that at 7x7, half at 28x28).
    d_width: discriminator channels at 14x14 (twice that at 7x7).
    w_dim: width of the latent mapping's output.
    mapping_layers: depth of the latent mapping (0: ``z`` feeds the synthesis directly).
    g_norm: the generator's normalisation: ``"group"`` (8 groups), ``"layer"``
      (over channels, per pixel), ``"pixel"`` (no affine) or ``"none"``.
    spectral: spectral normalisation of every discriminator weight (for
      hinge / non-saturating losses; WGAN-GP's penalty already bounds the slope).
    power_iters: power iterations per spectral norm (stateless; see
      :func:`metagan_jax.layers.spectral_normalize`).
    up: the generator's x2 upsampling: ``"transposed"`` (4x4 stride-2 transposed
      convs, the default) or ``"nearest"`` (nearest-neighbour x2 then a 3x3 conv).
    matmul_dtype: ``None`` or ``"bfloat16"``, as in :func:`dcgan28`.
  """
  return _fsgan_pair(
    "fsgan28", (28, 28), channels, z_dim, g_width, d_width, w_dim, mapping_layers, g_norm,
    spectral, power_iters, up, matmul_dtype,
  )  # fmt: skip


def _fsgan_pair(
  name, hw, channels, z_dim, g_width, d_width, w_dim, mapping_layers, g_norm, spectral,
  power_iters, up, matmul_dtype,
) -> GanModel:  # fmt: skip
  """The fsgan28 family at ``hw = (H, W)`` (multiples of 4): checks, then the pair."""
  _norm(g_norm, "check")
  md = _check_matmul_dtype(matmul_dtype, "matmul")
  if up not in ("transposed", "nearest"):
    raise ValueError(f"{name}: up={up!r}; use 'transposed' or 'nearest'.")
  _check_group_width(name, g_norm, g_width)
  seed = (hw[0] // 4, hw[1] // 4)  # the generator doubles its first map twice
  return GanModel(
    name,
    z_dim,
    (*hw, channels),
    FSGAN28Generator(g_width, channels, w_dim, mapping_layers, g_norm, up, md, seed),
    FSGAN28Discriminator(d_width, spectral, power_iters, md),
    mapping=Mapping(w_dim, mapping_layers, md) if mapping_layers else None,
    synthesis=(_Synthesis(g_width, channels, g_norm, up, md, seed) if mapping_layers else None),
  )


# --- cfsgan28: the support-conditioned pair (DAGAN / FAML-style) ------------------


def _pool_sets(h_NMx: jax.Array, n: int) -> jax.Array:
  """Mean over each sample's M conditioning images: ``[N * M, ...] -> [N, ...]``."""
  return h_NMx.reshape(n, -1, *h_NMx.shape[1:]).mean(axis=1)


class SupportEncoder(nn.Module):
  """Encodes each support image and pools over the set: ``[N, M, 28, 28, C]`` -> features.

  Conv(W/2, 4, s2) 14x14 -> Conv(W, 4, s2) 7x7 -> Dense(code), LeakyReLU(0.2) between; each
  output is the mean over the M images, so one encoder serves any set size M (K - 1 images
  in the inner loop's leave-one-out sets, K at sampling time).

  Returns:
    ``(code_NxD, h7_Nx7x7xW, h14_Nx14x14x(W/2))``: the pooled code and the pooled feature maps
    that the generator's decoder takes as skip connections.
  """

  width: int = 32
  code_dim: int = 64
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, support_NxMxHxWxC):
    n, m = support_NxMxHxWxC.shape[:2]
    md = dict(compute_dtype=self.matmul_dtype)
    x = support_NxMxHxWxC.reshape(n * m, *support_NxMxHxWxC.shape[2:])
    h14 = nn.leaky_relu(layers.Conv4x4s2(self.width // 2, name="conv1", **md)(x), 0.2)
    h7 = nn.leaky_relu(layers.Conv4x4s2(self.width, name="conv2", **md)(h14), 0.2)
    code = nn.leaky_relu(layers.Dense(self.code_dim, name="fc", **md)(h7.reshape(n * m, -1)), 0.2)
    return _pool_sets(code, n), _pool_sets(h7, n), _pool_sets(h14, n)


class CondGenerator28(nn.Module):
  """``G(z, support)``: fsgan28's generator with a support encoder, DAGAN-style.

  ``w = mapping(z)``; the decoder starts from ``Dense([w, code])`` at 7x7 and takes the
  pooled encoder maps at 7x7 and 14x14 as skip connections (concatenated channels), so it
  can draw the support's character while ``z`` varies the strokes. Parameters:
  ``{"encoder", "mapping", "synthesis"}``, all the generator's (one owner for the encoder:
  its meta-gradient is the generator's).
  """

  width: int = 32
  channels: int = 1
  w_dim: int = 128
  mapping_layers: int = 2
  code_dim: int = 64
  norm: str | None = "group"
  skips: bool = True
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, z_NxZ, support_NxMxHxWxC):
    n = z_NxZ.shape[0]
    code, h7s, h14s = SupportEncoder(self.width, self.code_dim, self.matmul_dtype, name="encoder")(
      support_NxMxHxWxC
    )
    w = (
      Mapping(self.w_dim, self.mapping_layers, self.matmul_dtype, name="mapping")(z_NxZ)
      if self.mapping_layers
      else z_NxZ
    )
    syn = _CondSynthesis(
      self.width, self.channels, self.norm, self.skips, self.matmul_dtype, name="synthesis"
    )
    return syn(jnp.concatenate([w.reshape(n, -1), code], axis=-1), h7s, h14s)


class _CondSynthesis(nn.Module):
  width: int
  channels: int
  norm: str | None
  skips: bool = True
  matmul_dtype: Any = None

  @nn.compact
  def __call__(self, wc_NxD, h7s, h14s):
    n, c = wc_NxD.shape[0], 2 * self.width
    md = dict(compute_dtype=self.matmul_dtype)
    h = layers.Dense(7 * 7 * c, name="fc", **md)(wc_NxD).reshape(n, 7, 7, c)
    h = nn.relu(_norm(self.norm, "norm0")(h))
    skips = (h7s, h14s) if self.skips else (None, None)
    for i, (width, skip) in enumerate(zip((self.width, self.width // 2), skips)):
      if skip is not None:
        h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
      h = layers.ConvTranspose4x4s2(width, name=f"deconv{i + 1}", **md)(h)
      h = nn.relu(_norm(self.norm, f"norm{i + 1}")(h))
    return jnp.tanh(layers.Conv3x3(self.channels, name="out", **md)(h))


class CondDiscriminator28(nn.Module):
  """``D(x, support)``: a pair critic that sees ``x`` beside the mean image of its support set.

  The input is ``[x, mean(support)]`` on the channel axis (DAGAN's critic judges (source,
  target) pairs the same way), then fsgan28's critic: Conv(W, 4, s2) -> Conv(2W, 4, s2) ->
  Conv3x3(2W) -> Dense(1), LeakyReLU(0.2) between. So D asks whether ``x`` is a real image
  *of the support's class*, not only a real character. With ``project=True`` it also adds a
  projection term ``<phi(x), e(support)>`` through an encoder of its own (D's parameters).
  With ``num_classes = C > 0`` it has a class head (``classes=True`` returns ``[N, C]``
  logits over the training classes): D's convolutions on ``x`` alone, the set's channel
  zeroed, average-pooled, then ``Dense(C)``; see ``GanTrainConfig.class_weight``.
  """

  width: int = 32
  project: bool = False
  code_dim: int = 64
  matmul_dtype: Any = None
  num_classes: int = 0

  @nn.compact
  def __call__(self, x_NxHxWxC, support_NxMxHxWxC=None, classes: bool = False):
    md = dict(compute_dtype=self.matmul_dtype)
    trunk = (
      layers.Conv4x4s2(self.width, name="conv1", **md),
      layers.Conv4x4s2(2 * self.width, name="conv2", **md),
      layers.Conv3x3(2 * self.width, name="conv3", **md),
    )

    def features(h):
      for layer in trunk:
        h = nn.leaky_relu(layer(h), 0.2)
      return h

    if self.num_classes and (classes or self.is_initializing()):
      # The class head sees x alone (the set's channel zeroed): beside its set it could read
      # the class off the set's mean image and teach G nothing.
      h = features(jnp.concatenate([x_NxHxWxC, jnp.zeros_like(x_NxHxWxC)], axis=-1))
      class_logits = layers.Dense(self.num_classes, name="cls", **md)(h.mean(axis=(1, 2)))
      if classes:
        return class_logits
    elif classes:
      raise ValueError(
        "CondDiscriminator28 has no class head: build it with num_classes > 0 "
        "(models.cfsgan28(num_classes=...))."
      )
    mean_NxHxWxC = support_NxMxHxWxC.mean(axis=1).astype(x_NxHxWxC.dtype)
    h = features(jnp.concatenate([x_NxHxWxC, mean_NxHxWxC], axis=-1))
    phi = h.reshape(h.shape[0], -1)
    logits = layers.Dense(1, name="fc", **md)(phi)[:, 0]
    if self.project:
      code = SupportEncoder(self.width, self.code_dim, self.matmul_dtype, name="encoder")(
        support_NxMxHxWxC
      )[0]
      proj = layers.Dense(self.code_dim, name="proj", **md)(phi)
      logits = logits + jnp.sum(proj * code, axis=-1) / jnp.sqrt(self.code_dim)
    return logits


def cfsgan28(
  z_dim: int = 64,
  channels: int = 1,
  g_width: int = 32,
  d_width: int = 32,
  w_dim: int = 128,
  mapping_layers: int = 2,
  code_dim: int = 64,
  g_norm: str | None = "group",
  skips: bool = True,
  project: bool = False,
  matmul_dtype=None,
  num_classes: int = 0,
) -> GanModel:
  """The support-conditioned 28x28 pair: ``G(z, support)`` and a pair critic ``D(x, support)``.

  The generator encodes its support set with a pooled encoder (:class:`SupportEncoder`, in the
  generator's parameters) and decodes ``[mapping(z), code]`` with the pooled feature maps as
  skip connections; the discriminator judges ``x`` beside its support's mean image
  (:class:`CondDiscriminator28`). Sample with ``model.generate(g, z, support_KxHxWxC)``: no
  gradient step needed (T = 0), or adapt first as with any pair.

  Args:
    z_dim: latent size.
    channels: image channels.
    g_width: generator (and its encoder's) channels at 14x14 / 7x7.
    d_width: discriminator channels at 14x14 (twice that at 7x7).
    w_dim: width of the latent mapping's output.
    mapping_layers: depth of the latent mapping (0: ``z`` feeds the decoder directly).
    code_dim: size of the pooled support code.
    g_norm: the generator's normalisation, as in :func:`fsgan28`.
    skips: feed the pooled encoder maps to the decoder (``False``: the code vector only).
    project: add a projection term through D's own support encoder.
    matmul_dtype: ``None`` or ``"bfloat16"``, as in :func:`dcgan28`.
    num_classes: ``C > 0`` gives D a class head over ``C`` training classes (AC-GAN-style,
      as in MatchingGAN, F2GAN and LoFGAN; :meth:`GanModel.classify`), for pre-training with
      ``GanTrainConfig.class_weight``. ``0``: none (the parameters are as before).
  """
  _norm(g_norm, "check")
  md = _check_matmul_dtype(matmul_dtype, "matmul")
  _check_group_width("cfsgan28", g_norm, g_width)
  if not isinstance(num_classes, int) or num_classes < 0:
    raise ValueError(
      f"cfsgan28: num_classes={num_classes!r}; give the number of training classes, or 0 for "
      "no class head."
    )
  return GanModel(
    "cfsgan28",
    z_dim,
    (28, 28, channels),
    CondGenerator28(g_width, channels, w_dim, mapping_layers, code_dim, g_norm, skips, md),
    CondDiscriminator28(d_width, project, code_dim, md, num_classes),
    conditional=True,
  )


# --- 32x32 / 64x64 conv pairs for GPU-sized experiments ----------------------


class ConvGenerator(nn.Module):
  """DCGAN-style generator: 4x4 seed, then stride-2 transposed convs to ``size``."""

  size: int
  channels: int
  base: int = 64
  norm: str | None = "layer"
  conv_impl: str = "matmul"

  @nn.compact
  def __call__(self, z_NxZ):
    n_up = {32: 3, 64: 4}[self.size]
    width = self.base * 2 ** (n_up - 1)
    h = nn.Dense(4 * 4 * width, name="fc")(z_NxZ).reshape(-1, 4, 4, width)
    h = nn.relu(_norm(self.norm, "norm0")(h))
    for i in range(n_up - 1):
      width //= 2
      h = _deconv(self.conv_impl, width, f"deconv{i + 1}")(h)
      h = nn.relu(_norm(self.norm, f"norm{i + 1}")(h))
    x = _deconv(self.conv_impl, self.channels, f"deconv{n_up}")(h)
    return jnp.tanh(x)


class ConvDiscriminator(nn.Module):
  """DCGAN-style discriminator: stride-2 convs down to 4x4, then a linear logit."""

  size: int
  base: int = 64
  norm: str | None = "layer"
  conv_impl: str = "matmul"

  @nn.compact
  def __call__(self, x_NxHxWxC):
    n_down = {32: 3, 64: 4}[self.size]
    h = x_NxHxWxC
    width = self.base
    for i in range(n_down):
      h = _conv(self.conv_impl, width, f"conv{i + 1}")(h)
      if i > 0:  # no normalisation on the input layer, as in DCGAN
        h = _norm(self.norm, f"norm{i}")(h)
      h = nn.leaky_relu(h, 0.2)
      width *= 2
    return nn.Dense(1, name="fc")(h.reshape(h.shape[0], -1))[:, 0]


def dcgan(
  size: int,
  channels: int = 3,
  z_dim: int = 128,
  base: int = 64,
  norm: str | None = "layer",
  conv_impl: str = "auto",
) -> GanModel:
  """A 32x32 or 64x64 DCGAN pair with optional stateless normalisation.

  ``norm`` is ``"layer"``, ``"group"`` or ``"none"``; ``conv_impl`` as in :func:`dcgan28`.
  """
  if size not in (32, 64):
    raise ValueError(f"dcgan size must be 32 or 64, got {size!r}; use dcgan28() for 28x28.")
  _norm(norm, "check")  # validates the name early
  conv_impl = _check_impl(conv_impl)
  return GanModel(
    f"dcgan{size}",
    z_dim,
    (size, size, channels),
    ConvGenerator(size, channels, base, norm, conv_impl),
    ConvDiscriminator(size, base, norm, conv_impl),
  )


def dcgan32(**kwargs) -> GanModel:
  """32x32 conv pair (see :func:`dcgan`)."""
  return dcgan(32, **kwargs)


def dcgan64(**kwargs) -> GanModel:
  """64x64 conv pair (see :func:`dcgan`)."""
  return dcgan(64, **kwargs)


# --- MLP pair for vector data -----------------------------------------------

_ACTIVATIONS = {
  "relu": nn.relu,
  "leaky_relu": lambda x: nn.leaky_relu(x, 0.2),
  "tanh": jnp.tanh,
  "elu": nn.elu,
  "gelu": nn.gelu,
  "softplus": nn.softplus,
}


class MLP(nn.Module):
  """Plain MLP; ``squeeze`` drops a trailing axis of size 1 (logits)."""

  hidden: Sequence[int]
  out: int
  activation: str = "leaky_relu"
  squeeze: bool = False

  @nn.compact
  def __call__(self, x):
    act = _ACTIVATIONS[self.activation]
    h = x.reshape(x.shape[0], -1)
    for i, w in enumerate(self.hidden):
      h = act(nn.Dense(w, name=f"fc{i}")(h))
    h = nn.Dense(self.out, name=f"fc{len(self.hidden)}")(h)
    return h[:, 0] if self.squeeze else h


def mlp(
  data_dim: int = 2,
  z_dim: int = 4,
  hidden: Sequence[int] = (64, 64),
  activation: str = "leaky_relu",
) -> GanModel:
  """An MLP pair for vector data (e.g. the 2-D Gaussian-mixture toy tasks)."""
  if activation not in _ACTIVATIONS:
    raise ValueError(f"Unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}.")
  hidden = tuple(int(h) for h in hidden)
  return GanModel(
    "mlp",
    z_dim,
    (data_dim,),
    MLP(hidden, data_dim, activation),
    MLP(hidden, 1, activation, squeeze=True),
  )


# --- specgan: the fsgan28 family on log-mel spectrograms ---------------------


def specgan(
  n_mels: int = 64,
  frames: int = 32,
  z_dim: int = 64,
  g_width: int = 32,
  d_width: int = 32,
  w_dim: int = 128,
  mapping_layers: int = 2,
  g_norm: str | None = "group",
  spectral: bool = False,
  power_iters: int = 5,
  up: str = "transposed",
  matmul_dtype=None,
) -> GanModel:
  """:func:`fsgan28`'s pair on ``[n_mels, frames, 1]`` log-mel spectrograms (SpecGAN-like).

  The generator starts from an ``n_mels / 4 x frames / 4`` map and doubles it
  twice; the discriminator halves it twice, as for 28x28 images. Frequency and
  time are the image's height and width; :mod:`metagan_jax.audio` makes the
  spectrograms and turns samples back into sound.

  Args:
    n_mels: the spectrogram's height (mel bins), a multiple of 4.
    frames: its width (STFT frames), a multiple of 4.
    z_dim: latent size.
    g_width: generator channels at half the output's size.
    d_width: discriminator channels at half the input's size.
    w_dim: width of the latent mapping's output.
    mapping_layers: depth of the latent mapping.
    g_norm: the generator's normalisation, as in :func:`fsgan28`.
    spectral: spectral normalisation of every discriminator weight.
    power_iters: power iterations per spectral norm.
    up: the generator's x2 upsampling, ``"transposed"`` or ``"nearest"``.
    matmul_dtype: ``None`` or ``"bfloat16"``.
  """
  for name, v in (("n_mels", n_mels), ("frames", frames)):
    if not isinstance(v, int) or v < 4 or v % 4:
      raise ValueError(
        f"specgan: {name}={v!r}; the generator doubles its map twice, so use a multiple of 4 "
        f"(e.g. 64 mel bins x 32 frames)."
      )
  return _fsgan_pair(
    "specgan", (n_mels, frames), 1, z_dim, g_width, d_width, w_dim, mapping_layers, g_norm,
    spectral, power_iters, up, matmul_dtype,
  )  # fmt: skip


_REGISTRY: dict[str, Callable[..., GanModel]] = {
  "dcgan28": dcgan28,
  "fsgan28": fsgan28,
  "cfsgan28": cfsgan28,
  "dcgan32": dcgan32,
  "dcgan64": dcgan64,
  "mlp": mlp,
  "specgan": specgan,
}


def get_model(name: str, **kwargs) -> GanModel:
  """Builds a registered model pair by name (``dcgan28``, ``fsgan28``, ``cfsgan28``, ``dcgan32``,
  ``dcgan64``, ``mlp``, ``specgan``)."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; choose from {sorted(_REGISTRY)}.")
  return _REGISTRY[name](**kwargs)
