"""Make docs/images/lineage.png: the lineage page of a small cached pipeline, one job
selected. Needs Chromium and playwright: ``python docs/images/lineage_screenshot.py``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hither as hi
from hither.lineage_html import write_lineage_html


@hi.function("load", "1")
def load(sample: str) -> list[float]:
    print(f"reading sample {sample}")
    return [float(ord(c) % 7) for c in sample * 50]


@hi.function("clean", "1")
def clean(raw: list[float]) -> list[float]:
    return [x for x in raw if x > 0]


@hi.function("fit", "2")
def fit(data: list[float], degree: int) -> dict:
    mean = sum(data) / len(data)
    return {"degree": degree, "mean": mean}


@hi.function("compare", "1")
def compare(a: dict, b: dict) -> float:
    return a["mean"] - b["mean"]


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            hi.Config(job_cache=hi.JobCache(path=Path(tmp) / "store")):
        fit.run(data=clean.run(raw=load.run(sample="A")), degree=2).wait()  # cached below
        job = compare.run(a=fit.run(data=clean.run(raw=load.run(sample="A")), degree=2),
                          b=fit.run(data=clean.run(raw=load.run(sample="B")), degree=3))
        job.wait()
        page = Path(tmp) / "lineage.html"
        write_lineage_html(job, page)
        selected = job.kwargs["b"]  # the fit that ran, next to the cached one
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
            tab = browser.new_page(viewport={"width": 1280, "height": 640})
            tab.goto(page.as_uri())
            tab.wait_for_selector("body[data-ready]")
            tab.click(f'#nodes g[data-key="{selected.key}"]')
            tab.evaluate("document.getElementById('detail').scrollTop = 330")
            tab.screenshot(path=str(out))
            browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("lineage.png"))
