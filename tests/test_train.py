"""Trainer: learning, resume (bitwise), checkpoint fallback, guards, config errors."""

import json
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphadecay_jax import optimizers
from alphadecay_jax import sharding as sharding_lib
from alphadecay_jax import train as train_lib
from alphadecay_jax import train_state as ts
from conftest import load, read_metrics


def _assert_trees_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_default_config_learns(tmp_path):
  config = load("default", steps=150, eval_every=150, checkpoint_every=0,
                **{"optimizer.warmup_steps": 15})
  result = train_lib.train(config, str(tmp_path))
  vocab = 80  # characters of the embedded corpus (see test_data)
  loss = result.eval_metrics["eval/loss"]
  assert loss < 0.6 * math.log(vocab), loss  # ln(80) = 4.38; uniform guessing
  assert result.eval_metrics["eval/accuracy"] > 0.3
  metrics = read_metrics(tmp_path)
  assert {"train/loss", "eval/loss", "eval/accuracy"} <= set(metrics[150])
  assert metrics[150]["train/loss"] < metrics[10]["train/loss"]


def test_kill_and_resume_is_bitwise_identical(tmp_path, tiny):
  config = tiny(steps=12, checkpoint_every=4, eval_every=6)
  whole = train_lib.train(config, str(tmp_path / "whole"))
  first = train_lib.train(config, str(tmp_path / "split"), stop_at=6)
  assert first.step == 6
  second = train_lib.train(config, str(tmp_path / "split"))
  assert second.step == 12

  _assert_trees_bitwise_equal(whole.state, second.state)
  a, b = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
  assert sorted(a) == sorted(b) == list(range(0, 13))
  for step in range(1, 13):
    assert a[step]["train/loss"] == b[step]["train/loss"], step
  assert whole.eval_metrics == second.eval_metrics
  # Same data order: the saved iterator positions agree too.
  data_state = lambda run: (tmp_path / run / "checkpoints/12/data/process_0-of-1.json"
                            ).read_text()
  assert data_state("whole") == data_state("split")


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, tiny, caplog):
  config = tiny(steps=10, checkpoint_every=5)
  reference = train_lib.train(config, str(tmp_path / "ref"))
  workdir = tmp_path / "run"
  train_lib.train(config, str(workdir), stop_at=10)
  ckpts = workdir / "checkpoints"
  assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["10", "5"]
  for f in (ckpts / "10" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    resumed = train_lib.train(config, str(workdir))
  assert "checkpoint step 10 is unreadable" in caplog.text
  assert any(p.name.startswith("10.unreadable") for p in ckpts.iterdir())
  # Resumed from step 5 and redid 6..10 exactly as the uninterrupted run did.
  _assert_trees_bitwise_equal(reference.state.params, resumed.state.params)


def test_gradient_accumulation_matches_full_batch(tiny):
  config = tiny()
  mesh = sharding_lib.make_mesh(config.mesh)
  model_cfg = train_lib.model_config(config, 80)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  schedule = optimizers.make_schedule(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 80, (8, 33)).astype(np.int32)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  results = []
  for accum in (1, 4):
    state = ts.create_state(spec, model_cfg, tx, seed=0)
    step = ts.jit_train_step(spec, tx, mesh, accum, schedule)
    results.append(step(state, batch))
  (s1, m1), (s4, m4) = results
  np.testing.assert_allclose(m1["train/loss"], m4["train/loss"], rtol=1e-6)
  for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_nonfinite_update_is_skipped_and_counted(tiny):
  config = tiny()
  mesh = sharding_lib.make_mesh(config.mesh)
  model_cfg = train_lib.model_config(config, 80)
  tx = optimizers.build_optimizer(config.optimizer, config.steps)
  spec = ts.state_spec(model_cfg, tx, mesh)
  state = ts.create_state(spec, model_cfg, tx, seed=0)
  params = dict(state.params, final_norm=state.params["final_norm"].at[0].set(jnp.inf))
  state = state._replace(params=params)
  before = jax.device_get(state)
  batch = {"inputs": jnp.zeros((8, 32), jnp.int32), "targets": jnp.ones((8, 32), jnp.int32)}
  step = ts.jit_train_step(spec, tx, mesh, 1, optimizers.make_schedule(config.optimizer, 20))
  after, metrics = step(state, batch)
  assert not np.isfinite(metrics["train/loss"])
  assert int(metrics["train/update_skipped"]) == 1
  _assert_trees_bitwise_equal(before.params, after.params)
  _assert_trees_bitwise_equal(before.opt_state, after.opt_state)
  assert (int(after.step), int(after.nonfinite_in_a_row), int(after.nonfinite_total)) == (1, 1, 1)


def test_run_stops_after_n_nonfinite_steps_in_a_row(tmp_path, tiny):
  config = tiny(max_nonfinite_in_a_row=3, **{"model.init_std": float("nan")})
  with pytest.raises(FloatingPointError, match="3 non-finite"):
    train_lib.train(config, str(tmp_path))
  metrics = read_metrics(tmp_path)
  assert max(metrics) == 2
  assert all(metrics[s]["train/update_skipped"] == 1 for s in (1, 2))


BAD_CONFIGS = [
    ({"optimizer.name": "sgdx"}, 1, "optimizer.name='sgdx'"),
    ({"data.source": "wiki"}, 1, "data.source='wiki'"),
    ({"batch_size": 6}, 4, "batch_size=6 is not divisible by the data-parallel size 4"),
    ({"mesh.fsdp": 16}, 8, "needs 16 devices but only 8"),
    ({"data.source": "text", "data.text_files": "/nonexistent/*.txt"}, 1,
     "data.text_files='/nonexistent/\\*.txt' matches no files"),
    ({"seq_len": 128}, 1, "seq_len=128 exceeds model.max_seq_len=64"),
    ({"steps": 0}, 1, "steps=0 must be a positive integer"),
    ({"steps": -5}, 1, "steps=-5 must be a positive integer"),
    ({"optimizer.learning_rate": 0.0}, 1, "optimizer.learning_rate=0.0 must be > 0"),
    ({"optimizer.learning_rate": -1e-3}, 1, "optimizer.learning_rate=-0.001 must be > 0"),
]


@pytest.mark.parametrize("overrides,devices,message", BAD_CONFIGS)
def test_bad_config_is_rejected_with_a_clear_message(tiny, overrides, devices, message):
  with pytest.raises(ValueError, match=message):
    train_lib.validate_config(tiny(**overrides), num_devices=devices)


def test_bad_config_fails_before_anything_is_compiled(tmp_path, tiny, monkeypatch):
  def no_compiling(*args, **kwargs):
    raise AssertionError("jax.jit was reached before the config was validated")
  monkeypatch.setattr(jax, "jit", no_compiling)
  with pytest.raises(ValueError, match="optimizer.name"):
    train_lib.train(tiny(**{"optimizer.name": "nope"}), str(tmp_path))
  with pytest.raises(ValueError, match="mesh"):
    train_lib.train(tiny(**{"mesh.fsdp": 2}), str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_metrics_jsonl_and_tensorboard_are_written(tmp_path, tiny):
  train_lib.train(tiny(steps=4, eval_every=2), str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [0, 1, 2, 3, 4]
  assert lines[0]["optimizer_state_bytes"] == 4 + 2 * 4 * lines[0]["params"] + 4
  lines = lines[1:]
  assert all("train/loss" in l for l in lines)
  assert "eval/loss" in lines[1] and "eval/accuracy" in lines[3]
  assert "perf/model_gflops_per_second" in lines[2]
  assert list(pathlib.Path(tmp_path / "tensorboard").glob("events.out.tfevents.*"))
