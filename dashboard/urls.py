from django.contrib import admin
from django.urls import include, path

from dashboard import compare_views, files_views, models_views, team_views, token_views, views
from terminal import views as terminal_views

urlpatterns = [
    path("", views.runs_list, name="runs-list"),
    path("runs/new/", views.run_new, name="run-new"),
    path("compare/", compare_views.compare_runs, name="compare-runs"),
    path("runs/<int:run_id>/", views.run_summary, name="run-summary"),
    path("runs/<int:run_id>/row/", views.run_row, name="run-row"),
    path("runs/<int:run_id>/head/", views.run_head, name="run-head"),
    path("runs/<int:run_id>/summary-body/", views.run_summary_body, name="run-summary-body"),
    path("runs/<int:run_id>/progress/", views.run_progress, name="run-progress"),
    path("runs/<int:run_id>/logs/", views.run_logs, name="run-logs"),
    path("runs/<int:run_id>/plots/", views.run_plots, name="run-plots"),
    path("runs/<int:run_id>/terminal/", terminal_views.run_terminal, name="run-terminal"),
    path("runs/<int:run_id>/terminal/sessions/", terminal_views.run_terminal_sessions, name="run-terminal-sessions"),
    path("runs/<int:run_id>/files/", files_views.run_files, name="run-files"),
    path("runs/<int:run_id>/files/", include(files_views.urlpatterns)),
    path("runs/<int:run_id>/terminate/", views.run_terminate, name="run-terminate"),
    path("runs/<int:run_id>/reproduce/", views.run_reproduce, name="run-reproduce"),
    path("models/", models_views.models_list, name="models-list"),
    path("models/<str:name>/", models_views.model_detail, name="model-detail"),
    path("teams/<slug:name>/usage/", team_views.team_usage_page, name="team-usage"),
    path("teams/<slug:name>/terminals/", terminal_views.team_terminal_sessions, name="team-terminal-sessions"),
    path("account/tokens/", token_views.tokens_page, name="account-tokens"),
    path("account/tokens/<int:token_id>/revoke/", token_views.token_revoke, name="account-token-revoke"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("runs.urls")),
]

# JSON under /api/, Django's pages elsewhere.
handler400 = "runs.api.bad_request"
handler403 = "runs.api.permission_denied"
handler404 = "runs.api.page_not_found"
handler500 = "runs.api.server_error"
