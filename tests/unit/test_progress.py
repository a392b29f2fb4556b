"""The long commands' progress: bars on a terminal, plain throttled lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from processor.progress import Steps


def _plain(min_interval_s: float) -> tuple[Steps, io.StringIO]:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=False, width=120)
    return Steps(console, min_interval_s=min_interval_s), sink


def test_without_a_terminal_each_step_is_a_line() -> None:
    steps, sink = _plain(0.0)
    with steps:
        task = steps.add("analysing", total=3)
        for _ in range(3):
            task.advance()
    lines = sink.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "analysing: 1/3 (33%)",
        "analysing: 2/3 (67%)",
        "analysing: 3/3 (100%)",
    ]
    assert all(line.endswith(" s") for line in lines)


def test_lines_are_throttled_but_the_first_and_last_always_show() -> None:
    steps, sink = _plain(3600.0)
    with steps:
        task = steps.add("evaluating", total=50)
        for _ in range(50):
            task.advance()
    lines = sink.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("evaluating: 1/50 (2%)")
    assert lines[1].startswith("evaluating: 50/50 (100%)")


def test_a_task_takes_a_new_description_and_an_unknown_total() -> None:
    steps, sink = _plain(0.0)
    with steps:
        fit = steps.add("training", total=None)
        fit.update(completed=4, description="training (val loss 0.412)")
    assert sink.getvalue().startswith("training (val loss 0.412): 4, ")


def test_a_terminal_gets_bars_and_no_lines() -> None:
    sink = io.StringIO()
    console = Console(file=sink, force_terminal=True, width=120)
    steps = Steps(console)
    assert steps.bars
    with steps:
        task = steps.add("decoding", total=2)
        task.advance()
        task.advance()
    # Transient bars: nothing of them stays, and no plain line was written.
    assert "decoding: 2/2" not in sink.getvalue()
