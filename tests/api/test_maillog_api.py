"""GET /api/v1/log/: the mail log by id (keyset), narrowed by MID, ICID or DCID."""

from __future__ import annotations

import pytest

from delivery.models import MailLogLine
from tests.api.conftest import is_problem
from tests.delivery.conftest import queue_message

URL = "/api/v1/log/"


def test_the_log_pages_by_id_and_narrows_by_mid(api_client, dave):
    mid = queue_message("a@dest.test")
    queue_message("b@dest.test")
    client = api_client(dave)  # the help desk reads the mail log, as on the page
    first = client.get(URL, {"limit": 2}).json()
    assert len(first["results"]) == 2 and first["next"]
    ids = [r["id"] for r in first["results"]]
    second = client.get(first["next"]).json()
    assert all(r["id"] > max(ids) for r in second["results"])
    mine = client.get(URL, {"mid": mid}).json()["results"]
    assert mine and {r["mid"] for r in mine} == {mid}
    assert [r["text"] for r in mine] == list(
        MailLogLine.objects.filter(mid=mid).order_by("id").values_list("text", flat=True)
    )


def test_a_bad_filter_is_a_problem_at_its_field(api_client, dave):
    is_problem(api_client(dave).get(URL, {"mid": "x"}), 400, "mid")


@pytest.mark.parametrize("name", ["mid", "icid", "dcid"])
@pytest.mark.parametrize("value", [str(2**63), "9" * 40, "²", "-1"])
def test_an_id_past_the_columns_range_is_a_problem_not_a_500(api_client, dave, name, value):
    is_problem(api_client(dave).get(URL, {name: value}), 400, name)


def test_the_largest_id_is_a_fine_filter(api_client, dave):
    response = api_client(dave).get(URL, {"mid": str(2**63 - 1)})
    assert response.status_code == 200 and response.json()["results"] == []
