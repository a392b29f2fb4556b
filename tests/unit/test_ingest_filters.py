import pytest

from processor.ingest.folder import is_junk


@pytest.mark.parametrize(
    "name",
    [
        ".DS_Store",
        ".hidden.mp4",
        "._clip.mp4",
        ".clip.mp4.a1B2c3",  # rsync's temp name
        "~$report.docx",
        "clip.mp4.part",
        "clip.mp4.PART",
        "clip.partial",
        "clip.tmp",
        "clip.temp",
        "clip.mp4.crdownload",
        "clip.mp4.download",
        "clip.mp4.swp",
        "Thumbs.db",
        "desktop.ini",
        "clip.mp4.verdict.json",
        "clip.mp4.error.json",
    ],
)
def test_junk(name: str) -> None:
    assert is_junk(name)


@pytest.mark.parametrize(
    "name",
    ["clip.mp4", "CLIP.MOV", "a.part.mp4", "tmp.mp4", "clip~.mp4", "verdict.json.mp4", "x.json"],
)
def test_not_junk(name: str) -> None:
    assert not is_junk(name)
