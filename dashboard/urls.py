from django.contrib import admin
from django.urls import include, path

from dashboard import views

urlpatterns = [
    path("", views.runs_list, name="runs-list"),
    path("runs/<int:run_id>/", views.run_summary, name="run-summary"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("runs.urls")),
]
