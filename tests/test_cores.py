"""Pieces of a stage side by side in threads: results in job order, and the others stop when
one fails or the build is interrupted."""

from __future__ import annotations

import time

import pytest

from quantbuild import cores


def test_pieces_in_threads_return_in_job_order():
    def piece(delay: float, value: int) -> int:
        time.sleep(delay)
        return value

    assert cores.in_threads(piece, [(0.2, 1), (0.0, 2), (0.1, 3)]) == [1, 2, 3]


def test_when_one_piece_fails_the_others_stop_at_their_next_check():
    seen = []

    def piece(kind: str) -> str:
        if kind == "fails":
            raise ValueError("not finite in frame 7")
        for _ in range(3000):  # ~30 s if never told to stop
            try:
                cores.check_stop()
            except cores.Stopped:
                seen.append("stopped")
                raise
            time.sleep(0.01)
        return "ran to its end"

    with pytest.raises(ValueError, match="frame 7"):
        cores.in_threads(piece, [("long",), ("fails",)])
    assert seen == ["stopped"]
    cores.check_stop()  # cleared: the next stage's pieces run
