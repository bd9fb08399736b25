"""``hither.lineage_html``: the lineage page, read from real pipeline runs and drawn in a real
headless Chromium (driven by playwright), plus hostile records and ``hither show --html``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest

import hither as hi
from hither.cli import main
from hither.explaining import open_store
from hither.lineage_html import (
    COLLAPSE_AT,
    json_for_script,
    lineage_graph,
    render_page,
    write_lineage_html,
)
from tests.components import _fail_or_skip

CHROMIUM = os.environ.get("HITHER_TEST_CHROMIUM") or os.environ.get("HITHER_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def require_chromium() -> None:
    """``require("chromium")`` from tests/components.py, or a local check until it has one."""
    from tests import components

    try:
        components.require("chromium")
        return
    except ValueError:  # components.py does not know chromium yet
        pass
    if importlib.util.find_spec("playwright") is None:
        _fail_or_skip("playwright (pip install playwright)")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        _fail_or_skip(f"a Chromium at {CHROMIUM} (apt-get install chromium)")


# ------------------------------------------------------------------ pipelines
@hi.function("lh_load", "1")
def lh_load(n):
    print(f"loading {n} values")
    return list(range(n))


@hi.function("lh_clean", "1")
def lh_clean(xs):
    return [x * 2 for x in xs if x >= 0]


@hi.function("lh_stats", "1")
def lh_stats(a, b):
    return {"total": sum(a) + sum(b)}


@hi.function("lh_sim", "1")
def lh_sim(seed):
    return seed * 2


@hi.function("lh_combine", "1")
def lh_combine(a, b):
    return a + b


@hi.function("lh_noisy", "1")
def lh_noisy(x):
    print("<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>")
    if x == 3:
        raise ValueError("</script><script>window.pwned = 3</script>")
    return x


@hi.function("lh_sum", "1")
def lh_sum(xs):
    return sum(len(x) for x in xs)


def three_stages(store: Path) -> hi.Job:
    """load -> clean -> stats, twice side by side; the first load was cached before."""
    cache = hi.JobCache(path=store)
    with hi.Config(job_cache=cache):
        lh_load.run(n=3).wait()
        job = lh_stats.run(a=lh_clean.run(xs=lh_load.run(n=3)),
                           b=lh_clean.run(xs=lh_load.run(n=4)))
        job.wait()
    return job


def binary_tree(store: Path, leaves: int = 500) -> hi.Job:
    """``leaves`` lh_sim jobs summed pairwise by lh_combine: 2 * leaves - 1 jobs."""
    with hi.Config(job_cache=hi.JobCache(path=store)):
        level = [lh_sim.run(seed=s) for s in range(leaves)]
        while len(level) > 1:
            pairs = [lh_combine.run(a=level[i], b=level[i + 1])
                     for i in range(0, len(level) - 1, 2)]
            level = pairs + level[len(pairs) * 2:]
        level[0].wait()
    return level[0]


def fan_in(store: Path, n: int = 500) -> tuple[hi.Job, list[hi.Job]]:
    """lh_sum over a list of n lh_clean(lh_load) jobs (recorded as the ``jobs`` of xs)."""
    with hi.Config(job_cache=hi.JobCache(path=store)):
        ups = [lh_clean.run(xs=lh_load.run(n=i + 1)) for i in range(n)]
        root = lh_sum.run(xs=ups)
        root.wait()
    return root, ups


# ------------------------------------------------------------------ reading the graph
def test_graph_of_three_stages(tmp_path):
    job = three_stages(tmp_path / "store")
    graph = lineage_graph(job)
    assert len(graph.nodes) == 5
    fns = sorted(n["fn"] for n in graph.nodes.values())
    assert fns == ["lh_clean", "lh_clean", "lh_load", "lh_load", "lh_stats"]
    assert sorted(e["label"] for e in graph.edges) == ["a", "b", "xs", "xs"]
    root = graph.nodes[job.key]
    assert root["status"] == "finished" and root["result"] == "dict(1)"
    # cache hits are known from the job: load(n=3) ran before the pipeline did
    hits = {n["fn"] + str(n["result"]): n.get("cache_hit") for n in graph.nodes.values()}
    assert hits["lh_loadlist(3)"] is True and hits["lh_loadlist(4)"] is False
    assert root["cache_hit"] is False
    load4 = next(n for n in graph.nodes.values() if n["fn"] + n["result"] == "lh_loadlist(4)")
    assert load4["console"][0][1] == "loading 4 values"
    assert "def lh_load(n):" in graph.sources[load4["code"]]["fn:lh_load"]
    # the explain diff: the nearest other record of lh_load differs in its input
    assert load4["explain"]["differences"] == ["input 'n' changed: int 3 → int 4"]
    assert root["explain"] == {"nearest": None}
    # from a key alone (a prefix will do), no cache hits are known
    by_key = lineage_graph(job.key[:10], tmp_path / "store")
    assert set(by_key.nodes) == set(graph.nodes)
    assert all("cache_hit" not in n for n in by_key.nodes.values())


def test_jobs_list_is_followed(tmp_path):
    root, ups = fan_in(tmp_path / "store", n=12)
    graph = lineage_graph(root.key, tmp_path / "store")
    assert len(graph.nodes) == 1 + 12 + 12
    into_root = [e for e in graph.edges if e["to"] == root.key]
    assert {e["from"] for e in into_root} == {j.key for j in ups}
    assert {e["label"] for e in into_root} == {"xs"}
    # from the job, the cache hits of the jobs inside the list are known too
    from_job = lineage_graph(root)
    assert [n.get("cache_hit") for n in from_job.nodes.values()] == [False] * 25


def test_hostile_records_never_break_the_page(tmp_path, open_page):
    job = three_stages(tmp_path / "store")
    store = open_store(tmp_path / "store")
    rec = store.get_record(job.key)
    clean_key = rec["inputs"]["a"]["job"]
    rec["inputs"]["a"]["jobs"] = ["../../etc/passwd", "f" * 64, 7, job.key]  # bad, none, cycle
    rec["inputs"]["junk"] = ["not", "a", "dict"]
    rec["console"] = [[None], "bare text", [1e300, "far future", True], 5]
    rec["provenance"]["function"]["sources"] = "not a dict"
    rec["provenance"]["start_time"] = 1e300
    store.put_record(job.key, rec)
    crec = store.get_record(clean_key)
    crec["inputs"] = "nonsense"
    crec["provenance"] = ["nonsense"]
    store.put_record(clean_key, crec)
    graph = lineage_graph(job.key, store)
    # a record that is not what hither writes is shown as such, and nothing of it is used
    assert graph.nodes[job.key]["status"] == "missing"
    assert graph.nodes[job.key]["note"] == "not a hither record"
    assert "../../etc/passwd" not in graph.nodes and not graph.edges
    (tmp_path / "hostile.html").write_text(render_page(graph))
    page = open_page(tmp_path / "hostile.html")
    assert len(page.nodes()) == len(graph.nodes) == 1
    page.page.click(f'#nodes g[data-key="{job.key}"]')
    assert "not a hither record" in page.detail()
    # a damaged upstream record under a good one: the good one is drawn, the other marked
    fresh = three_stages(tmp_path / "store2")
    store2 = open_store(tmp_path / "store2")
    up = store2.get_record(fresh.key)["inputs"]["a"]["job"]
    bad = store2.get_record(up)
    bad["inputs"] = "nonsense"
    store2.put_record(up, bad)
    graph2 = lineage_graph(fresh.key, store2)
    assert graph2.nodes[fresh.key]["status"] == "finished"
    assert graph2.nodes[up]["note"] == "not a hither record"


def test_node_limit(tmp_path):
    root, _ = fan_in(tmp_path / "store", n=30)
    graph = lineage_graph(root.key, tmp_path / "store", max_nodes=10)
    # read: the root and 9 lh_clean; left out: 21 lh_clean, and the 9 lh_load seen
    assert len(graph.nodes) == 10 and graph.truncated == 21 + 9
    assert all(e["from"] in graph.nodes and e["to"] in graph.nodes for e in graph.edges)


def test_json_for_script_cannot_close_the_element():
    text = json_for_script({"a": "</script><!-- <script>&amp;", "b": "\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!-- <script>&amp;", "b": "\u2028"}


def test_page_is_self_contained(tmp_path):
    job = three_stages(tmp_path / "store")
    page = render_page(lineage_graph(job))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "@import" not in page and "url(" not in page
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp


def test_cli_show_html(tmp_path, capsys):
    job = three_stages(tmp_path / "store")
    out = tmp_path / "page.html"
    assert main(["show", "--store", str(tmp_path / "store"), job.key[:8], "--html",
                 str(out)]) == 0
    assert "5 jobs" in capsys.readouterr().out
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main(["cache", "show", "--store", str(tmp_path / "store"), job.key[:8], "--html",
                 str(tmp_path / "b.html")]) == 0
    assert main(["show", "--store", str(tmp_path / "store"), "abcdef00", "--html",
                 str(tmp_path / "x.html")]) == 1
    assert "no record" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
    assert main(["show", "--store", str(tmp_path / "store"), job.key, "--html",
                 str(out), "--json"]) == 2


# ------------------------------------------------------------------ in Chromium
@pytest.fixture(scope="module")
def browser():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


class Page:
    """A page of the lineage HTML in Chromium, recording errors, dialogs and requests."""

    def __init__(self, browser, path: Path | None, url: str | None = None,
                 ready: bool = True) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 820})
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.errors.append("dialog " + d.message),
                                          d.dismiss()))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = url or path.resolve().as_uri()
        self.expect_requests = [self.url]
        """Every URL the page may load, in order: by default only itself."""
        self.page.goto(self.url)
        if ready:  # the page's script has drawn the graph
            self.page.wait_for_selector("body[data-ready]")

    def nodes(self) -> list[dict]:
        return self.page.eval_on_selector_all("#nodes g.node", """els => els.map(g => ({
            key: g.getAttribute('data-key'), group: g.getAttribute('data-group'),
            cls: g.getAttribute('class'), text: g.querySelector('text.l1').textContent}))""")

    def edge_labels(self) -> list[str]:
        return sorted(self.page.eval_on_selector_all(
            "#edges text.edge-label", "els => els.map(e => e.textContent)"))

    def detail(self) -> str:
        return self.page.inner_text("#detail")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def open_page(browser):
    pages: list[Page] = []

    def opener(path: Path | None, url: str | None = None, ready: bool = True) -> Page:
        pages.append(Page(browser, path, url, ready))
        return pages[-1]

    yield opener
    for p in pages:
        assert p.errors == [], p.errors
        assert p.requests == p.expect_requests, "the page loaded: " + repr(p.requests)
        p.close()


def png_colors(data: bytes) -> dict[tuple[int, ...], int]:
    """Pixel counts by color of an 8-bit RGB or RGBA, non-interlaced PNG (as Chromium
    writes its screenshots)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, head = 8, b"", None
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + size
    assert head is not None
    width, height, depth, ctype, _, _, interlace = head
    assert depth == 8 and ctype in (2, 6) and interlace == 0, head
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev, counts = bytearray(stride), {}
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        for x in range(0, stride, bpp):
            px = tuple(line[x:x + 3])
            counts[px] = counts.get(px, 0) + 1
        prev = line
    return counts


def test_three_stages_in_chromium(tmp_path, open_page):
    job = three_stages(tmp_path / "store")
    out = tmp_path / "lineage.html"
    write_lineage_html(job, out)
    page = open_page(out)
    nodes = page.nodes()
    assert len(nodes) == 5 and all(n["group"] is None for n in nodes)
    assert sorted(n["text"] for n in nodes) == ["lh_clean 1"] * 2 + ["lh_load 1"] * 2 + \
        ["lh_stats 1"]
    assert page.page.locator("#edges g.edge").count() == 4
    assert page.edge_labels() == ["a", "b", "xs", "xs"]
    classes = {n["key"]: n["cls"].split() for n in nodes}
    assert "root" in classes[job.key] and "finished" in classes[job.key]
    assert sum("hit" in c for c in classes.values()) == 1  # the load(n=3) run before
    assert "5 jobs" in page.page.inner_text("#summary")

    clean_key = next(n["key"] for n in nodes if n["text"] == "lh_clean 1")
    page.page.click(f'#nodes g[data-key="{clean_key}"]')
    detail = page.detail()
    assert "def lh_clean(xs):" in detail and "return [x * 2 for x in xs if x >= 0]" in detail
    assert clean_key in detail and "Provenance" in detail
    assert re.search(r"host\s+\S+@\S+", detail)
    assert "input 'xs' changed" in detail  # the explain diff against the other lh_clean
    assert "selected" in page.page.get_attribute(f'#nodes g[data-key="{clean_key}"]', "class")
    # the input's upstream job is a button that selects it
    page.page.click("#detail button.job >> nth=0")
    assert "def lh_load(n):" in page.detail() and "loading" in page.detail()

    shot = png_colors(page.page.screenshot())
    white = shot.get((255, 255, 255), 0) + shot.get((252, 252, 253), 0)
    assert len(shot) > 50, "the screenshot has almost no colors: blank?"
    assert white < 0.97 * sum(shot.values())
    # the node colors are on screen: green (ran), blue (cache hit)
    assert (232, 245, 233) in shot and (227, 240, 252) in shot


def test_pan_and_zoom(tmp_path, open_page):
    job = three_stages(tmp_path / "store")
    write_lineage_html(job, tmp_path / "p.html")
    page = open_page(tmp_path / "p.html").page

    def transform():
        t = page.get_attribute("#viewport", "transform")
        x, y, k = map(float, re.findall(r"-?[\d.]+(?:e-?\d+)?", t))
        return x, y, k

    x0, y0, k0 = transform()
    page.mouse.move(300, 400)
    page.mouse.wheel(0, -400)
    x1, y1, k1 = transform()
    assert k1 > k0 * 1.5
    page.mouse.move(300, 700)
    page.mouse.down()
    page.mouse.move(400, 650, steps=5)
    page.mouse.up()
    x2, y2, k2 = transform()
    assert (round(x2 - x1), round(y2 - y1), k2) == (100, -50, k1)
    page.click("#fit")
    assert transform()[2] == pytest.approx(k0)


def test_thousand_jobs_fold(tmp_path, open_page):
    root = binary_tree(tmp_path / "store", leaves=500)
    graph = write_lineage_html(root, tmp_path / "big.html")
    assert len(graph.nodes) == 999 and len(graph.edges) == 998
    page = open_page(tmp_path / "big.html")
    nodes = page.nodes()
    groups = [n for n in nodes if n["group"]]
    assert 10 <= len(nodes) <= 60 and groups, len(nodes)
    assert "999 jobs, drawn as" in page.page.inner_text("#summary")
    # a group lists its jobs; expanding it draws them
    page.page.click(f'#nodes g[data-group="{groups[0]["group"]}"]')
    count = int(re.search(r"×(\d+)", page.detail()).group(1))
    page.page.click("#detail button.expand")
    assert len(page.nodes()) >= len(nodes) - 1 + min(count, 24)
    page.page.click("#collapse")
    assert len(page.nodes()) == len(nodes)


def test_fan_in_of_a_list_folds(tmp_path, open_page):
    root, ups = fan_in(tmp_path / "store", n=500)
    write_lineage_html(root.key, tmp_path / "fan.html", tmp_path / "store")
    page = open_page(tmp_path / "fan.html")
    nodes = page.nodes()
    assert sorted(n["text"] for n in nodes) == ["lh_clean ×500", "lh_load ×500", "lh_sum 1"]
    assert page.edge_labels() == ["xs ×500", "xs ×500"]
    group = next(n["group"] for n in nodes if n["text"] == "lh_clean ×500")
    page.page.click(f'#nodes g[data-group="{group}"]')
    assert "500 finished" in page.detail()
    # a job of the group, chosen in the list, is drawn on its own and selected
    page.page.click("#detail button.job >> nth=3")
    key = page.page.evaluate("decodeURIComponent(location.hash.slice(1))")
    assert key in {j.key for j in ups}
    assert "selected" in page.page.get_attribute(f'#nodes g[data-key="{key}"]', "class")
    assert "def lh_clean(xs):" in page.detail()
    assert len(page.nodes()) > 500


def test_fold_threshold(tmp_path, open_page):
    root, _ = fan_in(tmp_path / "store", n=COLLAPSE_AT - 1)
    write_lineage_html(root.key, tmp_path / "few.html", tmp_path / "store")
    assert len(open_page(tmp_path / "few.html").nodes()) == 1 + 2 * (COLLAPSE_AT - 1)


def test_record_text_is_never_markup(tmp_path, open_page):
    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(job_cache=cache, cache_failing=True):
        ok = lh_noisy.run(x=1).set_label("<script>window.pwned = 4</script>")
        bad = lh_noisy.run(x=3)
        root = lh_combine.run(a=ok, b=lh_noisy.run(x=2))
        root.wait()
        bad.exception()
    store = cache.store
    rec = store.get_record(ok.key)
    evil = "<img src=x onerror='window.pwned = 5'></text><script>window.pwned = 6</script>"
    rec["provenance"]["function"]["name"] = evil
    rec["provenance"]["function"]["version"] = "</title><script>window.pwned = 7</script>"
    rec["inputs"]["x"]["desc"] = "<svg onload='window.pwned = 8'>"
    rec["inputs"]["<b onclick=x>"] = {"desc": "</td><script>window.pwned = 9</script>",
                                      "digest": "<i>"}
    store.put_record(ok.key, rec)
    rrec = store.get_record(root.key)
    rrec["inputs"]["b"]["job"] = bad.key  # an error record with a hostile message upstream
    store.put_record(root.key, rrec)

    write_lineage_html(root.key, tmp_path / "evil.html", store)
    page = open_page(tmp_path / "evil.html")
    texts = sorted(n["text"] for n in page.nodes())
    assert texts[0].startswith("<img src=x")  # drawn as text
    for n in page.nodes():
        page.page.click(f'#nodes g[data-key="{n["key"]}"]')
    page.page.click(f'#nodes g[data-key="{ok.key}"]')
    detail = page.detail()
    assert "<script>window.pwned = 1</script>" in detail  # the console line, as text
    assert "<svg onload='window.pwned = 8'>" in detail and "<b onclick=x>" in detail
    page.page.click(f'#nodes g[data-key="{bad.key}"]')
    assert "</script><script>window.pwned = 3</script>" in page.detail()
    assert page.page.evaluate("window.pwned") is None
    assert page.page.locator("script").count() == 2  # the data and the page's own
    assert page.page.locator("img, #detail svg, b[onclick]").count() == 0
