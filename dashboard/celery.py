import gc
import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def reconcile_on_start(sender, **kwargs):
    # Set apart from the cyclic garbage collector what starting up made (as asgi.py does):
    # a full pass then does not stop the collectors' threads for a scan of every module.
    gc.freeze()
    # A worker that starts after a crash picks orphaned runs up at once, not at the next beat.
    sender.app.send_task("runs.tasks.reconcile")
