"""Project-wide pytest setup: say which database the suite runs on."""

from django.conf import settings

# Shared fixtures (API callers with real tokens, the note's example payload) for every app's tests.
pytest_plugins = ["syncservice.tests.fixtures"]


def pytest_report_header(config):
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return ("database: SQLite (DATABASE_URL is not set). Concurrency tests are skipped; "
                "set DATABASE_URL=postgres://... to run the whole suite.")
    return f"database: {engine} at {settings.DATABASES['default'].get('HOST') or 'local socket'}"
