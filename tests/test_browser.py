"""The HTML reports in a real browser: every page the CLI writes loads in headless Chromium with no
console error, no uncaught exception and no failed resource load, and every plotly figure div
has been drawn (holds plotly's ``.main-svg`` and has a size).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it when absent and apt works), or
the binary named by ``VH_LENS_CHROMIUM``; without it the tests skip, saying so. The browser is
driven over the DevTools protocol (``--remote-debugging-port``, on the loopback interface only)
and every http(s) request is blocked: a page that loads plotly.js from a CDN is not loaded here
(it could not work offline), every other page must work from its folder alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import striped_image
from PIL import ImageDraw
from test_functional import write_cogqa_file

from vh_lens.cli import main

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--mute-audio",
                  "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
                  "--window-size=1400,1000")  # fmt: skip
LOAD_TIMEOUT_S = 60.0
# True once every plotly div on the page has been drawn; a page without plotly.js counts as drawn
# (the check of the figures then fails on the missing .main-svg, with the div named).
FIGURES_DRAWN_JS = """(() => {
  const divs = [...document.querySelectorAll('div.plotly-graph-div')];
  return divs.every(d => d.querySelector('.main-svg') !== null) || typeof window.Plotly === 'undefined';
})()"""
FIGURES_JS = """JSON.stringify([...document.querySelectorAll('div.plotly-graph-div')].map(d => {
  const r = d.getBoundingClientRect();
  return {id: d.id, svg: d.querySelectorAll('.main-svg').length, width: r.width, height: r.height,
          traces: (d.data || []).length};
}))"""
LINKS_JS = """JSON.stringify([...document.querySelectorAll('a[href], script[src], link[href], img[src]')]
  .map(e => e.getAttribute('href') ?? e.getAttribute('src')))"""


def find_chromium() -> str | None:
    """The Chromium binary: ``VH_LENS_CHROMIUM`` if set, else the first of the usual names on PATH."""
    named = os.environ.get("VH_LENS_CHROMIUM")
    if named:
        return named if shutil.which(named) else None
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


class Chromium:
    """One headless Chromium, and pages loaded in it over the DevTools protocol."""

    def __init__(self, binary: str, profile: Path):
        self.log = profile / "chromium.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                         stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 60 s")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _new_tab(self) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def _close_tab(self, tab: dict) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/close/{tab['id']}", timeout=10):
            pass

    def load(self, page: Path) -> dict:
        """Load ``page``: its errors (console errors, uncaught exceptions, failed loads), its figures and
        the targets of its links and sources (``href`` / ``src`` as written)."""
        import websocket

        tab = self._new_tab()
        ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=LOAD_TIMEOUT_S, suppress_origin=True)
        errors: list[str] = []
        state = {"id": 0, "loaded": False}

        def handle(message: dict) -> None:
            method, params = message.get("method"), message.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                errors.append(f"uncaught exception: {text}")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
                errors.append(f"console.{params['type']}: {' '.join(map(str, args))}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Page.loadEventFired":
                state["loaded"] = True

        def call(method: str, **params) -> dict:
            state["id"] += 1
            ws.send(json.dumps({"id": state["id"], "method": method, "params": params}))
            while True:
                message = json.loads(ws.recv())
                if message.get("id") == state["id"]:
                    if "error" in message:
                        raise RuntimeError(f"DevTools {method}: {message['error']}")
                    return message["result"]
                handle(message)

        def evaluate(expression: str):
            result = call("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in result:
                raise RuntimeError(f"evaluating {expression[:60]!r}: {result['exceptionDetails']}")
            return result["result"].get("value")

        try:
            for domain in ("Runtime", "Log", "Page", "Network"):
                call(f"{domain}.enable")
            call("Network.setBlockedURLs", urls=["http://*", "https://*", "ws://*", "wss://*"])
            call("Page.navigate", url=page.resolve().as_uri())
            deadline = time.monotonic() + LOAD_TIMEOUT_S
            while not state["loaded"]:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{page.name}: no load event within {LOAD_TIMEOUT_S:.0f} s")
                handle(json.loads(ws.recv()))
            while not evaluate(FIGURES_DRAWN_JS) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.3)  # late errors (a failed async draw) still reach the console
            figures = json.loads(evaluate(FIGURES_JS))
            links = json.loads(evaluate(LINKS_JS))
            evaluate("0")  # drains the events that arrived meanwhile
        finally:
            ws.close()
            self._close_tab(tab)
        return {"errors": errors, "figures": figures, "links": links}


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("headless Chromium not found (install Debian's `chromium` package, as .ci/run does, "
                    "or set VH_LENS_CHROMIUM): the reports were not checked in a browser")  # fmt: skip
    pytest.importorskip("websocket", reason="websocket-client (the test extra) is needed to drive Chromium")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium_profile"))
    yield browser
    browser.close()


def _image(i: int, box: tuple[int, int, int, int]):
    image = striped_image((60 + 8 * i, 48 + 4 * i), seed=i)
    ImageDraw.Draw(image).rectangle(box, fill=(250, 20, 20))
    return image


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """Every command's output folder, from tiny runs: ``{command: folder}``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("browser_reports")
    images = root / "images"
    images.mkdir()
    lines = []
    for i in range(4):
        box = (4 + 3 * i, 6 + 2 * i, 30 + 3 * i, 28 + 2 * i)
        _image(i, box).save(images / f"img{i}.png")
        lines.append({"image": f"img{i}.png", "question": "how many red squares are there ?", "answer": str(i % 3 + 1),
                      "box": list(box)})  # fmt: skip
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = ["--model", str(tiny_checkpoint)]
    common = [*model, "--data", str(data), "--format", "jsonl", "--images", str(images), "--no-progress"]
    outs = {name: root / name for name in ("scan", "mask", "lens", "probe", "patch", "lens_cdn", "compare")}
    runs = {
        "scan": ["scan", *common, "--batch-size", "2", "--out", str(outs["scan"])],
        "mask": ["mask", *common, "--scores", str(outs["scan"] / "scores"), "--ks", "1", "2", "--stages", "early",
                 "--seeds", "0", "1", "--batch-size", "2", "--out", str(outs["mask"])],
        "lens": ["lens", *common, "--limit", "3", "--top-k", "3", "--plotlyjs", "inline", "--out", str(outs["lens"])],
        "lens_cdn": ["lens", *common, "--limit", "2", "--top-k", "2", "--plotlyjs", "cdn", "--out", str(outs["lens_cdn"])],
        "probe": ["probe", *model, "--data", str(write_cogqa_file(root / "cogqa.json", n_items=10)), "--k", "2",
                  "--no-progress", "--batch-size", "8", "--out", str(outs["probe"])],
        "patch": ["patch", "--n-samples", "2", "--layers", "0", "--no-progress", "--out", str(outs["patch"])],
        "compare": ["scan", *common, "--visual-prompt", "--compare", str(outs["scan"]), "--lens", str(outs["lens"]),
                    "--batch-size", "2", "--out", str(outs["compare"])],
    }  # fmt: skip
    try:
        for name, argv in runs.items():
            assert main(argv) == 0, f"vh-lens {name} failed"
    finally:
        torch.set_num_threads(threads)
    outs["together"] = _two_pages_and_index(root / "together")
    outs["index"] = root  # the commands' folders side by side: root/index.html lists them
    assert "fig-prompt-comparison" in (outs["compare"] / "report.html").read_text()
    return outs


def _two_pages_and_index(folder: Path) -> Path:
    """Two pages of the shared template in one folder, which makes it write its index page too."""
    import plotly.graph_objects as go

    from vh_lens.reports.page import write_report

    write_report(folder / "first.html", title="first", settings={"k": 1}, figures={"bars": go.Figure(go.Bar(y=[1, 2]))})
    write_report(folder / "second.html", title="second", settings={"k": 2},
                 figures={"heat": go.Figure(go.Heatmap(z=[[1, 2], [3, 4]]))})  # fmt: skip
    assert (folder / "index.html").exists()
    return folder


def _uses_network(html: str) -> bool:
    """Whether the page loads a script or stylesheet over http(s) (a CDN plotly.js)."""
    return bool(re.search(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I))


def _pages(folder: Path) -> list[Path]:
    if (folder / "questions.jsonl").exists():  # the parent of the output folders: its index only
        return [folder / "index.html"]
    return sorted(folder.rglob("*.html"))


def _local_links(targets: list[str]) -> list[str]:
    """The links and sources that point at files (not the web, not data, not an anchor on the page)."""
    return [t.split("#")[0] for t in targets if not re.match(r"(?:[a-z]+:|//|#)", t, re.I) and t.split("#")[0]]


def test_cdn_pages_are_recognised(reports) -> None:
    """The pages this module leaves out (plotly.js from a CDN) are those, and only those."""
    assert [p.name for p in _pages(reports["lens_cdn"]) if _uses_network(p.read_text())] == ["lens.html"]
    for command in ("scan", "mask", "lens", "probe", "patch", "together", "compare", "index"):
        assert not any(_uses_network(p.read_text()) for p in _pages(reports[command])), command


@pytest.mark.parametrize("command", ["scan", "mask", "lens", "probe", "patch", "together", "compare", "index"])
def test_report_pages_render_in_chromium(command, chromium, reports) -> None:
    pages = _pages(reports[command])
    assert pages, f"vh-lens {command} wrote no HTML page"
    checked = 0
    for page in pages:
        html = page.read_text(encoding="utf-8")
        if _uses_network(html):
            continue  # plotly.js from a CDN: cannot load offline, so not loaded here
        n_divs = len(re.findall(r"""class=["'][^"']*\bplotly-graph-div\b""", html))
        name = page.relative_to(reports[command])
        seen = chromium.load(page)
        for target in _local_links(seen["links"]):
            assert (page.parent / target).exists(), f"{command}/{name}: links to {target}, which is not there"
        assert seen["errors"] == [], f"{command}/{name}: {seen['errors']}"
        figures = seen["figures"]
        assert len(figures) == n_divs, f"{command}/{name}: {n_divs} figure divs in the file, {len(figures)} in the page"
        for figure in figures:
            assert figure["svg"] > 0, f"{command}/{name}: figure {figure['id']} not drawn (no .main-svg)"
            assert figure["width"] > 0 and figure["height"] > 0, f"{command}/{name}: figure {figure['id']} has no size"
        if command == "index":
            listed = set(_local_links(seen["links"]))
            assert {"scan/report.html", "mask/masking.html", "compare/report.html", "probe/report.html",
                    "lens_cdn/lens.html"} <= listed, listed  # fmt: skip
        checked += 1
    assert checked, f"vh-lens {command}: every page loads plotly.js from a CDN; none could be checked offline"


def test_the_check_sees_a_broken_page(chromium, tmp_path) -> None:
    """The browser check fails a page with a script error and one whose figure never draws."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><div class='plotly-graph-div' id='f'></div>"
                      "<script>console.error('boom'); undefinedFunction();</script></body></html>")  # fmt: skip
    seen = chromium.load(broken)
    assert any("boom" in e for e in seen["errors"]) and any("undefinedFunction" in e for e in seen["errors"])
    assert seen["figures"] == [{"id": "f", "svg": 0, "width": seen["figures"][0]["width"], "height": 0, "traces": 0}]
    missing = tmp_path / "missing.html"
    missing.write_text("<html><body><script src='plotly-missing.js'></script><a href='gone.html#x'>gone</a>"
                       "<a href='https://example.org/'>web</a><a href='#top'>top</a></body></html>")  # fmt: skip
    seen = chromium.load(missing)
    assert any("plotly-missing.js" in e or "ERR_FILE_NOT_FOUND" in e for e in seen["errors"])
    assert _local_links(seen["links"]) == ["plotly-missing.js", "gone.html"]
