r"""Runs every benchmark and writes benchmarks/RESULTS.md: one table of every figure.

  python benchmarks/run_all.py                       # everything (an hour or more on 2 cores)
  python benchmarks/run_all.py --only step_time,aot_tpu_v5e_4x4
  python benchmarks/run_all.py --list                # names and commands
  python benchmarks/run_all.py --render              # rebuild RESULTS.md, run nothing

Every `benchmarks/*.py` that prints one JSON line runs with its defaults (scripts that
need arguments are listed in NOT_RUN with the reason), plus the Cloud TPU AOT reports
of launch/aot_compile.py (skipped when the libtpu wheel is missing). Each finished
run's JSON line replaces that benchmark's entry in benchmarks/RESULTS.jsonl (with the
command, date, wall time and machine), so a partial run keeps the older entries and
every row of the table says when it was measured. A failed run is recorded as failed
(its old figures are kept and marked stale). The table flattens each JSON object to
dotted keys: numbers, booleans, short strings and short lists; long lists (curves),
partition-spec maps and the machine block (rendered once per machine) are left out.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JSONL = os.path.join(HERE, "RESULTS.jsonl")
MARKDOWN = os.path.join(HERE, "RESULTS.md")
NOT_RUN = {"plot_alphas": "plots a finished run's metrics (needs WORKDIR); no figures of its own"}
SKIP_KEYS = ("machine", "params_partition_specs", "specs")
MAX_LIST = 8
MAX_STRING = 80


def _aot(topology: str) -> list[str]:
  return [sys.executable, "launch/aot_compile.py", "--config", "configs/llama_1b.py",
          "--topology", topology, "--json"]


def benchmarks() -> dict[str, list[str]]:
  """name -> command (run from the repository root)."""
  out = {}
  for file in sorted(os.listdir(HERE)):
    name, ext = os.path.splitext(file)
    if ext == ".py" and not name.startswith("_") and name != "run_all" and name not in NOT_RUN:
      out[name] = [sys.executable, os.path.join("benchmarks", file)]
  out["aot_tpu_v5e_4x4"] = _aot("v5e:4x4")
  out["aot_tpu_v5p_2x2x2"] = _aot("v5p:2x2x2")
  return out


def machine() -> dict[str, Any]:
  return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "hostname": platform.node()}


def load_entries(path: str = JSONL) -> dict[str, dict]:
  entries = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          entry = json.loads(line)
          entries[entry["name"]] = entry
  return entries


def save_entries(entries: dict[str, dict], path: str = JSONL) -> None:
  with open(path + ".tmp", "w") as f:
    for name in sorted(entries):
      f.write(json.dumps(entries[name]) + "\n")
  os.replace(path + ".tmp", path)


def run_one(name: str, command: list[str], timeout: float) -> dict:
  """Runs one benchmark; its last stdout line must be a JSON object."""
  start = time.perf_counter()
  entry = {"name": name, "command": "python " + " ".join(command[1:]),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine()}
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  try:
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
      raise RuntimeError(f"exit status {proc.returncode}: {proc.stderr.strip()[-500:]}")
    entry["result"] = json.loads(lines[-1])
    entry["status"] = "ok"
  except (subprocess.TimeoutExpired, RuntimeError, json.JSONDecodeError) as err:
    entry["status"] = "failed"
    entry["error"] = f"{type(err).__name__}: {err}"[-800:]
  entry["seconds"] = round(time.perf_counter() - start, 1)
  return entry


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
  """(dotted key, value) rows of the figures worth a table cell."""
  if isinstance(value, dict):
    rows = []
    for key, item in value.items():
      if key in SKIP_KEYS or key.endswith("_specs"):
        continue
      rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
    return rows
  if isinstance(value, list):
    if len(value) <= MAX_LIST and all(isinstance(v, (int, float, str, bool)) or v is None
                                      for v in value):
      return [(prefix, value)]
    return []
  if isinstance(value, str) and len(value) > MAX_STRING:
    return []
  return [(prefix, value)]


def _cell(value: Any) -> str:
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, int):
    return f"{value:,}" if abs(value) >= 10_000 else str(value)
  if isinstance(value, float):
    if value != value:  # NaN
      return "nan"
    if value == 0 or 1e-3 <= abs(value) < 1e6:
      return f"{value:.4g}"
    return f"{value:.4e}"
  if isinstance(value, list):
    return "[" + ", ".join(_cell(v) for v in value) + "]"
  return str(value).replace("|", "\\|")


def render(entries: dict[str, dict], names: list[str]) -> str:
  machines: dict[str, int] = {}
  for entry in entries.values():
    key = json.dumps(entry.get("machine", {}), sort_keys=True)
    machines.setdefault(key, len(machines) + 1)
  lines = ["# Benchmark results", "",
           "Generated by `python benchmarks/run_all.py` from `benchmarks/RESULTS.jsonl` (one "
           "JSON line per benchmark: command, date, machine, the script's own JSON output). "
           "Each benchmark script's docstring says what it measures and how; a figure is only "
           "as current as its date. Re-run one benchmark with "
           "`python benchmarks/run_all.py --only NAME`.", ""]
  lines += ["## Machines", ""]
  for key, number in machines.items():
    info = json.loads(key)
    lines.append(f"- M{number}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
  lines += ["", "## Status", "", "| benchmark | status | date (UTC) | wall s | machine | command |",
            "|---|---|---|---|---|---|"]
  for name in names:
    entry = entries.get(name)
    if entry is None:
      lines.append(f"| {name} | not run yet | | | | |")
      continue
    status = entry["status"]
    if status == "failed":
      status = "FAILED: " + _cell(entry.get("error", ""))[:200]
    machine_no = machines[json.dumps(entry.get("machine", {}), sort_keys=True)]
    lines.append(f"| {name} | {status} | {entry['date']} | {entry.get('seconds', '')} | "
                 f"M{machine_no} | `{entry['command']}` |")
  for name, reason in NOT_RUN.items():
    lines.append(f"| {name} | not a benchmark: {reason} | | | | |")
  lines += ["", "## Every measured figure", "", "| benchmark | figure | value | date (UTC) |",
            "|---|---|---|---|"]
  for name in names:
    entry = entries.get(name)
    result = (entry or {}).get("result")
    if result is None and entry is not None:
      result = entry.get("last_good_result")
    if result is None:
      continue
    date = entry["date"][:10]
    if entry["status"] == "failed":
      date = f"{entry['last_good_date'][:10]} (stale: the last run failed)"
    for key, value in flatten(result):
      if key in ("benchmark", "date"):
        continue
      lines.append(f"| {name} | {key} | {_cell(value)} | {date} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__)
  parser.add_argument("--only", default="", help="comma-separated benchmark names")
  parser.add_argument("--skip", default="", help="comma-separated benchmark names")
  parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per benchmark")
  parser.add_argument("--list", action="store_true", help="print names and commands")
  parser.add_argument("--render", action="store_true", help="only rebuild RESULTS.md")
  parser.add_argument("--jsonl", default=JSONL)
  parser.add_argument("--markdown", default=MARKDOWN)
  args = parser.parse_args(argv)

  table = benchmarks()
  if args.list:
    for name, command in table.items():
      print(f"{name:24s} {' '.join(command[1:])}")
    return 0
  only = [n for n in args.only.split(",") if n]
  skip = [n for n in args.skip.split(",") if n]
  unknown = [n for n in only + skip if n not in table]
  if unknown:
    parser.error(f"unknown benchmark(s) {unknown}; known: {sorted(table)}")
  entries = load_entries(args.jsonl)
  failures = 0
  if not args.render:
    selected = [n for n in (only or table) if n not in skip]
    have_libtpu = importlib.util.find_spec("libtpu") is not None
    for name in selected:
      if name.startswith("aot_tpu_") and not have_libtpu:
        print(f"[run_all] {name}: skipped (pip install -e '.[tpu]' for the libtpu wheel)",
              file=sys.stderr)
        continue
      print(f"[run_all] {name}: {' '.join(table[name][1:])}", file=sys.stderr, flush=True)
      entry = run_one(name, table[name], args.timeout)
      old = entries.get(name)
      if entry["status"] == "failed":
        failures += 1
        if old and "result" in old:
          entry["last_good_result"], entry["last_good_date"] = old["result"], old["date"]
        elif old and "last_good_result" in old:
          entry["last_good_result"] = old["last_good_result"]
          entry["last_good_date"] = old["last_good_date"]
      entries[name] = entry
      save_entries(entries, args.jsonl)
      print(f"[run_all] {name}: {entry['status']} in {entry['seconds']} s", file=sys.stderr)
  with open(args.markdown, "w") as f:
    f.write(render(entries, list(table)))
  print(f"[run_all] wrote {os.path.relpath(args.markdown, ROOT)}", file=sys.stderr)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
