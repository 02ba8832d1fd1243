"""Project-wide pytest setup: say which database the suite runs on; static files without collectstatic."""

import pytest
from django.conf import settings
from django.test import override_settings

# Shared fixtures (API callers with real tokens, the note's example payload) for every app's tests.
pytest_plugins = ["syncservice.tests.fixtures"]


def pytest_report_header(config):
    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    if engine == "sqlite3":
        return ("database: SQLite (DATABASE_URL is not set). Concurrency tests are skipped; "
                "set DATABASE_URL=postgres://... to run the whole suite.")
    return f"database: {engine} at {settings.DATABASES['default'].get('HOST') or 'local socket'}"


@pytest.fixture(autouse=True)
def close_shared_connections():
    """Threads of a test that shared one connection (syncservice.db.shared) leave it closed: the test database
    can be dropped at the end."""
    yield
    from syncservice.db.shared import close_shared_connections

    close_shared_connections()


@pytest.fixture(autouse=True, scope="session")
def static_files_without_collectstatic(tmp_path_factory):
    """Pages render without a collectstatic run, as Django's docs advise for tests: the production storage
    (hashed names from its manifest) needs one, the plain storage does not. test_production_server.py runs
    collectstatic and gunicorn with the production storage, in its own processes."""
    storages = {**settings.STORAGES,
                "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
    # An empty STATIC_ROOT: WhiteNoise warns of a missing one, and would serve a stale collectstatic's files.
    with override_settings(STORAGES=storages, STATIC_ROOT=tmp_path_factory.mktemp("static_root")):
        yield
