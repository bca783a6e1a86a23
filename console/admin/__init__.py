"""The console's ModelAdmins, registered when the admin autodiscovers them.

`site` holds what they share (actions, badges, audit, CSV); `assets` and `claims`
register the admins of those apps' models. Importing them here is the registration.
"""

from __future__ import annotations

from console.admin import assets, claims

__all__ = ["assets", "claims"]
