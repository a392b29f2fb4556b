"""The desk in a real headless Chromium (Debian's package, driven by Playwright) against the
daemon as a subprocess: sign in, upload by drag and drop, watch, play, review, retry, sign out,
and the security rules a browser must see. Screenshots of each page go to the test's temp dir.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_daemon import Daemon, drop
from tests.media import SHARED_VIDEOS, make_text_as_mp4

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REVIEWER = "desk-anna-key-0123456789"
READER = "desk-ben-key-0123456789"
CLIPS = sorted((SHARED_VIDEOS / "real").glob("*.mp4"))[:3] if SHARED_VIDEOS.is_dir() else []
XSS_NAME = "<script>alert(1)</script>.mp4"
NOTE = "<b>lips</b> & <img src=x onerror=alert(2)> checked with the agency"
FINISHED = re.compile(r"^(FAKE|REAL|UNCERTAIN|ABSTAIN|FAILED)$")

needs = pytest.mark.skipif(
    not CHROMIUM.exists() or len(CLIPS) < 3,
    reason="needs /usr/bin/chromium (apt-get install chromium) and ../shared/videos",
)
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, with a reviewer's key and a read-only one."""
    root = tmp_path_factory.mktemp("desk")
    daemon = Daemon(root, f"sqlite:///{root / 'desk.db'}")
    config = yaml.safe_load(daemon.config.read_text())
    config["api"].update(
        upload_dir=str(root / "uploads"),
        keys=[
            {"name": "desk-anna", "key": REVIEWER, "scopes": ["read", "submit"]},
            {"name": "desk-ben", "key": READER, "scopes": ["read"]},
        ],
    )
    daemon.config.write_text(yaml.safe_dump(config))
    daemon.start()
    yield daemon
    if daemon.proc is not None:
        daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser: Any, desk: Daemon, dialogs: list[str]) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    # A script that ran from a file name or a note would open a dialog.
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.set_default_timeout(180_000)
    return page


def sign_in(page: Any, desk: Daemon, key: str) -> None:
    page.goto(f"http://127.0.0.1:{desk.port}/desk/")
    assert "/desk/signin" in page.url
    page.fill("input[name=key]", key)
    page.click("form button[type=submit]")
    page.wait_for_url(re.compile(r".*/desk/$"))


def row_of(page: Any, name: str) -> Any:
    return page.locator("#rows tr", has=page.locator(".name a", has_text=name))


def job_id_of(page: Any, name: str) -> str:
    return str(row_of(page, name).get_attribute("data-id"))


def wait_finished(page: Any, name: str) -> None:
    # The row is replaced as the job moves on, so the locator is looked up afresh each time.
    playwright_api.expect(row_of(page, name).locator(".badge")).to_have_text(
        FINISHED, timeout=300_000
    )


@needs
def test_a_day_at_the_desk(desk: Daemon, browser: Any, tmp_path: Path) -> None:
    dialogs: list[str] = []
    page = open_page(browser, desk, dialogs)
    # A clip in the inbox is one the server keeps in done/, so it can be played later.
    inbox = desk.root / "inbox"
    drop(CLIPS[0], inbox, "editor-copy.mp4")

    sign_in(page, desk, REVIEWER)
    assert page.context.cookies()[0]["httpOnly"]
    assert page.context.cookies()[0]["sameSite"] == "Strict"

    # Upload two clips through the drop zone's file input, one named like a script (no file
    # on disk can be called that: it holds a slash, so the browser is handed the bytes).
    page.set_input_files(
        "#files",
        [
            {"name": name, "mimeType": "video/mp4", "buffer": clip.read_bytes()}
            for name, clip in (("from-the-field.mp4", CLIPS[1]), (XSS_NAME, CLIPS[2]))
        ],
    )
    page.locator("#uploads li", has_text="queued").nth(1).wait_for()
    # Both appear in the list without a reload, and finish there.
    for name in ("from-the-field.mp4", XSS_NAME, "editor-copy.mp4"):
        row_of(page, name).wait_for()
        wait_finished(page, name)
    assert row_of(page, XSS_NAME).locator(".name a").inner_text() == XSS_NAME
    page.screenshot(path=str(tmp_path / "desk-list.png"), full_page=True)

    # One video's page: play, seek, click the timeline.
    row_of(page, "editor-copy.mp4").locator(".name a").click()
    page.wait_for_selector("#timeline svg")
    assert (
        page.locator("#explanation")
        .inner_text()
        .startswith(("Likely manipulated.", "No sign", "Too close", "No judgement"))
    )
    page.evaluate("() => { const v = document.getElementById('player'); v.muted = true; }")
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    page.evaluate("() => document.getElementById('player').play()")
    page.wait_for_function("() => document.getElementById('player').currentTime > 0.2")
    page.evaluate("() => document.getElementById('player').pause()")
    duration = page.evaluate("() => document.getElementById('player').duration")
    svg = page.locator("#timeline svg").bounding_box()
    page.mouse.click(svg["x"] + svg["width"] * 0.75, svg["y"] + svg["height"] / 2)
    page.wait_for_function(
        "(d) => Math.abs(document.getElementById('player').currentTime - 0.75 * d) < 0.5",
        arg=duration,
    )

    # The annotated version (face boxes and scores drawn in) takes over where the clip was.
    at = page.evaluate("() => document.getElementById('player').currentTime")
    page.check("#views input[value^=annotated]")
    page.wait_for_function(
        "() => { const v = document.getElementById('player');"
        " return v.currentSrc.includes('/annotated?detector=') && v.readyState >= 2"
        " && !v.seeking; }"
    )
    now = page.evaluate("() => document.getElementById('player').currentTime")
    assert now == pytest.approx(at, abs=0.5)
    page.evaluate("() => document.getElementById('player').play()")
    page.wait_for_function(
        "(t) => document.getElementById('player').currentTime > t + 0.2", arg=now
    )
    page.evaluate("() => document.getElementById('player').pause()")
    page.screenshot(path=str(tmp_path / "desk-annotated.png"), full_page=True)

    # Review it, with a note full of markup.
    page.check("input[name=decision][value=confirmed_fake]")
    page.fill("textarea[name=note]", NOTE)
    page.click(".review-form button[type=submit]")
    page.wait_for_selector("#review .rv-confirmed_fake")
    assert page.locator("#review q.note").inner_text() == NOTE
    assert page.locator("#review q.note b, #review q.note img").count() == 0
    page.screenshot(path=str(tmp_path / "desk-video.png"), full_page=True)

    # Filter the list by review state.
    page.goto(f"http://127.0.0.1:{desk.port}/desk/")
    page.select_option("select[name=review]", "confirmed_fake")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*review=confirmed_fake.*"))
    names = page.locator("#rows .name a").all_inner_texts()
    assert names == ["editor-copy.mp4"]

    # The review queue: the keys move and judge.
    page.goto(f"http://127.0.0.1:{desk.port}/desk/queue")
    if page.locator("#queue tbody tr").count():
        page.keyboard.press("s")
        page.wait_for_function(
            "() => /Needs a second look/.test(document.getElementById('queue-said').textContent)"
        )
    page.screenshot(path=str(tmp_path / "desk-queue.png"), full_page=True)

    # Sign out: the desk asks for a key again.
    page.goto(f"http://127.0.0.1:{desk.port}/desk/")
    page.click("text=Sign out")
    page.wait_for_url(re.compile(r".*/desk/signin$"))
    page.goto(f"http://127.0.0.1:{desk.port}/desk/")
    assert "/desk/signin" in page.url
    page.screenshot(path=str(tmp_path / "desk-signin.png"), full_page=True)
    assert dialogs == []


@needs
def test_retry_a_failed_job(desk: Daemon, browser: Any, tmp_path: Path) -> None:
    page = open_page(browser, desk, [])
    bad = make_text_as_mp4(tmp_path / "notes.mp4")
    drop(bad, desk.root / "inbox", "notes.mp4")
    sign_in(page, desk, REVIEWER)
    page.goto(f"http://127.0.0.1:{desk.port}/desk/?show=failed")
    row_of(page, "notes.mp4").wait_for()
    job_id = job_id_of(page, "notes.mp4")
    page.goto(f"http://127.0.0.1:{desk.port}/desk/jobs/{job_id}")
    # The row turns failed before the file is back in failed/: the button needs it there.
    for _ in range(60):
        if page.locator("#retry").count():
            break
        page.wait_for_timeout(500)
        page.reload()
    assert "not a video" in page.locator("#failure").inner_text()
    page.screenshot(path=str(tmp_path / "desk-failed.png"), full_page=True)
    page.click("#retry")
    page.wait_for_url(re.compile(rf".*/desk/jobs/{job_id}$"))
    doc = page.request.get(f"http://127.0.0.1:{desk.port}/desk/jobs/{job_id}.json").json()
    assert doc["state"] in ("queued", "running", "failed")
    assert "queued again by retry" in desk.log.read_text()


@needs
def test_read_only_key_sees_but_cannot_review(desk: Daemon, browser: Any) -> None:
    page = open_page(browser, desk, [])
    sign_in(page, desk, READER)
    assert page.locator("#drop").count() == 0
    job_id = page.locator("#rows tr").first.get_attribute("data-id")
    page.goto(f"http://127.0.0.1:{desk.port}/desk/jobs/{job_id}")
    assert page.locator(".review-form").count() == 0
    assert "read only" in page.locator(".who").inner_text()
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    answer = page.request.post(
        f"http://127.0.0.1:{desk.port}/desk/jobs/{job_id}/review",
        form={"csrf": csrf, "decision": "confirmed_real"},
        headers={"Accept": "application/json"},
    )
    assert answer.status == 403

    # An annotated version already drawn (the reviewer's, in test_a_day_at_the_desk) plays for
    # this key; having one drawn is refused.
    page.goto(f"http://127.0.0.1:{desk.port}/desk/")
    drawn = job_id_of(page, "editor-copy.mp4")
    video = page.request.get(
        f"http://127.0.0.1:{desk.port}/desk/jobs/{drawn}/annotated", headers={"Range": "bytes=0-99"}
    )
    assert (video.status, video.headers["content-type"]) == (206, "video/mp4")
    assert video.headers["content-disposition"].startswith("inline")
    undrawn = job_id_of(page, "from-the-field.mp4")
    refused = page.request.get(f"http://127.0.0.1:{desk.port}/desk/jobs/{undrawn}/annotated")
    assert (refused.status, refused.json()["error"]["code"]) == (403, "insufficient_scope")
    page.goto(f"http://127.0.0.1:{desk.port}/desk/jobs/{drawn}")
    assert page.locator("#views input[value^=annotated]").is_enabled()
    assert "cannot have one drawn" in page.locator("#views + .muted").inner_text()


@needs
def test_state_changes_need_the_csrf_token(desk: Daemon, browser: Any) -> None:
    page = open_page(browser, desk, [])
    sign_in(page, desk, REVIEWER)
    job_id = page.locator("#rows tr").first.get_attribute("data-id")
    url = f"http://127.0.0.1:{desk.port}/desk/jobs/{job_id}/review"
    json_please = {"Accept": "application/json"}
    missing = page.request.post(url, form={"decision": "second_look"}, headers=json_please)
    assert (missing.status, missing.json()["error"]["code"]) == (403, "csrf_token_invalid")
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    other_site = page.request.post(
        url,
        form={"csrf": csrf, "decision": "second_look"},
        headers={**json_please, "Origin": "http://evil.example"},
    )
    assert other_site.status == 403
    good = page.request.post(
        url, form={"csrf": csrf, "decision": "second_look"}, headers=json_please
    )
    assert good.status == 200
    # The page allows no inline script.
    answer = page.request.get(f"http://127.0.0.1:{desk.port}/desk/")
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    # Browsers asking for / get the desk; curl keeps the older service's JSON.
    browser_root = page.request.get(
        f"http://127.0.0.1:{desk.port}/", headers={"Accept": "text/html"}, max_redirects=0
    )
    assert (browser_root.status, browser_root.headers["location"]) == (303, "/desk/")
    plain = page.request.get(f"http://127.0.0.1:{desk.port}/", headers={"Accept": "*/*"})
    assert plain.json()["service"] == "drishtiksha"
