"""The Colab demo notebook runs top to bottom on CPU in its tiny setting."""

import os

import nbformat
from nbclient import NotebookClient

from main_runner import REPO
NOTEBOOK = os.path.join(REPO, "launch", "colab_tpu_demo.ipynb")


def test_notebook_is_committed_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_executes_on_cpu(tmp_path, monkeypatch):
  monkeypatch.setenv("CVLG_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("CVLG_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
  monkeypatch.delenv("CVLG_REPO_URL", raising=False)  # must find the checkout
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # Started in launch/, like Jupyter opening the file; raises on any cell error.
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()

  def text(cell):
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/markdown", ""))
                   for o in cell.outputs)

  def images(cell):
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)

  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "nothing to install" in text(code[1])
  assert "[tiny smoke-test setting]" in text(code[2])
  train_out = text(code[3])
  assert "psd: 10 steps" in train_out and "clip: 10 steps" in train_out
  for loss in ("psd", "clip"):
    assert os.path.isdir(tmp_path / "runs" / loss / "checkpoints" / "10")
  assert images(code[4]) == 2          # curves + PSD diagnostics
  table = text(code[5])
  assert "| psd |" in table and "| clip |" in table and "chance: 2.5 %" in table
  assert images(code[6]) == 1 and "psd: image->text top-1" in text(code[6])
