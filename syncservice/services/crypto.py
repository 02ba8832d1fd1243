"""Encryption of secrets the service must read back (webhook signing secrets), with Fernet."""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _fernet() -> Fernet:
    key = settings.FIELD_ENCRYPTION_KEY
    if key:
        try:
            return Fernet(key)
        except ValueError as e:
            raise ImproperlyConfigured("FIELD_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64 bytes)") from e
    # Without a dedicated key, derive one from SECRET_KEY (rotating SECRET_KEY then needs new webhook secrets).
    digest = hashlib.sha256(b"account-provisioning/field-encryption/" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def encrypt(value: str) -> str:
    return _fernet().encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode("ascii")).decode("utf-8")
    except InvalidToken as e:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted: FIELD_ENCRYPTION_KEY or SECRET_KEY changed since it was set."
        ) from e
