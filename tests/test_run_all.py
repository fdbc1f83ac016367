"""benchmarks/run_all.py: runs a benchmark, keeps its JSON line, renders the one table."""

import importlib.util
import sys

from conftest import ROOT


def _run_all():
  spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_benchmark_script_is_listed():
  run_all = _run_all()
  names = set(run_all.benchmarks()) | set(run_all.NOT_RUN)
  scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")
             if not p.stem.startswith("_") and p.stem != "run_all"}
  assert scripts <= names
  assert {"aot_tpu_v5e_4x4", "aot_tpu_v5p_2x2x2"} <= names


def test_run_one_records_the_last_json_line_or_the_failure():
  run_all = _run_all()
  ok = run_all.run_one("fake", [sys.executable, "-c",
                                "print('progress'); print('{\"loss\": 1.5}')"], timeout=60)
  assert ok["status"] == "ok" and ok["result"] == {"loss": 1.5}
  assert ok["date"] and ok["machine"]["cpu_count"] and ok["seconds"] >= 0
  bad = run_all.run_one("fake", [sys.executable, "-c", "import sys; sys.exit('boom')"],
                        timeout=60)
  assert bad["status"] == "failed" and "boom" in bad["error"] and "result" not in bad


def test_flatten_and_render(tmp_path):
  run_all = _run_all()
  result = {"benchmark": "b", "machine": {"cpu_count": 2}, "step_ms": 12.5,
            "ratio": {"sinkgd": 0.95, "adamw": 1.0}, "curve": list(range(100)),
            "params_partition_specs": {"embed": "P(None, 'fsdp')"}, "fits": True,
            "shape": [2, 3], "note": "x" * 500}
  rows = dict(run_all.flatten(result))
  assert rows == {"benchmark": "b", "step_ms": 12.5, "ratio.sinkgd": 0.95,
                  "ratio.adamw": 1.0, "fits": True, "shape": [2, 3]}
  machine = {"cpu_count": 2}
  entries = {
      "fresh": {"name": "fresh", "status": "ok", "date": "2026-11-23T10:00:00+00:00",
                "command": "python benchmarks/fresh.py", "machine": machine,
                "seconds": 3.0, "result": {"tokens_per_second": 1234567.0}},
      "broken": {"name": "broken", "status": "failed", "error": "RuntimeError: exit 1",
                 "date": "2026-11-23T11:00:00+00:00", "command": "python x.py",
                 "machine": machine, "seconds": 1.0,
                 "last_good_result": {"loss": 2.0},
                 "last_good_date": "2026-11-01T00:00:00+00:00"}}
  path = tmp_path / "r.jsonl"
  run_all.save_entries(entries, str(path))
  assert run_all.load_entries(str(path)) == entries
  text = run_all.render(entries, ["fresh", "broken", "missing"])
  assert "| fresh | tokens_per_second | 1.2346e+06 | 2026-11-23 |" in text
  assert "| broken | loss | 2 | 2026-11-01 (stale: the last run failed) |" in text
  assert "| broken | FAILED: RuntimeError: exit 1 |" in text
  assert "| missing | not run yet |" in text
  assert "M1: cpu_count 2" in text
