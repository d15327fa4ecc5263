"""nncme.paths: path checks before work, atomic writes, and the lock on an output directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from nncme.config import ConfigError
from nncme.paths import (
    LOCK_FILE,
    OutputDir,
    atomic_write,
    check_input_file,
    check_output_dir,
    check_output_file,
)

as_root = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere"
)


def test_input_file_errors_say_what_is_wrong(tmp_path):
    good = tmp_path / "net.toml"
    good.write_text("")
    assert check_input_file(good, "network file") == good
    with pytest.raises(IsADirectoryError, match=r"network file: .* is a directory, not a file"):
        check_input_file(tmp_path, "network file")
    with pytest.raises(FileNotFoundError, match=r"config: no such file: .*nothing\.toml"):
        check_input_file(tmp_path / "nothing.toml", "config")


def test_output_dir_checks_create_nothing(tmp_path):
    new = tmp_path / "a" / "b"
    assert check_output_dir(new) == new and not (tmp_path / "a").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as err:
        check_output_dir(blocker / "x" / "y")
    assert str(err.value) == (
        f"out: {blocker / 'x' / 'y'}: cannot write (parent {blocker} is a regular file)"
    )
    with pytest.raises(ConfigError, match=r"out: .*file: cannot write \(it is a regular file"):
        check_output_dir(blocker)
    with pytest.raises(ConfigError, match=r"--json: .*: cannot write \(it is a directory\)"):
        check_output_file(tmp_path, "--json")
    with pytest.raises(ConfigError, match=r"--plot: .*: cannot write \(parent .* regular file\)"):
        check_output_file(blocker / "c.png", "--plot")


@as_root
def test_a_read_only_directory_is_named(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"out: .*ro.*x: cannot write \(.*ro is not writ"):
            check_output_dir(locked / "x")
    finally:
        locked.chmod(0o700)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as fh:
        fh.write("half of the new")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp file left
    previous = tmp_path / "summary.prev.json"
    with atomic_write(path, previous=previous) as fh:
        fh.write("new")
    assert path.read_text() == "new" and previous.read_text() == "old"
    with atomic_write(tmp_path / "data.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "data.bin").read_bytes() == b"\x00\x01"


def test_output_dir_is_locked_and_a_failed_start_leaves_nothing(tmp_path):
    out = OutputDir(tmp_path / "runs" / "a").acquire()
    assert (tmp_path / "runs" / "a" / LOCK_FILE).read_text().strip() == str(os.getpid())
    with pytest.raises(ConfigError, match=rf"out: .*runs/a is in use .*pid {os.getpid()}"):
        OutputDir(tmp_path / "runs" / "a").acquire()  # a second run in this very process
    out.release()
    assert not (tmp_path / "runs").exists()  # made for the run, still empty: removed
    with OutputDir(tmp_path / "runs" / "b") as out:
        (out.path / "results.npz").write_text("x")
    assert sorted(p.name for p in (tmp_path / "runs" / "b").iterdir()) == ["results.npz"]
    with OutputDir(tmp_path / "runs" / "b"):  # released: free again
        pass


def test_a_second_process_cannot_take_the_directory(tmp_path):
    """Another process holds the lock; this one stops naming its pid, then gets it once free."""
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from nncme.paths import OutputDir
            out = OutputDir({str(tmp_path)!r}).acquire()
            print("locked", flush=True)
            sys.stdin.readline()
            out.release()
        """)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another nncme run \(pid {holder.pid}\)"):
            OutputDir(tmp_path).acquire()
    finally:
        holder.communicate("\n", timeout=60)
    with OutputDir(tmp_path):
        pass
