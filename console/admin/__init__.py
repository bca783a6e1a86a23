"""The console's ModelAdmins, registered when the admin autodiscovers them.

`site` holds what they share (actions, badges, audit, CSV, read-only rows); the
others register the admins of the apps' models: `assets` (its actions in
`asset_actions`), `operators`, `claims` (with their history), `inbox` (inbound
messages) and `listeners` (heartbeats). Importing them here is the registration.
"""

from __future__ import annotations

from console.admin import assets, claims, inbox, listeners, operators

__all__ = ["assets", "claims", "inbox", "listeners", "operators"]
