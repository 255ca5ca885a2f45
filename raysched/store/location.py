"""The state directory: a local folder or an object-store URI (``s3://bucket/prefix``,
``gs://…``), reached through ``pyarrow.fs``, with an atomic write (temporary name, then move).

On a local disk the move is a ``rename`` and both the file and its directory are fsynced, so a file
that has its final name is complete and durable. On an object store a completed upload is durable
and the move is a server-side copy, so a reader sees the whole object or none of it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

__all__ = ["StateDir"]

TMP_PREFIX = "tmp-"


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StateDir:
    """``uri``: a local path (relative ones are made absolute) or a URI that
    ``pyarrow.fs.FileSystem.from_uri`` understands. ``filesystem`` overrides the resolution
    (then ``uri`` is the path inside it)."""

    def __init__(self, uri: str | os.PathLike[str], filesystem: Any = None) -> None:
        text = os.fspath(uri)
        if filesystem is not None:
            self.fs: Any = filesystem
            self.root = text.rstrip("/")
        elif "://" in text:
            self.fs, root = pafs.FileSystem.from_uri(text)
            self.root = str(root).rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = os.path.abspath(text)
        self.uri = text
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if self.root else "/".join(parts)

    def makedirs(self, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts), recursive=True)

    def listdir(self, *parts: str) -> list[str]:
        """Base names of the files directly under ``parts`` (empty when it does not exist)."""
        sel = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=False)
        return sorted(
            i.base_name for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File
        )

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.File)

    def size(self, *parts: str) -> int:
        return int(self.fs.get_file_info(self.path(*parts)).size or 0)

    def delete(self, *parts: str) -> None:
        try:
            self.fs.delete_file(self.path(*parts))
        except FileNotFoundError:
            pass

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return bytes(f.read())

    def write_many_atomic(
        self, folder: str, items: list[tuple[str, bytes]], fsync: bool = True
    ) -> None:
        """``write_atomic`` for several files at once: on a local disk each file is fsynced and
        renamed, and the directory is fsynced once for all of them. ``fsync=False`` leaves the
        fsyncs to the caller (``fsync_files``): the files are complete or absent after a process
        crash, not after a machine crash."""
        sync = fsync and self.local
        tmps: list[str] = []
        try:
            for name, data in items:
                tmp = self.path(folder, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")
                tmps.append(tmp)
                with self.fs.open_output_stream(tmp) as out:
                    out.write(data)
                if sync:
                    _fsync_path(tmp)
            for tmp, (name, _) in zip(tmps, items, strict=True):
                self.fs.move(tmp, self.path(folder, name))
            if sync:
                _fsync_path(self.path(folder), directory=True)
        except BaseException:
            for tmp in tmps:
                try:
                    self.fs.delete_file(tmp)
                except Exception:
                    pass
            raise

    def fsync_files(self, folder: str, names: list[str]) -> None:
        """Make files written with ``fsync=False`` durable (local disks; others need nothing)."""
        if not self.local or not names:
            return
        for name in names:
            try:
                _fsync_path(self.path(folder, name))
            except FileNotFoundError:
                pass  # deleted since
        _fsync_path(self.path(folder), directory=True)

    def write_atomic(self, folder: str, name: str, write: Callable[[Any], None]) -> None:
        """Write ``folder/name`` through ``write(stream)`` under a temporary name, make it durable,
        then move it to its name. A crash leaves at worst a ``tmp-…`` file, never a partial
        ``name``."""
        tmp = f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}"
        tmp_path, final = self.path(folder, tmp), self.path(folder, name)
        try:
            with self.fs.open_output_stream(tmp_path) as out:
                write(out)
            if self.local:
                _fsync_path(tmp_path)
            self.fs.move(tmp_path, final)
            if self.local:
                _fsync_path(self.path(folder), directory=True)
        except BaseException:
            try:
                self.fs.delete_file(tmp_path)
            except Exception:
                pass
            raise
