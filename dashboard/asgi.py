import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from dashboard.body_limit import BodyLimitMiddleware, guard_daphne  # noqa: E402
from dashboard.consumers import RunLogsConsumer, RunsConsumer  # noqa: E402
from dashboard.ports import WEBSOCKET_ROUTE, PortConsumer, with_ports  # noqa: E402
from terminal.consumers import TerminalConsumer  # noqa: E402
from terminal.lane import expose_protocol  # noqa: E402

websockets = URLRouter([
    path("ws/runs/", RunsConsumer.as_asgi()),
    path("ws/runs/<int:run_id>/logs/", RunLogsConsumer.as_asgi()),
    path("ws/runs/<int:run_id>/terminal/", TerminalConsumer.as_asgi()),
    re_path(WEBSOCKET_ROUTE, PortConsumer.as_asgi()),  # an app's own websockets, under its address
])
guard_daphne()  # request bodies over their cap are dropped as they arrive
application = ProtocolTypeRouter({
    "http": BodyLimitMiddleware(with_ports(django_asgi_app)),
    # Origin must be one of ALLOWED_HOSTS: another site cannot ride the user's session.
    # Outermost: the Daphne connection, for the terminal's keystroke lane (terminal.lane).
    "websocket": expose_protocol(AllowedHostsOriginValidator(AuthMiddlewareStack(websockets))),
})

if settings.RUNYARD_TASKS_IN_PROCESS:
    # The embedded default: this process is also the worker and the beat.
    from runs.tasks import in_process_pool  # noqa: E402

    in_process_pool()

# What starting up made lives as long as the process: the cyclic garbage collector sets
# it apart, and its full passes scan only what came after. A full pass over the whole
# heap stopped this event loop for up to 250 ms (a live log's p99, on this 2-core machine).
gc.freeze()
