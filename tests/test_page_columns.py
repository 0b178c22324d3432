"""The runs list's chosen columns in a real browser: a metric's last value and a
summary value per run, sorted by a click on the column's head, kept when a row is
swapped live."""

from dashboard.run_columns import parse_columns
from runs.models import Run
from tests.conftest import wait_for
from tests.test_engine import launch
from tests.test_pages import expect_text

FINAL = {"completed", "failed", "terminated"}


def finished(user, *commands):
    run = wait_for(launch(user, "local", *commands).pk, FINAL, removed=True)
    assert run.status == "completed", run.status_reason
    return run


def test_it_reads_columns_and_names_what_is_not_one():
    columns, notes = parse_columns("loss, summary:best_acc,loss, bad name,summary:")
    assert [(c.field, c.key) for c in columns] == [("metrics_last", "loss"), ("summary", "best_acc")]
    assert len(notes) == 2 and "“bad name” is not a metric or summary name" in notes[0]


def test_the_list_shows_and_sorts_by_chosen_metrics_and_summary_values(browser, alice):
    low = finished(alice, "echo '#runyard step=1 loss=9'; echo '#runyard step=2 loss=0.5'",
                   """echo '#runyard summary {"best_acc": 0.7}'""")
    high = finished(alice, "echo '#runyard step=1 loss=3'", """echo '#runyard summary {"best_acc": 0.9}'""")
    none = finished(alice, "echo no reports")
    # The collector keeps each metric's last value on the run.
    assert Run.objects.get(pk=low.pk).metrics_last == {"loss": 0.5}
    page = browser.page
    browser.goto("/?columns=loss,summary:best_acc")
    expect_text(page, f"#run-{low.pk}", "0.5")
    cells = lambda pk: page.locator(f"#run-{pk} td.metric-col").all_inner_texts()  # noqa: E731
    assert cells(low.pk) == ["0.5", "0.7"] and cells(high.pk) == ["3", "0.9"] and cells(none.pk) == ["—", "—"]
    order = lambda: [int(pk) for pk in page.locator("#runs-body tr").evaluate_all("rows => rows.map(r => r.dataset.run)")]  # noqa: E731
    assert order() == [none.pk, high.pk, low.pk]  # newest first until sorted
    # A first click sorts descending (the best accuracy first), a second ascending; no value goes last.
    page.get_by_role("link", name="summary:best_acc").click()
    page.wait_for_url("**sort=-summary*")
    assert order() == [high.pk, low.pk, none.pk]
    assert page.get_attribute("th[aria-sort]", "aria-sort") == "descending"
    browser.screenshot("runs-list-columns-sorted")
    page.get_by_role("link", name="loss").click()
    page.wait_for_url("**sort=-loss*")
    page.get_by_role("link", name="loss").click()
    page.wait_for_url("**sort=loss*")
    assert order() == [low.pk, high.pk, none.pk]
    # A row fetched for a live swap (runs_list.js asks with the list's query) has the columns too.
    page.evaluate("""(pk) => fetch(`/runs/${pk}/row/${location.search}`).then(r => r.text())
                        .then(html => { window.__row = html; })""", low.pk)
    page.wait_for_function("() => window.__row && window.__row.includes('metric-col')")
    # A name that is not one is named, not silently dropped.
    browser.goto("/?columns=loss,bad name")
    expect_text(page, "#column-notes", "“bad name” is not a metric or summary name")


def test_the_list_with_columns_and_the_compare_page_cost_no_query_per_run(alice, client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from runs.services import create_run

    source = "name: q\nimage: runyard/busybox:latest\nrun: [{command: 'true'}]\n"
    client.force_login(alice)

    def cost(n_runs):
        while Run.objects.count() < n_runs:  # never started: no worker in this test
            run = create_run(user=alice, source=source, executor="local")
            Run.objects.filter(pk=run.pk).update(metrics_last={"loss": run.pk / 10}, summary={"acc": run.pk})
        ids = ",".join(str(pk) for pk in Run.objects.values_list("pk", flat=True)[:10])
        with CaptureQueriesContext(connection) as listed:
            assert client.get("/?columns=loss,summary:acc&sort=-loss").status_code == 200
        with CaptureQueriesContext(connection) as compared:
            assert client.get(f"/compare/?runs={ids}").status_code == 200
        return len(listed), len(compared)

    few, many = cost(2), cost(8)
    assert few == many, (few, many)  # the same whatever the number of runs
