"""The notebooks run top to bottom (nbclient), on the shared data next to the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SHARED = Path(os.environ.get("MATFUNNEL_SHARED", REPO.parent / "shared"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["phonon_screening.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if not (SHARED / "data" / "phonons" / "pbe-reference").is_dir():
        pytest.skip(f"no shared data at {SHARED} (set MATFUNNEL_SHARED)")
    monkeypatch.setenv("MATFUNNEL_SHARED", str(SHARED))
    monkeypatch.setenv("MATFUNNEL_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("MATFUNNEL_NOTEBOOK_REFS", "2")  # the notebook's default compares 3 references
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "phonon_compare.csv").is_file()
