"""The files a Slurm handler and its nodes exchange: the time-limit notes."""

from __future__ import annotations

import os
import time

from hither.handlers import slurm_files as sf


def test_a_task_deadline_comes_from_slurm_else_from_the_batch_limit(tmp_path):
    assert sf.deadline(tmp_path) is None  # no limit asked, none told
    assert sf.deadline(tmp_path, "1900000000") == 1900000000.0
    sf.write_limit(tmp_path, 180)
    before = time.time()
    end = sf.deadline(tmp_path)
    assert end is not None and before + 180 <= end <= time.time() + 180
    # Slurm's own end time wins; garbage is no deadline
    assert sf.deadline(tmp_path, "1900000000") == 1900000000.0
    assert sf.deadline(tmp_path, "soon") >= end  # not a time: the limit again
    (tmp_path / "limit").write_text("nan\n")
    assert sf.deadline(tmp_path) is None
    (tmp_path / "limit").write_text("-5\n")
    assert sf.deadline(tmp_path) is None


def test_timeout_notes_are_per_task_and_never_followed(tmp_path):
    assert not sf.timed_out(tmp_path, 3)
    sf.mark_timed_out(tmp_path, 3)
    assert sf.timed_out(tmp_path, 3) and not sf.timed_out(tmp_path, 4)
    os.symlink(tmp_path / "elsewhere", tmp_path / "limit")
    assert sf.deadline(tmp_path) is None  # a link is not read
