"""`metagan generate`'s persistent compilation cache and its several-class calls.

The cache tests run the command in fresh processes (JAX decides once per
process whether a cache is used), each with its own cache folder.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import metagan_jax as mg
from metagan_jax import cli, compile_cache
from tests.conftest import TINY_RUN_GROUP
from tests.helpers import HANG_TIMEOUT_S
from tests.test_cli import _strokes, write_pngs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cache_folder_precedence_and_off_switch(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.OFF_ENV, raising=False)
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve_dir() == str(tmp_path / "xdg" / "metagan_jax" / "xla")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
  assert compile_cache.resolve_dir() == str(tmp_path / "jax")  # JAX's own setting wins
  assert compile_cache.resolve_dir(str(tmp_path / "arg")) == str(tmp_path / "arg")
  was_on = jax.config.jax_enable_compilation_cache
  try:
    for off in ("0", "off", "False"):
      monkeypatch.setenv(compile_cache.OFF_ENV, off)
      assert compile_cache.resolve_dir() is None and compile_cache.enable() is None
      assert not jax.config.jax_enable_compilation_cache  # JAX's own folder setting too
  finally:  # this test process keeps the suite's cache
    jax.config.update("jax_enable_compilation_cache", was_on)


def test_cached_arrays_reads_once_and_again_when_the_files_change(monkeypatch, tmp_path):
  folder = tmp_path / "ckpt"
  folder.mkdir()
  (folder / "data").write_bytes(b"v1")
  calls = []

  def load():
    calls.append(1)
    return {"leaf_00000": np.arange(3.0) + len(calls), "leaf_00001": np.ones((2, 2), np.int32)}

  monkeypatch.setattr(compile_cache, "_EXPORT_DIR", None)  # cache off: load() every time
  compile_cache.cached_arrays(str(folder), load)
  compile_cache.cached_arrays(str(folder), load)
  assert len(calls) == 2
  monkeypatch.setattr(compile_cache, "_EXPORT_DIR", str(tmp_path / "cache" / "exported"))
  first = compile_cache.cached_arrays(str(folder), load)
  again = compile_cache.cached_arrays(str(folder), load)
  assert len(calls) == 3  # the second call read the stored copy
  assert again.keys() == first.keys() and again["leaf_00001"].dtype == np.int32
  np.testing.assert_array_equal(again["leaf_00000"], np.arange(3.0) + 3)
  (folder / "data").write_bytes(b"v2, longer")  # a rewritten checkpoint is read afresh
  np.testing.assert_array_equal(
    compile_cache.cached_arrays(str(folder), load)["leaf_00000"], np.arange(3.0) + 4
  )
  assert len(list((tmp_path / "cache" / "arrays").iterdir())) == 2  # one per version
  for p in (tmp_path / "cache" / "arrays").iterdir():
    p.write_bytes(b"not an npz")
  with pytest.warns(UserWarning, match="unreadable"):
    got = compile_cache.cached_arrays(str(folder), load)
  np.testing.assert_array_equal(got["leaf_00000"], np.arange(3.0) + 5)
  assert len(calls) == 5


def _generate(run_dir, images, out, cache, *extra, env=None):
  """The README's command in a fresh process; returns its report."""
  cmd = [
    sys.executable,
    "-m",
    "metagan_jax",
    "generate",
    run_dir,
    "--images",
    images,
    "--out",
    out,
    "--method",
    "reptile",
    "--steps",
    "2",
    "--num",
    "3",
    "--seed",
    "5",
    "--quiet",
    *extra,
  ]
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, **(env or {})}
  proc = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "report.json")) as f:
    return json.load(f), np.load(os.path.join(out, "samples.npz"))["samples"], proc.stderr


@TINY_RUN_GROUP
def test_generate_uses_the_cache_survives_corrupt_entries_keys_psi_and_can_turn_it_off(
  tiny_run, tmp_path
):
  images = write_pngs(str(tmp_path / "mine"), _strokes(3, 3))
  cache = str(tmp_path / "cache")
  first, x1, _ = _generate(tiny_run["workdir"], images, str(tmp_path / "o1"), cache)
  assert first["compilation_cache"]["dir"] == cache
  assert first["compilation_cache"]["misses"] >= 1 and first["compilation_cache"]["hits"] == 0
  exported = os.path.join(cache, "exported")  # the traced programs (jax.export)
  entries = [
    os.path.join(cache, f) for f in os.listdir(cache) if os.path.isfile(os.path.join(cache, f))
  ]
  entries += [os.path.join(exported, f) for f in os.listdir(exported)]
  assert len(entries) >= 2
  second, x2, _ = _generate(tiny_run["workdir"], images, str(tmp_path / "o2"), cache)
  assert second["compilation_cache"]["hits"] >= 1 and second["compilation_cache"]["misses"] == 0
  np.testing.assert_array_equal(x1, x2)
  for f in entries:  # every entry corrupt: a warning, then traced and compiled afresh
    with open(f, "wb") as fh:
      fh.write(b"not an executable")
  third, x3, err = _generate(tiny_run["workdir"], images, str(tmp_path / "o3"), cache)
  assert third["compilation_cache"]["hits"] == 0 and third["compilation_cache"]["misses"] >= 1
  assert "Error reading persistent compilation cache entry" in err and "is unreadable" in err
  assert third["compilation_cache"]["repaired"] >= 1
  np.testing.assert_array_equal(x1, x3)
  fourth, x4, err4 = _generate(tiny_run["workdir"], images, str(tmp_path / "o4"), cache)
  assert fourth["compilation_cache"]["hits"] >= 1  # the entries were rewritten
  assert fourth["compilation_cache"]["misses"] == 0 and "Error reading" not in err4
  np.testing.assert_array_equal(x1, x4)
  # --psi samples the truncated program, not the cached one of the run's rule (psi 1 or 0.5)
  report, trunc, _ = _generate(
    tiny_run["workdir"], images, str(tmp_path / "p"), cache, "--psi", "0.3"
  )
  assert report["rule"]["psi"] == 0.3 and first["rule"].get("psi", 1.0) != 0.3
  assert report["compilation_cache"]["misses"] >= 1  # its own program, keyed by psi
  assert np.abs(trunc - x1).max() > 1e-3
  run = mg.load_run(tiny_run["workdir"], method="reptile")
  support, _ = cli.prepare(cli.read_images(images)[0], run.preprocessing, "auto")
  want = dataclasses.replace(run, rule=dict(run.rule, psi=0.3)).generate(
    support, 3, seed=5, steps=2
  )
  np.testing.assert_allclose(trunc, want, atol=1e-5)
  off_cache = str(tmp_path / "off")  # METAGAN_COMPILATION_CACHE=0 beats JAX's own folder setting
  off, x5, _ = _generate(
    tiny_run["workdir"], images, str(tmp_path / "o5"), off_cache, env={compile_cache.OFF_ENV: "0"}
  )
  assert off["compilation_cache"] == {"dir": None, "hits": 0, "misses": 0, "repaired": 0}
  assert not os.path.exists(off_cache)
  np.testing.assert_array_equal(x1, x5)


@TINY_RUN_GROUP
def test_the_no_cache_flag_turns_the_cache_off(tiny_run, tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(compile_cache, "disable", lambda: calls.append("disable"))
  monkeypatch.setattr(compile_cache, "enable", lambda *a: pytest.fail("enabled"))
  images = write_pngs(str(tmp_path / "mine"), _strokes(3, 2))
  assert (
    cli.main(
      [
        "generate",
        tiny_run["workdir"],
        "--images",
        images,
        "--out",
        str(tmp_path / "o"),
        "--method",
        "reptile",
        "--steps",
        "1",
        "--num",
        "2",
        "--quiet",
        "--no-compilation-cache",
      ]
    )
    == 0
  )
  with open(tmp_path / "o" / "report.json") as f:
    assert json.load(f)["compilation_cache"]["dir"] is None
  assert calls == ["disable"]


@TINY_RUN_GROUP
def test_several_classes_give_each_class_its_one_class_samples(tiny_run, tmp_path):
  root = tmp_path / "classes"
  write_pngs(str(root / "alpha"), _strokes(1, 3))
  write_pngs(str(root / "beta"), _strokes(2, 2))  # another support size
  write_pngs(str(root / "gamma"), _strokes(4, 3))
  base = [
    "generate",
    tiny_run["workdir"],
    "--method",
    "reptile",
    "--steps",
    "2",
    "--num",
    "3",
    "--seed",
    "11",
    "--quiet",
  ]
  assert cli.main(base + ["--images", str(root), "--out", str(tmp_path / "all")]) == 0
  with open(tmp_path / "all" / "report.json") as f:
    report = json.load(f)
  assert report["classes"] == ["alpha", "beta", "gamma"] and report["images"] == 8
  run = mg.load_run(tiny_run["workdir"], method="reptile")
  sups = [
    cli.prepare(cli.read_images(str(root / n))[0], run.preprocessing, "auto")[0]
    for n in report["classes"]
  ]
  for name, s in zip(report["classes"], sups):  # a one-class call is run.generate (tests/test_cli)
    many = np.load(tmp_path / "all" / name / "samples.npz")["samples"]
    np.testing.assert_array_equal(many, run.generate(s, 3, seed=11, steps=2))
    assert (tmp_path / "all" / name / "grid.png").exists()
    assert len(os.listdir(tmp_path / "all" / name / "samples")) == 3
  assert cli.main(base + ["--images", str(root / "beta"), "--out", str(tmp_path / "beta")]) == 0
  np.testing.assert_array_equal(
    np.load(tmp_path / "beta" / "samples.npz")["samples"],
    np.load(tmp_path / "all" / "beta" / "samples.npz")["samples"],
  )
  # T = 0: no adaptation step, the meta-learned GAN sampled as it is (the CLI accepts it too).
  x0 = run.generate(sups[0], 3, seed=11, steps=0)
  assert x0.shape == (3, 28, 28, 1) and np.isfinite(x0).all()
  assert np.abs(x0 - run.generate(sups[0], 3, seed=11, steps=2)).max() > 1e-4
  zero = base[:5] + ["0"] + base[6:]
  assert cli.main(zero + ["--images", str(root / "beta"), "--out", str(tmp_path / "t0")]) == 0
  # Vectorised over the classes (the accelerators' default): the same samples to rounding.
  batched = run.generate_many(sups, 3, seed=11, steps=2, vectorize="vmap")
  for s, b in zip(sups, batched):
    np.testing.assert_allclose(b, run.generate(s, 3, seed=11, steps=2), atol=1e-5)


def test_a_folder_with_images_and_class_folders_is_refused(tmp_path):
  write_pngs(str(tmp_path / "x"), _strokes(0, 2))
  write_pngs(str(tmp_path / "x" / "sub"), _strokes(1, 2))
  with pytest.raises(cli.UsageError, match="holds images and also sub-folders"):
    cli.class_folders(str(tmp_path / "x"))
  os.makedirs(tmp_path / "x" / ".hidden")
  assert cli.class_folders(str(tmp_path / "x" / "sub")) is None
