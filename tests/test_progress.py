"""Progress lines: redrawn in place on a terminal, sparse plain lines in logs, off on request."""

from __future__ import annotations

import io

from quantbuild.progress import status, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _clock(step: float):
    now = [0.0]

    def tick() -> float:
        now[0] += step
        return now[0]

    return tick


def test_status_has_rate_and_eta():
    assert status("statistics", 16, 64, 4.0) == "statistics: 16/64 frames, 4.0 frames/s, ETA 12 s"
    assert status("x", 64, 64, 8.0) == "x: 64/64 frames, 8.0 frames/s"
    assert status("x", 1, 1000, 1.0, unit="iterations").endswith("ETA 16 min 39 s")


def test_terminal_redraws_one_line_and_erases_it(monkeypatch):
    monkeypatch.delenv("QUANTBUILD_PROGRESS", raising=False)
    out = Terminal()
    assert list(track(range(5), "evaluation", 5, stream=out, clock=_clock(1.0))) == list(range(5))
    text = out.getvalue()
    assert "\n" not in text  # never scrolls
    assert "\r\x1b[Kevaluation: 1/5 frames, 1.0 frames/s, ETA 4 s" in text
    assert "evaluation: 5/5 frames" in text and text.endswith("\r\x1b[K")


def test_logs_get_a_plain_line_only_every_30_seconds(monkeypatch):
    monkeypatch.delenv("QUANTBUILD_PROGRESS", raising=False)
    quick = io.StringIO()
    list(track(range(100), "statistics", 100, stream=quick, clock=_clock(0.1)))
    assert quick.getvalue() == ""  # a 10 s loop says nothing
    slow = io.StringIO()
    list(track(range(100), "statistics", 100, stream=slow, clock=_clock(1.0)))
    lines = slow.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in slow.getvalue()
    assert lines[0].startswith("statistics: 30/100 frames, 1.0 frames/s, ETA 1 min 10 s")


def test_progress_can_be_turned_off_or_forced(monkeypatch):
    monkeypatch.setenv("QUANTBUILD_PROGRESS", "0")
    out = Terminal()
    list(track(range(3), "x", 3, stream=out, clock=_clock(1.0)))
    assert out.getvalue() == ""
    monkeypatch.setenv("QUANTBUILD_PROGRESS", "1")
    forced = io.StringIO()
    list(track(range(3), "x", 3, stream=forced, clock=_clock(1.0)))
    assert "x: 3/3 frames" in forced.getvalue()
