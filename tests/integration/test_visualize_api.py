"""The annotated video over the API (the older service's POST /analyze/visualize and
GET /v1/jobs/{id}/visualization) with a real worker and database, and ``analyze --visualize``."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import aiohttp
import av
import yaml
from PIL import Image
from typer.testing import CliRunner

from processor.cli import app
from tests.integration.test_api import (
    DETECTOR,
    Live,
    Start,
    clip,
    pipeline,
    start_api,
    until,
)
from tests.media import make_video

# test_api's fixtures, imported for pytest to find in this module.
SHARED_FIXTURES = (clip, pipeline, start_api)
CLIP_FRAMES = 15  # test_api's clip: 1 s at 15 fps, 320 x 240


async def fetch(live: Live, method: str, path: str, **kwargs: object) -> tuple[int, str, bytes]:
    """Status, content type and raw body."""
    async with live.session.request(method, live.url(path), **kwargs) as r:  # type: ignore[arg-type]
        return r.status, r.content_type, await r.read()


async def upload_raw(live: Live, path: str, video: bytes) -> tuple[int, str, bytes]:
    form = aiohttp.FormData()
    form.add_field("video", io.BytesIO(video), filename="clip.mp4", content_type="video/mp4")
    return await fetch(live, "POST", path, data=form)


def assert_playable(body: bytes, frames: int, size: tuple[int, int]) -> None:
    with av.open(io.BytesIO(body)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        decoded = list(container.decode(stream))
    assert len(decoded) == frames
    assert {(f.width, f.height) for f in decoded} == {size}


async def test_seed_visualize_answers_with_the_annotated_mp4(start_api: Start, clip: Path) -> None:
    live = await start_api()
    status, ctype, body = await upload_raw(live, "/analyze/visualize", clip.read_bytes())
    assert status == 200, body[:500]
    assert ctype == "video/mp4"
    assert_playable(body, CLIP_FRAMES, (320, 240))
    # Neither the job's upload nor the copy held for drawing stays in the upload area.
    await until(lambda: live.leftovers() == [], "the upload area to empty")

    [job] = live.queue.list(limit=5)
    kept = live.config.api.upload_dir.parent / "artefacts" / job.id
    assert sorted(p.name for p in kept.iterdir()) == [f"{DETECTOR}.annotated.mp4"]
    # The kept rendering serves the native endpoint, though the upload is gone.
    status, ctype, again = await fetch(live, "GET", f"/v1/jobs/{job.id}/visualization")
    assert (status, ctype) == (200, "video/mp4")
    assert again == body


async def test_seed_visualize_refuses_like_the_other_seed_endpoints(start_api: Start) -> None:
    live = await start_api(worker=False)
    status, _, body = await upload_raw(live, "/analyze/visualize?model=nope", b"not a video")
    assert status == 422
    assert json.loads(body)["error"] == "Model not found"
    status, _, body = await upload_raw(live, "/analyze/visualize", b"not a video at all")
    assert status == 415
    assert json.loads(body)["code"] == "not_a_video"
    assert live.leftovers() == []


async def test_folder_job_visualization(start_api: Start, clip: Path) -> None:
    live = await start_api()
    assert live.worker is not None
    inbox = live.config.inboxes[0]
    live.worker.lifecycle.prepare_folders()
    dropped = inbox.path / "clip.mp4"
    shutil.copy(clip, dropped)
    await live.worker.lifecycle.accept(inbox, dropped)
    [job] = live.queue.list(limit=5)

    def finalized() -> bool:
        view = live.queue.get(job.id)
        return view is not None and view.finalized_at is not None

    await until(finalized, "the folder job to be finalized")
    view = live.queue.get(job.id)
    assert view is not None
    assert view.output_path is not None
    assert Path(view.output_path).is_file()

    path = f"/v1/jobs/{job.id}/visualization"
    status, ctype, body = await fetch(live, "GET", f"{path}?detector={DETECTOR}")
    assert (status, ctype) == (200, "video/mp4"), body[:500]
    assert_playable(body, CLIP_FRAMES, (320, 240))
    # The file in done/ is left as it was; the rendering is kept apart from it.
    assert sorted(p.name for p in inbox.done.iterdir()) == ["clip.mp4", "clip.mp4.verdict.json"]

    status, _, body = await fetch(live, "GET", f"{path}?detector=other")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "result_not_found"
    status, _, body = await fetch(live, "GET", f"{path}?detector=a/b")
    assert status == 400


async def test_visualization_needs_the_video_or_a_kept_rendering(
    start_api: Start, clip: Path
) -> None:
    live = await start_api()
    status, _, body = await upload_raw(live, "/v1/jobs?wait=60", clip.read_bytes())
    assert status == 201
    job_id = json.loads(body)["id"]
    await until(lambda: live.leftovers() == [], "the upload to be deleted")
    status, _, body = await fetch(live, "GET", f"/v1/jobs/{job_id}/visualization")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "video_gone"
    status, _, body = await fetch(live, "GET", f"/v1/jobs/{'0' * 32}/visualization")
    assert status == 404
    assert json.loads(body)["error"]["code"] == "job_not_found"


async def test_visualization_of_an_unfinished_job_is_a_conflict(
    start_api: Start, clip: Path
) -> None:
    live = await start_api(worker=False)
    status, _, body = await upload_raw(live, "/v1/jobs", clip.read_bytes())
    assert status == 201
    job_id = json.loads(body)["id"]
    status, _, body = await fetch(live, "GET", f"/v1/jobs/{job_id}/visualization")
    assert status == 409
    assert json.loads(body)["error"]["code"] == "job_not_done"


def test_cli_analyze_writes_video_and_timeline(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'd.db'}"},
                "device": "cpu",
                "detectors": {DETECTOR: {"weights": "dummy", "num_frames": 8}},
            }
        )
    )
    video = make_video(tmp_path / "face.mp4", seconds=1.0, fps=10, size=(320, 240))
    out = tmp_path / "viz"
    result = CliRunner().invoke(
        app, ["analyze", str(video), "--json", "--visualize", str(out), "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    [res] = json.loads(result.stdout)["detectors"]
    annotated = out / f"face.{DETECTOR}.annotated.mp4"
    timeline = out / f"face.{DETECTOR}.timeline.png"
    assert res["visualization"] == {"video": str(annotated), "timeline": str(timeline)}
    assert_playable(annotated.read_bytes(), 10, (320, 240))
    with Image.open(timeline) as image:
        assert image.format == "PNG"
