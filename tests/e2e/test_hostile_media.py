"""The daemon against a corpus of hostile files dropped at once: every file ends exactly once in
done/ or failed/ with a typed code, the files the README says are ignored stay where they are,
and the daemon stays healthy with bounded memory."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from processor.files import sha256_file
from tests.e2e.test_daemon import Daemon, wait_for
from tests.hostile import (
    encode,
    make_declared_size,
    make_empty_mp4,
    make_faststart,
    make_image,
    make_random,
    make_two_video_streams,
    make_variable_rate,
    make_vp9_bomb,
    utf8_name,
    with_trailer,
)
from tests.media import make_audio_only, make_text_as_mp4, make_truncated, make_video

pytestmark = pytest.mark.e2e

DONE = "done"
# Every code a failed job may carry (README, "Error codes").
TYPED_CODES = {
    "empty_file",
    "not_a_video",
    "corrupt_video",
    "no_video_stream",
    "file_too_large",
    "too_long",
    "too_many_pixels",
    "too_many_frames",
    "transient",
    "device_oom",
    "storage_busy",
    "max_attempts",
}
# Tight enough that the corpus meets each limit, loose enough for an hour-long clip.
LIMITS = {"max_duration_s": 7200, "max_decoded_frames": 5000}
TINY_FILES = 200
GROW_S = 10.0
# The daemon idles at about 1 GiB (torch, dlib, the detector). FFmpeg decodes one frame while
# opening a file, so declared-16000 alone briefly adds about 750 MiB; the 4K bomb, decoded in
# full, a few tens. A bomb whose frames were kept, or two declared giants at once, would cross.
MAX_RSS_BYTES = 2 * 1024**3


def _encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


@dataclass
class Corpus:
    """Files in ``folder`` to drop under their names, and what each must end as."""

    folder: Path
    expected: dict[str, str]
    skipped: dict[str, str]


def _build(folder: Path) -> Corpus:
    expected: dict[str, str] = {}

    def add(name: str, outcome: str, make: Callable[[Path], object]) -> None:
        make(folder / name)
        expected[name] = outcome

    base = make_faststart(folder / "base.mp4")
    moov_last = make_video(folder / "moov-last.mp4", seconds=1.0, fps=30, size=(160, 120))
    add("zero.mp4", "empty_file", lambda p: p.write_bytes(b""))
    add("one-byte.mp4", "not_a_video", lambda p: p.write_bytes(b"\x00"))
    add("text.mp4", "not_a_video", make_text_as_mp4)
    add("png.mp4", "not_a_video", lambda p: make_image(p, ".png"))
    add("jpeg.mp4", "not_a_video", lambda p: make_image(p, ".jpg"))
    add("random.mp4", "not_a_video", lambda p: make_random(p, 4096, seed=1))
    add(
        "mp4-header-then-garbage.mp4",
        "corrupt_video",
        lambda p: make_random(p, 4096, seed=2, prefix=b"\x00\x00\x00\x18ftypisom"),
    )
    add("cut-10.mp4", "corrupt_video", lambda p: make_truncated(base, p, 0.10))
    add("cut-50.mp4", "corrupt_video", lambda p: make_truncated(base, p, 0.50))
    # The last 1% holds the last frame or two: within the decoder's tolerance for sampling.
    add("cut-99.mp4", DONE, lambda p: make_truncated(base, p, 0.99))
    add("moov-at-end-cut.mp4", "corrupt_video", lambda p: make_truncated(moov_last, p, 0.90))
    add("no-frames.mp4", "no_video_stream", make_empty_mp4)
    add("audio-only.mp4", "no_video_stream", make_audio_only)
    # FFmpeg itself rejects 16384x16384 (its buffers would overflow), so nothing is decoded.
    add("declared-16384.mp4", "corrupt_video", lambda p: make_declared_size(p, 16384, 16384))
    add("declared-16000.mp4", "too_many_pixels", lambda p: make_declared_size(p, 16000, 16000))
    add("1x1.mp4", DONE, lambda p: encode(p, "libx264", (1, 1), 20, 10, pix_fmt="yuv444p"))
    add("two-frames.mp4", DONE, lambda p: encode(p, "libx264", (160, 120), 2, 25))
    add("4096x2.mp4", DONE, lambda p: encode(p, "libx264", (4096, 2), 20, 10))
    add("hour-long.mp4", DONE, lambda p: encode(p, "libx264", (16, 16), 3600, 1))
    add(
        "two-hours.mp4",
        "too_long",
        lambda p: encode(p, "libx264", (16, 16), 1825, Fraction(1, 4)),
    )
    add("frame-flood.mp4", "too_many_frames", lambda p: encode(p, "libx264", (16, 16), 6000, 1000))
    # 1200 decoded frames of 3840x2160 (15 GB in YUV 4:2:0) from 12 kB.
    add("4k-bomb.webm", DONE, lambda p: make_vp9_bomb(p, 1200))
    add(
        "vp9.webm", DONE, lambda p: make_video(p, seconds=1.0, fps=20, size=(160, 120), codec="vp9")
    )
    add(
        "streamed-no-duration.webm",
        DONE,
        lambda p: make_video(p, seconds=1.0, fps=20, size=(160, 120), codec="vp9", streamed=True),
    )
    add("two-video-streams.mp4", DONE, make_two_video_streams)
    add("rotated.mp4", DONE, lambda p: make_video(p, seconds=1.0, size=(160, 120), rotation=90))
    add("variable-rate.mp4", DONE, make_variable_rate)
    skipped: dict[str, str] = {}
    if _encoder("libx265"):
        add(
            "hevc-10bit.mp4",
            DONE,
            lambda p: encode(
                p,
                "libx265",
                (160, 120),
                20,
                10,
                pix_fmt="yuv420p10le",
                options={"x265-params": "log-level=error"},
            ),
        )
    else:
        skipped["hevc-10bit.mp4"] = "PyAV's FFmpeg has no libx265 encoder"
    if _encoder("libsvtav1"):
        add("av1.mp4", DONE, lambda p: encode(p, "libsvtav1", (160, 120), 20, 10))
    else:
        skipped["av1.mp4"] = "PyAV's FFmpeg has no libsvtav1 encoder"
    for name in ("with spaces.mp4", "видео 動画 😀.mp4", "new\nline.mp4", "-rf.mp4"):
        add(name, DONE, lambda p: shutil.copyfile(base, p))
    add(utf8_name(255), DONE, lambda p: with_trailer(base, p, b"255"))
    add("twin-a.mp4", DONE, lambda p: with_trailer(base, p, b"twin"))
    add("twin-b.mp4", DONE, lambda p: with_trailer(base, p, b"twin"))
    tiny = encode(folder / "tiny.mp4", "libx264", (32, 32), 8, 8)
    for i in range(TINY_FILES):
        # Half are tiny distinct videos (each decoded: no stored result fits), half junk.
        if i % 2:
            add(f"tiny-{i:03}.mp4", "not_a_video", lambda p, i=i: make_random(p, 16, seed=i))
        else:
            add(f"tiny-{i:03}.mp4", DONE, lambda p, i=i: with_trailer(tiny, p, b"%d" % i))
    return Corpus(folder, expected, skipped)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return _build(tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def daemon(tmp_path: Path, database_url: str) -> Iterator[Daemon]:
    inbox = {
        "name": "hostile",
        "path": str(tmp_path / "inbox"),
        "work": str(tmp_path / "work"),
        "done": str(tmp_path / "done"),
        "failed": str(tmp_path / "failed"),
        # Long enough that the slowly growing file, written every 50 ms, is never taken for
        # complete on a busy machine; short enough to keep the run quick.
        "quiet_s": 1.0,
        "rescan_s": 2,
    }
    d = Daemon(tmp_path, database_url, inboxes=[inbox], limits=LIMITS)
    yield d
    if d.proc is not None:
        d.proc.kill()
        d.proc.wait()


def _grow(src: Path, dst: Path, seconds: float) -> None:
    """Write ``src`` to ``dst`` in small pieces over ``seconds``, as a slow network copy."""
    payload = src.read_bytes()
    pieces = max(1, int(seconds / 0.05))
    step = -(-len(payload) // pieces)
    with dst.open("wb") as f:
        for at in range(0, len(payload), step):
            f.write(payload[at : at + step])
            f.flush()
            time.sleep(0.05)


def outcomes(root: Path) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """Inbox file name -> [(folder, code or "done", sidecar)] for every sidecar under
    ``root``'s done/ and failed/."""
    found: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for folder, suffix in (("done", ".verdict.json"), ("failed", ".error.json")):
        if not (root / folder).is_dir():
            continue
        for sidecar in (root / folder).iterdir():
            if not sidecar.name.endswith(suffix):
                continue
            doc = json.loads(sidecar.read_text())
            outcome = DONE if folder == "done" else doc["error"]["code"]
            name = Path(doc["source"]["ref"]).name
            found.setdefault(name, []).append((folder, outcome, doc))
    return found


def _peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process has had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_hostile_corpus(daemon: Daemon, corpus: Corpus, tmp_path: Path) -> None:
    daemon.start()
    inbox, stage = tmp_path / "inbox", tmp_path / "stage"
    stage.mkdir()
    expected = dict(corpus.expected)
    started = time.monotonic()

    # Ignored by design (README, "How a file travels"): they must stay exactly where they are.
    (inbox / "abandoned.mp4.part").write_bytes((corpus.folder / "rotated.mp4").read_bytes())
    (inbox / "passwd.mp4").symlink_to("/etc/passwd")
    (inbox / "folder.mp4").mkdir()
    shutil.copyfile(corpus.folder / "vp9.webm", inbox / "folder.mp4" / "inner.mp4")
    ignored = {"abandoned.mp4.part", "passwd.mp4", "folder.mp4"}

    moov_last = corpus.folder / "moov-last.mp4"
    grower = threading.Thread(target=_grow, args=(moov_last, inbox / "growing.mp4", GROW_S))
    grower.start()
    expected["growing.mp4"] = DONE

    for name in corpus.expected:
        shutil.copyfile(corpus.folder / name, stage / name)
    for name in corpus.expected:
        os.rename(stage / name, inbox / name)

    # Written whole under a temporary name, left long enough that a watcher not ignoring
    # ".part" would take it, then renamed: it must be judged once, under its final name.
    part = inbox / "renamed.mp4.part"
    shutil.copyfile(corpus.folder / "vp9.webm", part)
    time.sleep(3)
    os.rename(part, inbox / "renamed.mp4")
    expected["renamed.mp4"] = DONE
    grower.join()

    wait_for(
        lambda: len(outcomes(tmp_path)) >= len(expected),
        240,
        daemon,
        f"{len(expected)} files to end in done/ or failed/",
    )
    # Two more rescans: nothing ignored may turn into a job late.
    time.sleep(5)
    elapsed = time.monotonic() - started

    found = outcomes(tmp_path)
    table = "\n".join(
        f"  {name!r}: {[o for _, o, _ in ends]}" for name, ends in sorted(found.items())
    )
    print(f"{len(found)} files ended in {elapsed:.0f} s; skipped kinds: {corpus.skipped}\n{table}")
    assert set(found) == set(expected), table
    twice = {name: ends for name, ends in found.items() if len(ends) != 1}
    assert not twice, f"files that ended more than once: {twice}"
    actual = {name: ends[0][1] for name, ends in found.items()}
    wrong = {n: (actual[n], want) for n, want in expected.items() if actual[n] != want}
    assert not wrong, f"(got, expected): {wrong}"
    assert set(actual.values()) - {DONE} <= TYPED_CODES

    for name, [(folder, _, doc)] in found.items():
        assert (tmp_path / folder / doc["file"]).is_file(), f"{name}: {doc['file']} is missing"
    for folder in ("done", "failed"):
        files = {p.name for p in (tmp_path / folder).iterdir() if not p.name.endswith(".json")}
        named = {doc["file"] for ends in found.values() for f, _, doc in ends if f == folder}
        assert files == named, f"{folder}/ holds files no sidecar names"

    [(_, _, growing)] = found["growing.mp4"]
    assert growing["sha256"] == sha256_file(moov_last), "judged before it was fully written"
    assert growing["video"]["duration_s"] == pytest.approx(1.0, abs=0.1)
    twins = {found[n][0][2]["sha256"] for n in ("twin-a.mp4", "twin-b.mp4")}
    assert len(twins) == 1
    for name, [(folder, _, doc)] in found.items():
        if folder == "done":
            assert [r["detector"] for r in doc["detectors"]] == ["color-cues-lstm-v1"], name

    assert {p.name for p in inbox.iterdir()} == ignored
    assert (inbox / "passwd.mp4").is_symlink()
    assert os.readlink(inbox / "passwd.mp4") == "/etc/passwd"
    assert [p.name for p in (inbox / "folder.mp4").iterdir()] == ["inner.mp4"]
    assert not list((tmp_path / "work").iterdir()), "the work area is empty when all is done"

    health = daemon.health()
    assert health is not None
    assert health["status"] == "healthy"
    assert daemon.proc is not None
    peak = _peak_rss(daemon.proc.pid)
    print(f"daemon peak RSS {peak / 1024**2:.0f} MiB")
    assert peak < MAX_RSS_BYTES
    assert daemon.stop() == 0, daemon.tail()
