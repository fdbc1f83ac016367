"""Shared helpers: config loading and running Python in a fresh process."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from alphadecay_jax import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name: str, **overrides):
  """configs/<name>.py with quiet defaults for tests, then dotted-key overrides."""
  config = train_lib.load_config(str(ROOT / "configs" / f"{name}.py"))
  config.progress_bar = False
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def run_python(code: str, *, devices: int = 1, timeout: int = 600,
               env: dict | None = None) -> dict:
  """Runs `code` in a new interpreter with `devices` simulated CPU devices.

  The code must print one JSON object as its last stdout line; that object is returned.
  """
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu",
              "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
              **(env or {})}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=timeout, env=full_env, cwd=ROOT)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def read_metrics(workdir) -> dict[int, dict]:
  """metrics.jsonl as {step: record}; a later record for a step wins (resumed runs)."""
  out = {}
  for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    out.setdefault(record["step"], {}).update(record)
  return out


@pytest.fixture
def tiny():
  return lambda **overrides: load("tiny", **overrides)
