"""What README, docs/accuracy.md, weights/README.md, the default configuration and the weights
manifest say about accuracy is the committed leave-one-group-out report's, never a hand-copied
or older figure: ``drishtiksha eval --cross-validate`` wrote the report, and these tests fail
as soon as a document quotes a number the report (or a manifest entry) does not hold."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from detectors.face_cues import KEY
from detectors.manifest import read_manifest
from processor.crossval import headline, held_out, markdown_summary

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "reports" / f"{KEY}-logo.json"
MANIFEST = ROOT / "weights" / "manifest.json"
# Every "0.62 [0.54, 0.70]": an estimate with its interval.
FIGURE = re.compile(r"\d\.\d{2,4} \[\d\.\d{2,4}, \d\.\d{2,4}\]")
BEGIN = f"<!-- from docs/reports/{KEY}-logo.json -->"
END = "<!-- end of report -->"


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(REPORT.read_text())
    return doc


def _backed(report: dict[str, Any]) -> set[str]:
    """The interval figures a document may quote: the report's AUC per scorer and each
    manifest entry's held-out AUC, at two decimals."""
    figures = {headline(report, name).removeprefix("ROC AUC ") for name in report["scorers"]}
    for entry in read_manifest(MANIFEST).entries:
        if entry.held_out is not None:
            low, high = entry.held_out.roc_auc_ci95
            figures.add(f"{entry.held_out.roc_auc:.2f} [{low:.2f}, {high:.2f}]")
    return figures


def test_the_report_is_a_leave_one_group_out_run_over_every_clip(report: dict[str, Any]) -> None:
    assert report["method"] == "leave one group out"
    assert report["command"].startswith("uv run drishtiksha eval --cross-validate ")
    scorer = report["scorers"][KEY]
    assert scorer["n"] == len(report["clips"])
    assert set(scorer["metrics"]) >= {"auc", "eer", "accuracy", "accuracy_all", "abstention_rate"}


def test_the_manifest_quotes_the_report(report: dict[str, Any]) -> None:
    entry = read_manifest(MANIFEST).default_entry(KEY)
    assert entry.held_out == held_out(report, KEY, REPORT, MANIFEST)


@pytest.mark.parametrize(
    "document", ["README.md", "docs/accuracy.md", "weights/README.md", "configs/default.yaml"]
)
def test_documents_quote_the_reports_headline_and_no_other_figure(
    report: dict[str, Any], document: str
) -> None:
    text = (ROOT / document).read_text()
    if document == "docs/accuracy.md":
        # The rest of accuracy.md is the record of what was tried before, with its numbers;
        # the report's own table is checked whole below.
        text = text.split("\n## ", 1)[0]
        text = text.split(BEGIN, 1)[0] + text.split(END, 1)[1]
    assert headline(report, KEY) in text
    stray = set(FIGURE.findall(text)) - _backed(report)
    assert not stray, f"{document} quotes figures no report or manifest entry holds: {stray}"


def test_accuracy_md_shows_the_report_as_written(report: dict[str, Any]) -> None:
    text = (ROOT / "docs" / "accuracy.md").read_text()
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == markdown_summary(report, KEY), "regenerate with processor.crossval"


def test_readme_names_every_source_where_fewer_than_half_were_right(
    report: dict[str, Any],
) -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())  # names may wrap
    scorer = report["scorers"][KEY]
    below = scorer["sources_below_half"]
    missing = [name for name in below if name not in readme]
    assert not missing, f"README does not say that accuracy is below 0.5 on {missing}"
    assert f"below 0.5 on {len(below)} of the {len(scorer['per_dataset'])} source" in readme
