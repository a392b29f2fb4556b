"""``drishtiksha bench desk`` on a tiny database: the whole path runs and the report has its
shape. Timings are only reported, never asserted."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from processor.cli import app

PAGES = {
    "list_first_page",
    "list_page_50",
    "list_label_fake",
    "list_review_confirmed_fake",
    "search_file_name",
    "search_sha256_prefix",
    "review_queue",
    "job_page",
    "api_jobs_label_fake",
}


def test_bench_desk_reports_every_page_on_sqlite() -> None:
    # 2600 jobs: 52 pages of 50, so the 50th page is reached by following "Older" links.
    result = CliRunner().invoke(
        app, ["bench", "desk", "--jobs", "2600", "--repeats", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["backend"] == "sqlite"
    assert report["rows"]["jobs"] == 2600
    assert report["rows"]["results"] > 0
    assert report["rows"]["reviews"] > 0
    assert set(report["requests"]) == PAGES
    for name, r in report["requests"].items():
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["max_ms"], name
        assert r["bytes"] > 0, name
    requests = report["requests"]
    assert requests["list_first_page"]["rows"] == 50
    assert requests["list_page_50"]["rows"] == 50
    assert requests["list_page_50"]["path"].startswith("/desk/?before=")
    assert requests["search_file_name"]["rows"] == 1
    assert requests["search_sha256_prefix"]["rows"] >= 1
    assert report["walk_to_page_50"]["pages"] == 49
    load = report["first_load"]
    assert load["assets"]
    assert all(p.startswith("/desk/static/") for p in load["assets"])
    assert load["total_bytes"] == load["html_bytes"] + sum(load["assets"].values())
