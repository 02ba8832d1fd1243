"""The dashboard as a console: every count opens the list it counts, the charts are drawn from the database
by the server in a fixed number of queries, and stage summaries read in Chinese."""

import re
from html import unescape

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from syncservice.tests.fixtures import make_users, run_pipeline, stage, submit
from taskmanagement.models import TaskRun
from taskmanagement.selectors import dashboard_charts

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_retries")]


@pytest.fixture
def failures(settings):
    settings.LOCAL_BACKEND_PERMANENT_FAILURE_PATTERN = r"^[FG]"
    settings.LOCAL_BACKEND_FAILURE_SYSTEMS = ["welink"]


def count_links(page: str) -> list[tuple[str, int]]:
    return [(unescape(href), int(n)) for href, n in re.findall(r'<a class="aps-count" href="([^"]+)">(\d+)</a>', page)]


def shown_rows(staff_client, href: str) -> int:
    """How many rows the admin list at `href` says it holds."""
    page = staff_client.get(href)
    assert page.status_code == 200, href
    text = page.content.decode()
    found = re.search(r'<span class="small quiet">(\d+) 条结果', text) or re.search(r"(\d+) 个", text)
    paginator = re.search(r'<p class="paginator">\s*(\d+)', text)
    assert paginator or found, href
    return int(paginator.group(1) if paginator else found.group(1))


def test_every_count_on_the_dashboard_links_to_a_list_with_that_many_rows(hr_caller, staff_client, failures):
    submit(hr_caller, businessKey="MIXED", userList=make_users(2, "F") + make_users(3, "OK"))
    submit(hr_caller, businessKey="WAITING", userList=make_users(2, "W"))
    run_pipeline()

    page = staff_client.get("/admin/dashboard/").content.decode()

    links = count_links(page)
    assert len(links) > 20
    for href, count in links:
        assert shown_rows(staff_client, href) == count, href


def test_the_charts_are_inline_svg_drawn_from_the_database(hr_caller, staff_client, failures):
    submit(hr_caller, userList=make_users(2, "F") + make_users(3, "OK"))
    run_pipeline()

    page = staff_client.get("/admin/dashboard/").content.decode()

    for name in ("finished-per-hour", "failure-reasons", "oldest-waiting"):
        assert f'data-chart="{name}"' in page
    assert "<script" not in page.split('id="content-main"')[1]
    charts = dashboard_charts()
    assert sum(sum(counts) for counts in charts.finished_per_hour.values()) == 5 * 3  # every task ended
    assert [(system, n) for system, _, n in charts.failure_reasons] == [("welink", 2)]
    assert "WeLink · " in page  # the failure bar names its system and code


def test_the_charts_cost_the_same_queries_with_more_data(hr_caller, failures):
    submit(hr_caller, businessKey="SMALL", userList=make_users(1, "F"))
    run_pipeline()
    with CaptureQueriesContext(connection) as small:
        dashboard_charts()
    submit(hr_caller, businessKey="LARGE", userList=make_users(6, "G") + make_users(6, "OK"))
    run_pipeline()
    submit(hr_caller, businessKey="OPEN", userList=make_users(3, "W"))
    stage("sync_hr_persons")
    stage("create_account_tasks")  # due, not processed: the oldest waiting work
    with CaptureQueriesContext(connection) as large:
        charts = dashboard_charts()
    assert len(small) == len(large) == 3
    assert sum(sum(counts) for counts in charts.finished_per_hour.values()) == (1 + 12) * 3
    # The mailbox first: the other systems' tasks wait blocked on it, not due.
    assert {system for system, age in charts.oldest_waiting.items() if age is not None} == {"email"}


def test_stage_summaries_on_the_dashboard_and_the_run_list_read_in_chinese(hr_caller, staff_client):
    submit(hr_caller)
    run_pipeline()
    for path in ("/admin/dashboard/", "/admin/taskmanagement/taskrun/"):
        page = staff_client.get(path).content.decode()
        assert "处理 " in page and "个任务：成功 " in page, path
        assert "processed " not in page and "succeeded," not in page, path


def test_a_stage_runs_page_shows_its_summary_in_chinese(hr_caller, staff_client):
    submit(hr_caller)
    run_pipeline()
    run = TaskRun.objects.get(stage="process_account_creation_tasks")
    page = staff_client.get(f"/admin/taskmanagement/taskrun/{run.pk}/change/").content.decode()
    assert "处理 6 个任务：成功 6" in page and run.summary not in page
