from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.shortcuts import redirect, render
from django.utils.html import format_html, format_html_join

from runs.api_account import CREDIT_LIMIT_TOP, MAX_RUNNING_TOP, TEAM_SETTINGS
from runs.credits import team_credits_used, team_usage
from runs.lifecycle import IllegalTransition
from runs.archives import ArchiveError
from runs.datasets import create_version
from runs.credentials import CredentialError, check_credential, secret_field, set_credential
from runs.models import (
    ApiToken, Cluster, Credential, Dataset, DatasetVersion, Membership, Model, ModelVersion, ResourcePreset, Run, RunEvent, RunFile, Team, TeamSecret,
)
from runs.access import NotAllowed, administered_team_ids
from runs.services import terminate_run
from runs.tasks import enqueue_dispatch
from runs.team_secrets import SecretError, set_secret
from terminal.models import TerminalSessionRecord


def team_admin_only(request) -> bool:
    """A team admin who is not staff: sees only their own teams (the site lets no one else in)."""
    return not request.user.is_staff


def teams_administered(request) -> set[int]:
    """The teams the user administers (runs.access.administered_team_ids), read once per request."""
    if not hasattr(request, "_administered_teams"):
        request._administered_teams = administered_team_ids(request.user)
    return request._administered_teams


class TeamScoped:
    """For a model that belongs to a team: staff keep Django's permissions; a team
    admin sees, adds and changes only what belongs to the teams they administer
    (runs.access.administered_team_ids, read once per request)."""

    team_field = "team"
    team_admin_may_add = True
    team_admin_may_delete = False

    def teams(self, request) -> set[int]:
        return teams_administered(request)

    def owns(self, request, obj) -> bool:
        return obj is None or getattr(obj, f"{self.team_field}_id") in self.teams(request)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if team_admin_only(request):
            queryset = queryset.filter(**{f"{self.team_field}__in": self.teams(request)})
        return queryset

    def has_module_permission(self, request):
        return team_admin_only(request) or super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        if team_admin_only(request):
            return self.owns(request, obj)
        return super().has_view_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        if team_admin_only(request):
            return self.owns(request, obj)
        return super().has_change_permission(request, obj)

    def has_add_permission(self, request, *args):
        if team_admin_only(request):
            return self.team_admin_may_add
        return super().has_add_permission(request, *args)

    def has_delete_permission(self, request, obj=None):
        if team_admin_only(request):
            return self.team_admin_may_delete and self.owns(request, obj)
        return super().has_delete_permission(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == self.team_field and team_admin_only(request):
            kwargs["queryset"] = Team.objects.filter(pk__in=self.teams(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ShownToTeamAdmins:
    """An inline of a team-scoped object: its parent's check already let the user in."""

    def has_view_permission(self, request, obj=None):
        return team_admin_only(request) or super().has_view_permission(request, obj)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Membership)
class MembershipAdmin(TeamScoped, admin.ModelAdmin):
    """Who is in a team, and as what. A team admin manages their own teams' members."""

    list_display = ["user", "team", "role", "created_at"]
    list_filter = [("team", admin.RelatedOnlyFieldListFilter), "role"]
    search_fields = ["user__username"]
    fields = ["user", "team", "role"]
    team_admin_may_delete = True


class TeamLimitsForm(forms.ModelForm):
    """The limits as the API checks them (PATCH /api/v1/teams/NAME): each bad value is
    refused on its own field, and nothing is saved."""

    max_running = forms.IntegerField(
        required=False, min_value=0, max_value=MAX_RUNNING_TOP,
        help_text="at most this many of the team's runs at once (more wait pending); empty: no cap of the team's own",
    )
    credit_limit = forms.DecimalField(
        required=False, min_value=0, max_value=CREDIT_LIMIT_TOP, max_digits=14, decimal_places=4,
        help_text=Team._meta.get_field("credit_limit").help_text,
    )
    idle_limit_seconds = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_RUNNING_TOP,
        help_text=Team._meta.get_field("idle_limit_seconds").help_text,
    )

    class Meta:
        model = Team
        fields = ["name", *TEAM_SETTINGS]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """Staff see and change every team. A team admin who is not staff sees only the
    teams they administer, and changes only their limits (as PATCH /api/v1/teams/NAME
    lets them); members are managed under Memberships."""

    form = TeamLimitsForm
    list_display = ["name", "max_running", "credit_limit", "idle_limit_seconds", "credits_used", "created_at"]
    fields = ["name", *TEAM_SETTINGS, "usage"]
    readonly_fields = ["usage"]
    inlines = [MembershipInline]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if team_admin_only(request):
            queryset = queryset.filter(pk__in=teams_administered(request))
        return queryset

    def get_readonly_fields(self, request, obj=None):
        if team_admin_only(request):
            return ["name", "usage"]  # the team's name is the installation's to give
        return super().get_readonly_fields(request, obj)

    def get_inlines(self, request, obj):
        return [] if team_admin_only(request) else super().get_inlines(request, obj)

    def has_module_permission(self, request):
        return team_admin_only(request) or super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        if team_admin_only(request):
            return obj is None or obj.pk in teams_administered(request)
        return super().has_view_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        if team_admin_only(request):
            return obj is None or obj.pk in teams_administered(request)
        return super().has_change_permission(request, obj)

    def has_add_permission(self, request):
        return not team_admin_only(request) and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        return not team_admin_only(request) and super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        # A raised cap or limit starts waiting runs now, not at the next reconcile.
        transaction.on_commit(enqueue_dispatch)

    @admin.display(description="credits used")
    def credits_used(self, obj):
        return team_credits_used(obj.pk)  # one grouped query per team listed

    @admin.display(description="usage by month and user")
    def usage(self, obj):
        if obj.pk is None:
            return "—"
        usage = team_usage(obj.pk)
        rows = [(month["month"].strftime("%B %Y"), row["user"], row["initializing"], row["running"], row["idle"], row["credits"])
                for month in usage["months"] for row in month["users"]]
        total = usage["total"]
        rows.append(("all time", "all users", total["initializing"], total["running"], total["idle"], total["credits"]))
        return format_html(
            "<table><tr><th>month</th><th>user</th><th>initializing</th><th>running</th><th>idle</th><th>credits</th></tr>{}</table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "manager", "registry", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "manager", "tls_dir", "registry"]}),
        ("Swarm nodes (terminals, stops, logs and exports talk to the node's own engine)",
         {"fields": ["node_engines", "node_engine_port"]}),
    ]


@admin.register(ResourcePreset)
class ResourcePresetAdmin(admin.ModelAdmin):
    list_display = ["name", "cpus", "memory_mb", "gpus", "credits_per_hour", "offered_by"]
    filter_horizontal = ["clusters"]

    @admin.display(description="clusters")
    def offered_by(self, obj):
        return ", ".join(c.name for c in obj.clusters.all()) or "every cluster"


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "expires_at", "last_used_at"]
    readonly_fields = ["digest", "prefix", "created_at", "last_used_at"]


class RunEventInline(ShownToTeamAdmins, admin.TabularInline):
    model = RunEvent
    extra = 0
    can_delete = False
    readonly_fields = ["from_status", "to_status", "at", "actor_name", "reason"]
    exclude = ["actor"]

    def has_add_permission(self, request, obj=None):
        return False


class RunFileInline(ShownToTeamAdmins, admin.TabularInline):
    model = RunFile
    extra = 0
    can_delete = False
    fields = ["path", "size", "sha256", "partial"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Run)
class RunAdmin(TeamScoped, admin.ModelAdmin):
    list_display = ["id", "name", "status", "owner", "team", "cluster", "node", "created_at"]
    list_filter = ["status", ("team", admin.RelatedOnlyFieldListFilter), "cluster", "executor"]
    search_fields = ["name"]
    inlines = [RunEventInline, RunFileInline]
    actions = ["terminate"]
    # Status changes go through the lifecycle only, never through a form.
    readonly_fields = [f.name for f in Run._meta.fields]

    def has_add_permission(self, request):
        return False  # runs are created from YAML, in the console or the API

    @admin.action(description="Terminate the selected runs")
    def terminate(self, request, queryset):
        for run in queryset:
            try:
                terminate_run(run, actor=request.user)
            except (IllegalTransition, NotAllowed) as exc:
                self.message_user(request, str(exc), messages.WARNING)


class DatasetUploadForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.all())
    name = forms.RegexField(regex=r"^[A-Za-z0-9._-]{1,100}$", help_text="letters, digits, . _ -")
    archive = forms.FileField(help_text="a .tar, .tar.gz or .zip of the dataset's files")


class DatasetVersionInline(ShownToTeamAdmins, admin.TabularInline):
    model = DatasetVersion
    extra = 0
    can_delete = False
    fields = ["version", "content_hash", "size", "files", "created_at", "removed_at"]
    readonly_fields = fields

    def content_hash(self, obj):
        return obj.archive.content_hash

    def size(self, obj):
        return obj.archive.size_bytes

    def files(self, obj):
        return obj.archive.file_count

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Dataset)
class DatasetAdmin(TeamScoped, admin.ModelAdmin):
    list_display = ["name", "team", "created_at"]
    list_filter = [("team", admin.RelatedOnlyFieldListFilter)]
    inlines = [DatasetVersionInline]
    readonly_fields = ["team", "name", "created_at", "created_by"]

    def add_view(self, request, form_url="", extra_context=None):
        """Adding a dataset (or a version of one) is uploading an archive."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = DatasetUploadForm(request.POST or None, request.FILES or None)
        if team_admin_only(request):
            form.fields["team"].queryset = Team.objects.filter(pk__in=self.teams(request))
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["archive"]
            try:
                version, created = create_version(
                    form.cleaned_data["team"], form.cleaned_data["name"], upload, upload.content_type or "", request.user
                )
            except ArchiveError as exc:
                form.add_error("archive", str(exc))
            else:
                word = "created" if created else "unchanged (same content as)"
                self.message_user(request, f"{word} {version.dataset.name}@{version.version}", messages.SUCCESS)
                return redirect("admin:runs_dataset_change", version.dataset.pk)
        context = {**self.admin_site.each_context(request), "form": form, "title": "Upload a dataset version", "opts": self.model._meta}
        return render(request, "admin/runs/dataset_upload.html", context)


class ModelVersionInline(DatasetVersionInline):
    model = ModelVersion
    fields = ["version", "content_hash", "size", "files", "run", "created_by", "created_at", "removed_at"]
    readonly_fields = fields


@admin.register(Model)
class ModelAdmin(TeamScoped, admin.ModelAdmin):
    """Versions come from runs' exports and uploads (API, `runyard model create`); here
    they are read, and the model's description is written."""

    list_display = ["name", "team", "created_at"]
    list_filter = [("team", admin.RelatedOnlyFieldListFilter)]
    inlines = [ModelVersionInline]
    readonly_fields = ["team", "name", "created_at", "created_by"]
    fields = ["team", "name", "description", "created_at", "created_by"]

    def has_add_permission(self, request, *args):
        return False


class TeamSecretForm(forms.ModelForm):
    value = forms.CharField(widget=forms.PasswordInput(render_value=False), help_text="stored encrypted; never shown again")

    class Meta:
        model = TeamSecret
        fields = ["team", "name"]


@admin.register(TeamSecret)
class TeamSecretAdmin(TeamScoped, admin.ModelAdmin):
    form = TeamSecretForm
    list_display = ["name", "team", "updated_at", "updated_by"]
    team_admin_may_delete = True
    list_filter = [("team", admin.RelatedOnlyFieldListFilter)]

    def save_model(self, request, obj, form, change):
        try:
            stored = set_secret(form.cleaned_data["team"], form.cleaned_data["name"], form.cleaned_data["value"], request.user)
        except SecretError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.pk = stored.pk


class CredentialForm(forms.ModelForm):
    """The secret part is typed in (never shown back): a password or token in one field,
    an SSH private key in the other, as the kind needs. Changing a credential means
    typing its secret again."""

    password = forms.CharField(
        label="Password or token", required=False, strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="registry: the password or access token; git over HTTPS: the token. Stored encrypted; never shown again",
    )
    private_key = forms.CharField(
        label="SSH private key", required=False, widget=forms.Textarea(attrs={"rows": 6, "autocomplete": "off"}),
        help_text="git over SSH: the private key (-----BEGIN OPENSSH PRIVATE KEY----- ...). Stored encrypted; never shown again",
    )

    class Meta:
        model = Credential
        fields = ["team", "name", "kind", "host", "username", "known_hosts"]

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if not kind or self.errors:
            return data
        field = "private_key" if kind == Credential.Kind.GIT_SSH else "password"
        try:
            data["host"], data["username"] = check_credential(
                data.get("name", ""), kind=kind, host=data.get("host", ""), username=data.get("username", ""),
                secret=data.get(field, ""), known_hosts=data.get("known_hosts", ""),
            )
        except CredentialError as exc:
            where = {"token": "password", secret_field(kind): field}.get(exc.field, exc.field)
            self.add_error(where if where in self.fields else None, str(exc))
        data["secret"] = data.get(field, "")
        return data


@admin.register(Credential)
class CredentialAdmin(TeamScoped, admin.ModelAdmin):
    """Team registry and git credentials, for the team's admins (and staff)."""

    form = CredentialForm
    list_display = ["name", "team", "kind", "host", "username", "updated_at", "updated_by"]
    list_filter = ["kind", ("team", admin.RelatedOnlyFieldListFilter)]
    team_admin_may_delete = True

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        stored, _ = set_credential(
            data["team"], data["name"], kind=data["kind"], host=data["host"], username=data["username"],
            secret=data["secret"], known_hosts=data.get("known_hosts", ""), user=request.user,
        )
        if change and obj.pk and obj.pk != stored.pk:  # renamed (or moved): the old name goes
            Credential.objects.filter(pk=obj.pk).delete()
        obj.pk = stored.pk


@admin.register(TerminalSessionRecord)
class TerminalSessionRecordAdmin(TeamScoped, admin.ModelAdmin):
    """The record of web terminal sessions (SPEC §5): read only, for staff and the
    admins of the run's team."""

    list_display = ["started_at", "username", "run", "mode", "ended_at", "ended_how", "exit_code", "resumes"]
    list_filter = ["mode", "ended_how", ("team", admin.RelatedOnlyFieldListFilter)]
    search_fields = ["username"]
    list_select_related = ["run"]
    readonly_fields = [f.name for f in TerminalSessionRecord._meta.fields if f.name != "user"]
    exclude = ["user"]  # username says who, even once the user is deleted
    team_admin_may_add = False

    def has_add_permission(self, request):
        return False  # only the console writes them

    def has_change_permission(self, request, obj=None):
        return False  # a record is not edited

    def has_delete_permission(self, request, obj=None):
        return False
