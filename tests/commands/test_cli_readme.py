"""The README's command-line example runs: its commands, in order, on tiny settings.

The lines between ``<!-- cli-example -->`` and ``<!-- /cli-example -->`` are read from the
README and run with :func:`vh_lens.cli.main` in an empty folder; :data:`TINY` options are
appended (argparse keeps the last value) so the sequence takes seconds. Run them as written with
``bash`` to time them (the report of issue 16 does).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vh_lens.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = {
    "demo-data": ["--n-samples", "12", "--n-cog", "12"],
    "scan": ["--limit", "12", "--no-progress"],
    "mask": ["--limit", "12", "--seeds", "0", "--no-progress"],
    "lens": ["--limit", "6", "--no-progress"],
    "probe": ["--limit", "8", "--no-progress"],
    "patch": ["--n-samples", "2", "--grids", "heads", "--no-progress"],
}


def readme_commands(text: str) -> list[list[str]]:
    """The ``vh-lens`` commands of the README's marked example, split as a shell would."""
    match = re.search(r"<!-- cli-example -->\s*```bash\n(.*?)```\s*<!-- /cli-example -->", text, re.DOTALL)
    if match is None:
        raise AssertionError("README.md has no <!-- cli-example --> bash block")
    commands = [shlex.split(line, comments=True) for line in match.group(1).splitlines()]
    return [c for c in commands if c]


def test_readme_example_is_found_and_complete() -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert all(c[0] == "vh-lens" for c in commands)
    assert [c[1] for c in commands] == ["demo-data", "scan", "mask", "lens", "probe", "patch", "scan", "scan"]


def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for command in readme_commands(README.read_text(encoding="utf-8")):
        argv = [*command[1:], *TINY[command[1]]]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 0, f"{shlex.join(command)} failed: {err}"
        if command[1] == "mask":
            assert "warning" not in err  # the default ks fit the toy model and leave a random control
        out = command[command.index("--out") + 1] if "--out" in command else command[2]
        assert Path(out).is_dir() and any(Path(out).iterdir())
    assert (Path("runs/scan/scores/metadata.json")).is_file() and Path("runs/mask/masking.json").is_file()
    report = Path("runs/visual/report.html").read_text(encoding="utf-8")
    assert 'id="fig-prompt-comparison"' in report and 'id="fig-lens-rank-final"' in report  # --compare, --lens
    index = Path("runs/index.html").read_text(encoding="utf-8")  # the folders side by side, listed
    listed = re.findall(r'<li><a href="([^"]+)">', index)
    assert {"scan/report.html", "mask/masking.html", "lens/lens.html", "probe/report.html", "patch/patch.html",
            "plain/report.html", "visual/report.html"} <= set(listed), listed  # fmt: skip
    assert '<a class="other" href="../mask/masking.html">' in report


@pytest.mark.parametrize(
    "text", ["no example", "<!-- cli-example -->\n```text\nvh-lens scan\n```\n<!-- /cli-example -->"]
)
def test_a_missing_example_fails(text) -> None:
    with pytest.raises(AssertionError, match="no <!-- cli-example --> bash block"):
        readme_commands(text)
