"""Target backends, chosen per system in settings the way Django chooses EMAIL_BACKEND."""

import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .base import HrSourceBackend, TargetBackend

SYSTEM_SETTINGS = {"idaas": "IDAAS_BACKEND", "welink": "WELINK_BACKEND", "email": "MAILBOX_BACKEND"}

ALIASES = {
    "idaas": {"local": "syncservice.backends.local.LocalIdaasBackend",
              "scim": "syncservice.backends.scim.ScimIdaasBackend"},
    "welink": {"local": "syncservice.backends.local.LocalWelinkBackend",
               "welink": "syncservice.backends.welink.WelinkBackend"},
    "email": {"local": "syncservice.backends.local.LocalMailboxBackend",
              "exmail": "syncservice.backends.exmail.ExmailBackend"},
    "hr": {"local": "syncservice.backends.local.LocalHrBackend",
           "http": "syncservice.backends.hr_http.HttpHrBackend"},
}

_instances: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


def _load(kind: str, setting_name: str, base: type):
    value = getattr(settings, setting_name)
    path = ALIASES[kind].get(value, value)
    key = (kind, path)
    with _lock:
        backend = _instances.get(key)
        if backend is None:
            try:
                cls = import_string(path)
            except ImportError as e:
                raise ImproperlyConfigured(f"{setting_name}={value!r} names no backend: {e}") from e
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise ImproperlyConfigured(f"{setting_name}={value!r} is not a {base.__name__}")
            backend = cls()
            _instances[key] = backend
        return backend


def get_backend(system: str) -> TargetBackend:
    """The configured backend for a target system, created once per process."""
    if system not in SYSTEM_SETTINGS:
        raise ImproperlyConfigured(f"Unknown target system {system!r}")
    return _load(system, SYSTEM_SETTINGS[system], TargetBackend)


def get_hr_backend() -> HrSourceBackend:
    return _load("hr", "HR_BACKEND", HrSourceBackend)


def reset_backends() -> None:
    """Drop cached backends (tests change settings between runs)."""
    # Imported here: pacing reads the TargetThrottle model, and this package (backends.base with it) must
    # import before the app registry is ready.
    from .pacing import reset_local_pacing

    with _lock:
        for backend in _instances.values():
            backend.close()
        _instances.clear()
    reset_local_pacing()
