from django.urls import path, re_path

from runs import api, api_account, api_inputs, openapi

urlpatterns = [
    path("health", api.health),
    path("openapi.json", openapi.openapi_json),
    path("docs", openapi.docs),
    path("runs", api.runs_collection),
    path("runs/<int:run_id>", api.run_detail),
    path("runs/<int:run_id>/events", api.run_events),
    path("runs/<int:run_id>/terminate", api.run_terminate),
    path("runs/<int:run_id>/reproduce", api.run_reproduce),
    path("runs/<int:run_id>/logs", api.run_logs),
    path("runs/<int:run_id>/logs.txt", api.run_logs_text),
    path("runs/<int:run_id>/logs/search", api.run_logs_search),
    path("runs/<int:run_id>/metrics", api.run_metrics),
    path("runs/<int:run_id>/metrics/<path:key>", api.run_metric),
    path("runs/<int:run_id>/files", api.run_files),
    path("runs/<int:run_id>/files/raw", api.run_file_raw),
    path("datasets", api_inputs.datasets),
    path("datasets/<str:name>/versions", api_inputs.dataset_versions),
    path("datasets/<str:name>/versions/<int:version>", api_inputs.dataset_version),
    path("code", api_inputs.code_snapshots),
    path("secrets", api_inputs.secrets),
    path("secrets/<str:name>", api_inputs.secret),
    path("credentials", api_inputs.credentials),
    path("credentials/<str:name>", api_inputs.credential),
    path("tokens", api_account.tokens_collection),
    path("tokens/<int:token_id>", api_account.token_detail),
    path("teams", api_account.teams_collection),
    path("teams/<str:name>", api_account.team_detail),
    re_path(r"^(?P<path>.*)$", api.not_found),
]
