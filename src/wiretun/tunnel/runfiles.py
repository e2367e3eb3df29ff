"""Files a root daemon writes where others might have planted something: a trusted directory
(ours, writable by nobody else) and atomic writes that never follow a symlink.

`open(path, "w")` and `os.chmod(path)` follow symlinks: a link planted at a predictable
temporary name would make root truncate or chmod whatever it points to. Here a temporary file
is created with O_EXCL | O_NOFOLLOW under a random name, given its mode by fchmod (not by the
umask), and renamed over the target (rename replaces a link, never writes through it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat


class UntrustedDirectoryError(OSError):
    """A directory someone other than us (or root) owns or may write to, or a symlink."""


def ensure_dir(path: str, mode: int = 0o755) -> None:
    """Create `path` (and parents) if missing, then check that it is a real directory owned by
    us or root and writable by no one else; raises UntrustedDirectoryError otherwise. (Symlinks
    above it, such as /var/run -> /run, are the system's and are followed.)"""
    os.makedirs(path, mode=mode, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise UntrustedDirectoryError(e.errno, f"{path} is not a directory (a symlink?)") from e
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid not in (0, os.geteuid()):
        raise UntrustedDirectoryError(f"{path} belongs to uid {st.st_uid}, not to us")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedDirectoryError(
            f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
        )


def write_atomic(path: str, data: bytes, mode: int = 0o644, *, sync: bool = False) -> None:
    """Replace `path` with a file holding `data` with exactly `mode`; readers see the old
    file or the new one, never a part. Never follows a symlink (a link at `path` is
    replaced, not written through)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not decide who may read a key
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
