"""The console in a real browser: headless Debian Chromium driven by Playwright.

Log in, see an asset, retry a failed claim through the confirmation page, and see a
claim change arrive on the dashboard without a reload. The console runs in daphne in
a child process (the real ASGI application, websockets included) against the test
database; the change is made by this process, as the listener would make it, and
reaches the page through the console's history check. A screenshot is saved under
`test-artifacts/`. Never downloads a browser: no /usr/bin/chromium, no test
(`scripts/setup` installs the Debian package when it runs as root).
"""

from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from claims import transitions
from claims.models import LISTENER, ClaimEvent, ClaimRecord, ClaimStatus
from console import groups
from console.tests.support import PASSWORD, make_asset, make_claim, make_user

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not Path(CHROMIUM).exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup does, "
        "as root) to run the browser test",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip playwright missing")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def console_server(settings, monkeypatch) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    from asgiref.sync import SyncToAsync
    from channels.testing.live import make_application
    from daphne.testing import DaphneProcess
    from django.db import connections

    # A fork copies only the calling thread: if an earlier async test started
    # asgiref's single-thread executor, the child would inherit an executor whose
    # worker is gone and every database_sync_to_async call (the websocket's staff
    # check) would hang. Fork with a fresh executor that has no thread yet.
    fresh = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(SyncToAsync, "single_thread_executor", fresh)
    settings.CONSOLE_POLL_SECONDS = 0.3
    settings.CHAIN_RPC_URL = "http://127.0.0.1:9"  # the asset page: chain "down"
    # Forked after these settings and the test database exist, so the child serves
    # this test's data.
    process = DaphneProcess(
        "127.0.0.1",
        partial(make_application, static_wrapper=ASGIStaticFilesHandler),  # type: ignore[arg-type]
    )
    # The child must not inherit this process's open database socket (two processes
    # on one PostgreSQL session), and must be gone before the test database is dropped.
    connections.close_all()
    process.start()
    if not process.ready.wait(timeout=30):
        process.terminate()
        pytest.fail("daphne did not start")
    yield f"http://127.0.0.1:{process.port.value}"
    process.terminate()
    process.join(timeout=10)
    if process.is_alive():
        process.kill()
        process.join(timeout=10)
    fresh.shutdown(wait=False)


CSP_WATCH = """
window.evopsCspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.evopsCspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def assert_no_csp_violations(page: Any) -> None:
    """The page rendered under the policy: no violation, no console error."""
    assert page.evaluate("window.evopsCspViolations") == [], page.url
    csp_errors = [e for e in page.evops_errors if "Content Security Policy" in e]
    assert csp_errors == [], page.url


@pytest.fixture
def browser_page(monkeypatch) -> Any:
    # Playwright's sync API keeps an event loop in this thread; the test's own
    # database calls are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        # Every Content-Security-Policy violation and console error, on every page.
        page.add_init_script(CSP_WATCH)
        errors: list[str] = []
        page.on(
            "console",
            lambda message: (
                errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.evops_errors = errors
        yield page
        browser.close()
        # Inside sync_playwright(), Django's per-context connection storage is not
        # the one outside it: the test's queries opened a second connection that
        # pytest-django cannot see. Close it here, or it keeps the test database
        # from being dropped at the end of the run.
        from django.db import connections

        connections.close_all()


def test_operator_session_in_a_browser(console_server, browser_page):
    page = browser_page
    expect = sync_api.expect
    user = make_user(groups.OPERATOR)
    asset = make_asset(label="browser-asset")
    failed = make_claim(asset)
    moving = make_claim(make_asset(), ClaimStatus.PUBLISHING)
    listed = make_claim(make_asset(), ClaimStatus.PUBLISHING)

    login = page.goto(f"{console_server}/admin/login/")
    assert login is not None
    policy = login.headers["content-security-policy"]
    assert (
        "script-src 'self'" in policy
        and "'unsafe-inline'" not in (policy.split("script-src", 1)[1].split(";", 1)[0])
    )
    # The admin's stylesheet applied (served by the console process).
    assert page.evaluate(
        "[...document.styleSheets].some(s => (s.href || '').endsWith('base.css'))"
    )
    assert_no_csp_violations(page)
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.locator("#evops-dashboard-link")).to_be_visible()

    assert_no_csp_violations(page)

    page.goto(f"{console_server}/admin/assets/asset/")
    expect(page.get_by_text(asset.did)).to_be_visible()
    assert_no_csp_violations(page)
    page.goto(f"{console_server}/admin/assets/asset/{asset.pk}/change/")
    expect(page.get_by_text(asset.did).first).to_be_visible()
    assert_no_csp_violations(page)

    page.goto(f"{console_server}/admin/claims/claimrecord/")
    page.check(f"input.action-select[value='{failed.pk}']")
    page.select_option("select[name=action]", "retry_publication")
    page.click("button[name=index]")
    expect(page.get_by_role("heading", name="Retry publication?")).to_be_visible()
    page.click("#evops-confirm")
    expect(page.get_by_text("Retry publication: 1 scheduled.")).to_be_visible()
    assert ClaimRecord.objects.get(pk=failed.pk).status == ClaimStatus.STORED
    assert ClaimEvent.objects.get(record=failed, kind="retry").user_id == user.pk

    page.goto(f"{console_server}/admin/dashboard/")
    published = page.locator("tr[data-status=published] .evops-count")
    expect(published).to_have_text("0")
    expect(page.locator("#evops-live-status")).to_have_attribute(
        "data-state", "connected"
    )
    # The listener's kind of change, made outside the page's process.
    assert transitions.claim_mark_published(
        record_id=moving.pk,
        actor=LISTENER,
        service_id="svc-1",
        tx_hash="0x" + "12" * 32,
    )
    expect(published).to_have_text("1")
    assert page.evaluate("document.body.dataset.liveUpdates") is not None
    # The live script (inline, with the response's nonce) ran under the policy.
    assert_no_csp_violations(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-dashboard.png"), full_page=True)
    assert (ARTIFACTS / "console-dashboard.png").stat().st_size > 0

    # The claim list updates in place too: same page (marker kept), new badge.
    page.goto(f"{console_server}/admin/claims/claimrecord/")
    badge = page.locator(
        f"tr:has(input.action-select[value='{listed.pk}']) .evops-badge"
    )
    expect(badge).to_have_attribute("data-status", "publishing")
    expect(page.locator("#evops-live-status")).to_have_attribute(
        "data-state", "connected"
    )
    page.evaluate("window.evopsNoReload = true")
    assert transitions.claim_mark_published(
        record_id=listed.pk,
        actor=LISTENER,
        service_id="svc-2",
        tx_hash="0x" + "34" * 32,
    )
    expect(badge).to_have_attribute("data-status", "published")
    assert page.evaluate("window.evopsNoReload") is True
    assert_no_csp_violations(page)
    # The watch is live: a script injecting another origin's image is reported.
    page.evaluate(
        "document.body.appendChild(Object.assign(document.createElement('img'),"
        " {src: 'http://192.0.2.1/x.png'}))"
    )
    page.wait_for_function("window.evopsCspViolations.length > 0")
    assert page.evaluate("window.evopsCspViolations")[0].startswith("img-src")
    page.screenshot(path=str(ARTIFACTS / "console-claim-list.png"), full_page=True)


def test_browser_launch_args_never_download():
    # The test uses the system browser only.
    assert shutil.which(CHROMIUM) == CHROMIUM
    assert "--no-sandbox" in LAUNCH_ARGS
