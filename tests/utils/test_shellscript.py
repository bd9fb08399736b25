"""Tests of hither.utils.ShellScript."""

from __future__ import annotations

import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from hither.utils import ConsoleCapture, ShellScript

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell scripts")


def live_group_members(pgid: int) -> list[int]:
    """Pids of non-zombie processes in process group ``pgid`` (independent /proc scan)."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_text = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        rest = stat_text[stat_text.rfind(")") + 2 :].split()
        if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def wait_group_gone(pgid: int, within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while True:
        members = live_group_members(pgid)
        if not members or time.monotonic() > deadline:
            return members
        time.sleep(0.05)


def pid_of(ss: ShellScript) -> int:
    assert ss._process is not None
    return ss._process.pid


def test_output_inherited(capfd: pytest.CaptureFixture[str]) -> None:
    ss = ShellScript(
        """
        #!/bin/bash
        echo hello out
        echo hello err >&2
        """
    )
    ss.start()
    assert ss.wait(30) == 0
    ss.cleanup()
    captured = capfd.readouterr()
    assert captured.out == "hello out\n"
    assert captured.err == "hello err\n"


def test_redirect_output_to_python_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    ss = ShellScript(
        "#!/bin/bash\necho line1\necho line2 >&2\nprintf tail\n", redirect_output_to_stdout=True
    )
    with ConsoleCapture(show_console=False) as cc:
        ss.start()
        assert ss.wait(30) == 0
    ss.cleanup()
    assert [x["text"] for x in cc.lines] == ["line1", "line2", "tail"]
    assert all(x["stderr"] is False for x in cc.lines)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("code", [0, 1, 3, 42])
def test_exit_codes(code: int) -> None:
    with ShellScript(f"#!/bin/sh\nexit {code}\n") as ss:
        ss.start()
        assert ss.wait(30) == code
        assert ss.returnCode() == code
        assert ss.return_code() == code
        assert ss.isFinished() and ss.is_finished()
        assert not ss.isRunning() and not ss.is_running()


def test_dedent() -> None:
    ss = ShellScript(
        """

            #!/bin/bash
            if true; then
                echo x
            fi

        """
    )
    assert ss.script == "#!/bin/bash\nif true; then\n    echo x\nfi\n"


def test_dedent_error() -> None:
    with pytest.raises(ValueError, match="First line must not be indented relative to others"):
        ShellScript(
            """
                #!/bin/bash
              echo less indented
            """
        )


def test_missing_shebang() -> None:
    ss = ShellScript("echo no shebang\n")
    with pytest.raises(ValueError, match="shebang"):
        ss.start()
    assert not ss.isRunning()


def test_not_started_state() -> None:
    ss = ShellScript("#!/bin/sh\ntrue\n")
    assert not ss.isRunning() and not ss.isFinished()
    with pytest.raises(RuntimeError):
        ss.returnCode()
    with pytest.raises(RuntimeError):
        ss.wait(0)
    assert ss.elapsedTimeSinceStart() is None  # as in 0.4.2
    ss.stop()  # no-op
    ss.kill()  # no-op


def test_stop_is_prompt_and_kills_the_group() -> None:
    ss = ShellScript("#!/bin/bash\nsleep 60\n")
    ss.start()
    pgid = pid_of(ss)
    assert os.getpgid(pgid) == pgid  # its own process group
    try:
        # the sleep child is there
        deadline = time.monotonic() + 10
        while len(live_group_members(pgid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(live_group_members(pgid)) == 2
        assert ss.isRunning()
        with pytest.raises(RuntimeError):
            ss.returnCode()
        assert ss.wait(timeout=0.1) is None

        t0 = time.monotonic()
        ss.stop()
        assert time.monotonic() - t0 < 3.0
        assert ss.isFinished()
        assert ss.returnCode() == -signal.SIGTERM
        assert wait_group_gone(pgid) == []
    finally:
        ss.kill()
        ss.cleanup()


def test_stop_escalates_to_sigkill() -> None:
    # bash ignores SIGTERM, and so does its sleep (ignored signals are inherited)
    ss = ShellScript("#!/bin/bash\ntrap '' TERM\nsleep 60\n")
    ss.start()
    pgid = pid_of(ss)
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        ss.stop()
        assert time.monotonic() - t0 < 6.0
        assert ss.returnCode() == -signal.SIGKILL
        assert wait_group_gone(pgid) == []
    finally:
        ss.kill()
        ss.cleanup()


def test_stop_kills_stragglers_of_the_group() -> None:
    # the background subshell ignores SIGTERM; the leader dies at once
    ss = ShellScript("#!/bin/bash\n(trap '' TERM; sleep 60) &\nsleep 60\n")
    ss.start()
    pgid = pid_of(ss)
    try:
        deadline = time.monotonic() + 10
        while len(live_group_members(pgid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        t0 = time.monotonic()
        ss.stop()
        assert time.monotonic() - t0 < 6.0
        assert wait_group_gone(pgid) == []
    finally:
        ss.kill()
        ss.cleanup()


def test_stop_with_signal() -> None:
    ss = ShellScript("#!/bin/bash\nsleep 60\n")
    ss.start()
    try:
        assert ss.stopWithSignal(signal.SIGTERM, 5.0) is True
        assert ss.returnCode() == -signal.SIGTERM
        assert ss.stopWithSignal(signal.SIGTERM, 1.0) is True  # nothing left to stop
    finally:
        ss.kill()
        ss.cleanup()


def test_stop_with_ignored_signal_returns_false() -> None:
    ss = ShellScript("#!/bin/bash\ntrap '' TERM\nsleep 60\n")
    ss.start()
    try:
        time.sleep(0.3)
        assert ss.stop_with_signal(signal.SIGTERM, 0.3) is False
        assert ss.isRunning()
    finally:
        ss.kill()
        ss.cleanup()
    assert ss.returnCode() == -signal.SIGKILL


def test_kill() -> None:
    ss = ShellScript("#!/bin/bash\nsleep 60\n")
    ss.start()
    pgid = pid_of(ss)
    ss.kill()
    assert ss.returnCode() == -signal.SIGKILL
    assert wait_group_gone(pgid) == []
    ss.cleanup()


def test_context_manager_stops_and_cleans_up() -> None:
    with ShellScript("#!/bin/bash\nsleep 60\n") as ss:
        ss.start()
        path = ss.scriptPath()
        assert path is not None and os.path.isfile(path)
        pgid = pid_of(ss)
    assert ss.isFinished()
    assert wait_group_gone(pgid) == []
    assert not os.path.exists(path)
    assert not os.path.exists(os.path.dirname(path))


def test_keep_temp_files() -> None:
    ss = ShellScript("#!/bin/sh\ntrue\n", keep_temp_files=True)
    ss.start()
    ss.wait(30)
    ss.cleanup()
    path = ss.script_path()
    assert path is not None and os.path.isfile(path)
    os.remove(path)
    os.rmdir(os.path.dirname(path))


def test_script_path_substitute_and_mode(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "my_script.sh"
    ss = ShellScript("#!/bin/bash\necho VALUE\n", script_path=str(target))
    ss.substitute("VALUE", "replaced")
    assert ss.scriptPath() == str(target)
    ss.start()
    assert ss.wait(30) == 0
    ss.cleanup()
    assert capfd.readouterr().out == "replaced\n"
    assert target.read_text() == "#!/bin/bash\necho replaced\n"  # a chosen path is kept
    assert stat.S_IMODE(target.stat().st_mode) == 0o744


def test_write(tmp_path: Path) -> None:
    ss = ShellScript("  #!/bin/sh\n  echo hi\n")
    out = tmp_path / "w.sh"
    ss.write(str(out))
    assert out.read_text() == "#!/bin/sh\necho hi\n"
    assert os.access(out, os.X_OK)


def test_elapsed_time() -> None:
    ss = ShellScript("#!/bin/sh\ntrue\n")
    ss.start()
    ss.wait(30)
    first = ss.elapsedTimeSinceStart()
    assert first >= 0
    time.sleep(0.05)
    assert ss.elapsed_time_since_start() > first
    ss.cleanup()


def test_start_twice_raises() -> None:
    ss = ShellScript("#!/bin/sh\ntrue\n")
    ss.start()
    try:
        with pytest.raises(RuntimeError):
            ss.start()
    finally:
        ss.wait(30)
        ss.cleanup()


def test_docker_kill_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.log"
    fake = bindir / "docker"
    fake.write_text(f'#!/bin/bash\necho "$@" > {log}\nkill -KILL -- -"$FAKE_PGID"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    ss = ShellScript("#!/bin/bash\nsleep 60\n", docker_container_name="hither_ctr_1")
    ss.start()
    pgid = pid_of(ss)
    monkeypatch.setenv("FAKE_PGID", str(pgid))
    try:
        ss.stop()
        assert log.read_text().split() == ["kill", "hither_ctr_1"]
        assert ss.returnCode() == -signal.SIGKILL  # ended by the (fake) docker kill
        assert wait_group_gone(pgid) == []
    finally:
        ss.kill()
        ss.cleanup()
