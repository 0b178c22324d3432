"""Datasets with immutable, content-addressed versions, and code snapshots."""

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from runs.archives import store_upload
from runs.models import CodeSnapshot, Dataset, DatasetVersion, Team

NAME_PATTERN = r"[A-Za-z0-9._-]{1,100}"


def create_version(team: Team, name: str, stream, content_type: str, user) -> tuple[DatasetVersion, bool]:
    """Store an uploaded archive as the dataset's next version. The same content
    as the newest version makes no new version: (that version, False)."""
    archive = store_upload(stream, content_type)
    for _ in range(5):  # two uploads racing for the same version number: the loser retries
        try:
            with transaction.atomic():
                dataset, _ = Dataset.objects.get_or_create(team=team, name=name, defaults={"created_by": user})
                latest = DatasetVersion.objects.filter(dataset=dataset, removed_at__isnull=True).order_by("-version").first()
                if latest and latest.archive_id == archive.pk:
                    return latest, False
                number = (DatasetVersion.objects.filter(dataset=dataset).aggregate(n=Max("version"))["n"] or 0) + 1
                return DatasetVersion.objects.create(dataset=dataset, version=number, archive=archive, created_by=user), True
        except IntegrityError:
            continue
    raise RuntimeError("could not number the new dataset version")


def remove_version(version: DatasetVersion) -> None:
    """The version stays listed, with the runs that read it, but is never mounted again."""
    DatasetVersion.objects.filter(pk=version.pk, removed_at__isnull=True).update(removed_at=timezone.now())


def create_code_snapshot(team: Team, stream, content_type: str, user) -> tuple[CodeSnapshot, bool]:
    archive = store_upload(stream, content_type)
    snapshot, created = CodeSnapshot.objects.get_or_create(team=team, archive=archive, defaults={"created_by": user})
    return snapshot, created
