"""``_repr_html_`` of ``hi.explain(job)`` and of a lineage: what they show, and that record
text stays text (checked in headless Chromium too)."""

from __future__ import annotations

import html

import hither as hi
from hither.explaining import LineageNode, explain, lineage
from tests.test_lineage_html import browser, lh_combine, lh_sim  # noqa: F401 - fixture


@hi.function("eh_scale", "1")
def eh_scale(x, factor=2):
    return x * factor


def _run(cache, fn, **kwargs):
    with hi.Config(job_cache=cache):
        job = fn.run(**kwargs)
        job.wait()
    return job


def test_explanation_table_of_what_changed(tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    _run(cache, eh_scale, x=3)
    job = _run(cache, eh_scale, x=4, factor=5)
    out = explain(job)._repr_html_()
    assert out.startswith('<div class="hither-explanation">')
    assert "What changed" in out and "eh_scale" in out and job.key in out
    text = html.unescape(out)
    assert "input 'x' changed: int 3 → int 4" in text
    assert "input 'factor' added: int 5" in text
    assert "<td" in out and text.count("input 'x'") >= 2  # the part column and the change


def test_first_record_has_nothing_to_compare(tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    out = explain(_run(cache, eh_scale, x=1))._repr_html_()
    assert "No other record of" in out and "What changed" not in out


def test_lineage_repr_folds_fan_ins(tmp_path):
    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache):
        a = lh_combine.run(a=lh_sim.run(seed=1), b=lh_sim.run(seed=2))
        root = lh_combine.run(a=a, b=3)
        root.wait()
    out = lineage(root.key, cache)._repr_html_()
    assert out.count("lh_combine 1") == 2 and out.count("lh_sim 1") == 2
    assert "b = int 3" in html.unescape(out) and "<details open>" in out
    wide = LineageNode("f" * 64, function="top", version="1", status="finished", result="1",
                       children=[LineageNode(f"{i:064x}", input_name="x", function="leaf",
                                             version="1", status="finished", result=str(i))
                                 for i in range(7)])
    assert "<details><summary>leaf ×7</summary>" in wide._repr_html_()


def hostile_tree() -> LineageNode:
    evil = "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
    return LineageNode("a" * 64, function=evil, version=evil, status=evil, result=evil,
                       note=evil, values=[(evil, evil)],
                       children=[LineageNode("b" * 64, input_name=evil, function="f",
                                             version="1", status="error", result=evil)])


def test_record_text_is_escaped(tmp_path):
    out = hostile_tree()._repr_html_()
    assert "<script" not in out and "<img" not in out and "&lt;script&gt;" in out
    cache = hi.JobCache(path=tmp_path / "store")
    job = _run(cache, eh_scale, x="</td><script>x</script>")
    ex = explain(job)
    ex.function = ex.version = "<script>window.pwned = 3</script>"
    ex.differences = ["version <b>1</b> → <script>2</script>"]
    ex.nearest_key = "c" * 64
    out = ex._repr_html_()
    assert "<script" not in out and "<b>1" not in out and "&lt;b&gt;1" in out


def test_reprs_render_as_text_in_chromium(browser, tmp_path):  # noqa: F811
    cache = hi.JobCache(path=tmp_path / "store")
    ex = explain(_run(cache, eh_scale, x=9))
    ex.function = "<script>window.pwned = 3</script>"
    page = browser.new_page()
    try:
        page.set_content(hostile_tree()._repr_html_() + ex._repr_html_())
        text = page.inner_text("body")
        assert "<script>window.pwned = 1</script>" in text
        assert "<script>window.pwned = 3</script>" in text
        assert page.evaluate("window.pwned") is None
        assert page.locator("script, img").count() == 0
        assert page.locator("details").count() == 1  # the root; its one child is a leaf
    finally:
        page.close()


def test_job_repr_html_shows_status_key_hit_and_console_escaped(tmp_path):
    from jobfuncs import jf_console, jf_print_then_raise

    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache):
        job = jf_console.run()
        job.result()
        again = jf_console.run()
        again.result()
        bad = jf_print_then_raise.run(message="<script>alert(1)</script>")
        bad.exception()
    page = job._repr_html_()
    assert "finished" in page and job.key in page and "line one out" in page
    assert "cache hit" in again._repr_html_() and "cache hit" not in page
    bad_page = bad._repr_html_()
    assert "error" in bad_page and "<script>" not in bad_page and "&lt;script&gt;" in bad_page
