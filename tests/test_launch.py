"""launch/: the scripts refuse incomplete settings and print the exact commands; the
SLURM wiring gives each task its rank; ahead-of-time compilation for a Cloud TPU slice."""

import importlib.util
import json
import os
import shlex
import stat
import subprocess
import sys

import pytest

from conftest import ROOT


def _bash(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, env={**os.environ, **(env or {})})


def _commands(stdout: str) -> list[list[str]]:
  """The '+ ' lines a script printed, split back into argument vectors."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


# ------------------------------------------------------------------------ tpu_pod.sh

_POD = ["launch/tpu_pod.sh", "--dry-run"]
_SETTINGS = ["--project", "my-proj", "--zone", "us-west4-a"]


@pytest.mark.parametrize("args, missing", [
    (["up", "--zone", "z", "--accelerator", "v5litepod-16", "--bucket", "gs://b",
      "--", "--config", "c.py"], "--project/PROJECT"),
    (["create", "--project", "p"], "--zone/ZONE"),
    (["create", *_SETTINGS], "--accelerator/ACCELERATOR_TYPE"),
    (["run", *_SETTINGS, "--", "--config", "c.py"], "--bucket/BUCKET"),
    (["run", *_SETTINGS, "--bucket", "gs://b"], "at least --config"),
    (["run", *_SETTINGS, "--bucket", "gs://b", "--", "--config", "c.py", "--workdir", "/x"],
     "do not pass --workdir"),
    ([*_SETTINGS], "no ACTION"),
])
def test_tpu_pod_refuses_missing_settings(args, missing):
  result = _bash(*_POD, *args, env={"PROJECT": "", "ZONE": "", "BUCKET": "",
                                     "ACCELERATOR_TYPE": ""})
  assert result.returncode == 2
  assert missing in result.stderr
  assert "gcloud" not in result.stdout


def test_tpu_pod_dry_run_prints_the_exact_gcloud_commands():
  spm = "/home/o'neil/t5 vocab.model"  # a quote and a space survive the quoting
  result = _bash(*_POD, "up", *_SETTINGS, "--accelerator", "v5litepod-16", "--bucket",
                 "gs://my-bucket", "--name", "pod1", "--", "--config", "configs/llama_1b.py",
                 f"--config.data.sentencepiece_model={spm}")
  assert result.returncode == 0, result.stderr
  create, archive, scp, install, run, logs = _commands(result.stdout)
  where = ["--project=my-proj", "--zone=us-west4-a"]
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1", *where,
                    "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite"]
  assert archive[:2] == ["git", "-C"] and archive[3] == "archive"
  assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive[-2]]
  assert scp[6:] == ["pod1:~/alphadecay_jax.tar.gz", *where, "--worker=all"]
  for ssh in (install, run):
    assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1", *where]
    assert ssh[8] == "--worker=all"
  assert 'pip install -q -r requirements.txt -e ".[tpu]"' in install[9]
  remote = run[9].removeprefix("--command=")
  assert "gcsfuse --implicit-dirs my-bucket ~/bucket" in remote
  # The trainer command every worker runs, as the remote shell will split it.
  train = shlex.split(remote.split("setsid nohup ", 1)[1].split(" > ", 1)[0])
  assert train == ["~/venv/bin/python", "-m", "alphadecay_jax.train", "--config",
                   "configs/llama_1b.py", f"--config.data.sentencepiece_model={spm}",
                   "--workdir", "~/bucket/llama_1b"]
  assert "ALPHADECAY_DISTRIBUTED=auto" in remote
  assert logs[8:] == ["--worker=0", "--command=tail -n +1 -F ~/alphadecay_train.log"]


def test_tpu_pod_stop_and_delete():
  stop = _commands(_bash(*_POD, "stop", *_SETTINGS).stdout)
  assert len(stop) == 1 and "kill -TERM $(cat ~/alphadecay_train.pid)" in stop[0][-1]
  delete = _commands(_bash(*_POD, "delete", *_SETTINGS, "--name", "pod1").stdout)
  assert delete == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod1",
                     "--project=my-proj", "--zone=us-west4-a", "--quiet"]]


# ------------------------------------------------------------------ gpu_slurm.sbatch

def _fake_slurm(tmp_path):
  """`srun` that runs the task command twice (SLURM_PROCID 0, 1), and a `python` that
  prints what it was started with: the wiring is checked without a cluster."""
  bin_dir, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
  bin_dir.mkdir()
  venv.mkdir(parents=True)
  (bin_dir / "srun").write_text(
      "#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\n"
      "for i in 0 1; do SLURM_NTASKS=2 SLURM_PROCID=$i \"$@\" || exit $?; done\n")
  (venv / "python").write_text(
      "#!/usr/bin/env bash\necho \"TASK $JAX_PROCESS_ID/$JAX_NUM_PROCESSES "
      "$JAX_COORDINATOR_ADDRESS $*\"\n")
  for f in (bin_dir / "srun", venv / "python"):
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "VENV": str(tmp_path / "venv"),
          "CONFIG": "configs/tiny.py", "WORKDIR": str(tmp_path / "run"),
          "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[003-004,007],cpu1",
          "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2"}


def test_slurm_script_gives_each_task_its_rank_and_the_first_node(tmp_path):
  env = _fake_slurm(tmp_path)
  result = _bash("launch/gpu_slurm.sbatch", "--config.steps=10", env=env)
  assert result.returncode == 0, result.stderr
  tasks = [l.split() for l in result.stdout.splitlines() if l.startswith("TASK")]
  coordinator = f"gpu003:{12000 + 4242 % 20000}"
  assert [t[1:3] for t in tasks] == [["0/2", coordinator], ["1/2", coordinator]]
  assert tasks[0][3:] == ["-m", "alphadecay_jax.train", "--config", "configs/tiny.py",
                          "--workdir", env["WORKDIR"], "--config.progress_bar=False",
                          "--config.steps=10"]
  dry = _bash("launch/gpu_slurm.sbatch", env={**env, "DRY_RUN": "1"})
  assert dry.returncode == 0 and "+ srun" in dry.stdout
  assert not [l for l in dry.stdout.splitlines() if l.startswith("TASK")]
  # The printed srun line is the command that ran (it splits back into the same words).
  srun = _commands(dry.stdout)[0]
  assert srun[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks=2", f"--chdir={ROOT}"]
  assert srun[4:6] == ["bash", "-c"] and srun[7] == coordinator
  assert srun[8:] == [f"{env['VENV']}/bin/python", *tasks[0][3:-1]]


@pytest.mark.parametrize("drop, message", [
    ("CONFIG", "set CONFIG"), ("VENV", "set VENV"), ("SLURM_JOB_ID", "not inside a SLURM job")])
def test_slurm_script_refuses_missing_settings(tmp_path, drop, message):
  env = {**_fake_slurm(tmp_path), drop: ""}
  result = _bash("launch/gpu_slurm.sbatch", env=env)
  assert result.returncode == 2 and message in result.stderr
  assert not [l for l in result.stdout.splitlines() if l.startswith("TASK")]


# -------------------------------------------------------------- local_multiprocess.sh

def test_local_multiprocess_dry_run_and_refusals():
  ok = _bash("launch/local_multiprocess.sh", "--num_processes", "3", "--port", "4567",
             "--dry-run", "--", "--config", "configs/tiny.py", "--workdir", "/tmp/x")
  assert ok.returncode == 0, ok.stderr
  lines = [l.strip() for l in ok.stdout.splitlines() if l.strip().startswith("[p")]
  assert len(lines) == 3
  for i, line in enumerate(lines):
    assert (f"JAX_COORDINATOR_ADDRESS=127.0.0.1:4567 JAX_NUM_PROCESSES=3 JAX_PROCESS_ID={i} "
            in line)
  for args, message in [(["--", "--config", "c"], "--num_processes"),
                        (["--num_processes", "2", "--", "--config", "c"], "--workdir"),
                        (["--num_processes", "2", "--", "--workdir", "w"], "--config")]:
    bad = _bash("launch/local_multiprocess.sh", *args)
    assert bad.returncode == 2 and message in bad.stderr


# ------------------------------------------------------------------- aot_compile.py

def _aot_module():
  spec = importlib.util.spec_from_file_location("aot_compile", ROOT / "launch" / "aot_compile.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _aot(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "launch/aot_compile.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_aot_report_verdicts():
  aot = _aot_module()
  base = dict(config="c.py", topology="v5e:2x2", device_kind="TPU v5 lite", chips=4,
              hosts=1, mesh={"fsdp": 4}, batch_size=8, seq_len=32, grad_accum_steps=1,
              compute_dtype="float32", remat="none", optimizer="adamw", param_count=10,
              state_bytes_total=1, argument_bytes_per_chip=3 * 2**30,
              output_bytes_per_chip=3 * 2**30, alias_bytes_per_chip=3 * 2**30,
              temp_bytes_per_chip=12 * 2**30, peak_bytes_per_chip=15 * 2**30,
              hbm_bytes_per_chip=16 * 2**30, xla_cost_analysis_flops_per_chip=1e9,
              flops_per_step_per_chip=2e9, flops_per_step_slice=8e9,
              analytic_flops_per_step_slice=8e9, program_over_analytic=1.0,
              min_step_seconds_at_peak=1e-5, lower_seconds=1, compile_seconds=1)
  fits = aot.format_report({**base, "fits": True, "hbm_margin_fraction": 1 / 16})
  assert "15.00 GiB of 16.00 GiB HBM -> FITS (+6.2% headroom)" in fits
  tight = aot.format_report({**base, "fits": True, "hbm_margin_fraction": 0.01})
  assert "FITS (tight)" in tight
  over = aot.format_report({**base, "fits": False, "hbm_margin_fraction": -0.5})
  assert "DOES NOT FIT" in over


def test_aot_refuses_bad_arguments():
  bad_topology = _aot("--config", "configs/tiny.py", "--topology", "v9x:2x2")
  assert bad_topology.returncode == 2 and "--topology" in bad_topology.stderr
  bad_key = _aot("--config", "configs/tiny.py", "--topology", "v5e:2x2", "--set", "modl.x=1")
  assert bad_key.returncode == 2 and "no key 'modl'" in bad_key.stderr


@pytest.mark.slow
def test_aot_compile_tiny_for_v5e_2x2():
  pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu wheel) is not installed")
  result = _aot("--config", "configs/tiny.py", "--topology", "v5e:2x2", "--json",
                "--set", "model.n_layers=1", "--set", "model.d_model=128",
                "--set", "model.d_ff=512", "--set", "seq_len=64", "--set", "batch_size=16")
  assert result.returncode == 0, result.stderr[-3000:]
  r = json.loads(result.stdout.strip().splitlines()[-1])
  assert (r["chips"], r["hosts"], r["device_kind"]) == (4, 1, "TPU v5 lite")
  assert r["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert r["hbm_bytes_per_chip"] == 16 * 2**30 and r["fits"] is True
  # FSDP: each chip holds a quarter of the float32 state (embeddings and norms that 4
  # does not divide stay whole), and the donated state is aliased to the outputs.
  assert r["state_bytes_total"] / 4 <= r["argument_bytes_per_chip"] <= r["state_bytes_total"] / 2
  assert r["alias_bytes_per_chip"] >= 0.9 * r["output_bytes_per_chip"]
  assert r["peak_bytes_per_chip"] == (r["argument_bytes_per_chip"] + r["output_bytes_per_chip"]
                                      - r["alias_bytes_per_chip"] + r["temp_bytes_per_chip"])
  # With one layer the scan runs once, so XLA's own count is the whole step: the
  # program's matmul FLOPs must agree with it (elementwise work is the difference).
  assert r["flops_per_step_per_chip"] == pytest.approx(
      r["xla_cost_analysis_flops_per_chip"], rel=0.10)
  assert r["program_over_analytic"] == pytest.approx(1.0, rel=0.10)


def test_matmul_flops_counts_scan_trip_counts():
  import jax
  import jax.numpy as jnp
  aot = _aot_module()
  w = jnp.ones((5, 8, 8))

  def f(x):
    y, _ = jax.lax.scan(lambda c, wi: (c @ wi, None), x, w)
    return jax.lax.cond(y.sum() > 0, lambda: y @ w[0], lambda: y) @ jnp.ones((8, 3))

  flops = aot.matmul_flops(jax.make_jaxpr(f)(jnp.ones((4, 8))).jaxpr)
  assert flops == 5 * 2 * 4 * 8 * 8 + 2 * 4 * 8 * 8 + 2 * 4 * 8 * 3
