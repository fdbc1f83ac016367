"""Sharded training on simulated CPU devices and real preemption (each test in a fresh process)."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, read_metrics, run_python

pytestmark = pytest.mark.slow

_PRELUDE = """
import json, sys
sys.path.insert(0, "tests")
import jax
from conftest import load, read_metrics
from alphadecay_jax import train as train_lib
"""


def test_eight_devices_match_one_device_and_state_is_sharded(tmp_path):
  out = run_python(_PRELUDE + f"""
tmp = {str(tmp_path)!r}
losses, specs = {{}}, {{}}
for name, mesh in [("one", dict(data=1, fsdp=1, tensor=1)),
                   ("fsdp8", dict(data=1, fsdp=8, tensor=1)),
                   ("mixed", dict(data=2, fsdp=2, tensor=2))]:
  config = load("tiny", steps=6, eval_every=3, checkpoint_every=0)
  config.mesh.update(mesh)
  result = train_lib.train(config, f"{{tmp}}/{{name}}")
  metrics = read_metrics(f"{{tmp}}/{{name}}")
  losses[name] = [metrics[s]["train/loss"] for s in sorted(metrics) if s > 0]
  losses[name + "_eval"] = result.eval_metrics["eval/loss"]
  state = result.state
  specs[name] = {{
      "devices": len(state.params["embed"].sharding.device_set),
      "embed": list(state.params["embed"].sharding.spec),
      "attn_q": list(state.params["blocks"]["attn_q"].sharding.spec),
      "mlp_down": list(state.params["blocks"]["mlp_down"].sharding.spec),
      "mu_attn_q": list(state.opt_state[1][0].mu["blocks"]["attn_q"].sharding.spec),
      "nu_mlp_up": list(state.opt_state[1][0].nu["blocks"]["mlp_up"].sharding.spec),
      "shard_shape_q": list(state.params["blocks"]["attn_q"].addressable_shards[0].data.shape),
  }}
print(json.dumps(dict(losses=losses, specs=specs)))
""", devices=8)
  losses, specs = out["losses"], out["specs"]
  for name in ("fsdp8", "mixed"):
    np.testing.assert_allclose(losses[name], losses["one"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses[name + "_eval"], losses["one_eval"], rtol=1e-5)
  assert specs["one"]["devices"] == 1
  fsdp = specs["fsdp8"]
  assert fsdp["devices"] == 8
  # FSDP shards the d_model ('embed') axis of every matrix, moments included.
  assert fsdp["embed"] == [None, "fsdp"]
  assert fsdp["attn_q"] == [None, "fsdp", None]
  assert fsdp["mlp_down"] == [None, None, "fsdp"]
  assert fsdp["mu_attn_q"] == fsdp["attn_q"] and fsdp["nu_mlp_up"] == [None, "fsdp", None]
  assert fsdp["shard_shape_q"] == [2, 32 // 8, 32]
  mixed = specs["mixed"]
  assert mixed["attn_q"] == [None, "fsdp", "tensor"]
  assert mixed["shard_shape_q"] == [2, 16, 16]


def test_checkpoint_written_on_8_devices_restores_on_4(tmp_path):
  workdir = str(tmp_path / "run")
  common = _PRELUDE + """
config = load("tiny", steps=8, checkpoint_every=4, eval_every=4)
"""
  first = run_python(common + f"""
result = train_lib.train(config, {workdir!r}, stop_at=4)
print(json.dumps(dict(step=result.step, devices=len(result.state.params["embed"].sharding.device_set))))
""", devices=8)
  assert first == {"step": 4, "devices": 8}
  second = run_python(common + f"""
result = train_lib.train(config, {workdir!r})
print(json.dumps(dict(step=result.step, eval=result.eval_metrics["eval/loss"],
                      devices=len(result.state.params["embed"].sharding.device_set))))
""", devices=4)
  assert second["step"] == 8 and second["devices"] == 4
  reference = run_python(common + f"""
result = train_lib.train(config, {str(tmp_path / "ref")!r})
print(json.dumps(dict(eval=result.eval_metrics["eval/loss"])))
""", devices=4)
  np.testing.assert_allclose(second["eval"], reference["eval"], rtol=1e-5)
  split, whole = read_metrics(workdir), read_metrics(tmp_path / "ref")
  np.testing.assert_allclose([split[s]["train/loss"] for s in range(1, 9)],
                             [whole[s]["train/loss"] for s in range(1, 9)], rtol=1e-5)


def test_sigterm_checkpoints_and_the_rerun_finishes_identically(tmp_path):
  """A real preemption: SIGTERM mid-run, then the same command again."""
  args = [sys.executable, "-m", "alphadecay_jax.train", "--config", "configs/tiny.py",
          "--config.steps=400", "--config.checkpoint_every=1000", "--config.eval_every=400",
          "--config.progress_bar=False"]
  run = lambda wd: subprocess.Popen(args + [f"--workdir={wd}"], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  victim = run(tmp_path / "killed")
  metrics = tmp_path / "killed" / "metrics.jsonl"
  deadline = time.time() + 120
  while time.time() < deadline and not (metrics.exists() and
                                        len(metrics.read_text().splitlines()) >= 5):
    time.sleep(0.2)
  victim.send_signal(signal.SIGTERM)
  _, err = victim.communicate(timeout=120)
  assert victim.returncode == 0, err[-3000:]
  saved = [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and 5 <= int(saved[0]) < 400, saved
  stopped_at = int(saved[0])

  for proc in (run(tmp_path / "killed"), run(tmp_path / "whole")):
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
  killed, whole = read_metrics(tmp_path / "killed"), read_metrics(tmp_path / "whole")
  assert sorted(killed) == sorted(whole) == list(range(0, 401))
  for step in range(1, 401):
    assert killed[step]["train/loss"] == whole[step]["train/loss"], (step, stopped_at)
  assert killed[400]["eval/loss"] == whole[400]["eval/loss"]
