"""What datasets and models share: a team's named set of files with numbered,
immutable versions, each an Archive. A version comes from an upload (its user) or
from a run's exports (that run); a removed version stays listed but is never
mounted again."""

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from runs.models import Archive, Dataset, Model, Team

NAME_PATTERN = r"[A-Za-z0-9._-]{1,100}"
NAME_RULE = "letters, digits, . _ - only, at most 100"
# Dataset and Model: each has `team`, `name`, `created_by` and `versions`, whose rows
# have `version`, `archive`, `created_by`, `run` and `removed_at`.
FileSet = type[Dataset] | type[Model]


def add_version(kind: FileSet, team: Team, name: str, archive: Archive, *, user=None, run=None):
    """The set's next version holding `archive`; (version, created).

    An upload with the same content as the newest version makes none: (that
    version, False). A run makes at most one version of a set: asked again (its
    exports finalized twice), the one it made, False.
    """
    for _ in range(5):  # two writers racing for the same number: the loser numbers again
        try:
            with transaction.atomic():
                parent, _ = kind.objects.get_or_create(team=team, name=name, defaults={"created_by": user})
                versions = parent.versions.all()
                if run is not None:
                    made = versions.filter(run=run).first()
                    if made is not None:
                        return made, False
                else:
                    newest = versions.filter(removed_at__isnull=True).order_by("-version").first()
                    if newest is not None and newest.archive_id == archive.pk:
                        return newest, False
                number = (versions.aggregate(n=Max("version"))["n"] or 0) + 1
                return parent.versions.create(version=number, archive=archive, created_by=user, run=run), True
        except IntegrityError:
            continue
    raise RuntimeError(f"could not number the new version of {kind.__name__.lower()} {name}")


def remove_version(version) -> None:
    """The version stays listed, with the runs that read it, but is never mounted again."""
    type(version).objects.filter(pk=version.pk, removed_at__isnull=True).update(removed_at=timezone.now())


def newest_version(kind: FileSet, team: Team, name: str, wanted: int | None):
    """Version `wanted` (None: the newest) of the team's set that may still be
    mounted, or a message saying what is missing."""
    what = kind.__name__.lower()
    parent = kind.objects.filter(team=team, name=name).first()
    if parent is None:
        return f"{what} {name!r} not found in team {team.name}"
    versions = parent.versions.filter(removed_at__isnull=True).select_related("archive")
    if wanted is None:
        return versions.order_by("-version").first() or f"{what} {name!r} has no versions"
    return versions.filter(version=wanted).first() or f"{what} {name!r} has no version {wanted}"
