import logging
from pathlib import Path

from django.apps import AppConfig
from django.conf import settings
from django.db.backends.signals import connection_created

# What the embedded default keeps under var/ that only the console's user may
# read: run directories (secrets, raw output) and stored files (exports, datasets).
PRIVATE_VAR_FOLDERS = ("local-runs", "files")

log = logging.getLogger(__name__)


class RunsConfig(AppConfig):
    name = "runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from runs.private_files import private_dir

        connection_created.connect(keep_sqlite_private, dispatch_uid="runs.keep_sqlite_private")
        for name in PRIVATE_VAR_FOLDERS:
            try:
                private_dir(Path(settings.VAR_DIR) / name)
            except PermissionError as exc:  # another user's folder (a mounted volume): say so, still start
                log.warning("cannot make %s private (0700): %s", Path(settings.VAR_DIR) / name, exc)


def keep_sqlite_private(sender, connection, **kwargs) -> None:
    """The SQLite file (and its WAL and shared-memory files) holds every secret's
    ciphertext and all logs: 0600, whatever the umask made it when SQLite created
    it. SQLite gives the -wal and -shm files it makes later the database's mode."""
    from runs.private_files import make_private

    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict["NAME"])
    if name.startswith("file:") or ":memory:" in name:
        return
    for path in (name, name + "-wal", name + "-shm"):
        try:
            make_private(path)
        except PermissionError as exc:  # another user's file: say so, still serve
            log.warning("cannot make %s private (0600): %s", path, exc)
