"""Every notebook in ``notebooks/`` runs from top to bottom without an error.

The notebooks check what they show with ``assert`` cells, so a notebook whose story no longer
holds fails here. They run in a fresh kernel of this interpreter, from the repository root's
``notebooks/`` directory, as a reader would run them.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path):
    nb = nbformat.read(path, as_version=4)
    # Raises CellExecutionError, with the cell and its traceback, if any cell fails.
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    assert all(not any(o.get("output_type") == "error" for o in c.get("outputs", []))
               for c in nb.cells if c.cell_type == "code")
