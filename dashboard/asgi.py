import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up first)
from django.conf import settings  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app})

if settings.RUNYARD_TASKS_IN_PROCESS:
    # The embedded default: this process is also the worker and the beat.
    from runs.tasks import in_process_pool  # noqa: E402

    in_process_pool()
