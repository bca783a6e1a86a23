"""Integrations with the peers evops talks to: one module per external system.

Each module takes plain values (never Django models), sets explicit timeouts and raises
one error type whose `permanent` flag tells services whether a retry can help.
"""

from __future__ import annotations
