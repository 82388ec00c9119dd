from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fresh_route_snapshot():
    """Each test starts from an empty per-process route table cache."""
    from routes import snapshot

    snapshot.invalidate()
    yield
    snapshot.invalidate()
