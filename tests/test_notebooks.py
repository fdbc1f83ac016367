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


def test_lipschitz(out_dir, monkeypatch):
  _execute("lipschitz.ipynb", out_dir, monkeypatch)
  _assert_pngs(out_dir, ["projections_singular_values.png", "lipschitz_bound.png"])
  s = json.loads((out_dir / "lipschitz_summary.json").read_text())
  w_max, top = s["w_max"], s["after_top"]
  before = np.asarray(s["before"])
  after = {name: np.asarray(values) for name, values in s["after"].items()}
  np.testing.assert_allclose(before, np.linspace(3.0, 0.05, 64), rtol=1e-5)
  # Exact cap: min(sigma, w_max) along the same singular vectors.
  np.testing.assert_allclose(after["spectral_exact_cap (SVD)"], np.minimum(before, w_max),
                             atol=1e-4)
  assert top["spectral_exact_cap (SVD)"] == pytest.approx(w_max, abs=1e-4)
  # Hard cap: <= 1.011 w_max for inputs up to 3.5 w_max (the polynomial's guarantee).
  assert w_max * 0.95 < top["spectral_hard_cap"] <= 1.011 * w_max
  # Soft cap: guaranteed up to k = w_max + eta = 1.3; small values nearly unchanged.
  soft = after["spectral_soft_cap (eta 0.3)"]
  assert np.all(np.abs(soft[before <= 1.3]) <= w_max + 1e-4)
  assert np.abs(soft[before > 1.3]).max() > w_max  # no guarantee beyond k
  # Power-iteration projections: sigma_hat a few percent low on this clustered spectrum.
  assert w_max <= top["spectral_normalize"] <= 1.05 * w_max
  np.testing.assert_allclose(after["spectral_normalize"] / before, 1 / before[0], rtol=0.05)
  # Hammer and spectral decay subtract a rank-one term along the estimated top pair,
  # which here blends the leading ~5 directions: what they remove, summed over those
  # directions, is sigma_hat - w_max and 0.1 sigma_hat.
  for name, removed in (("spectral_hammer", before[0] - w_max),
                        ("spectral_weight_decay (0.1)", 0.1 * before[0])):
    diff = before[:8] - after[name][:8]
    assert np.all(diff >= -1e-3) and diff.sum() == pytest.approx(removed, rel=0.15), name
    assert top[name] < before[0], name
  for name, values in after.items():  # all but normalise leave small values alone
    if name != "spectral_normalize":
      assert values[-1] == pytest.approx(before[-1], rel=0.05), name
  projected = s["runs"]["projected (2-Lipschitz)"]
  free = s["runs"]["unconstrained"]
  assert s["cap_bound"] == pytest.approx(1.997, abs=2e-3)
  assert max(projected["bound"]) <= s["cap_bound"] + 1e-3  # certified at every eval
  assert free["bound"][-1] > 10 * projected["bound"][-1]
