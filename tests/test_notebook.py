"""examples/walkthrough.ipynb runs end to end (tiny synthetic data, one epoch) and is stored clean.

The notebook runs in a kernel started from this interpreter (sys.executable -m ipykernel_launcher),
registered for the test in a temporary JUPYTER_PATH, so a "python3" kernel registered elsewhere
for another Python (e.g. in ~/.local/share/jupyter) cannot be picked up instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains models or runs subprocesses (make test-fast skips)

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "walkthrough.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_notebook_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "walk"
    env = {"WALKTHROUGH_OUT": str(out), "WALKTHROUGH_N": "48", "WALKTHROUGH_EPOCHS": "1",
           "WALKTHROUGH_PRESET": "tiny", "WALKTHROUGH_MINUTES": "1", "OMP_NUM_THREADS": "1"}
    monkeypatch.delenv("WALKTHROUGH_DATA", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    spec = tmp_path / "jupyter" / "kernels" / "captcha-crnn-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "captcha-crnn test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="captcha-crnn-test",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails
    for name in ("model/model.safetensors", "model/curves.png", "model/history.json", "data_samples.png",
                 "predictions.png", "errors.png", "new.png"):
        assert (out / name).is_file(), name
    assert len(list((out / "data").glob("*.png"))) == 48
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "48 labelled images" in text and "label lengths: {5: 48}" in text
    assert "alphabet (" in text and "test split: n=" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # samples, curves, predictions, errors, new images
