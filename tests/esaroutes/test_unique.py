"""esaroutes.unique.taken_meanwhile: a unique-key race becomes the service's own error, in a savepoint."""

from __future__ import annotations

import pytest
from django.db import transaction

from esaroutes.unique import taken_meanwhile
from routes.models import AuthProfile

pytestmark = pytest.mark.django_db


class Taken(Exception):
    pass


def test_the_refused_save_is_the_given_error_and_the_outer_transaction_goes_on():
    AuthProfile.objects.create(name="p", username="u", password_encrypted="x")
    with transaction.atomic():
        with pytest.raises(Taken), taken_meanwhile(Taken):
            AuthProfile.objects.create(name="p", username="v", password_encrypted="y")
        AuthProfile.objects.create(name="q", username="w", password_encrypted="z")  # the savepoint kept it usable
    assert sorted(AuthProfile.objects.values_list("name", flat=True)) == ["p", "q"]


def test_other_errors_pass_through():
    with pytest.raises(ZeroDivisionError), taken_meanwhile(Taken):
        1 / 0  # noqa: B018
