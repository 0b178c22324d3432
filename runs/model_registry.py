"""Models (SPEC §8): a team's named sets of files with numbered, immutable versions,
stored as datasets are (runs.file_sets, runs.archives).

A version is made by an upload (`POST /api/v1/models/NAME/versions`, `runyard model
create`) or by a run exporting to `vessl-model://ORG/REPO` (runs.exports). Its lineage
is the run that made it (or the user who uploaded it) and the runs that import it,
recorded here when each is created.
"""

from dataclasses import dataclass, field

from runs import file_sets
from runs.archives import store_upload
from runs.models import Model, ModelVersion, Run, Team


def create_version(team: Team, name: str, stream, content_type: str, user) -> tuple[ModelVersion, bool]:
    """Store an uploaded archive as the model's next version; the same content as
    its newest version makes none: (that version, False)."""
    archive = store_upload(stream, content_type)
    return file_sets.add_version(Model, team, name, archive, user=user)


def record_uses(run: Run) -> None:
    """Link the run to every model version its frozen spec imports (its lineage)."""
    wanted = [source["model"] for source in run.spec.get("import", {}).values() if "model" in source]
    for model in wanted:
        version = ModelVersion.objects.filter(model__team_id=run.team_id, model__name=model["name"], version=model["version"]).first()
        if version is not None:
            version.used_by.add(run)


@dataclass
class ModelSummary:
    model: Model
    latest: ModelVersion | None = None
    version_count: int = 0
    versions: list[ModelVersion] = field(default_factory=list)


def team_models(team: Team | None) -> list[ModelSummary]:
    """The team's models by name, each with its versions (newest first) and the run
    that made each: two queries, whatever the number of models."""
    if team is None:
        return []
    summaries = {model.pk: ModelSummary(model) for model in Model.objects.filter(team=team).order_by("name")}
    versions = (ModelVersion.objects.filter(model__team=team).select_related("archive", "run", "created_by")
                .defer("archive__manifest").order_by("model_id", "-version"))
    for version in versions:
        summary = summaries[version.model_id]
        summary.versions.append(version)
        summary.version_count += 1
        if summary.latest is None and version.removed_at is None:
            summary.latest = version
    return list(summaries.values())


def model_versions(model: Model) -> list[ModelVersion]:
    """The model's versions, newest first, each with the run that made it and the
    runs that used it (`used_runs`, newest first): three queries."""
    versions = list(model.versions.select_related("archive", "run", "created_by").defer("archive__manifest").order_by("-version"))
    uses = ModelVersion.used_by.through.objects.filter(modelversion__model=model).select_related("run").order_by("-run_id")
    by_version: dict[int, list[Run]] = {}
    for use in uses:
        by_version.setdefault(use.modelversion_id, []).append(use.run)
    for version in versions:
        version.used_runs = by_version.get(version.pk, [])
    return versions
