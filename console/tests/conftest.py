from __future__ import annotations

# The asset admin pages must never show key material: the assets suite's leak guard
# (autouse) checks every console test's output too.
from assets.tests.conftest import no_key_in_output

__all__ = ["no_key_in_output"]
