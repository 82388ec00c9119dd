"""routes.auth_profiles: outgoing SMTP AUTH profiles, their encrypted passwords and their audit."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.db.models import ProtectedError

from routes import auth_profiles
from routes.models import AuditEntry, AuthProfile
from tests.routes.helpers import make_route

pytestmark = pytest.mark.django_db


def test_auth_profile_passwords_are_encrypted_and_only_credentials_reads_them(settings):
    profile = auth_profiles.save(profile_id=None, name="o365", username="relay", password="pässword", actor="t")
    stored = AuthProfile.objects.get().password_encrypted
    assert "pässword" not in stored and stored.startswith("gAAAA")
    assert auth_profiles.credentials(profile.pk) == ("relay", "pässword")
    assert auth_profiles.credentials(profile.pk + 1) is None
    assert all("pässword" not in str(e.after) for e in AuditEntry.objects.all())
    settings.ESAROUTES_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(ImproperlyConfigured, match="enter the password again"):
        auth_profiles.credentials(profile.pk)
    auth_profiles.save(profile_id=profile.pk, name="o365", username="relay", password="new-one", actor="t")
    assert auth_profiles.credentials(profile.pk) == ("relay", "new-one")
    settings.ESAROUTES_ENCRYPTION_KEY = "not a key"
    with pytest.raises(ImproperlyConfigured, match="ESAROUTES_ENCRYPTION_KEY"):
        auth_profiles.credentials(profile.pk)


def test_auth_profile_in_use_cannot_be_deleted():
    profile = auth_profiles.save(profile_id=None, name="p", username="u", password="pw-123", actor="t")
    make_route("a.example", auth_profile_id=profile.pk)
    with pytest.raises(ProtectedError):
        auth_profiles.delete(profile_id=profile.pk, actor="t")
