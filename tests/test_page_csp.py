"""The Content-Security-Policy (issue 9): every page works with scripts from the site's
own files only, and an injected inline handler does not run. In Chromium, on a live
console with real runs."""

import io

from runs import model_registry
from tests.conftest import wait_for
from tests.test_models import tar_gz
from tests.test_engine import launch

FINAL = {"completed", "failed", "terminated"}


def test_every_page_works_under_the_policy_and_injected_script_does_not_run(browser, alice, docker_engine):
    run = launch(alice, "docker", "echo '#runyard step=1 loss=0.5'; echo '#runyard step=2 loss=0.25'; echo done")
    other = launch(alice, "docker", "echo '#runyard step=1 loss=0.7'; echo other")
    run, other = wait_for(run.pk, FINAL, removed=True), wait_for(other.pk, FINAL, removed=True)
    model_registry.create_version(alice.teams.get(), "weights", io.BytesIO(tar_gz({"w.bin": b"1"})), "application/gzip", alice)
    page = browser.page
    violations = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None)
    pages = ["/", "/runs/new/", f"/runs/{run.pk}/", f"/runs/{run.pk}/logs/", f"/runs/{run.pk}/plots/",
             f"/runs/{run.pk}/files/", f"/runs/{run.pk}/terminal/", f"/compare/?runs={run.pk},{other.pk}",
             "/account/tokens/", "/api/v1/docs", "/models/", "/models/weights/"]
    for path in pages:
        response = browser.goto(path)
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("networkidle")
    # The pages' own scripts ran: the plots drew, and the new-run example picker filled the editor.
    browser.goto(f"/runs/{run.pk}/plots/")
    page.wait_for_selector("#plot-loss .chart .main-svg")
    browser.goto("/runs/new/")
    if page.locator("#example option").count() > 1:
        page.select_option("#example", index=1)
        assert page.input_value("#spec").strip()
    assert not violations, violations  # the console's own pages need nothing the policy refuses
    # What an attacker's markup would try: refused, and reported as a violation.
    page.evaluate("""() => { window.injected = 0;
        document.body.insertAdjacentHTML('beforeend', '<img src="data:," onerror="window.injected = 1">');
        const s = document.createElement('script'); s.textContent = 'window.injected = 2'; document.body.appendChild(s); }""")
    page.wait_for_timeout(300)
    assert page.evaluate("window.injected") == 0
    assert violations, "the browser did not report the refused inline script"
