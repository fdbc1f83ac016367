"""colabs/*.ipynb run top to bottom, headless, at tiny sizes, and save their figures.

Each notebook reads ALPHADECAY_NOTEBOOK_QUICK=1 (small model, few steps) and writes its
PNG figures and a small JSON summary to ALPHADECAY_NOTEBOOK_OUTPUT: a pytest tmp dir,
or DIR/<notebook> when ALPHADECAY_NOTEBOOK_FIGURES=DIR is set (to keep the PNGs of a
CI run for a person to look at).
"""

import json
import os
import pathlib

import numpy as np
import pytest

from conftest import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow
COLABS = ROOT / "colabs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def out_dir(tmp_path, request):
  keep = os.environ.get("ALPHADECAY_NOTEBOOK_FIGURES")
  if not keep:
    return tmp_path
  path = pathlib.Path(keep) / request.node.name.removeprefix("test_")
  path.mkdir(parents=True, exist_ok=True)
  return path


def _execute(name: str, out_dir, monkeypatch) -> dict:
  """Runs colabs/<name> in a fresh kernel; returns the executed notebook."""
  monkeypatch.setenv("ALPHADECAY_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("ALPHADECAY_NOTEBOOK_OUTPUT", str(out_dir))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  notebook = nbformat.read(COLABS / name, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(COLABS)}})
  client.execute()
  return notebook


def _assert_pngs(out_dir, names):
  for name in names:
    path = out_dir / name
    assert path.exists(), f"{name} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, (name, len(data))


def test_notebooks_have_no_stored_outputs():
  """Committed notebooks are sources: outputs come from running them."""
  for path in sorted(COLABS.glob("*.ipynb")):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert not cell.outputs and cell.execution_count is None, path.name


def test_quickstart(out_dir, monkeypatch):
  _execute("quickstart.ipynb", out_dir, monkeypatch)
  _assert_pngs(out_dir, ["quickstart_loss.png"])
  summary = json.loads((out_dir / "quickstart_results.json").read_text())
  assert sorted(summary) == ["AdamW", "AlphaDecay (AdamW)", "SinkGD + AdamW"]
  for name, run in summary.items():
    # 40 steps from ln(vocab) ~ 4.3 nats: every optimizer must have learned something.
    assert run["last_loss"] < run["first_loss"] - 0.3, (name, run)
    assert run["eval/loss"] < 4.0, (name, run)


def test_esd_explorer(out_dir, monkeypatch):
  _execute("esd_explorer.ipynb", out_dir, monkeypatch)
  _assert_pngs(out_dir, ["esd_histograms.png", "alpha_heatmap.png", "decay_per_module.png"])
  summary = json.loads((out_dir / "esd_summary.json").read_text())
  alpha = np.asarray(summary["alpha"])
  assert alpha.shape == (2, 7) and summary["roles"][0] == "attn_q"
  assert np.all(np.asarray(summary["valid"])) and np.all((alpha > 1.0) & (alpha < 10.0))
  tuned = np.asarray(summary["tuned"])
  assert not tuned[0, 0] and tuned.sum() == 2 * 7 - 1  # layer 0's q is measured, not tuned
  decay = np.asarray(summary["decay"])
  wd, (s1, s2) = summary["weight_decay"], summary["s_range"]
  np.testing.assert_allclose(decay[0, 0], wd)  # untuned: the base decay
  np.testing.assert_allclose(decay[tuned].min(), s1 * wd, rtol=1e-5)
  np.testing.assert_allclose(decay[tuned].max(), s2 * wd, rtol=1e-5)
  # The map is monotone: the heaviest tail (smallest alpha) gets the weakest decay.
  order = np.argsort(alpha[tuned])
  assert np.all(np.diff(decay[tuned][order]) >= -1e-9)
