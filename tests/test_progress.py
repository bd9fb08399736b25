"""Live progress: counts, when it shows, the terminal display (in a real pseudo-terminal)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import threading
import time

import pytest
from jobfuncs import jf_add, jf_print_then_raise, jf_sleep

import hither as hi
from hither import progress

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "progress_child.py")


def test_counts_text_and_eta():
    c = progress.Counts(total=10, done=4, cached=2, failed=1, running=2)
    assert c.eta(10.0) == pytest.approx(10.0 / 2 * 5)
    text = c.text(65)
    assert "5/10 jobs" in text and "2 running" in text and "2 cached" in text
    assert "1 failed" in text and "1:05" in text and "ETA" in text
    assert progress.Counts(total=3).eta(1.0) is None


def test_enabled_precedence(monkeypatch):
    monkeypatch.setenv("HITHER_PROGRESS", "0")
    assert not progress.enabled(None) and progress.enabled(True)
    monkeypatch.setenv("HITHER_PROGRESS", "1")
    assert progress.enabled(None) and not progress.enabled(False)
    monkeypatch.delenv("HITHER_PROGRESS")
    assert progress.enabled(None) is False  # pytest's output is not a terminal


class _Recorder:
    frames: list = []

    def start(self):
        pass

    def update(self, counts, elapsed):
        _Recorder.frames.append(progress.Counts(**vars(counts)))

    def print(self, text):
        pass

    def stop(self):
        pass


def test_a_session_counts_done_cached_and_failed(monkeypatch, tmp_path):
    monkeypatch.setattr(progress, "_default_display", _Recorder)
    monkeypatch.setattr(progress.Tracker, "SETTLE_SECONDS", 30.0)  # a loaded machine
    _Recorder.frames = []
    cache = hi.JobCache(path=tmp_path / "store")
    with hi.Config(progress=True, job_cache=cache, cache_failing=True):
        jf_add.run(x=100).result()  # one cached job in the session below
    with hi.Config(progress=True, job_cache=cache, cache_failing=True,
                   job_handler=hi.ParallelJobHandler(2)):
        jobs = [jf_sleep.run(seconds=0.3, value=i) for i in range(4)]
        jobs.append(jf_print_then_raise.run(message="counted as failed"))
        jobs.append(jf_add.run(x=100))
        hi.wait()
        # hi.wait() returns once the display shows the final counts (what is printed next
        # comes after the last frame)
        last = _Recorder.frames[-1]
    # the first job may join the session (it lingers a moment for follow-up jobs)
    assert (last.total, last.done, last.cached, last.failed) in ((6, 5, 1, 1), (7, 6, 1, 1))
    assert any(f.running for f in _Recorder.frames)  # seen while the jobs ran


def test_tracker_sessions_start_over():
    tracker = progress.Tracker(lambda: 0, make_display=_Recorder)
    tracker.created()
    tracker.completed("finished", True)
    counts, _, over = tracker.snapshot()
    assert over and (counts.total, counts.cached) == (1, 1)
    deadline = time.monotonic() + 5
    while tracker._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    tracker.created()
    counts, _, over = tracker.snapshot()
    assert not over and (counts.total, counts.cached) == (1, 0)
    tracker.completed("error", False)


def test_the_last_frame_shows_jobs_that_came_and_went_while_a_frame_was_drawn():
    """A job created and completed while the display draws a frame of an ended session is
    drawn before the display goes: the last frame is never stale, and settle() returns once
    it is drawn."""
    drawing, release = threading.Event(), threading.Event()

    class Slow(_Recorder):
        frames: list = []

        def update(self, counts, elapsed):
            Slow.frames.append(progress.Counts(**vars(counts)))
            if counts.total == 5 and counts.done == 5:  # the frame of the ended session
                drawing.set()
                release.wait(30)

    tracker = progress.Tracker(lambda: 0, make_display=Slow)
    for _ in range(5):
        tracker.created()
    deadline = time.monotonic() + 30
    while not Slow.frames and time.monotonic() < deadline:  # shown: more than 3 jobs live
        time.sleep(0.01)
    for _ in range(5):
        tracker.completed("finished", False)
    assert drawing.wait(30)
    tracker.created()  # comes and goes while that frame is drawn
    tracker.completed("finished", True)
    release.set()
    tracker.settle(30)
    last = Slow.frames[-1]
    assert (last.total, last.done, last.cached) == (6, 6, 1)
    while tracker._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tracker._thread is None and Slow.frames[-1] is last  # no frame after the last


def test_a_failing_display_is_dropped_with_a_warning_and_the_counts_go_on(caplog):
    class Broken(_Recorder):
        calls = 0

        def update(self, counts, elapsed):
            Broken.calls += 1
            raise RuntimeError("display failed")

    tracker = progress.Tracker(lambda: 0, make_display=Broken)
    for _ in range(5):
        tracker.created()
    deadline = time.monotonic() + 30
    while "display failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "progress display failed" in caplog.text
    for _ in range(5):
        tracker.completed("finished", False)
    t0 = time.monotonic()
    tracker.settle(30)  # not held by the display that is gone
    assert time.monotonic() - t0 < 5
    counts, _, over = tracker.snapshot()
    assert over and (counts.total, counts.done) == (5, 5) and Broken.calls == 1
    while tracker._thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tracker._thread is None


def _run_in_terminal(args: list[str], env: dict[str, str]) -> str:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], stdin=follower, stdout=follower,
                            stderr=follower, env={**os.environ, **env, "TERM": "xterm",
                                                  "COLUMNS": "100"}, close_fds=True)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(leader)
    return out.decode("utf-8", "replace")


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_terminal_shows_progress_and_job_lines_stay_whole():
    raw = _run_in_terminal(["console"], {"HITHER_PROGRESS": ""})
    text = _ANSI.sub("", raw).replace("\r", "\n")
    assert "8/8 jobs" in text, text[-2000:]
    lines = [x.strip() for x in text.split("\n")]
    for i in range(8):  # each echoed job line arrives whole, on a line of its own
        assert f"[progress_slow] line from job {i}" in lines, lines
    assert "results [0, 1, 2, 3, 4, 5, 6, 7]" in text


def test_progress_off_by_env_and_when_not_a_terminal():
    text = _ANSI.sub("", _run_in_terminal(["quiet"], {"HITHER_PROGRESS": "0"}))
    assert "jobs" not in text and "results [0, 1" in text
    out = subprocess.run([sys.executable, SCRIPT, "quiet"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "HITHER_PROGRESS": ""})
    assert "jobs" not in out.stdout and "results [0, 1" in out.stdout
