"""The files nncme reads and writes: checks before any work, atomic writes, a lock per output.

Every command that writes (run, fsp, ssa, study, compare --json/--plot, systems --save) and
the Python API (`nncme.run`, `solve_fsp`, `solve_ssa` with `out`) go through here, so a path
that cannot serve stops them before any solve, with one line naming the setting and the path:

    check_input_file(path, what)     a file to read: missing, a directory, unreadable
    check_output_dir(path, name)     a directory to write: a file in the way, not writable
    check_output_file(path, name)    a file to write (its directory may not exist yet)
    atomic_write(path, mode)         a file written whole or not at all (temp, fsync, replace)
    OutputDir(path, name)            a run's directory: created, locked against a second
                                     process, and removed again on release while still empty

Output problems raise `ConfigError` (like any other bad setting); input problems raise the
`OSError` of the case (`FileNotFoundError`, `IsADirectoryError`, `PermissionError`), whose
message names the file. A leaf module: the standard library and `config.ConfigError` only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: outputs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_FILE",
    "OutputDir",
    "atomic_write",
    "check_input_file",
    "check_output_dir",
    "check_output_file",
]

# The lock file of an output directory; removed when the run that holds it ends.
LOCK_FILE = ".nncme.lock"


# ------------------------------------------------------------------------------ checks
def check_input_file(path: str | Path, what: str) -> Path:
    """`path` as a Path if it is a readable file.

    Args:
        path: the file.
        what: what the file is, for the message ("network file", "config").

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: "{what}: {path}: why".
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what}: {path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what}: {path}: cannot read (permission denied)")
    return path


def check_output_dir(path: str | Path, name: str = "out") -> Path:
    """`path` as a Path if it is, or can be made, a writable directory; creates nothing.

    Args:
        path: the directory.
        name: the setting or option that gave it, for the message.

    Raises:
        ConfigError: "{name}: {path}: cannot write (why)".
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name}: {path}: cannot write (it is {_kind(path)}, not a directory)")
    _check_writable_ancestor(path, name)
    return path


def check_output_file(path: str | Path, name: str) -> Path:
    """`path` as a Path if a file can be written there (missing directories are made later).

    Raises:
        ConfigError: "{name}: {path}: cannot write (why)".
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{name}: {path}: cannot write (it is a directory)")
    _check_writable_ancestor(path.parent, name, shown=path)
    return path


def _check_writable_ancestor(directory: Path, name: str, shown: Path | None = None) -> None:
    """The nearest existing directory at or above `directory` must be a writable directory."""
    shown = directory if shown is None else shown
    ancestor = directory.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        kind = _kind(ancestor)
        raise ConfigError(f"{name}: {shown}: cannot write (parent {ancestor} is {kind})")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        why = "on a read-only file system" if _read_only_fs(ancestor) else "not writable"
        raise ConfigError(f"{name}: {shown}: cannot write ({ancestor} is {why})")


def _kind(path: Path) -> str:
    return "a regular file" if path.is_file() else "not a directory"


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


# ------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, previous: Path | None = None
) -> Iterator[IO[Any]]:
    """Open `path` for writing so that it holds either its old content or all of the new.

    The content goes to a temporary file in the same directory, which is flushed to disk and
    then renamed onto `path` (`os.replace`, atomic on POSIX), so a kill, a full disk or an
    exception while writing never leaves half a file; on an error the temporary file is
    removed and `path` is unchanged.

    Args:
        path: the file to write; its directory must exist.
        mode: "w" (text, UTF-8) or "wb".
        previous: where the file being replaced is kept (renamed there just before the new
            one takes its place), or None.

    Yields:
        The open file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666: honours the umask
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # the rename itself reaches the disk


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform whose directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ a run's directory
class OutputDir:
    """The output directory of one run: checked, created, locked, and released.

    `acquire` checks the path (`check_output_dir`), creates it with any missing parents, and
    takes an exclusive `fcntl.flock` on LOCK_FILE inside it (holding our pid), so a second
    process that writes the same directory stops at once, naming the first one's pid. The
    lock is the kernel's: a killed run holds nothing and leaves at most a stale file, which the
    next run takes over. `release` drops the lock and removes the directories `acquire`
    created that are still empty, so a start that fails leaves nothing behind.

    Usable as a context manager (acquire on entry, release on exit).

    Args:
        path: the directory.
        name: the setting that gave it, for messages ("out").
    """

    def __init__(self, path: str | Path, name: str = "out") -> None:
        self.path, self.name = Path(path), name
        self._created: list[Path] = []
        self._fd: int | None = None

    def acquire(self) -> OutputDir:
        """Check, create and lock the directory (ConfigError if it cannot be used)."""
        check_output_dir(self.path, self.name)
        missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.name}: {self.path}: cannot write ({exc.strerror})") from None
        self._created = missing  # deepest first
        try:
            self._lock()
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            return
        lock = self.path / LOCK_FILE
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                this = " (this process: finish or close the other run first)"
                note = this if holder == str(os.getpid()) else ""
                raise ConfigError(
                    f"{self.name}: {self.path} is in use by another nncme run (pid {holder})"
                    f"{note}; wait for it to end or choose another {self.name}"
                ) from None
            # The run before us may have removed the file between our open and our lock:
            # then we hold a lock on a file nobody else will see, so open it again.
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (removing its file) and the created directories that are still empty.

        Safe to call more than once.
        """
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK_FILE).unlink()  # while still locked: see `_lock`
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        for directory in self._created:  # deepest first; stops at the first one in use
            try:
                directory.rmdir()
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputDir:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a driver stepped by hand and dropped: let the directory go
        if self._fd is not None:
            try:
                self.release()
            except Exception:  # at interpreter exit the kernel drops the lock anyway
                pass
