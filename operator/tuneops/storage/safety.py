"""Names and files a worker refuses: listing-derived paths that climb out of their folder, links, special files.

Object keys, Hub file lists, manifests and weight indexes are written by whoever wrote the artifact; a name
like `prefix//etc/x` or `../x` would place or read a file outside the folder it belongs to, and a link in a
model folder (to /proc/self/environ, to a mounted token) would be read, hashed and published as model data.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from tuneops.storage.uri import InputError


class UnsafeInputError(InputError):
    """An input names a path outside its folder, or holds a link or a special file."""


def safe_relative(name: str, what: str) -> PurePosixPath:
    """`name` as a path that stays inside its folder: no leading `/`, no empty, `.` or `..` segment, no NUL."""
    if not name or "\0" in name:
        raise UnsafeInputError(f"{what}: {name!r} is not a usable file name")
    parts = name.split("/")
    bad = [p for p in parts if p in ("", ".", "..")]
    if name.startswith("/") or bad:
        raise UnsafeInputError(
            f"{what}: {name!r} would be placed outside its folder (absolute, empty, '.' or '..' segments);"
            " refused"
        )
    return PurePosixPath(name)


def inside(root: Path, name: str, what: str) -> Path:
    """root/name, refused unless the result stays under root (also after resolving what already exists)."""
    target = root / safe_relative(name, what)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(target)]) != real_root:
        raise UnsafeInputError(f"{what}: {name!r} leads outside {root}; refused")
    return target


def _refuse(path: Path, mode: int, what: str) -> None:
    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or folder"
    raise UnsafeInputError(
        f"{what}: {path} is {kind}; links and special files are refused in model folders (they could expose"
        " files outside the artifact)"
    )


def walk_files(root: Path, what: str = "") -> list[PurePosixPath]:
    """Regular files under root, relative and sorted; a link or special file anywhere (root included) raises.

    Links are never followed: the walk reads lstat, so a link to a folder is refused, not entered.
    """
    what = what or str(root)
    top = os.lstat(root)
    if not stat.S_ISDIR(top.st_mode):
        if not stat.S_ISREG(top.st_mode):
            _refuse(root, top.st_mode, what)
        return [PurePosixPath(root.name)]
    out: list[PurePosixPath] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in (*dirnames, *filenames):
            mode = os.lstat(here / name).st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                _refuse(here / name, mode, what)
            out.append(PurePosixPath((here / name).relative_to(root).as_posix()))
    return sorted(out, key=lambda p: p.as_posix())


def check_tree(root: Path, what: str = "") -> None:
    """Refuses a source with links or special files (see walk_files)."""
    walk_files(root, what)


def open_regular(path: Path) -> int:
    """A read-only descriptor of a regular file, never through a link (O_NOFOLLOW on the last segment)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        _refuse(path, stat.S_IFLNK, str(path))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        _refuse(path, mode, str(path))
    return fd
