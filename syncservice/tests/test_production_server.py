"""The production setup, as the README deploys it: migrate, collectstatic, gunicorn with debug off.

The admin's stylesheets and Swagger UI come from this server's own /static/ (WhiteNoise serving what
collectstatic gathered under hashed names), never from a CDN: the pages work on a closed network.
"""

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from django.conf import settings

pytestmark = pytest.mark.slow

PROJECT = Path(settings.BASE_DIR)
# TLS ends at the proxy in front of gunicorn, which says so; without the header the app redirects to https.
BEHIND_TLS_PROXY = {"X-Forwarded-Proto": "https"}


class AssetLinks(HTMLParser):
    """The stylesheets, scripts and icons a page loads."""

    def __init__(self):
        super().__init__()
        self.stylesheets: list[str] = []
        self.scripts: list[str] = []
        self.icons: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        rel = (attrs.get("rel") or "").split()
        if tag == "link" and "stylesheet" in rel:
            self.stylesheets.append(attrs["href"])
        elif tag == "link" and "icon" in rel:
            self.icons.append(attrs["href"])
        elif tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])


def asset_links(html: str) -> AssetLinks:
    parser = AssetLinks()
    parser.feed(html)
    return parser


def production_env(tmp_path: Path) -> dict:
    """Production settings: debug off, a secret key, one allowed host, a database and STATIC_ROOT of its own."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DJANGO_") and key != "DATABASE_URL"}
    env.update(DJANGO_DEBUG="0", DJANGO_SECRET_KEY=secrets.token_urlsafe(64), DJANGO_ALLOWED_HOSTS="127.0.0.1",
               DJANGO_STATIC_ROOT=str(tmp_path / "staticfiles"),
               DATABASE_URL=f"sqlite:///{tmp_path / 'production.sqlite3'}", LOG_LEVEL="WARNING")
    return env


def manage(*args: str, env: dict) -> None:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@contextlib.contextmanager
def gunicorn_server(env: dict, log: Path, workers: int = 1, threads: int = 1):
    """gunicorn on a free loopback port with `env`; yields its base URL, stops it on the way out.

    A browser opens spare connections ahead of need; with `threads` > 1 (the gthread worker) an idle one does
    not hold the only worker until it times out."""
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    # Port 0: the system picks a free port, and gunicorn names it in its log.
    server = subprocess.Popen([gunicorn, "config.wsgi", "--bind", "127.0.0.1:0", "--workers", str(workers),
                               "--threads", str(threads), "--error-logfile", str(log), "--log-level", "info"],
                              cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            found = re.search(r"Listening at: (http://127\.0\.0\.1:\d+)", log.read_text() if log.exists() else "")
            url = found and found.group(1)
        assert url, f"gunicorn did not start:\n{log.read_text() if log.exists() else '(no log)'}"
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def production_server(tmp_path_factory):
    """gunicorn on a free loopback port, after the README's deployment steps; yields its base URL."""
    tmp_path = tmp_path_factory.mktemp("production")
    env = production_env(tmp_path)
    manage("migrate", "--noinput", env=env)
    manage("collectstatic", "--noinput", env=env)
    with gunicorn_server(env, tmp_path / "gunicorn.log") as url:
        yield url


def get(base_url: str, path: str) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False  # straight to loopback, whatever proxy the environment names
        return session.get(urljoin(base_url, path), headers=BEHIND_TLS_PROXY, timeout=30, allow_redirects=False)


def assert_served_locally(base_url: str, href: str, content_type: str) -> requests.Response:
    parts = urlsplit(href)
    assert not parts.scheme and not parts.netloc, f"{href} is not served by this server"
    assert parts.path.startswith("/static/"), href
    response = get(base_url, href)
    assert response.status_code == 200, (href, response.status_code)
    assert response.headers["Content-Type"].startswith(content_type), (href, response.headers["Content-Type"])
    # A hashed name from collectstatic's manifest: browsers may keep it for good.
    assert "immutable" in response.headers["Cache-Control"], (href, response.headers["Cache-Control"])
    return response


def test_the_admin_login_page_is_styled_by_stylesheets_from_static(production_server):
    page = get(production_server, "/admin/login/")
    assert page.status_code == 200, page.text[:2000]
    stylesheets = asset_links(page.text).stylesheets
    assert any("admin/css/base" in href for href in stylesheets), stylesheets
    for href in stylesheets:
        stylesheet = assert_served_locally(production_server, href, "text/css")
        assert "{" in stylesheet.text


def test_swagger_ui_loads_its_scripts_and_styles_from_static(production_server):
    page = get(production_server, "/api/docs/")
    assert page.status_code == 200, page.text[:2000]
    links = asset_links(page.text)
    assert any("swagger-ui-bundle" in src for src in links.scripts), links.scripts
    static_scripts = [src for src in links.scripts if src.startswith("/static/")]
    # Every other script is the page's own start-up code, from this server too.
    assert all(not urlsplit(src).netloc for src in links.scripts), links.scripts
    for src in static_scripts:
        assert_served_locally(production_server, src, "text/javascript")
    for href in links.stylesheets + links.icons:
        assert_served_locally(production_server, href, "text/css" if href.endswith(".css") else "image/")


def test_redoc_loads_its_script_from_static(production_server):
    page = get(production_server, "/api/redoc/")
    assert page.status_code == 200, page.text[:2000]
    scripts = asset_links(page.text).scripts
    assert any("redoc" in src for src in scripts), scripts
    for src in scripts:
        assert_served_locally(production_server, src, "text/javascript")


def test_an_unknown_api_path_answers_in_the_apis_error_shape(production_server):
    response = get(production_server, "/account-creation/nope/")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"
