"""Output folders side by side: sibling links in every page's bar, the parent's index, and where
nothing is written."""

from __future__ import annotations

import re
import threading

import plotly.graph_objects as go
from pagecheck import links

from vh_lens.reports.outputs import (
    OUTPUTS_KIND,
    link_output_folder,
    output_folders,
    sibling_links,
)
from vh_lens.reports.page import INDEX_FILE, page_info, write_report


def _page(path, title):
    return write_report(path, title=title, figures={"f": go.Figure(go.Bar(y=[1, 2]))}, plotlyjs="cdn")


def _listed(index_text: str) -> list[str]:
    return re.findall(r'<li><a href="([^"]+)">', index_text)


def test_sibling_folders_are_linked_and_indexed(tmp_path) -> None:
    runs = tmp_path / "runs"
    (runs / "data").mkdir(parents=True)
    (runs / "data" / "notes.html").write_text("<html>a user's page</html>")  # not vh-lens output
    scan = _page(runs / "scan" / "report.html", "Scan")
    assert link_output_folder(runs / "scan") is None  # alone: nothing written in the parent
    assert not (runs / INDEX_FILE).exists() and links(scan.read_text()) == set()
    mask = _page(runs / "mask" / "masking.html", "Masking")
    index = link_output_folder(runs / "mask")
    assert index == runs / INDEX_FILE and page_info(index) == ("vh-lens outputs in runs", OUTPUTS_KIND)
    assert _listed(index.read_text()) == ["mask/masking.html", "scan/report.html"]
    assert links(scan.read_text()) == {"../index.html", "../mask/masking.html"}  # the earlier page updated
    assert links(mask.read_text()) == {"../index.html", "../scan/report.html"}
    # A folder with two pages: its own index and pages, and the siblings.
    lens = _page(runs / "lens" / "lens.html", "Lens")
    _page(runs / "lens" / "extra.html", "Extra")
    link_output_folder(runs / "lens")
    assert _listed(index.read_text()) == ["lens/extra.html", "lens/lens.html", "mask/masking.html", "scan/report.html"]
    assert links(lens.read_text()) == {"extra.html", INDEX_FILE, "../index.html", "../mask/masking.html",
                                       "../scan/report.html"}  # fmt: skip
    assert links((runs / "lens" / INDEX_FILE).read_text()) >= {"lens.html", "../scan/report.html"}
    assert links(scan.read_text()) == {"../index.html", "../mask/masking.html", "../lens/lens.html",
                                       "../lens/extra.html"}  # fmt: skip
    for page in (scan, mask, lens):  # every link leads to a file
        assert all((page.parent / href).is_file() for href in links(page.read_text()))
    # Rewriting a page in a linked folder keeps the sibling links (the bar is built the same way).
    _page(runs / "scan" / "report.html", "Scan again")
    assert "../mask/masking.html" in links(scan.read_text())
    link_output_folder(runs / "scan")
    assert "Scan again" in mask.read_text() and "Scan again" in index.read_text()
    assert [name for name, _ in output_folders(runs)] == ["lens", "mask", "scan"]
    assert (runs / "data" / "notes.html").read_text() == "<html>a user's page</html>"


def test_nothing_is_written_where_vh_lens_did_not_write(tmp_path) -> None:
    parent = tmp_path / "home"
    (parent / "project").mkdir(parents=True)
    (parent / "project" / "page.html").write_text("<html><title>x</title></html>")
    (parent / ".hidden").mkdir()
    _page(parent / ".hidden" / "a.html", "temporary")  # a run's temporary folder: not an output
    _page(parent / "out" / "report.html", "Scan")
    assert link_output_folder(parent / "out") is None
    assert sorted(p.name for p in parent.iterdir()) == [".hidden", "out", "project"]
    assert link_output_folder(parent / "project") is None  # a folder without report pages
    # A foreign index.html is never replaced, even with two output folders.
    (parent / INDEX_FILE).write_text("<html>mine</html>")
    _page(parent / "mask" / "masking.html", "Masking")
    assert link_output_folder(parent / "mask", quiet=True) is None
    assert (parent / INDEX_FILE).read_text() == "<html>mine</html>"
    assert sibling_links(parent / "mask") == [] and links((parent / "mask" / "masking.html").read_text()) == set()


def test_a_parent_index_is_kept_up_to_date_as_folders_go(tmp_path) -> None:
    import shutil

    for name in ("a", "b", "c"):
        _page(tmp_path / name / "p.html", name.upper())
        link_output_folder(tmp_path / name)
    shutil.rmtree(tmp_path / "b")
    link_output_folder(tmp_path / "a")
    assert _listed((tmp_path / INDEX_FILE).read_text()) == ["a/p.html", "c/p.html"]
    assert links((tmp_path / "c" / "p.html").read_text()) == {"../index.html", "../a/p.html"}
    shutil.rmtree(tmp_path / "c")
    link_output_folder(tmp_path / "a")  # one folder left: the index written before is still ours, kept current
    assert _listed((tmp_path / INDEX_FILE).read_text()) == ["a/p.html"]


def test_folders_finished_at_once_are_all_linked(tmp_path) -> None:
    names = [f"run{i}" for i in range(6)]
    for name in names:
        _page(tmp_path / name / "p.html", name)
    threads = [threading.Thread(target=link_output_folder, args=(tmp_path / n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _listed((tmp_path / INDEX_FILE).read_text()) == [f"{n}/p.html" for n in names]
    for name in names:
        assert links((tmp_path / name / "p.html").read_text()) == {"../index.html"} | {
            f"../{n}/p.html" for n in names if n != name
        }


def test_folder_names_are_quoted_in_links(tmp_path) -> None:
    _page(tmp_path / "my scan" / "report.html", "S")
    _page(tmp_path / "m#1" / "masking.html", "M")
    link_output_folder(tmp_path / "m#1")
    assert links((tmp_path / "m#1" / "masking.html").read_text()) == {"../index.html", "../my%20scan/report.html"}
    assert "m%231/masking.html" in _listed((tmp_path / INDEX_FILE).read_text())


def test_a_failure_to_link_is_reported_not_raised(tmp_path, monkeypatch, capsys) -> None:
    from vh_lens.reports import outputs

    _page(tmp_path / "a" / "p.html", "A")
    _page(tmp_path / "b" / "p.html", "B")

    def broken(*args, **kwargs):
        raise PermissionError("read-only page")

    monkeypatch.setattr(outputs, "refresh_nav", broken)
    assert link_output_folder(tmp_path / "b") is None
    err = capsys.readouterr().err.strip()
    assert err.startswith("vh-lens: warning:") and "read-only page" in err and "\n" not in err
