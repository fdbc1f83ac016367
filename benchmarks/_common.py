"""Helpers shared by the benchmark scripts: config loading, machine info, timing.

Nothing here imports jax at module level, so a script can set XLA_FLAGS /
JAX_PLATFORMS in os.environ before jax is first imported.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as `python benchmarks/x.py` from anywhere
  sys.path.insert(0, REPO_ROOT)


def config_path(name_or_path: str) -> str:
  """'cpu_10m', 'configs/cpu_10m.py' or an absolute path -> an existing file path."""
  candidates = [name_or_path,
                os.path.join(REPO_ROOT, name_or_path),
                os.path.join(REPO_ROOT, "configs", name_or_path),
                os.path.join(REPO_ROOT, "configs", name_or_path + ".py")]
  for path in candidates:
    if os.path.isfile(path):
      return os.path.abspath(path)
  raise FileNotFoundError(f"no config file for {name_or_path!r}; tried {candidates}")


def load_config(name_or_path: str) -> Any:
  """Imports a config file and returns its `get_config()`."""
  path = config_path(name_or_path)
  module_name = "_bench_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def config_label(name_or_path: str) -> str:
  return os.path.splitext(os.path.basename(config_path(name_or_path)))[0]


def machine_info() -> dict[str, Any]:
  import jax  # deferred on purpose (see module docstring)
  import jaxlib
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else None,
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "backend": jax.default_backend(),
      "device_count": jax.device_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  """(result of fn(), wall seconds)."""
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def median(values: list[float]) -> float:
  return float(statistics.median(values))


def log(message: str) -> None:
  """Progress goes to stderr: stdout carries only the one JSON line."""
  print(message, file=sys.stderr, flush=True)


class CpuMonitor:
  """How much of the machine's CPU other processes used during a timed window.

  Benchmarks here share a small machine; a busy neighbour halves a 2-core rate.
  `foreign_fraction` = (all busy CPU time - this process's CPU time) / (wall x cores),
  from /proc/stat and os.times(); None where /proc/stat is unavailable.
  """

  def __init__(self):
    self._start = self._sample()

  @staticmethod
  def _sample() -> tuple[float, float, float] | None:
    try:
      with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system

  def stop(self) -> dict[str, float | None]:
    end = self._sample()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if self._start is None or end is None:
      return {"foreign_cpu_fraction": None, "loadavg_1min": load}
    wall = end[0] - self._start[0]
    foreign = (end[1] - self._start[1]) - (end[2] - self._start[2])
    cores = os.cpu_count() or 1  # /proc/stat counts every core of the machine
    return {"foreign_cpu_fraction": round(max(0.0, foreign) / (wall * cores), 3),
            "loadavg_1min": round(load, 2) if load is not None else None}
