"""Multi-process JAX: environment detection, and 2 local CPU processes (gloo) that train,
checkpoint and resume exactly like a single process with the same global batch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alphadecay_jax import distributed
from conftest import ROOT, read_metrics, run_python

# ---------------------------------------------------------------- detection (no JAX)

_SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[003-004]",
          "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}


def test_no_settings_means_one_process():
  assert distributed.detect({}) is None
  assert distributed.detect({"PATH": "/bin", "TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert distributed.detect({**_SLURM, "SLURM_NTASKS": "1"}) is None
  assert distributed.detect({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1",
                             "JAX_PROCESS_ID": "0"}) is None


def test_explicit_coordinator():
  plan = distributed.detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234",
                             "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
  assert plan.kind == "explicit"
  assert plan.kwargs == dict(coordinator_address="10.0.0.2:1234", num_processes=4,
                             process_id=3)


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_PROCESS_ID"),
    ({"JAX_COORDINATOR_ADDRESS": "h", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"\[0, 2\)"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "must be an integer"),
    ({"ALPHADECAY_DISTRIBUTED": "yes"}, "ALPHADECAY_DISTRIBUTED"),
])
def test_incomplete_or_bad_settings_name_the_variable(env, message):
  with pytest.raises(ValueError, match=message):
    distributed.detect(env)


def test_slurm_tpu_and_overrides():
  slurm = distributed.detect(_SLURM)
  assert slurm.kind == "slurm" and slurm.kwargs == {}  # JAX reads SLURM_* itself
  assert "task 9 of 16" in slurm.reason
  override = distributed.detect({**_SLURM, "JAX_COORDINATOR_ADDRESS": "gpu003:5000"})
  assert override.kind == "slurm"
  assert override.kwargs == {"coordinator_address": "gpu003:5000"}
  tpu = distributed.detect({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"})
  assert tpu.kind == "tpu" and tpu.kwargs == {}
  assert distributed.detect({"MEGASCALE_COORDINATOR_ADDRESS": "10.1.0.2"}).kind == "tpu"
  assert distributed.detect({"ALPHADECAY_DISTRIBUTED": "auto"}).kind == "auto"
  assert distributed.detect({**_SLURM, "ALPHADECAY_DISTRIBUTED": "off"}) is None


# ---------------------------------------------------------------- two real processes

STEPS, STOP_AT, DEVICES_PER_PROCESS = 8, 4, 2
_FLAGS = [f"--config.steps={STEPS}", f"--config.checkpoint_every={STOP_AT}",
          f"--config.eval_every={STOP_AT}", "--config.progress_bar=False"]

# Phase 1 stops early (as a preemption would) through train(stop_at=...), which the
# command line does not expose; it joins the job through the same distributed.initialize.
_STOP_EARLY = """
import json, sys
sys.path.insert(0, "tests")
from alphadecay_jax import distributed
plan = distributed.initialize()
import jax
from conftest import load
from alphadecay_jax import train as train_lib
config = load("tiny", steps={steps}, checkpoint_every={stop}, eval_every={stop})
result = train_lib.train(config, {workdir!r}, stop_at={stop})
print(json.dumps(dict(kind=plan.kind, process=jax.process_index(), count=jax.process_count(),
                      local=jax.local_device_count(), devices=jax.device_count(),
                      step=result.step,
                      mesh_devices=len(result.state.params["embed"].sharding.device_set))))
"""


def _run_two_processes(args: list[str], *, env: dict | None = None,
                       timeout: int = 400) -> list[subprocess.CompletedProcess]:
  """Starts both processes at once (a lone one would wait for its peer forever)."""
  port = _free_port()
  procs = []
  for pid in range(2):
    full_env = {**os.environ, **(env or {}), "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid)}
    procs.append(subprocess.Popen(args, cwd=ROOT, env=full_env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  results = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=timeout)
      results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  for i, r in enumerate(results):
    assert r.returncode == 0, f"process {i} failed:\n{r.stderr[-4000:]}"
  return results


def _free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_and_match_one_process(tmp_path):
  workdir = tmp_path / "two"
  # Phase 1: 2 processes x 2 CPU devices = one 4-device FSDP mesh; stop at step 4.
  first = _run_two_processes([sys.executable, "-c", _STOP_EARLY.format(
      steps=STEPS, stop=STOP_AT, workdir=str(workdir))])
  reports = [json.loads(r.stdout.strip().splitlines()[-1]) for r in first]
  for i, report in enumerate(reports):
    assert report == dict(kind="explicit", process=i, count=2, local=2, devices=4,
                          step=STOP_AT, mesh_devices=4)
  ckpt = workdir / "checkpoints" / str(STOP_AT)
  assert sorted(p.name for p in (ckpt / "data").glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert {json.loads((ckpt / "data" / f"process_{i}-of-2.json").read_text())["next_index"]
          for i in range(2)} == {STOP_AT}

  # Phase 2: the launcher and the command line (train.main -> distributed.initialize)
  # resume from the step-4 checkpoint and finish.
  launcher = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "--num_processes", "2",
       "--devices_per_process", str(DEVICES_PER_PROCESS), "--python", sys.executable,
       "--", "--config", "configs/tiny.py", f"--workdir={workdir}", *_FLAGS],
      cwd=ROOT, capture_output=True, text=True, timeout=400)
  assert launcher.returncode == 0, launcher.stderr[-4000:]
  assert f"[p0] resumed at step {STOP_AT}/{STEPS}" in launcher.stdout
  assert "[p1] final step" not in launcher.stdout  # only process 0 reports
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()
                if p.name.isdigit()) == [STOP_AT, STEPS]

  # Metrics come from process 0 alone: one train/loss record per step across both phases.
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert sorted(r["step"] for r in lines if "train/loss" in r) == list(range(1, STEPS + 1))
  two = read_metrics(workdir)

  # References: one process, the same global batch, on the same 4-device mesh and on 1 device.
  ref = run_python(f"""
import json, sys
sys.path.insert(0, "tests")
from conftest import load, read_metrics
from alphadecay_jax import train as train_lib
out = {{}}
for name, fsdp in (("four", 4), ("one", 1)):
  config = load("tiny", steps={STEPS}, checkpoint_every={STOP_AT}, eval_every={STOP_AT})
  config.mesh.update(data=1, fsdp=fsdp, tensor=1)
  train_lib.train(config, {str(tmp_path)!r} + "/" + name)
  m = read_metrics({str(tmp_path)!r} + "/" + name)
  out[name] = dict(loss=[m[s]["train/loss"] for s in range(1, {STEPS} + 1)],
                   eval=[m[s]["eval/loss"] for s in ({STOP_AT}, {STEPS})])
print(json.dumps(out))
""", devices=4)
  loss = [two[s]["train/loss"] for s in range(1, STEPS + 1)]
  evals = [two[s]["eval/loss"] for s in (STOP_AT, STEPS)]
  for name in ("four", "one"):
    rel = np.abs(np.subtract(loss, ref[name]["loss"])) / np.abs(ref[name]["loss"])
    print(f"2 processes vs 1 process on {name} device(s): max relative loss difference "
          f"{rel.max():.2e}")
  # Same mesh, same program: only the cross-process all-reduce (gloo) differs from the
  # in-process one, i.e. float32 summation order: measured 1e-7 (1 ulp), allowed 1e-6.
  np.testing.assert_allclose(loss, ref["four"]["loss"], rtol=1e-6, atol=0)
  np.testing.assert_allclose(evals, ref["four"]["eval"], rtol=1e-6, atol=0)
  # Against one device the sharded reductions regroup the sums (as in test_multidevice).
  np.testing.assert_allclose(loss, ref["one"]["loss"], rtol=1e-5, atol=0)
  np.testing.assert_allclose(evals, ref["one"]["eval"], rtol=1e-5, atol=0)
  # The run learns, so equal losses are not equal by accident of a constant.
  assert loss[-1] < loss[0] - 0.2
