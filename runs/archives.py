"""Immutable, content-addressed file trees (dataset versions, code snapshots).

An upload (tar, tar.gz or zip) is unpacked safely, then stored again as a
deterministic tar: sorted paths, no owners, no times. Its content hash is the
sha256 of the manifest, every file's path, size and sha256, so the same files
always give the same hash, whatever archive they came in.
"""

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError

from runs.models import Archive

CHUNK = 1 << 20
MAX_FILES = 1_000_000


class ArchiveError(Exception):
    """The upload is not a usable archive; the message says why."""


def store_upload(stream, content_type: str) -> Archive:
    """Read an uploaded archive from `stream` and store it; the same content twice is stored once."""
    with tempfile.TemporaryDirectory(prefix="runyard-upload-") as work:
        upload = Path(work) / "upload"
        with open(upload, "wb") as out:
            shutil.copyfileobj(stream, out, CHUNK)
        tree = Path(work) / "tree"
        tree.mkdir()
        _unpack(upload, content_type, tree)
        upload.unlink()
        return store_tree(tree)


def store_tree(tree: Path) -> Archive:
    manifest = _manifest(tree)
    if not manifest:
        raise ArchiveError("the archive holds no files")
    content_hash = hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()
    existing = Archive.objects.filter(content_hash=content_hash).first()
    if existing and default_storage.exists(existing.storage_name):
        return existing
    storage_name = f"archives/{content_hash}.tar"
    with tempfile.TemporaryFile() as packed:
        _pack(tree, manifest, packed)
        packed.seek(0)
        if default_storage.exists(storage_name):
            default_storage.delete(storage_name)
        saved = default_storage.save(storage_name, File(packed))
    try:
        archive, _ = Archive.objects.get_or_create(
            content_hash=content_hash,
            defaults={
                "storage_name": saved,
                "size_bytes": sum(size for _, size, _ in manifest),
                "file_count": len(manifest),
                "manifest": manifest,
            },
        )
    except IntegrityError:  # stored at the same moment by another upload
        archive = Archive.objects.get(content_hash=content_hash)
    return archive


def open_archive(archive: Archive):
    """The stored tar, for reading (an import volume is filled from it)."""
    return default_storage.open(archive.storage_name, "rb")


def _unpack(upload: Path, content_type: str, into: Path) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind == "application/zip" or (not kind.startswith("application/x-tar") and zipfile.is_zipfile(upload)):
        _unpack_zip(upload, into)
        return
    try:
        with tarfile.open(upload, "r:*") as tar:
            count = 0
            for member in tar:
                count += 1
                if count > MAX_FILES:
                    raise ArchiveError(f"more than {MAX_FILES} entries")
                target = _safe_target(into, member.name)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
                    os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
                # Links, devices and fifos are left out: a dataset is files.
    except tarfile.TarError:
        raise ArchiveError("not a tar, tar.gz or zip archive") from None


def _unpack_zip(upload: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(upload) as zf:
            if len(zf.infolist()) > MAX_FILES:
                raise ArchiveError(f"more than {MAX_FILES} entries")
            for info in zf.infolist():
                target = _safe_target(into, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"not a valid zip archive ({str(exc).splitlines()[0]})") from None


def _safe_target(root: Path, name: str) -> Path:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts:
        return root
    if parts[0] == "/" or ".." in parts:
        raise ArchiveError(f"unsafe path in archive: {name!r}")
    return root.joinpath(*parts)


def _manifest(tree: Path) -> list[list]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if not path.is_file() or path.is_symlink():
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    digest.update(block)
            entries.append([path.relative_to(tree).as_posix(), path.stat().st_size, digest.hexdigest()])
    entries.sort(key=lambda entry: entry[0])
    return entries


def _pack(tree: Path, manifest: list[list], out) -> None:
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made_dirs = set()
        for relative, size, _ in manifest:
            parent = PurePosixPath(relative).parent
            for directory in reversed([parent, *parent.parents]):
                if str(directory) in (".", "") or str(directory) in made_dirs:
                    continue
                made_dirs.add(str(directory))
                info = tarfile.TarInfo(str(directory))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                tar.addfile(info)
            source = tree / relative
            info = tarfile.TarInfo(relative)
            info.size = size
            info.mode = 0o755 if os.access(source, os.X_OK) else 0o644
            info.mtime = 0
            with open(source, "rb") as f:
                tar.addfile(info, f)
