"""notebooks/05_segmentation.ipynb runs top to bottom in a small setting (a few steps of a
narrow U-Net) and prints the held-out metrics it computes."""

import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "05_segmentation.ipynb"


@pytest.mark.slow
def test_segmentation_notebook_runs(monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored clean
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.prefix"))
    for key, value in (("NB05_NUM_STEPS", "4"), ("NB05_WIDTH", "4"), ("NB05_CROP", "64"),
                       ("MPLBACKEND", "Agg")):
        monkeypatch.setenv(key, value)
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "held-out pixel accuracy" in text and "mean IoU" in text
    assert "'mixup' in 'mixup' cannot be used here" in text
