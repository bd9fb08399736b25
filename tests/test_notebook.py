"""examples/notebook.ipynb runs top to bottom in a real Jupyter kernel, with the outputs it
promises: cache hits on the re-run, only the edited function's jobs re-run, why they ran."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .components import require

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def _outputs(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            parts.extend(str(v) for v in out["data"].values())
        elif out["output_type"] == "error":
            parts.append(f"ERROR {out['ename']}: {out['evalue']}")
    return "\n".join(parts)


@pytest.mark.timeout(300)
def test_the_example_notebook_runs_with_its_promised_outputs(tmp_path):
    require("jupyter-kernel")
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    # coalesce_streams: a line may reach the notebook in two stream messages (ipykernel
    # sends what was written so far on a timer); it is one line in the notebook's view
    client = nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                                     coalesce_streams=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    texts = [_outputs(c) for c in code]
    everything = "\n".join(texts)
    assert "ERROR" not in everything, everything
    assert "cache hits: [True, True, True, True]" in everything
    assert "simulations cached: [True, True, True, True]" in everything
    assert "summaries cached: [False, False, False, False]" in everything
    # a progress display (its cell depends on timing: cells run back to back share one)
    # ends on a finished session, every job counted, none running
    frames = [str(o["data"].get("text/html", "")) for c in code for o in c.get("outputs", [])
              if o["output_type"] == "display_data"]
    for frame in (f for f in frames if "<code>hither " in f):
        done = re.search(r"hither (\d+)/(\d+) jobs, 0 running", frame)
        assert done and done[1] == done[2], frame
    explain_cell = next(t for t, c in zip(texts, code, strict=True) if "hi.explain" in c.source)
    assert "code" in explain_cell and "changed" in explain_cell, explain_cell
    job_cell = next(t for t, c in zip(texts, code, strict=True) if "again[0]" in c.source)
    assert "cache hit" in job_cell and "<table" in job_cell
    assert "mean" in texts[2]
