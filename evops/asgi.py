"""ASGI entry point: HTTP through Django, websockets through channels (live updates).

Websockets pass the allowed-hosts Origin check and the session authentication, so
the consumer sees the logged-in user and admits staff only.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evops.settings")
django_asgi_app = get_asgi_application()

from evops.startup import require_settings  # noqa: E402

# The ASGI server runs no system checks: refuse to serve without the mandatory settings.
require_settings()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from console.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
