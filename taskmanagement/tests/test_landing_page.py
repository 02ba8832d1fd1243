"""The landing page at /: in Chinese, linking every page a person opens, with nothing loaded from elsewhere."""

from html.parser import HTMLParser

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

LINKED_PAGES = ["/api/docs/", "/api/redoc/", "/api/schema/", "/admin/", "/admin/dashboard/", "/healthz", "/readyz"]


class Links(HTMLParser):
    """The page's links, and whatever it loads: scripts, and any element's src or link's href."""

    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.loaded: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self.hrefs.append(attrs["href"])
        elif tag == "script":
            self.loaded.append(attrs.get("src") or "an inline script")
        elif "src" in attrs or tag == "link":
            self.loaded.append(attrs.get("src") or attrs.get("href"))


@pytest.fixture
def landing(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/html; charset=utf-8"
    links = Links()
    links.feed(response.content.decode())
    return response.content.decode(), links


def test_the_landing_page_is_public_and_in_chinese(landing):
    html, _ = landing
    assert '<html lang="zh-Hans">' in html
    assert "<title>账号开通服务</title>" in html
    assert "管理后台" in html and "接口文档" in html and "健康检查" in html


def test_the_landing_page_links_the_docs_schema_admin_dashboard_and_probes(landing):
    _, links = landing
    assert set(LINKED_PAGES) <= set(links.hrefs)


def test_the_landing_page_loads_no_script_and_nothing_from_elsewhere(landing):
    _, links = landing
    assert links.loaded == []


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/", "/api/schema/", "/healthz", "/readyz"])
def test_every_public_page_the_landing_page_links_answers(client, path):
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/admin/", "/admin/dashboard/"])
def test_the_admin_pages_it_links_ask_for_a_login_then_answer(staff_client, path):
    anonymous = Client().get(path)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert staff_client.get(path).status_code == 200
