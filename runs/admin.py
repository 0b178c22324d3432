from django.contrib import admin, messages

from runs.lifecycle import IllegalTransition
from runs.models import ApiToken, Membership, ResourcePreset, Run, RunEvent, Team
from runs.services import NotAllowed, terminate_run


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at"]
    inlines = [MembershipInline]


@admin.register(ResourcePreset)
class ResourcePresetAdmin(admin.ModelAdmin):
    list_display = ["name", "cpus", "memory_mb", "gpus", "credits_per_hour"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "user", "created_at", "last_used_at"]
    readonly_fields = ["digest", "prefix", "created_at", "last_used_at"]


class RunEventInline(admin.TabularInline):
    model = RunEvent
    extra = 0
    can_delete = False
    readonly_fields = ["from_status", "to_status", "at", "actor_name", "reason"]
    exclude = ["actor"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "status", "owner", "team", "executor", "created_at"]
    list_filter = ["status", "team", "executor"]
    search_fields = ["name"]
    inlines = [RunEventInline]
    actions = ["terminate"]
    # Status changes go through the lifecycle only, never through a form.
    readonly_fields = [f.name for f in Run._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Terminate the selected runs")
    def terminate(self, request, queryset):
        for run in queryset:
            try:
                terminate_run(run, actor=request.user)
            except (IllegalTransition, NotAllowed) as exc:
                self.message_user(request, str(exc), messages.WARNING)
