"""The channel layer's configuration, shared by settings and the tests.

channels-redis (4.3) reads each channel with `BZPOPMIN ... 5`: the call blocks in
redis for up to `REDIS_LAYER_BLOCKING_SECONDS`. redis-py 8 gives every connection a
5 s socket read timeout by default, so a websocket with nothing to receive hit
`redis.exceptions.TimeoutError` after 5 s, its consumer crashed and the browser
reconnected, losing the changes in between. The pool here reads with a timeout that
outlasts the blocking read, checks idle connections before reuse, and keeps TCP
keepalive on so a vanished server is still noticed.
"""

from __future__ import annotations

from typing import Any

# channels_redis.core.RedisChannelLayer.brpop_timeout (pinned 4.3.0).
REDIS_LAYER_BLOCKING_SECONDS = 5.0
REDIS_CONNECT_TIMEOUT = 5.0
REDIS_HEALTH_CHECK_SECONDS = 15


def channel_layer_config(url: str, socket_timeout: float) -> dict[str, Any]:
    """CHANNEL_LAYERS["default"] for `url` (empty: the in-memory layer)."""
    if not url:
        return {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    if socket_timeout <= REDIS_LAYER_BLOCKING_SECONDS:
        raise ValueError(
            f"socket timeout {socket_timeout:g} s must exceed the layer's "
            f"{REDIS_LAYER_BLOCKING_SECONDS:g} s blocking read"
        )
    host = {
        "address": url,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": REDIS_HEALTH_CHECK_SECONDS,
    }
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [host]},
    }
