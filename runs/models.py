import hashlib
import secrets
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    INITIALIZING = "initializing", "Initializing"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    IDLE = "idle", "Idle"
    TERMINATED = "terminated", "Terminated"


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Team(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")
    # At most this many of the team's runs hold a slot (initializing, running,
    # stopping) at once; more wait `pending`. Empty: no cap of the team's own.
    max_running = models.PositiveIntegerField(null=True, blank=True)
    # Once the team's runs have used this many credits (all of them, ever: a prepaid
    # balance, raised to top up), no new run starts. Empty: no limit.
    credit_limit = models.DecimalField(
        max_digits=14, decimal_places=4, null=True, blank=True,
        help_text="no new run once the team's runs have used this many credits; empty: no limit",
    )
    # An idle run (its command ended, its container kept) bills until someone ends it.
    idle_limit_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="an idle run is terminated (idle timeout) after this many seconds; empty: never",
    )

    def __str__(self):
        return self.name


class Membership(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "team"], name="one_membership_per_team")]

    def __str__(self):
        return f"{self.user} in {self.team} ({self.role})"


class ApiToken(models.Model):
    """A bearer token. Only its sha256 is stored; the token itself is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    digest = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12, help_text="the first characters, to tell tokens apart")
    name = models.CharField(max_length=100, blank=True, help_text="what the user calls it, e.g. 'laptop'")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty: never expires")
    last_used_at = models.DateTimeField(null=True, blank=True)

    @staticmethod
    def digest_of(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(cls, user, name: str = "", expires_at=None) -> tuple["ApiToken", str]:
        token = "ry_" + secrets.token_urlsafe(32)
        row = cls.objects.create(user=user, digest=cls.digest_of(token), prefix=token[:10], name=name, expires_at=expires_at)
        return row, token

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def __str__(self):
        return f"{self.prefix}… ({self.user})"


class Cluster(models.Model):
    """Where runs run (SPEC §7): one Docker engine, or a Docker Swarm whose manager
    places each run on a node with room. `resources.cluster` in a run file names one."""

    class Kind(models.TextChoices):
        ENGINE = "engine", "Single Docker engine"
        SWARM = "swarm", "Docker Swarm"

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.ENGINE)
    manager = models.CharField(
        max_length=500, blank=True,
        help_text="the Swarm manager's Docker endpoint (unix:///path/docker.sock or tcp://host:2376); "
                  "for a single engine, empty: this console's own engine (DOCKER_HOST)",
    )
    tls_dir = models.CharField(
        "TLS folder", max_length=500, blank=True,
        help_text="a folder on the console's host with ca.pem, cert.pem and key.pem for TLS to the "
                  "manager and the nodes (as DOCKER_CERT_PATH); empty: no TLS",
    )
    registry = models.CharField(
        max_length=200, blank=True,
        help_text="the default registry (host[:port]): an image named without a registry host "
                  "(runyard/python:3.11) is pulled from here",
    )
    node_engines = models.JSONField(
        default=dict, blank=True,
        help_text='how to reach each node\'s own engine (terminals, stops, logs, exports): '
                  '{"node name": "tcp://10.0.0.12:2376", ...}, by the node\'s `name` label or hostname',
    )
    node_engine_port = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="for a node not in node_engines: its engine at tcp://ADDRESS:PORT, ADDRESS being the node's address in the Swarm",
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.name

    def clean(self):
        from runs.clusters import cluster_errors

        errors = cluster_errors(self)
        if errors:
            raise ValidationError(errors)


class ResourcePreset(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    cpus = models.DecimalField(max_digits=6, decimal_places=2, help_text="CPU cores")
    memory_mb = models.PositiveIntegerField(help_text="memory limit in MiB")
    gpus = models.PositiveSmallIntegerField(default=0, help_text="GPUs (on a Swarm: the generic resource `gpu`)")
    credits_per_hour = models.DecimalField(max_digits=10, decimal_places=4)
    clusters = models.ManyToManyField(
        Cluster, blank=True, related_name="presets", help_text="the clusters that offer it; none chosen: every cluster",
    )

    def __str__(self):
        return self.name


class Installation(models.Model):
    """One row: the id that labels this installation's containers, so that two
    consoles (or a test run) on one Docker engine never touch each other's."""

    instance_id = models.CharField(max_length=16, unique=True)


class Run(models.Model):
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=list, blank=True)
    # "|a|b|": lets every database filter on one tag with a plain LIKE.
    tag_index = models.CharField(max_length=2000, blank=True, db_index=True)
    spec = models.JSONField(help_text="the validated, resolved spec, frozen at creation")
    image = models.CharField(max_length=500)
    image_digest = models.CharField(max_length=200, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_reason = models.CharField(max_length=1000, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs")
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="runs")
    preset = models.ForeignKey(ResourcePreset, on_delete=models.PROTECT, related_name="runs")
    reproduced_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reproductions"
    )
    executor = models.CharField(max_length=16)
    container_id = models.CharField(max_length=100, blank=True)
    cluster = models.ForeignKey(Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="runs")
    # Once placed: the node's `name` label, else its hostname (SPEC §7).
    node = models.CharField(max_length=200, blank=True)
    # When a run that its cluster places (Swarm) was handed to the cluster: from then on it
    # holds its team's slot, and waits `pending` for the cluster to find it room.
    submitted_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    initializing_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopping_at = models.DateTimeField(null=True, blank=True)
    idle_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Terminate asked for: the container gets SIGTERM, then SIGKILL at stop_deadline.
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    stop_deadline = models.DateTimeField(null=True, blank=True)
    container_removed_at = models.DateTimeField(null=True, blank=True)

    # What the run reported from inside (runs/reports.py), stored with the log lines around it.
    progress = models.FloatField(null=True, blank=True)
    progress_samples = models.JSONField(default=list, blank=True, help_text="recent [unix time, progress] pairs")
    reports_malformed = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True, help_text="runyard.summary: the latest value per name")
    metrics_last = models.JSONField(default=dict, blank=True, help_text="the last value each metric reported")
    # What the run read, resolved at creation: [{"path", "kind": git|dataset|code, ...}].
    imports = models.JSONField(default=list, blank=True)
    # A reproduction made with changes: {field: {"from": ..., "to": ...}}.
    changes = models.JSONField(default=dict, blank=True)
    # What was said about its file when it was created, without refusing it: [{"loc", "msg"}].
    warnings = models.JSONField(default=list, blank=True)
    exports_state = models.CharField(
        max_length=16, blank=True, help_text="'' none yet, 'complete', 'partial' (stopped mid-way) or 'failed'"
    )

    # Log collection state, advanced in the same transaction as the chunk it covers.
    log_lines = models.PositiveIntegerField(default=0)
    log_cursor = models.BigIntegerField(default=0, help_text="executor position after the last stored line")
    log_complete = models.BooleanField(default=False)
    # A line begun but not yet ended at the last flush, per stream: {"0": [time, text]}.
    log_pending = models.JSONField(default=dict, blank=True)
    # Whoever holds an unexpired lease (a start or collect task) works on the run;
    # the reconciler hands an expired one to a new task.
    lease_owner = models.CharField(max_length=40, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # The secret values this run's output must never show, fixed when it starts and
    # kept encrypted (runs.team_secrets), so a secret deleted or rotated later is still masked.
    mask_ciphertext = models.BinaryField(null=True, blank=True)
    # The values of the spec's inline secrets (env: {value, secret: true}), by variable,
    # encrypted (runs.team_secrets): the frozen spec keeps only {"inline_secret": true}.
    inline_secrets_ciphertext = models.BinaryField(null=True, blank=True)

    class Meta:
        # Each list filter newest first (runs.selectors): a page reads about its own rows.
        # Searches by name and tag use trigram indexes on PostgreSQL (migration 0011).
        indexes = [
            models.Index(fields=["team", "-id"], name="run_team_newest"),
            models.Index(fields=["team", "status", "-id"], name="run_team_status_newest"),
            # A status of the few (pending: 1 in 500 at a million runs) across the user's teams,
            # newest first without sorting them all; on its own, status was the whole index.
            models.Index(fields=["status", "-id"], name="run_status_newest"),
            models.Index(fields=["owner", "-id"], name="run_owner_newest"),
            # The reconciler's rounds, every few seconds: the runs whose container is still
            # there (the live ones, and finished ones not cleaned up yet), a few among a
            # million, not a scan of them all.
            models.Index(fields=["status"], condition=models.Q(container_removed_at__isnull=True),
                         name="run_container_kept"),
        ]

    def __str__(self):
        return f"#{self.pk} {self.name}"

    @property
    def is_final(self) -> bool:
        from runs.lifecycle import FINAL

        return self.status in FINAL

    @property
    def termination_grace(self) -> float:
        return float(self.spec.get("termination_grace_seconds", 10))

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.stopping_at or self.finished_at or timezone.now()
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def seconds_by_status(self) -> dict[str, float]:
        """Seconds spent in each charged status, from the phase timestamps
        (runs.credits computes the same in SQL for a team's usage)."""
        from runs.credits import charged_spans

        now = timezone.now()
        seconds = {}
        for status, (start, ends) in charged_spans().items():
            begun = getattr(self, start)
            end = next((value for value in (getattr(self, name) for name in ends) if value), now)
            seconds[status] = max(0.0, (end - begun).total_seconds()) if begun else 0.0
        return seconds

    @property
    def charged_seconds(self) -> float:
        """Seconds charged: initializing, running and idle."""
        return sum(self.seconds_by_status.values())

    @property
    def eta_seconds(self) -> float | None:
        from runs.reports import eta_seconds

        # A stalled run's rate is not its rate: no ETA rather than "finishing".
        if self.status != Status.RUNNING or self.stalled:
            return None
        return eta_seconds(self.progress_samples, timezone.now().timestamp())

    @property
    def stalls_in_seconds(self) -> float | None:
        """While running: seconds until it counts as stalled if its progress does
        not move (0 or less: it is); None where it cannot stall."""
        from runs.reports import stalls_in

        if self.status != Status.RUNNING:
            return None
        return stalls_in(self.progress_samples, timezone.now().timestamp(), settings.RUNYARD_STALLED_SECONDS)

    @property
    def stalled(self) -> bool:
        """Running, but its progress has not moved for RUNYARD_STALLED_SECONDS."""
        left = self.stalls_in_seconds
        return left is not None and left <= 0

    @property
    def idle_deadline(self):
        """When an idle run is terminated for its team's idle limit; None: never."""
        if self.status != Status.IDLE or not self.idle_at or self.team.idle_limit_seconds is None:
            return None
        return self.idle_at + timedelta(seconds=self.team.idle_limit_seconds)

    @property
    def credits_by_status(self) -> dict[str, Decimal]:
        from runs.credits import credits_for

        rate = self.preset.credits_per_hour
        return {status: credits_for(rate, seconds) for status, seconds in self.seconds_by_status.items()}

    @property
    def credits(self) -> Decimal:
        """The sum of credits_by_status, so the two always agree."""
        return sum(self.credits_by_status.values(), Decimal("0.0000"))


class MetricChunk(models.Model):
    """Consecutive values of one metric a run reported, in the order reported.

    Written by the log collector in the same transaction as the log lines around
    them; a chunk per metric per flush keeps a 100,000-point series in tens of rows.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metric_chunks")
    key = models.CharField(max_length=100)
    count = models.PositiveIntegerField()
    # Written with the points (runs/metrics.py): where the chunk lies on each x axis, so a
    # zoom fetches only the chunks in its range, and each block's lowest and highest
    # point, so a whole series is thinned from these instead of every point. Chunks
    # stored before them have none (time_low is null): they are read point by point.
    # (Before the points: on SQLite a row's later columns are reached through them.)
    step_low = models.BigIntegerField(null=True, help_text="lowest step given; null if none was")
    step_high = models.BigIntegerField(null=True, help_text="highest step given; null if none was")
    stepless = models.BooleanField(null=True, help_text="some point has no step (its x is its position)")
    time_low = models.FloatField(null=True, help_text="earliest unix time; null for a chunk stored without summary")
    time_high = models.FloatField(null=True)
    summary_coarse = models.BinaryField(null=True, help_text="the same of each block of 256 points")
    summary = models.BinaryField(null=True, help_text="packed lowest and highest point of each block of 32 points")
    # Packed arrays of `count` items (runs/metrics.py packs and unpacks them): a
    # 100,000-point series reads in milliseconds, where JSON took a fifth of a second.
    steps = models.BinaryField(help_text="int64 per point; -1 where no step was given")
    values = models.BinaryField(help_text="float64 per point")
    times = models.BinaryField(help_text="float64 unix time of each reporting line")

    class Meta:
        indexes = [models.Index(fields=["run", "key", "id"], name="metric_run_key_order")]

    SUMMARY_FIELDS = ("step_low", "step_high", "stepless", "time_low", "time_high", "summary", "summary_coarse")

    def save(self, *args, update_fields=None, **kwargs):
        # A chunk whose points change (a system metric's open chunk) keeps its summary with them.
        if update_fields is not None and "values" in update_fields:
            update_fields = [*update_fields, *(f for f in self.SUMMARY_FIELDS if f not in update_fields)]
        super().save(*args, update_fields=update_fields, **kwargs)


class RunEvent(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, choices=Status.choices)
    to_status = models.CharField(max_length=16, choices=Status.choices)
    at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150, help_text="the user's name, or 'system'")
    reason = models.CharField(max_length=1000, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self):
        return f"{self.run_id}: {self.from_status} → {self.to_status}"


class LogChunk(models.Model):
    """A batch of consecutive log lines: first_line .. first_line + line_count - 1.

    `lines` is a JSON list of [unix_time, stream, text] with stream 0 = stdout, 1 = stderr.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_chunks")
    first_line = models.PositiveIntegerField()
    line_count = models.PositiveIntegerField()
    lines = models.JSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "first_line"], name="one_chunk_per_start_line")]
        ordering = ["first_line"]


class Archive(models.Model):
    """An immutable, content-addressed tree of files: a dataset version or a code
    snapshot. Stored once as a deterministic tar at `storage_name`; `content_hash`
    is the sha256 of its manifest (every file's path, size and sha256)."""

    content_hash = models.CharField(max_length=64, unique=True)
    storage_name = models.CharField(max_length=200)
    size_bytes = models.BigIntegerField()
    file_count = models.PositiveIntegerField()
    manifest = models.JSONField(help_text="[[path, size, sha256], ...] sorted by path")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return f"archive {self.content_hash[:12]}"


class Dataset(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="one_dataset_name_per_team")]

    def __str__(self):
        return f"{self.team}/{self.name}"


class DatasetVersion(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    archive = models.ForeignKey(Archive, on_delete=models.PROTECT, related_name="dataset_versions")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    # A removed version stays listed (runs name it) but can no longer be mounted.
    removed_at = models.DateTimeField(null=True, blank=True)
    # Made from a run's exports (`export: {/out/: vessl-dataset://ORG/NAME}`), rather than uploaded.
    run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="dataset_versions_made")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dataset", "version"], name="one_row_per_dataset_version"),
            # A run makes at most one version of a dataset, however often its exports are finalized.
            models.UniqueConstraint(fields=["dataset", "run"], condition=models.Q(run__isnull=False), name="one_dataset_version_per_run"),
        ]
        ordering = ["dataset", "version"]

    def __str__(self):
        return f"{self.dataset.name}@{self.version}"


class Model(models.Model):
    """A team's named, versioned set of files, such as trained weights (SPEC §8): made
    by a run's export (`vessl-model://ORG/REPO`) or an upload, imported by later runs
    (`vessl-model://ORG/REPO/N`). Its versions are immutable, as a dataset's."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="one_model_name_per_team")]

    def __str__(self):
        return f"{self.team}/{self.name}"


class ModelVersion(models.Model):
    """One immutable version of a model: its files are an Archive (path, size and
    sha256 of each in its manifest). Its lineage: the run that made it (or the user
    who uploaded it), and the runs that imported it."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    archive = models.ForeignKey(Archive, on_delete=models.PROTECT, related_name="model_versions")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions_made",
                            help_text="the run whose exports made it; empty: uploaded")
    used_by = models.ManyToManyField("Run", blank=True, related_name="model_versions_used",
                                     help_text="the runs that import it")
    # As a dataset version's: still listed with its lineage, never mounted again.
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="one_row_per_model_version"),
            models.UniqueConstraint(fields=["model", "run"], condition=models.Q(run__isnull=False), name="one_model_version_per_run"),
        ]
        ordering = ["model", "version"]

    def __str__(self):
        return f"{self.model.name}/{self.version}"


class CodeSnapshot(models.Model):
    """A directory uploaded with `runyard run create --code DIR`."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="code_snapshots")
    archive = models.ForeignKey(Archive, on_delete=models.PROTECT, related_name="code_snapshots")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "archive"], name="one_snapshot_per_team_and_content")]


class TeamSecret(models.Model):
    """A value runs read from env (`{secret: NAME}`); stored encrypted, never shown."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=100)
    ciphertext = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="one_secret_name_per_team")]

    def __str__(self):
        return f"{self.team}/{self.name}"


class Credential(models.Model):
    """A team's login to a container registry (`image: {url, credential_name}`) or a git
    server (`credential_name` on a git import). Only its host and username are shown;
    the password, token or private key is stored encrypted (runs.credentials) and is
    used only against `host`."""

    class Kind(models.TextChoices):
        REGISTRY = "registry", "Container registry (username and password or token)"
        GIT_TOKEN = "git-token", "Git over HTTPS (a token)"
        GIT_SSH = "git-ssh", "Git over SSH (a private key)"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="credentials")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    host = models.CharField(
        max_length=255, help_text="the registry or git server it is for (host[:port]); it is sent nowhere else",
    )
    username = models.CharField(max_length=200, blank=True)
    ciphertext = models.BinaryField()
    known_hosts = models.TextField(
        blank=True, help_text="git over SSH: the server's known_hosts lines; empty: its key is accepted on first use",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="one_credential_name_per_team")]

    def __str__(self):
        return f"{self.team}/{self.name}"


class RunFile(models.Model):
    """A file copied out of a run's export path while it was stopping."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=1000, help_text="the path inside the container, e.g. /output/model.pt")
    storage_name = models.CharField(max_length=1200)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    partial = models.BooleanField(default=False, help_text="copied from a run stopped mid-way")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "path"], name="one_row_per_run_file")]
        ordering = ["path"]
