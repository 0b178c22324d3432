"""Export volumes (SPEC §2 `export`): while a run is stopping, what is under each
export path is copied out of its container into the run's file storage, with
path, size and sha256 per file. Rows appear only once every file is stored.

An export to a model or a dataset (`vessl-model://ORG/REPO`, `vessl-dataset://ORG/NAME`)
then makes a new version of it from those files, recording the run, but only when
the run's outputs are whole (`outputs_whole`): its command ended with exit code 0 and
its files were copied whole. A failed run, or one terminated mid-command, makes no
version; its files stay in its Files tab, where `run://ID/PATH` can still import them.
"""

import hashlib
import logging
import posixpath
import tarfile
import tempfile
from collections.abc import Callable

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q

from runs import file_sets
from runs.archives import ArchiveError, StoredFiles, store_stored_files
from runs.models import Dataset, Model, Run, RunFile, Status

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class ExportError(Exception):
    pass


def storage_prefix(run_id: int) -> str:
    return f"runs/{run_id}/files"


def copy_exports(run: Run, executor, *, partial: bool, guard: Callable[[], None] = lambda: None) -> int:
    """Copy every export path out of the run; returns the number of files.

    Raises ExportError naming the path that failed; then no row is written.
    `guard` is called before each file and before the rows are written: it raises
    (runs.leases.LeaseLost) once this copy is no longer the run's, so a copy taken
    over by another worker stops instead of copying a second time. A file copied
    again (after a crash) replaces its earlier copy under the same name.
    """
    stored: list[RunFile] = []
    for path in run.spec.get("export", {}):
        guard()
        try:
            stream = executor.read_export(run, path)
        except Exception as exc:
            raise ExportError(f"export {path} failed: {exc}") from None
        if stream is None:
            log.info("run %s: nothing at export path %s", run.pk, path)
            continue
        try:
            stored.extend(_store_tar(run, path, stream, partial, guard))
        except (tarfile.TarError, OSError) as exc:
            raise ExportError(f"export {path} failed: {exc}") from None
    guard()
    with transaction.atomic():
        RunFile.objects.filter(run=run).delete()
        RunFile.objects.bulk_create(stored, batch_size=500)
        Run.objects.filter(pk=run.pk).update(exports_state="partial" if partial else "complete")
    return len(stored)


def _store_tar(run: Run, export_path: str, stream, partial: bool, guard: Callable[[], None]) -> list[RunFile]:
    # The engine names entries after the export directory itself: "output/a.txt" for /output/.
    parent = posixpath.dirname(export_path.rstrip("/")) or "/"
    files = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            guard()
            container_path = posixpath.normpath(posixpath.join(parent, member.name))
            if not container_path.startswith("/") or "/../" in container_path + "/":
                continue
            name = f"{storage_prefix(run.pk)}{container_path}"
            digest = hashlib.sha256()
            with tempfile.TemporaryFile() as spool:
                source = tar.extractfile(member)
                for block in iter(lambda: source.read(CHUNK), b""):
                    digest.update(block)
                    spool.write(block)
                spool.seek(0)
                if default_storage.exists(name):
                    default_storage.delete(name)
                saved = default_storage.save(name, File(spool))
            files.append(RunFile(run=run, path=container_path, storage_name=saved, size=member.size, sha256=digest.hexdigest(), partial=partial))
    return files


# The runs whose outputs are whole: see the module's docstring. (Completed runs, and
# idle runs, whose command ended with 0, terminated afterwards.)
WHOLE_OUTPUTS = Q(status__in=[Status.COMPLETED, Status.TERMINATED], exports_state="complete", exit_code=0)


def files_under(run: Run, path: str) -> StoredFiles:
    """The run's exported files at or under `path`, by their path relative to it
    (a file named exactly: by its own name)."""
    base = path.rstrip("/")
    rows = RunFile.objects.filter(run=run)
    if base:
        rows = rows.filter(Q(path=base) | Q(path__startswith=base + "/"))
    files: StoredFiles = {}
    for file_path, size, sha256, storage_name in rows.values_list("path", "size", "sha256", "storage_name"):
        relative = posixpath.basename(file_path) if file_path == base else file_path[len(base) + 1 :]
        files[relative] = (size, sha256, storage_name)
    return files


def publish_versions(run: Run, *, guard: Callable[[], None] = lambda: None) -> list[str]:
    """After copy_exports, for a run whose outputs are whole: a new version of each
    model and dataset it exports to, holding its files there and recording the run.
    Returns what it made, in words. Done again (the run's exports finalized twice), it
    makes nothing new: a run makes one version of each. Raises ExportError naming the
    export that failed."""
    said = []
    for path, target in run.spec.get("export", {}).items():
        kind = Model if "model" in target else Dataset if "dataset" in target else None
        if kind is None:
            continue
        what = kind.__name__.lower()
        name = target[what]["name"]
        files = files_under(run, path)
        if not files:
            said.append(f"nothing under {path}: no new version of {what} {name}")
            continue
        guard()
        try:
            archive = store_stored_files(files)
        except (OSError, ArchiveError) as exc:
            raise ExportError(f"export {path} to {what} {name} failed: {exc}") from None
        guard()
        version, _ = file_sets.add_version(kind, run.team, name, archive, user=run.owner, run=run)
        said.append(f"{what} {name} version {version.version}")
    return said
