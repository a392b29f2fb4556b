"""kill -9 at random moments while real clips and hostile files flow through the daemon; after
the last restart and a clean stop, every dropped file has ended exactly once, nothing is stuck,
and no good clip was failed by the crashes.

Trials per backend: ``--chaos N`` (default 2); the seed is printed (``--chaos-seed`` repeats a
run).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from storage.db import make_engine
from storage.models import Job, JobResult
from tests.e2e.test_daemon import Daemon, drop, wait_for
from tests.e2e.test_hostile_media import DONE, outcomes
from tests.media import SHARED_VIDEOS, make_text_as_mp4, make_truncated

pytestmark = pytest.mark.e2e

CLIPS = (
    sorted(p for kind in ("real", "fake") for p in (SHARED_VIDEOS / kind).iterdir())
    if SHARED_VIDEOS.is_dir()
    else []
)
CLIPS_PER_TRIAL = 4
# From the drop to the kill: spans ingest, decoding and inference of a trial's clips.
KILL_WINDOW_S = (0.0, 8.0)


@pytest.mark.skipif(len(CLIPS) < 10, reason="../shared/videos is not present")
def test_kill_9_at_random_moments(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    trials: int = request.config.getoption("--chaos")
    seed: int = request.config.getoption("--chaos-seed") or random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    print(f"\nchaos: seed {seed}, {trials} trials")
    # A lease long enough never to lapse while the daemon is alive, however busy the machine:
    # a 20-trial run with 3 s leases also saw live workers lose renewals and get charged
    # attempts. Crashed workers' leases are ended by the restart, not waited out.
    daemon = Daemon(
        tmp_path, database_url, queue={"lease_s": 60, "poll_s": 0.2, "retry_base_s": 0.5}
    )
    inbox, media = tmp_path / "inbox", tmp_path / "media"
    media.mkdir()
    expected: dict[str, str] = {}
    kills: list[str] = []
    started = time.monotonic()
    # Job states are read from the database, not the API: on a busy machine the daemon may be
    # too slow to answer in time, which is no reason to stop the run.
    engine = make_engine(database_url)
    try:
        daemon.start()
        for trial in range(trials):
            for clip in rng.sample(CLIPS, CLIPS_PER_TRIAL):
                name = f"t{trial:02}-{clip.name}"
                drop(clip, inbox, name)
                expected[name] = DONE
            cut, notes = f"t{trial:02}-cut.mp4", f"t{trial:02}-notes.mp4"
            make_truncated(rng.choice(CLIPS), media / cut, 0.4)
            make_text_as_mp4(media / notes)
            drop(media / cut, inbox, cut)
            drop(media / notes, inbox, notes)
            expected |= {cut: "corrupt_video", notes: "not_a_video"}
            delay = rng.uniform(*KILL_WINDOW_S)
            time.sleep(delay)
            with engine.connect() as conn:
                states = Counter(conn.execute(select(Job.state)).scalars())
            daemon.stop(signal.SIGKILL)
            kills.append(f"trial {trial}: +{delay:.1f} s, jobs {dict(sorted(states.items()))}")
            daemon.start()
        wait_for(
            lambda: len(outcomes(tmp_path)) >= len(expected),
            120 + 30 * trials,
            daemon,
            f"{len(expected)} files to end (seed {seed})",
        )
        assert daemon.stop() == 0, daemon.tail()
        elapsed = time.monotonic() - started
        with engine.connect() as conn:
            jobs = conn.execute(select(Job.id, Job.source_ref, Job.state, Job.detectors)).all()
            results = conn.execute(
                select(JobResult.job_id, JobResult.detector, func.count()).group_by(
                    JobResult.job_id, JobResult.detector
                )
            ).all()
    finally:
        engine.dispose()
        if daemon.proc is not None:
            daemon.proc.kill()
            daemon.proc.wait()

    found = outcomes(tmp_path)
    counts = Counter(ends[0][1] for ends in found.values())
    print("\n".join(kills))
    print(f"{len(expected)} files, outcomes {dict(counts)}, {elapsed:.0f} s")
    context = f"(seed {seed})"
    assert set(found) == set(expected), context
    twice = {name: len(ends) for name, ends in found.items() if len(ends) != 1}
    assert not twice, f"files that ended more than once {context}: {twice}"
    actual = {name: ends[0][1] for name, ends in found.items()}
    bad = {n: (actual[n], want) for n, want in expected.items() if want != DONE}
    assert all(got == want for got, want in bad.values()), f"(got, expected) {context}: {bad}"
    assert not list((tmp_path / "work").iterdir()), f"left in the work area {context}"
    assert not list(inbox.iterdir()), f"left in the inbox {context}"

    assert Counter(Path(j.source_ref).name for j in jobs) == dict.fromkeys(expected, 1), context
    stuck = [j.source_ref for j in jobs if j.state in ("queued", "running")]
    assert not stuck, f"jobs stuck {context}: {stuck}"
    assert all(n == 1 for _, _, n in results), f"a detector judged a job twice {context}"
    judged = {(job_id, detector) for job_id, detector, _ in results}
    for job in jobs:
        if job.state == "done":
            assert {(job.id, d) for d in job.detectors} <= judged, context
    # Last, so that a run failing here has passed every check above.
    innocent = {n: actual[n] for n, want in expected.items() if want == DONE and actual[n] != DONE}
    assert not innocent, f"good clips failed by the crashes {context}: {innocent}"
