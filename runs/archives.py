"""Immutable, content-addressed file trees (dataset versions, code snapshots).

An upload (tar, tar.gz/bz2/xz or zip) is unpacked safely, then stored again as a
deterministic tar: sorted paths, no owners, no times. Its content hash is the
sha256 of the manifest, every file's path, size and sha256, so the same files
always give the same hash, whatever archive they came in.

Nothing about an upload is trusted: a compressed stream is read to its end (its
CRC and length checked) before any entry is used, bytes are counted as they are
unpacked (RUNYARD_MAX_UNPACKED_BYTES), and an entry that clashes with another (a
file and a directory of one name, a name twice, a path under a file), has an
impossible name, or disagrees with the zip's central directory is an ArchiveError
naming it. Everything happens in a temporary directory: on failure nothing is kept.
"""

import bz2
import gzip
import hashlib
import json
import lzma
import os
import struct
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError

from runs.models import Archive

CHUNK = 1 << 20
MAX_FILES = 1_000_000
MAX_NAME_BYTES = 255  # one path component: what file systems allow
MAX_PATH_BYTES = 1024  # a whole path inside the archive
MAX_DEPTH = 128
# A compressed tar is recognised by its first bytes, whatever the Content-Type says.
COMPRESSIONS = ((b"\x1f\x8b", "gzip", gzip.open), (b"BZh", "bzip2", bz2.open), (b"\xfd7zXZ\x00", "xz", lzma.open))
STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
ZIP_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # not just "PK": a tar may begin with PKG-INFO


class ArchiveError(Exception):
    """The upload is not a usable archive; the message says why, naming the entry."""


def store_upload(stream, content_type: str) -> Archive:
    """Read an uploaded archive from `stream` and store it; the same content twice is stored once."""
    with tempfile.TemporaryDirectory(prefix="runyard-upload-") as work:
        upload = Path(work) / "upload"
        _save_upload(stream, upload)
        tree = Path(work) / "tree"
        tree.mkdir()
        _unpack(upload, content_type, tree)
        return store_tree(tree)


def store_tree(tree: Path) -> Archive:
    manifest = _manifest(tree)
    if not manifest:
        raise ArchiveError("the archive holds no files")
    return _store(manifest, lambda relative: open(tree / relative, "rb"), lambda relative: os.access(tree / relative, os.X_OK))


# Files already in storage, by their path in the tree: (size, sha256, storage name).
# A run's exported files are these: their sha256 was taken as they were copied out.
StoredFiles = dict[str, tuple[int, str, str]]


def store_stored_files(files: StoredFiles) -> Archive:
    """An archive of files already in storage (a model or dataset version made by a
    run's exports): the same files give the same content hash as an upload of them."""
    manifest = _stored_manifest(files)
    if not manifest:
        raise ArchiveError("there are no files")
    return _store(manifest, lambda relative: default_storage.open(files[relative][2], "rb"), lambda relative: False)


def tar_of_stored_files(files: StoredFiles):
    """The files as a tar stream, written as a stored archive is (an import of an
    earlier run's exports is filled from it)."""
    manifest = _stored_manifest(files)
    out = tempfile.TemporaryFile()
    _pack(manifest, lambda relative: default_storage.open(files[relative][2], "rb"), lambda relative: False, out)
    out.seek(0)
    return out


def manifest_hash(manifest: list[list]) -> str:
    """The content hash of a tree: the sha256 of its manifest, [[path, size, sha256], ...] by path."""
    return hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()


def stored_files_hash(files: StoredFiles) -> str:
    return manifest_hash(_stored_manifest(files))


def _stored_manifest(files: StoredFiles) -> list[list]:
    return sorted([relative, size, sha256] for relative, (size, sha256, _) in files.items())


def _store(manifest: list[list], open_file, is_executable) -> Archive:
    content_hash = manifest_hash(manifest)
    existing = Archive.objects.filter(content_hash=content_hash).first()
    if existing and default_storage.exists(existing.storage_name):
        return existing
    storage_name = f"archives/{content_hash}.tar"
    with tempfile.TemporaryFile() as packed:
        _pack(manifest, open_file, is_executable, packed)
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


def read_member(archive: Archive, path: str):
    """The bytes of one file of a stored archive, in chunks (a download). The tar is
    read entry by entry up to it: it was written by _pack, sorted, one entry a file."""
    with open_archive(archive) as stored, tarfile.open(fileobj=stored, mode="r|") as tar:
        for member in tar:
            if member.name == path and member.isfile():
                source = tar.extractfile(member)
                while block := source.read(CHUNK):
                    yield block
                return


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def _shown(name: str) -> str:
    """An entry's name for a message: a 4,000-character name is shown shortened."""
    return repr(name if len(name) <= 100 else name[:60] + "…" + name[-30:])


def _save_upload(stream, path: Path) -> None:
    cap, saved = settings.RUNYARD_MAX_UPLOAD_BYTES, 0
    with open(path, "wb") as out:
        while block := stream.read(CHUNK):
            saved += len(block)
            if saved > cap:
                raise ArchiveError(f"the upload is larger than {_size(cap)}")
            out.write(block)


def _unpack(upload: Path, content_type: str, into: Path) -> None:
    kind = (content_type or "").split(";")[0].strip().lower()
    with open(upload, "rb") as f:
        magic = f.read(6)
    if kind == "application/zip" or magic[:4] in ZIP_MAGIC:
        _unpack_zip(upload, into)
        return
    for prefix, name, opener in COMPRESSIONS:
        if magic.startswith(prefix):
            plain = upload.with_suffix(".tar")
            _decompress(upload, name, opener, plain)
            upload.unlink()
            upload = plain
            break
    _unpack_tar(upload, into)


def _decompress(path: Path, name: str, opener, out_path: Path) -> None:
    """The whole compressed stream, checked to its end (CRC, length) and capped,
    as a plain tar: a bad stream stores nothing, however good its first entries."""
    cap, written = settings.RUNYARD_MAX_UNPACKED_BYTES, 0
    try:
        with opener(path, "rb") as source, open(out_path, "wb") as out:
            while block := source.read1(CHUNK):  # read1: what came before a break is kept, to name the entry
                written += len(block)
                if written > cap:
                    raise ArchiveError(f"the archive unpacks to more than {_size(cap)} (RUNYARD_MAX_UNPACKED_BYTES)")
                out.write(block)
    except EOFError:
        raise ArchiveError(f"the {name} stream ends early (truncated{_at_entry(out_path, 'in')})") from None
    except STREAM_ERRORS as exc:
        raise ArchiveError(f"the {name} stream is corrupt ({exc}{_at_entry(out_path, 'after')})") from None


def _at_entry(partial_tar: Path, where: str) -> str:
    """Where a broken stream broke: the last entry whose header came through."""
    last = None
    try:
        with tarfile.open(partial_tar, "r:") as tar:
            for member in tar:
                last = member.name
    except (tarfile.TarError, *STREAM_ERRORS):
        pass
    return f", {where} entry {_shown(last)}" if last else ""


def _unpack_tar(path: Path, into: Path) -> None:
    placer, last = _Placer(into), None
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                last = member.name
                try:
                    if member.isdir():
                        placer.directory(member.name)
                    elif member.isfile():
                        target = placer.file(member.name)
                        with tar.extractfile(member) as source:
                            placer.write(member.name, source, target, executable=bool(member.mode & 0o111))
                    # Links, devices and fifos are left out: a dataset is files.
                except (tarfile.TarError, EOFError) as exc:
                    raise ArchiveError(f"entry {_shown(member.name)} is cut short or unreadable ({exc})") from None
                except OSError as exc:
                    raise ArchiveError(f"entry {_shown(member.name)} cannot be unpacked ({exc.strerror or exc})") from None
            end = tar.offset
    except tarfile.TarError as exc:
        if last is None:
            raise ArchiveError("not a tar, tar.gz or zip archive") from None
        raise ArchiveError(f"the tar is cut short or unreadable after entry {_shown(last)} ({exc})") from None
    # tarfile stops quietly at a truncated or broken header: the archive must go on
    # to its end-of-archive block instead.
    with open(path, "rb") as f:
        f.seek(end)
        block = f.read(tarfile.BLOCKSIZE)
    if block != bytes(tarfile.BLOCKSIZE):
        where = f"after entry {_shown(last)}" if last else "at its start"
        raise ArchiveError(f"the tar is cut short or unreadable {where} (no end-of-archive block)")


def _unpack_zip(upload: Path, into: Path) -> None:
    cap = settings.RUNYARD_MAX_UNPACKED_BYTES
    try:
        with zipfile.ZipFile(upload) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_FILES:
                raise ArchiveError(f"more than {MAX_FILES} entries")
            _check_zip_headers(upload, zf.start_dir, infos)
            if sum(info.file_size for info in infos) > cap:
                raise ArchiveError(f"the archive unpacks to more than {_size(cap)} (RUNYARD_MAX_UNPACKED_BYTES)")
            placer = _Placer(into)
            for info in infos:
                if info.flag_bits & 0x1:
                    raise ArchiveError(f"entry {_shown(info.filename)} is encrypted")
                try:
                    if info.is_dir():
                        placer.directory(info.filename)
                        continue
                    target = placer.file(info.filename)
                    with zf.open(info) as source:
                        placer.write(info.filename, source, target, executable=None)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, zlib.error, lzma.LZMAError) as exc:
                    raise ArchiveError(f"entry {_shown(info.filename)} is unreadable ({exc})") from None
                except OSError as exc:
                    raise ArchiveError(f"entry {_shown(info.filename)} cannot be unpacked ({exc.strerror or exc})") from None
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"not a valid zip archive ({str(exc).splitlines()[0]})") from None
    except STREAM_ERRORS as exc:
        raise ArchiveError(f"not a valid zip archive ({exc})") from None


def _check_zip_headers(upload: Path, central_start: int, infos: list) -> None:
    """Each entry's local header must say what the central directory says, and its
    data must end before the next entry: what one zip tool lists is what another unpacks."""
    ordered = sorted(infos, key=lambda info: info.header_offset)
    with open(upload, "rb") as raw:
        for index, info in enumerate(ordered):
            shown = _shown(info.filename)
            raw.seek(info.header_offset)
            head = raw.read(ZIP_LOCAL_HEADER.size)
            if len(head) < ZIP_LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
                raise ArchiveError(f"entry {shown} has no local header where the central directory points")
            _, _, flags, method, _, _, crc, packed, size, name_length, extra_length = ZIP_LOCAL_HEADER.unpack(head)
            local_name = raw.read(name_length).decode("utf-8" if flags & 0x800 else "cp437", "replace")
            if local_name != info.orig_filename:
                raise ArchiveError(f"entry {shown} is named {_shown(local_name)} in its local header: the zip contradicts itself")
            sizes_here = not flags & 0x08 and 0xFFFFFFFF not in (packed, size)  # else in a data descriptor or zip64 extra
            if method != info.compress_type or sizes_here and (crc, packed, size) != (info.CRC, info.compress_size, info.file_size):
                raise ArchiveError(f"entry {shown}: its local header and the central directory disagree (method, size or CRC)")
            data_end = info.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length + info.compress_size
            next_start = ordered[index + 1].header_offset if index + 1 < len(ordered) else central_start
            if data_end > next_start:
                raise ArchiveError(f"entry {shown} overlaps the next entry or the central directory")


class _Placer:
    """Puts entries into the tree, refusing any that clashes or cannot be a path,
    and counting the bytes written against the cap."""

    def __init__(self, root: Path):
        self.root, self.files, self.dirs, self.entries, self.unpacked = root, set(), set(), 0, 0

    def _parts(self, name: str) -> list[str]:
        self.entries += 1
        if self.entries > MAX_FILES:
            raise ArchiveError(f"more than {MAX_FILES} entries")
        parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
        if parts and (parts[0] == "/" or ".." in parts):
            raise ArchiveError(f"unsafe path in archive: {_shown(name)}")
        if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
            raise ArchiveError(f"entry {_shown(name)} has a name longer than {MAX_NAME_BYTES} bytes")
        if len(parts) > MAX_DEPTH or len("/".join(parts).encode()) > MAX_PATH_BYTES:
            raise ArchiveError(f"entry {_shown(name)} is deeper than {MAX_DEPTH} levels or longer than {MAX_PATH_BYTES} bytes")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            if above in self.files:
                raise ArchiveError(f"entry {_shown(name)} is under {above!r}, which an earlier entry made a file")
        return parts

    def directory(self, name: str) -> None:
        parts = self._parts(name)
        key = "/".join(parts)
        if key in self.files:
            raise ArchiveError(f"entry {_shown(name)} is a directory, but an earlier entry {key!r} is a file")
        self._made(parts)

    def file(self, name: str) -> Path:
        parts = self._parts(name)
        key = "/".join(parts)
        if not parts:
            raise ArchiveError(f"entry {_shown(name)} is a file without a name")
        if key in self.files:
            raise ArchiveError(f"entry {_shown(name)} appears twice in the archive")
        if key in self.dirs:
            raise ArchiveError(f"entry {_shown(name)} is a file, but an earlier entry made {key!r} a directory")
        self._made(parts[:-1])
        self.files.add(key)
        return self.root.joinpath(*parts)

    def _made(self, parts: list[str]) -> None:
        for depth in range(1, len(parts) + 1):
            self.dirs.add("/".join(parts[:depth]))
        if parts:
            self.root.joinpath(*parts).mkdir(parents=True, exist_ok=True)

    def write(self, name: str, source, target: Path, executable: bool | None) -> None:
        cap = settings.RUNYARD_MAX_UNPACKED_BYTES
        with open(target, "wb") as out:
            while block := source.read(CHUNK):
                self.unpacked += len(block)
                if self.unpacked > cap:
                    raise ArchiveError(f"the archive unpacks to more than {_size(cap)} (RUNYARD_MAX_UNPACKED_BYTES), at entry {_shown(name)}")
                out.write(block)
        if executable is not None:
            os.chmod(target, 0o755 if executable else 0o644)


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


def _pack(manifest: list[list], open_file, is_executable, out) -> None:
    """The files of `manifest` as a deterministic tar: sorted, no owners, no times."""
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
            info = tarfile.TarInfo(relative)
            info.size = size
            info.mode = 0o755 if is_executable(relative) else 0o644
            info.mtime = 0
            with open_file(relative) as f:
                tar.addfile(info, f)
