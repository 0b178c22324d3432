"""The Files tab (SPEC §5): a run's exported files as a tree, previewed, and
downloaded one by one or all together as a zip.

A path the user sends is only ever looked up as a RunFile row of that run; its
bytes come from default_storage under the row's storage_name, never from a
filesystem path built from the request."""

import codecs
import csv
import io
import posixpath
import zipfile
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from dashboard.views import _run_context, _run_or_404
from runs.models import Run, RunFile
from runs.streaming import storage_chunks, stream_response

PREVIEW_TEXT_BYTES = 64 * 1024
PREVIEW_CSV_BYTES = 1024 * 1024
PREVIEW_CSV_ROWS = 200
PREVIEW_CSV_COLUMNS = 100
PREVIEW_IMAGE_BYTES = 25 * 1024 * 1024
FILES_LISTED_PER_FOLDER = 500
STREAM_CHUNK = 256 * 1024
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".svg": "image/svg+xml"}
# Deflating these again costs time and saves nothing.
ALREADY_COMPRESSED = {".gz", ".tgz", ".zip", ".bz2", ".xz", ".zst", ".7z", ".png", ".jpg", ".jpeg", ".gif", ".webp",
                      ".mp4", ".webm", ".mp3", ".parquet", ".npz", ".safetensors"}


@dataclass
class Folder:
    name: str
    path: str
    folders: list["Folder"] = field(default_factory=list)
    files: list[RunFile] = field(default_factory=list)
    size: int = 0
    count: int = 0
    open: bool = False
    unlisted: int = 0


def _tree(rows: list[RunFile], selected: str) -> Folder:
    """Folders from the files' container paths; top-level folders and the selected file's ancestors start open."""
    root = Folder(name="", path="", open=True)
    by_path = {"": root}
    for row in rows:
        parts = row.path.strip("/").split("/")
        folder = root
        folder.size += row.size
        folder.count += 1
        for depth, name in enumerate(parts[:-1]):
            child_path = f"{folder.path}/{name}"
            child = by_path.get(child_path)
            if child is None:
                child = by_path[child_path] = Folder(name=name, path=child_path, open=depth == 0)
                folder.folders.append(child)
            child.size += row.size
            child.count += 1
            if row.path == selected:
                child.open = True
            folder = child
        if len(folder.files) < FILES_LISTED_PER_FOLDER or row.path == selected:
            _label(row)
            folder.files.append(row)
        else:
            folder.unlisted += 1
    for folder in by_path.values():
        folder.folders.sort(key=lambda f: f.name)
    return root


def _label(row: RunFile) -> RunFile:
    row.name = posixpath.basename(row.path)
    row.query = urlencode({"path": row.path})
    return row


def _exports_waiting(run: Run) -> bool:
    """A stopped run whose exports are being copied out right now (terminate copies after the status changes)."""
    return bool(run.spec.get("export")) and not run.exports_state and run.is_final and bool(run.started_at) and not run.container_removed_at


def _files_context(request, run: Run, selected: str = "") -> dict:
    rows = list(RunFile.objects.filter(run=run).only("path", "size", "sha256", "partial", "storage_name").order_by("path"))
    waiting = _exports_waiting(run)
    return {
        **_run_context(request, run, "files"),
        "tree": _tree(rows, selected),
        "file_count": len(rows),
        "total_size": sum(row.size for row in rows),
        "any_partial": any(row.partial for row in rows),
        "export_paths": list(run.spec.get("export", {})),
        "waiting": waiting,
        "live": waiting or not run.is_final,
        "selected": selected,
    }


def _file_or_404(run: Run, container_path: str) -> RunFile:
    found = RunFile.objects.filter(run=run, path=container_path).first()
    if found is None:
        raise Http404("This run exported no file at that path.")
    return found


def _read_head(row: RunFile, limit: int) -> bytes:
    with default_storage.open(row.storage_name, "rb") as source:
        return source.read(limit)


def _extension(container_path: str) -> str:
    return posixpath.splitext(container_path)[1].lower()


def _preview(row: RunFile) -> dict:
    """What the preview pane shows for one file: kind is text, csv, image, empty or none."""
    extension = _extension(row.path)
    if row.size == 0:
        return {"kind": "empty"}
    if extension in IMAGE_TYPES:
        if row.size > PREVIEW_IMAGE_BYTES:
            return {"kind": "none", "why": f"images over {PREVIEW_IMAGE_BYTES // (1024 * 1024)} MiB are not previewed"}
        return {"kind": "image"}
    if extension in (".csv", ".tsv"):
        table = _csv_preview(row, "\t" if extension == ".tsv" else ",")
        if table:
            return table
    head = _read_head(row, PREVIEW_TEXT_BYTES)
    cut = row.size > len(head)
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=not cut)
    except UnicodeDecodeError:
        return {"kind": "none", "why": "it is not UTF-8 text"}
    if "\x00" in text:
        return {"kind": "none", "why": "it is binary"}
    return {"kind": "text", "text": text, "cut": cut, "shown": f"{PREVIEW_TEXT_BYTES // 1024} KiB"}


def _csv_preview(row: RunFile, delimiter: str) -> dict | None:
    head = _read_head(row, PREVIEW_CSV_BYTES)
    cut = row.size > len(head)
    try:
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(head, final=not cut)
    except UnicodeDecodeError:
        return None
    if cut:
        text = text[: text.rfind("\n") + 1]  # the last line was cut mid-way
    try:
        rows = []
        for values in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            rows.append(values[:PREVIEW_CSV_COLUMNS])
            if len(rows) > PREVIEW_CSV_ROWS + 1:
                break
    except csv.Error:
        return None
    if not rows:
        return None
    header, body = rows[0], rows[1:]
    more = len(body) > PREVIEW_CSV_ROWS or cut
    body = body[:PREVIEW_CSV_ROWS]
    width = max(len(values) for values in [header, *body])
    header, *body = [values + [""] * (width - len(values)) for values in [header, *body]]
    return {"kind": "csv", "header": header, "rows": body, "more": more}


def _preview_context(run: Run, selected: str) -> dict:
    row = _label(_file_or_404(run, selected))
    return {"file": row, "preview": _preview(row)}


@login_required
@require_GET
def run_files(request, run_id: int):
    run = _run_or_404(request, run_id)
    selected = request.GET.get("path", "")
    context = _files_context(request, run, selected)
    status = 200
    if selected:
        try:
            context.update(_preview_context(run, selected))
        except Http404:
            context["missing"] = selected
            status = 404
    return render(request, "dashboard/run_files.html", context, status=status)


@login_required
@require_GET
def files_tree(request, run_id: int):
    """The tree (or the empty state): fetched again while the run's exports are still to come."""
    run = _run_or_404(request, run_id)
    return render(request, "dashboard/_files_tree_section.html", _files_context(request, run))


@login_required
@require_GET
def file_preview(request, run_id: int):
    run = _run_or_404(request, run_id)
    selected = request.GET.get("path", "")
    if not request.headers.get("HX-Request"):
        row = _label(_file_or_404(run, selected))
        return redirect(f"{reverse('run-files', args=[run.pk])}?{row.query}")
    return render(request, "dashboard/_files_preview.html", {"run": run, **_preview_context(run, selected)})


@login_required
@require_GET
def file_download(request, run_id: int):
    row = _file_or_404(_run_or_404(request, run_id), request.GET.get("path", ""))
    response = stream_response(request, storage_chunks(row.storage_name), "application/octet-stream", filename=posixpath.basename(row.path))
    response["Content-Length"] = str(row.size)
    response["X-Content-SHA256"] = row.sha256
    return response


@login_required
@require_GET
def file_image(request, run_id: int):
    """An exported image, inline for the preview's <img>. An SVG opened on its own runs no script: it is sandboxed."""
    row = _file_or_404(_run_or_404(request, run_id), request.GET.get("path", ""))
    content_type = IMAGE_TYPES.get(_extension(row.path))
    if content_type is None:
        raise Http404("Only images are shown inline; download this file instead.")
    response = stream_response(request, storage_chunks(row.storage_name), content_type, filename=posixpath.basename(row.path), attachment=False)
    response["Content-Length"] = str(row.size)
    response["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@login_required
@require_GET
def files_zip(request, run_id: int):
    run = _run_or_404(request, run_id)
    rows = list(RunFile.objects.filter(run=run).order_by("path"))
    if not rows:
        raise Http404("This run has no exported files.")
    stamp = timezone.localtime(run.finished_at or timezone.now()).timetuple()[:6]
    return stream_response(request, _zip_chunks(rows, stamp), "application/zip", filename=f"run-{run.pk}-files.zip")


class _Spool:
    """Where zipfile writes: bytes wait here until the response takes them. It
    has no tell(), so zipfile writes a streaming archive (sizes after each file)."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self):
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        return data


def _zip_chunks(rows: list[RunFile], stamp: tuple):
    """Every file, named by its container path without the leading slash; memory
    stays at about one chunk whatever the files weigh."""
    spool = _Spool()
    with zipfile.ZipFile(spool, "w") as archive:
        for row in rows:
            info = zipfile.ZipInfo(row.path.lstrip("/"), date_time=stamp)
            info.external_attr = 0o644 << 16
            info.file_size = row.size  # lets zipfile choose ZIP64 up front for a big file
            info.compress_type = zipfile.ZIP_STORED if _extension(row.path) in ALREADY_COMPRESSED else zipfile.ZIP_DEFLATED
            with default_storage.open(row.storage_name, "rb") as source, archive.open(info, "w") as target:
                while block := source.read(STREAM_CHUNK):
                    target.write(block)
                    if spool.size >= STREAM_CHUNK:
                        yield spool.take()
    yield spool.take()


urlpatterns = [
    path("tree/", files_tree, name="run-files-tree"),
    path("preview/", file_preview, name="run-files-preview"),
    path("download/", file_download, name="run-files-download"),
    path("image/", file_image, name="run-files-image"),
    path("all.zip", files_zip, name="run-files-zip"),
]
