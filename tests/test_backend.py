"""Backend-dependent defaults: "auto" resolves per platform, and explicit values always win."""

import functools

import jax
import numpy as np
import pytest

import metagan_jax as mg
from tests.helpers import tiny_model, tiny_tasks


def _meta_step(vectorize, algorithm="maml"):
  model = tiny_model()
  cfg = mg.MetaConfig(
    mg.AdaptConfig(model, inner_steps=2, inner_lr=0.1), algorithm=algorithm, vectorize=vectorize
  )
  state = mg.init(jax.random.key(0), cfg)
  tasks = tiny_tasks(jax.random.key(1), t=4, dtype=np.float32)
  new, _ = jax.jit(functools.partial(mg.meta_step, config=cfg))(state, tasks, jax.random.key(2))
  return cfg, new.params


def _assert_close(a, b, rtol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU rule, checked on a CPU")
def test_auto_is_map_on_cpu_with_the_same_numbers():
  cfg, auto = _meta_step("auto")
  assert cfg.vectorize == "auto" and cfg.resolved_vectorize() == "map"
  _, explicit = _meta_step("map")
  _assert_close(auto, explicit, 0)  # the same program
  assert mg.models.dcgan28().generator.conv_impl == "matmul"
  lt = mg.lopt_train.LOptTrainConfig(mg.AdaptConfig(tiny_model()))
  assert lt.vectorize == "auto" and lt.resolved_vectorize() == "map"


@pytest.mark.parametrize("fake", ["gpu", "tpu"])
def test_faked_accelerator_resolves_to_vmap_with_the_same_numbers(monkeypatch, fake):
  monkeypatch.setattr(mg.backend, "platform", lambda devices=None: fake)
  cfg, auto = _meta_step("auto")
  assert cfg.resolved_vectorize() == "vmap"
  monkeypatch.undo()
  _, explicit = _meta_step("vmap")
  _assert_close(auto, explicit, 1e-6)


def test_explicit_values_win_and_bad_values_are_named(monkeypatch):
  monkeypatch.setattr(mg.backend, "platform", lambda devices=None: "gpu")
  assert mg.backend.resolve_vectorize("map") == "map"
  assert mg.backend.resolve_conv_impl("auto") == "xla"
  assert mg.backend.resolve_conv_impl("matmul") == "matmul"
  assert mg.models.dcgan28().generator.conv_impl == "xla"
  assert mg.models.dcgan28(conv_impl="matmul").generator.conv_impl == "matmul"
  assert mg.lopt_train.LOptTrainConfig(mg.AdaptConfig(tiny_model())).resolved_vectorize() == "vmap"
  with pytest.raises(ValueError, match="'auto', 'vmap' or 'map', got 'pmap'"):
    mg.MetaConfig(mg.AdaptConfig(tiny_model()), vectorize="pmap")
  with pytest.raises(ValueError, match="Unknown conv_impl 'cudnn'"):
    mg.models.dcgan28(conv_impl="cudnn")
