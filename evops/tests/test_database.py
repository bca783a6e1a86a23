"""`evops.database.loads_plainly`: which models the hot path may load with `from_db`."""

from __future__ import annotations

import pytest

from assets.models import Asset, AssetKey
from claims.models import ClaimEvent, ClaimRecord, InboundMessage, ListenerHeartbeat
from evops.database import loads_plainly

pytestmark = pytest.mark.django_db


def test_a_model_with_a_json_field_is_not_loaded_plainly():
    # Their `details` JSONField is decoded by a converter `from_db` alone skips.
    assert not loads_plainly(ClaimEvent)
    assert not loads_plainly(ListenerHeartbeat)


@pytest.mark.parametrize("model", [InboundMessage, ClaimRecord, Asset, AssetKey])
def test_the_models_the_hot_path_loads_raw_load_plainly(model):
    """The lease, the assets' join and the batched moves build these rows with
    `from_db`. Should one gain a field with a converter (a JSONField, say), they
    take their ORM query instead, correct but slower: this names the model so that
    the change is made knowingly."""
    assert loads_plainly(model)
