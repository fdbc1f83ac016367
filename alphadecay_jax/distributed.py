"""Joins a multi-process JAX job when the environment says this is one of several processes.

`initialize()` must run before anything touches a JAX device (`train.main` calls it
first). It decides from environment variables alone, first match wins:

1. `ALPHADECAY_DISTRIBUTED=off` never initialises; `=auto` always calls
   `jax.distributed.initialize()` and lets JAX detect the cluster (Cloud TPU metadata
   server, SLURM, Open MPI). `launch/tpu_pod.sh` sets `auto` on every TPU VM worker.
2. Explicit coordinator (what `launch/local_multiprocess.sh` sets):
   `JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, and
   optionally `JAX_LOCAL_DEVICE_IDS=0,1`. `JAX_NUM_PROCESSES=1` means one process.
3. SLURM with more than one task (`SLURM_NTASKS > 1` inside `srun`): JAX takes the
   process id from `SLURM_PROCID` and the coordinator from the first node of
   `SLURM_STEP_NODELIST` (`JAX_COORDINATOR_ADDRESS` overrides it).
4. Cloud TPU on GKE / multislice: `TPU_WORKER_HOSTNAMES` or `TPU_PROCESS_ADDRESSES`
   listing more than one host, or `MEGASCALE_COORDINATOR_ADDRESS`.

Otherwise the run is single-process and nothing is called. For several processes on
one CPU machine, cross-process collectives use gloo (`jax_cpu_collectives_implementation`,
unless `JAX_CPU_COLLECTIVES_IMPLEMENTATION` chooses otherwise).

Once initialised, `jax.devices()` lists every process's devices, so
`sharding.make_mesh` builds one global mesh; each process reads only its rows of each
global batch (`data.make_train_iterator(process_index=...)`), metrics are written by
process 0 and Orbax coordinates checkpoint writes across processes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

log = logging.getLogger(__name__)

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the job: `kind` names the environment that asked for it,
  `kwargs` go to `jax.distributed.initialize` (empty: JAX detects the rest)."""
  kind: str                       # 'explicit' | 'slurm' | 'tpu' | 'auto'
  kwargs: dict[str, Any]
  reason: str


def _int_var(environ: Mapping[str, str], name: str) -> int:
  value = environ[name]
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} must be an integer") from None


def _host_count(value: str | None) -> int:
  return len([h for h in (value or "").split(",") if h.strip()])


def detect(environ: Mapping[str, str] | None = None) -> Plan | None:
  """The multi-process plan the environment asks for, or None for a single process.

  Pure: reads only `environ` (default `os.environ`), imports nothing from JAX.
  Raises ValueError naming the variable when the settings are incomplete or invalid.
  """
  env = os.environ if environ is None else environ
  mode = env.get("ALPHADECAY_DISTRIBUTED", "").strip().lower()
  if mode not in ("", "off", "auto"):
    raise ValueError(f"ALPHADECAY_DISTRIBUTED={mode!r} must be 'off', 'auto' or unset")
  if mode == "off":
    return None
  if mode == "auto":
    return Plan("auto", {}, "ALPHADECAY_DISTRIBUTED=auto")

  coordinator = env.get("JAX_COORDINATOR_ADDRESS", "").strip()
  explicit = [n for n in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if n in env]
  slurm = all(n in env for n in _SLURM_VARS) and _int_var(env, "SLURM_NTASKS") > 1
  if explicit or (coordinator and not slurm):
    missing = [n for n in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                           "JAX_PROCESS_ID") if not env.get(n, "").strip()]
    if missing:
      raise ValueError(f"explicit multi-process settings are incomplete: {missing} "
                       "unset (set all of JAX_COORDINATOR_ADDRESS=host:port, "
                       "JAX_NUM_PROCESSES and JAX_PROCESS_ID, or none)")
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
      raise ValueError(f"JAX_COORDINATOR_ADDRESS={coordinator!r} must be host:port")
    num, pid = _int_var(env, "JAX_NUM_PROCESSES"), _int_var(env, "JAX_PROCESS_ID")
    if num < 1:
      raise ValueError(f"JAX_NUM_PROCESSES={num} must be >= 1")
    if not 0 <= pid < num:
      raise ValueError(f"JAX_PROCESS_ID={pid} must be in [0, {num})")
    if num == 1:
      return None
    return Plan("explicit", dict(coordinator_address=coordinator, num_processes=num,
                                 process_id=pid),
                f"JAX_COORDINATOR_ADDRESS={coordinator}, process {pid} of {num}")

  if slurm:
    kwargs = {"coordinator_address": coordinator} if coordinator else {}
    return Plan("slurm", kwargs,
                f"SLURM job {env['SLURM_JOB_ID']}: task {env['SLURM_PROCID']} of "
                f"{env['SLURM_NTASKS']}")

  hosts = max(_host_count(env.get("TPU_WORKER_HOSTNAMES")),
              _host_count(env.get("TPU_PROCESS_ADDRESSES")))
  if hosts > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return Plan("tpu", {}, f"Cloud TPU with {hosts or 'multislice'} hosts")
  return None


def initialize(environ: Mapping[str, str] | None = None) -> Plan | None:
  """Calls `jax.distributed.initialize` if `detect` asks for it (idempotent).

  Returns the plan that was applied, or None when the run stays single-process or
  the distributed system was already up.
  """
  import jax  # deferred: `detect` must stay importable without touching JAX

  plan = detect(environ)
  if plan is None or jax.distributed.is_initialized():
    return None
  env = os.environ if environ is None else environ
  if not env.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  log.info("joining a multi-process JAX job (%s)", plan.reason)
  jax.distributed.initialize(**plan.kwargs)
  log.info("process %d of %d; %d local / %d global devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
  return plan


def describe() -> str:
  """One line: process index/count and device counts (for logs)."""
  import jax
  return (f"process {jax.process_index()}/{jax.process_count()}, "
          f"{jax.local_device_count()} local of {jax.device_count()} devices "
          f"({jax.default_backend()})")
