"""File I/O every stage shares. Atomic writes: a temporary file in the target's folder, fsync, then rename. A crash
leaves either the old file or none, never half of one; the temporary file a killed writer left (its name holds
the writer's pid) is removed by the next write to the same path. A full disk is one line, nothing partial left."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from trtc.errors import TrtcError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Errors of a write that did not fit: the device is full, a quota or the file-size limit was reached.
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder for a writer that wants a file name (e.g. a
    library's save); on success it replaces `path`, on any error it disappears."""
    path = Path(path)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise TrtcError("output folder does not exist", where=str(path), hint="create it first")
    remove_stale_temporaries(folder, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _write_error(exc, path) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would make artifacts private to their writer
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        if exc.errno in NO_SPACE:
            raise _write_error(exc, path) from None
        raise
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _write_error(exc: OSError, path: Path) -> TrtcError:
    if exc.errno in NO_SPACE:
        return TrtcError(f"no space to write it ({exc.strerror}); nothing was written", where=str(path),
                         hint="free space on that device or write elsewhere")
    return TrtcError(f"cannot write it ({exc.strerror})", where=str(path))


def remove_stale_temporaries(folder: Path, name: str) -> None:
    """Remove the temporary files of writes to `folder/name` whose writer process is gone (killed
    mid-write); a live writer's file is left alone."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)\.[^.]+\.tmp")
    try:
        entries = [e for e in os.scandir(folder) if pattern.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        pid = int(pattern.fullmatch(entry.name)[1])
        if pid != os.getpid() and not _alive(pid):
            _unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file; on success (flushed and fsynced) it replaces `path`, on any error it disappears."""
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path) as out:
        out.write(data)


def publish(tmp: Path, path: Path) -> None:
    """A whole temporary file beside `path` (written and fsynced by its writer, named as `atomic_path` names
    its temporaries) becomes `path` by one rename, readable as `atomic_path`'s files are: a file written once
    where it is to stay, not copied there (a 2.4 GB engine is not written a second time)."""
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(str(tmp))
        raise _write_error(exc, path) from None


def place_file(src: Path, path: Path) -> bool:
    """`src`'s bytes at `path`, atomically: a hard link (no byte written) where the file system allows one,
    else a streamed copy (another device, no hard links, another user's file under protected_hardlinks).
    True where it linked. Whoever writes either name later replaces it by rename (every write here does),
    so the other keeps its bytes."""
    path = Path(path)
    if path.exists() and os.path.samefile(src, path):
        return True  # rename() of two links to one file would do nothing and leave the temporary
    with atomic_path(path) as tmp:
        os.unlink(tmp)  # the name is ours (mkstemp's random part); os.link wants it free
        try:
            os.link(src, tmp)
            return True
        except OSError:
            with open(src, "rb") as source, open(tmp, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o666 & ~current_umask())
    return False


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
