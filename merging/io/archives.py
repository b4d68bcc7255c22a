"""Checks on the members of downloaded zip and tar archives before anything reads or writes them.

A member picked by pattern (or written to disk) must be a regular file with a relative name that stays
inside the archive root: no absolute name, no '..' part, no symbolic or hard link, device, fifo or
socket. ``checked_member`` refuses anything else with a MergeError naming the archive and the member;
``only_member`` finds the one member whose name ends in a path and checks it; ``safe_member_path`` also says
where under a folder the member may be written.
"""
from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from pathlib import Path

from ..errors import MergeError

Member = zipfile.ZipInfo | tarfile.TarInfo
_ZIP_KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
              stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}


def _kind(member: Member) -> str | None:
    """What the member is when it is not a regular file (None for a regular file)."""
    if isinstance(member, zipfile.ZipInfo):
        if member.is_dir():
            return "a folder"
        return _ZIP_KINDS.get(stat.S_IFMT(member.external_attr >> 16))  # Unix mode bits, 0 when absent
    if member.isfile():
        return None
    return ("a symbolic link" if member.issym() else "a hard link" if member.islnk() else
            "a folder" if member.isdir() else "a device, fifo or other special file")


def checked_member(archive: str | Path, member: Member) -> str:
    """The name of ``member`` of ``archive``, once it is known to be a regular file whose name is relative
    (no leading '/' or '\\', no drive letter) and has no '..' part; raises MergeError otherwise."""
    name = member.filename if isinstance(member, zipfile.ZipInfo) else member.name
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        problem = "has an absolute path"
    elif ".." in parts:
        problem = "has a '..' part"
    elif (kind := _kind(member)) is not None:
        problem = f"is {kind}"
    else:
        return name
    raise MergeError(f"{archive}: member '{name}' {problem}; expected a regular file with a relative path "
                     "inside the archive (no '..', links or special files)")


def safe_member_path(archive: str | Path, member: Member, root: Path, strip: str = "") -> Path:
    """Where to write ``member`` under the folder ``root``: ``root / name`` with the leading ``strip``
    (e.g. 'folder/') removed from the checked name; raises MergeError for an unsafe member or one whose
    name does not start with ``strip``."""
    name = checked_member(archive, member)
    relative = Path(name[len(strip):]) if name.startswith(strip) else Path()
    if not relative.parts:
        raise MergeError(f"{archive}: member '{name}' names no file under '{strip}'; expected '{strip}<file>'")
    return root / relative


def only_member(archive: zipfile.ZipFile | tarfile.TarFile, suffix: str, path: Path | str) -> str:
    """The name of the one member of ``archive`` (read from ``path``) named ``suffix`` or ending in
    ``/suffix``, checked by ``checked_member``; a MergeError when there is none or more than one."""
    is_zip = isinstance(archive, zipfile.ZipFile)
    found = [n for n in (archive.namelist() if is_zip else archive.getnames())
             if n == suffix or n.endswith("/" + suffix)]
    if len(found) != 1:
        raise MergeError(f"{path}: expected one member ending in '{suffix}', found {len(found)}")
    return checked_member(path, archive.getinfo(found[0]) if is_zip else archive.getmember(found[0]))
