"""The record of every web terminal session (SPEC §5): who, in which run, which mode,
when it began and ended, how it ended, and a shell's exit code where it can be known."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class Ending(models.TextChoices):
    CLOSED = "closed", "closed by the user"
    EXITED = "exited", "the shell exited"
    RUN_ENDED = "run ended", "the run ended"
    ABANDONED = "abandoned", "nobody came back"
    ACCESS_LOST = "access lost", "the user lost access"
    SERVER_STOPPED = "server stopped", "the console stopped"
    REFUSED = "refused", "refused: too many terminals"
    CONSOLE_LOST = "console lost", "the console was lost"


class ConsoleInstance(models.Model):
    """A console process (Daphne) that holds terminal sessions, and when it last said it
    was alive (terminal.consoles): one not heard from for RUNYARD_CONSOLE_LOST_SECONDS
    was killed or lost with its machine, and its sessions are ended on record."""

    key = models.CharField(max_length=100, unique=True, help_text="host:pid:random, as its sessions' records name it")
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField()

    def __str__(self):
        return self.key


class TerminalSessionRecord(models.Model):
    """One terminal session, however many times its connection dropped and came back
    (`resumes`). A refusal at the cap is a record too, ended as it began."""

    # The session's id in the console process (terminal.sessions); none for a refusal.
    session_key = models.CharField(max_length=40, blank=True, db_index=True)
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="terminal_sessions")
    # The run's team, kept here so that the admin and the page filter on it directly.
    team = models.ForeignKey("runs.Team", on_delete=models.CASCADE, related_name="terminal_sessions")
    # A deleted user's sessions stay on record, under the name they had.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    mode = models.CharField(max_length=10)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_how = models.CharField(max_length=20, choices=Ending.choices, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    resumes = models.PositiveIntegerField(default=0)
    note = models.CharField(max_length=300, blank=True)
    # The console process that held it (ConsoleInstance.key); empty for a refusal, and
    # for a session recorded before consoles were.
    console = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]
        indexes = [
            models.Index(fields=["team", "-started_at"]), models.Index(fields=["run", "-started_at"]),
            # The sessions still open, by console: what the reconciler looks for.
            models.Index(fields=["console"], condition=Q(ended_at__isnull=True), name="terminal_open_by_console"),
        ]
        verbose_name = "terminal session"

    def __str__(self):
        return f"{self.mode} of {self.username} in run {self.run_id}"

    @property
    def duration_seconds(self) -> int | None:
        return None if self.ended_at is None else int((self.ended_at - self.started_at).total_seconds())
