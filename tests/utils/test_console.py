"""Tests of hither.utils.ConsoleCapture."""

from __future__ import annotations

import io
import sys
import threading

import pytest

from hither.utils import ConsoleCapture


def texts(cc: ConsoleCapture) -> list[tuple[str, bool]]:
    return [(line["text"], line["stderr"]) for line in cc.lines]


def test_stderr_flag_is_right() -> None:
    with ConsoleCapture(show_console=False) as cc:
        print("to out")
        print("to err", file=sys.stderr)
        sys.stdout.write("out again\n")
        sys.stderr.write("err again\n")
    assert texts(cc) == [
        ("to out", False),
        ("to err", True),
        ("out again", False),
        ("err again", True),
    ]


def test_runtime_info_shape() -> None:
    with ConsoleCapture(label="myjob", show_console=False) as cc:
        print("hello")
    info = cc.runtime_info()
    assert set(info) == {"start_time", "end_time", "elapsed_sec", "console_out"}
    assert info["start_time"] <= info["end_time"]
    assert info["elapsed_sec"] == pytest.approx(info["end_time"] - info["start_time"])
    assert info["console_out"]["label"] == "myjob"
    (line,) = info["console_out"]["lines"]
    assert set(line) == {"timestamp", "text", "stderr"}
    assert line["text"] == "hello" and line["stderr"] is False
    assert info["start_time"] <= line["timestamp"] <= info["end_time"]


def test_runtime_info_before_enter_raises() -> None:
    with pytest.raises(RuntimeError):
        ConsoleCapture().runtime_info()


def test_runtime_info_inside_block() -> None:
    with ConsoleCapture(show_console=False) as cc:
        print("a")
        info = cc.runtime_info()
        assert [x["text"] for x in info["console_out"]["lines"]] == ["a"]
        assert info["end_time"] >= info["start_time"]


def test_streams_restored_after_exception() -> None:
    out, err = sys.stdout, sys.stderr
    cc = ConsoleCapture(show_console=False)
    with pytest.raises(ZeroDivisionError):
        with cc:
            print("before")
            assert sys.stdout is not out and sys.stderr is not err
            1 / 0  # noqa: B018
    assert sys.stdout is out
    assert sys.stderr is err
    assert texts(cc) == [("before", False)]


def test_echo_with_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    with ConsoleCapture(label="j", show_console=True, prefix="[j] "):
        print("hello")
        print("oops", file=sys.stderr)
    captured = capsys.readouterr()
    assert captured.out == "[j] hello\n"
    assert captured.err == "[j] oops\n"


def test_echo_without_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    with ConsoleCapture(show_console=True):
        print("plain")
    assert capsys.readouterr().out == "plain\n"


def test_no_echo_when_hidden(capfd: pytest.CaptureFixture[str]) -> None:
    with ConsoleCapture(show_console=False) as cc:
        print("quiet")
        print("quiet err", file=sys.stderr)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert len(cc.lines) == 2


def test_partial_lines_are_buffered() -> None:
    with ConsoleCapture(show_console=False) as cc:
        sys.stdout.write("abc")
        sys.stdout.write("def")
        assert cc.lines == []
        sys.stdout.write("ghi\njkl")
        assert texts(cc) == [("abcdefghi", False)]
        print("progress", end="", file=sys.stderr)
        sys.stdout.write("\n")
        assert texts(cc) == [("abcdefghi", False), ("jkl", False)]
    # the stderr partial is flushed at exit
    assert texts(cc) == [("abcdefghi", False), ("jkl", False), ("progress", True)]


def test_partial_stdout_and_stderr_do_not_mix() -> None:
    with ConsoleCapture(show_console=False) as cc:
        sys.stdout.write("out-")
        sys.stderr.write("err-")
        sys.stdout.write("end\n")
        sys.stderr.write("end\n")
    assert texts(cc) == [("out-end", False), ("err-end", True)]


def test_empty_lines_kept_only_when_explicit() -> None:
    with ConsoleCapture(show_console=False) as cc:
        print("a")
        print()
        sys.stdout.write("b\n\nc\r\n")
        sys.stdout.write("")
    assert [t for t, _ in texts(cc)] == ["a", "", "b", "", "c"]


def test_partial_line_echoed_at_exit(capsys: pytest.CaptureFixture[str]) -> None:
    with ConsoleCapture(prefix="> "):
        sys.stdout.write("no newline")
        assert capsys.readouterr().out == ""
    assert capsys.readouterr().out == "> no newline\n"


def test_writer_attributes() -> None:
    with ConsoleCapture(show_console=False):
        for stream in (sys.stdout, sys.stderr):
            assert stream.isatty() is False
            with pytest.raises(io.UnsupportedOperation):
                stream.fileno()
            assert isinstance(stream.encoding, str) and stream.encoding
            stream.flush()
            assert stream.writable()
            assert stream.write("xy\n") == 3
            with pytest.raises(TypeError):
                stream.write(b"bytes")  # type: ignore[arg-type]


def test_lines_returns_copies() -> None:
    with ConsoleCapture(show_console=False) as cc:
        print("x")
    cc.lines[0]["text"] = "changed"
    assert cc.lines[0]["text"] == "x"


def test_single_use() -> None:
    cc = ConsoleCapture(show_console=False)
    with cc:
        pass
    with pytest.raises(RuntimeError):
        with cc:
            pass


def test_threads_are_recorded() -> None:
    def work(i: int) -> None:
        for j in range(50):
            print(f"t{i}-{j}")

    with ConsoleCapture(show_console=False) as cc:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    got = sorted(line["text"] for line in cc.lines)
    assert got == sorted(f"t{i}-{j}" for i in range(4) for j in range(50))


def test_nested_captures() -> None:
    with ConsoleCapture(show_console=False) as outer:
        with ConsoleCapture(show_console=True, prefix="[inner] ") as inner:
            print("deep")
        print("shallow")
    assert texts(inner) == [("deep", False)]
    assert texts(outer) == [("[inner] deep", False), ("shallow", False)]


def test_stale_stream_reference_after_exit(capsys: pytest.CaptureFixture[str]) -> None:
    with ConsoleCapture(show_console=False) as cc:
        kept = sys.stdout
    kept.write("late\n")
    assert capsys.readouterr().out == "late\n"
    assert cc.lines == []
