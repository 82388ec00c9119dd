"""routes.auth_profiles: outgoing SMTP AUTH profiles, their encrypted passwords and their audit."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured, ValidationError
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


def test_a_name_taken_between_the_check_and_the_save_is_the_fields_error(monkeypatch):
    """Another writer takes the name after full_clean's check: the unique constraint's refusal is the same
    ValidationError on `name` as the check's (it was an IntegrityError, a 500 from the API), and nothing is
    written, audit included."""
    auth_profiles.save(profile_id=None, name="o365", username="relay", password="pw-123", actor="t")
    audits = AuditEntry.objects.count()
    monkeypatch.setattr(AuthProfile, "validate_unique", lambda self, exclude=None: None)  # the check saw it free
    with pytest.raises(ValidationError) as refused:
        auth_profiles.save(profile_id=None, name="o365", username="other", password="pw-456", actor="t")
    assert refused.value.message_dict == {"name": ["Auth profile with this Name already exists."]}
    assert list(AuthProfile.objects.values_list("username", flat=True)) == ["relay"]
    assert AuditEntry.objects.count() == audits
