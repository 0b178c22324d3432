"""django.contrib.admin with Runyard's site (dashboard/admin_site.py), which team admins may enter.

A module of its own: Django imports app configs before any model is loaded.
"""

from django.contrib.admin.apps import AdminConfig


class RunyardAdminConfig(AdminConfig):
    default_site = "dashboard.admin_site.RunyardAdminSite"
