"""docs/results.md is generated from the committed result files (benchmarks/report.py): it must not
drift from them, and no result file may sit in benchmarks/results/ unread and uncited."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["report"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_results_page_matches_the_result_files():
    report = _report()
    page = (ROOT / "docs" / "results.md").read_text()
    assert page == report.render(), "docs/results.md is stale: run python benchmarks/report.py"
    assert report.main(["--check"]) == 0


def test_check_names_a_stale_page(tmp_path, monkeypatch, capsys):
    report = _report()
    stale = tmp_path / "results.md"
    stale.write_text(report.render().replace("| sgm |", "| sgm? |", 1))
    monkeypatch.setattr(report, "PAGE", stale)
    assert report.main(["--check"]) == 1
    assert "stale at line" in capsys.readouterr().err


def test_every_section_has_its_command_machine_budget_and_date():
    report = _report()
    for section in report.SECTIONS:
        text = "\n".join(section.render())
        assert section.commands and "**Machine**" in text and "**Budget**" in text
        assert re.search(r"\*\*Runs\*\*: 20\d\d-\d\d-\d\d", text), section.anchor


def test_every_result_file_is_read_or_cited():
    """A result file no section reads and no doc cites is superseded: it goes (git keeps it)."""
    report = _report()
    read = {s for section in report.SECTIONS for s in section.sources}
    cited = "\n".join(p.read_text() for p in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md",
                                               *(ROOT / "benchmarks").rglob("*.md"), *(ROOT / "benchmarks").rglob("*.py")])
    orphans = [p.name for p in sorted((ROOT / "benchmarks" / "results").iterdir())
               if p.name not in read and p.name not in cited]
    assert not orphans, f"result files neither read by benchmarks/report.py nor cited: {orphans}"


def test_every_results_link_names_a_section():
    report = _report()
    anchors = {s.anchor for s in report.SECTIONS}
    for path in [*(ROOT / "docs").glob("*.md"), ROOT / "README.md", ROOT / "benchmarks" / "README.md"]:
        for anchor in re.findall(r"results\.md#([\w-]+)", path.read_text()):
            assert anchor in anchors, f"{path.name} links to results.md#{anchor}, which is no section"
