"""Datasets with immutable, content-addressed versions (runs.file_sets), and code snapshots."""

from runs import file_sets
from runs.archives import store_upload
from runs.file_sets import remove_version
from runs.models import CodeSnapshot, Dataset, DatasetVersion, Team

__all__ = ["create_code_snapshot", "create_version", "remove_version"]


def create_version(team: Team, name: str, stream, content_type: str, user) -> tuple[DatasetVersion, bool]:
    """Store an uploaded archive as the dataset's next version. The same content
    as the newest version makes no new version: (that version, False)."""
    archive = store_upload(stream, content_type)
    return file_sets.add_version(Dataset, team, name, archive, user=user)


def create_code_snapshot(team: Team, stream, content_type: str, user) -> tuple[CodeSnapshot, bool]:
    archive = store_upload(stream, content_type)
    snapshot, created = CodeSnapshot.objects.get_or_create(team=team, archive=archive, defaults={"created_by": user})
    return snapshot, created
