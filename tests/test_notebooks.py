"""The teaching notebooks in notebooks/: each runs from top to bottom without an error, and is
stored without outputs.

A notebook may have one cell tagged `parameters` (the papermill convention) holding its settings
(number of training steps, ...). For the test run its source is replaced by the small settings in
`SMALL_SETTINGS`, so that every notebook runs in seconds. Figures render as in Jupyter
(matplotlib's inline backend): each figure a notebook shows must come out as a PNG that is not
blank. The facts a notebook's prose states are asserted in the notebook itself (`assert` in its
cells), where they hold in the small setting; its prose says which hold only in the full one.
"""

import base64
import io
import pathlib
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Notebook file name -> source that replaces its `parameters` cell in the test.
SMALL_SETTINGS = {
    "01_building_blocks.ipynb": "NUM_STEPS = 20",
    "04_explainability.ipynb": "NUM_STEPS = 30",
    "03_transfer_learning.ipynb": ("NUM_SYNTHETIC = 200\nPRETRAIN_STEPS = 10\nLABELS_PER_CLASS = 3\n"
                                   "FINETUNE_STEPS = 6\nDRAWS = 1"),
}


# Notebooks whose settings come from environment variables instead of a `parameters` cell.
SMALL_ENV = {
    "05_segmentation.ipynb": {"NB05_NUM_STEPS": "4", "NB05_WIDTH": "4", "NB05_CROP": "64"},
}

# Notebook file name -> text its outputs must contain (what its prose says it prints).
EXPECTED_TEXT = {
    "05_segmentation.ipynb": ["held-out pixel accuracy", "mean IoU",
                              "'mixup' in 'mixup' cannot be used here"],
}

# Notebook file name -> the figures it shows (PNG outputs of its cells, in order).
FIGURES = {
    "01_building_blocks.ipynb": 11,
    "03_transfer_learning.ipynb": 3,
    "04_explainability.ipynb": 6,
    "05_segmentation.ipynb": 4,
}


def parameter_cells(nb):
    return [cell for cell in nb.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]


def test_small_settings_name_existing_notebooks():
    missing = sorted(set(SMALL_SETTINGS) - {path.name for path in NOTEBOOKS})
    assert not missing, f"SMALL_SETTINGS names notebooks not in {NOTEBOOK_DIR}: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have stored outputs or execution counts. Clear them "
        "before committing (in Jupyter: Edit > Clear Outputs of All Cells, then save).")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    params = parameter_cells(nb)
    assert len(params) <= 1, f"{path.name}: more than one cell is tagged 'parameters'."
    if params:
        assert path.name in SMALL_SETTINGS, (
            f"{path.name} has a 'parameters' cell: add small settings for it to SMALL_SETTINGS "
            "in tests/test_notebooks.py so that the test run stays short.")
        params[0].source = SMALL_SETTINGS[path.name]
    # The kernel must run the interpreter (and so the installed cnn_jax) that runs the tests.
    nb.cells.insert(0, nbformat.v4.new_code_cell(
        f"import sys\nassert sys.prefix == {sys.prefix!r}, sys.prefix"))

    # The kernel inherits this process's environment, JAX_PLATFORMS=cpu (conftest.py) included,
    # but not a non-interactive MPLBACKEND: figures go through the inline backend, as in Jupyter.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    for key, value in SMALL_ENV.get(path.name, {}).items():
        monkeypatch.setenv(key, value)
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, with the failing cell, on any error

    pngs = [output["data"]["image/png"] for cell in nb.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert len(pngs) == FIGURES[path.name], f"{path.name}: {len(pngs)} figures rendered"
    text = "".join(output.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))
    for words in EXPECTED_TEXT.get(path.name, []):
        assert words in text, f"{path.name}: its outputs do not say {words!r}"
    for png in pngs:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("L"), float)
        assert min(pixels.shape) > 100 and pixels.std() > 10  # a drawn figure, not a blank one
