"""The console in a real browser: headless Debian Chromium driven by Playwright.

At 1280x800, the staff journeys: find why an asset is not prequalified (two clicks
from the dashboard, status and reason inside the viewport), retry it from its page,
and see a change arrive without a reload after the socket sat idle 30 s on the redis
channel layer. The console runs in daphne in
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
        page = browser.new_page(viewport={"width": 1280, "height": 800})
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


WIDTH, HEIGHT = 1280, 800
IDLE_SECONDS = 30


def _login(page: Any, server: str, user: Any) -> None:
    login = page.goto(f"{server}/admin/login/")
    assert login is not None
    policy = login.headers["content-security-policy"]
    script_src = policy.split("script-src", 1)[1].split(";", 1)[0]
    # No inline script without the response's nonce (django-csp names one only when
    # a template uses it); unfold's Alpine.js needs eval.
    assert "'self'" in script_src and "'unsafe-inline'" not in script_src
    assert_no_csp_violations(page)
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")


def _inside_viewport(page: Any, locator: Any) -> None:
    # The live script re-fetches the page when its socket (re)connects: wait for the
    # element of the fresh page rather than measure one being replaced.
    box = None
    for _ in range(50):
        sync_api.expect(locator).to_be_visible()
        box = locator.bounding_box()
        if box is not None:
            break
        page.wait_for_timeout(100)
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH, box
    assert box["y"] >= 0 and box["y"] + box["height"] <= HEIGHT, box


def test_find_why_an_asset_is_not_prequalified_and_retry_it(
    console_server, browser_page
):
    """Dashboard → Assets (1 click) → search → the row says why; retry on its page."""
    page = browser_page
    expect = sync_api.expect
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    user = make_user(groups.OPERATOR)
    asset = make_asset(label="EVSE-DE-0001", external_id="DE*TNM*E0001")
    claim = make_claim(
        asset,
        last_error="ChainError: insufficient funds for gas: holds 0 wei, "
        "needs up to 158516518443844 wei",
    )
    for n in range(30):
        make_claim(make_asset(label=f"EVSE-DE-1{n:03d}"), ClaimStatus.PUBLISHED)

    _login(page, console_server, user)
    # Login lands on the dashboard, which is first in the sidebar.
    expect(page.locator("#evops-dashboard")).to_be_visible()
    # The sidebar's Assets entry (its icon is a ligature, so match by address).
    page.locator("a[href='/admin/assets/asset/']").first.click()  # click 1
    page.fill("#searchbar", "EVSE-DE-0001")
    page.keyboard.press("Enter")
    row = page.locator("#result_list tbody tr").filter(has_text="EVSE-DE-0001")
    expect(row).to_have_count(1)
    status = row.locator(".evops-badge")
    reason = row.locator(".evops-reason")
    expect(status).to_have_attribute("data-status", "failed")
    expect(reason).to_contain_text("needs up to 0.000158516518443844 VT")
    _inside_viewport(page, status)
    _inside_viewport(page, reason)
    assert_no_csp_violations(page)
    page.screenshot(path=str(ARTIFACTS / "console-asset-list.png"))

    # Its page: the claim history says the same; the claim page has Retry.
    row.get_by_role("link", name="EVSE-DE-0001").click()  # click 2
    history = page.locator("#evops-claim-history")
    expect(history).to_contain_text("needs up to 0.000158516518443844 VT")
    history.locator(f"tr[data-claim='{claim.pk}'] a").first.click()
    page.get_by_role("link", name="Retry").first.click()
    expect(page.locator("#evops-headline")).to_have_text("Retry 1 failed claim.")
    page.click("#evops-confirm")
    expect(
        page.get_by_text("Retry publication: 1 scheduled; 0 skipped: not failed.")
    ).to_be_visible()
    assert ClaimRecord.objects.get(pk=claim.pk).status == ClaimStatus.STORED
    assert ClaimEvent.objects.get(record=claim, kind="retry").user_id == user.pk
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-claim-retried.png"))
    assert errors == []
    assert_no_csp_violations(page)


@pytest.fixture
def redis_console(settings, redis_url):
    """The console and this process share a real redis channel layer."""
    from channels.layers import channel_layers

    from evops.channel_layer import channel_layer_config

    settings.CHANNEL_LAYER_URL = redis_url
    settings.CHANNEL_LAYERS = {"default": channel_layer_config(redis_url, 30.0)}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def _as_the_listener(record_id: int, service_id: str, tx_hash: str) -> bool:
    """The listener's kind of change, from a thread without an event loop.

    Playwright's sync API runs a loop in the test's thread, where the channel
    layer's async_to_sync refuses to run; the listener has no such loop.
    """
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def publish() -> bool:
        try:
            return transitions.claim_mark_published(
                record_id=record_id,
                actor=LISTENER,
                service_id=service_id,
                tx_hash=tx_hash,
            )
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(publish).result(timeout=30)


def test_a_change_arrives_live_after_the_socket_sat_idle(
    redis_console, console_server, browser_page
):
    """Redis layer, socket idle 30 s (past every layer timeout), then a change."""
    page = browser_page
    expect = sync_api.expect
    user = make_user(groups.VIEWER)
    moving = make_claim(make_asset(label="EVSE-DE-0001"), ClaimStatus.PUBLISHING)
    # The fallback refresh must not be what brings the change: push it far away.
    page.add_init_script("window.evopsRefreshSeconds = 3600;")
    _login(page, console_server, user)
    published = page.locator("tr[data-status=published] .evops-count")
    expect(published).to_have_text("0")
    indicator = page.locator("#evops-live-status")
    # "live" only once data arrived over a connected socket.
    expect(indicator).to_have_attribute("data-state", "live")
    page.evaluate("window.evopsNoReload = true")
    page.wait_for_timeout(IDLE_SECONDS * 1000)  # the idle period under test
    expect(indicator).to_have_attribute("data-state", "live")
    # The listener's kind of change, made outside the page's process; only the
    # redis layer carries it to the console's socket.
    assert _as_the_listener(moving.pk, "svc-1", "0x" + "12" * 32)
    expect(published).to_have_text("1", timeout=10_000)
    assert page.evaluate("window.evopsNoReload") is True
    assert int(page.evaluate("document.body.dataset.liveUpdates")) >= 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-dashboard.png"), full_page=True)
    # The dashboard, its charts and its live socket all work under the policy.
    assert_no_csp_violations(page)

    # The claim list updates in place too: same page (marker kept), new badge.
    listed = make_claim(make_asset(label="EVSE-DE-0002"), ClaimStatus.PUBLISHING)
    page.goto(f"{console_server}/admin/claims/claimrecord/")
    # A viewer's list has no checkboxes: find the row by its asset.
    row = page.locator("#result_list tbody tr").filter(has_text="EVSE-DE-0002")
    badge = row.locator(".evops-badge")
    expect(badge).to_have_attribute("data-status", "publishing")
    _inside_viewport(page, badge)
    _inside_viewport(page, row.locator(".evops-reason"))
    expect(indicator).to_have_attribute("data-state", "live")
    page.evaluate("window.evopsNoReload = true")
    assert _as_the_listener(listed.pk, "svc-2", "0x" + "34" * 32)
    expect(badge).to_have_attribute("data-status", "published")
    assert page.evaluate("window.evopsNoReload") is True
    assert_no_csp_violations(page)
    page.screenshot(path=str(ARTIFACTS / "console-claim-list.png"))


def test_the_csp_watch_sees_a_violation(console_server, browser_page):
    """The check above can fail: an inline script without the nonce is caught."""
    page = browser_page
    page.goto(f"{console_server}/admin/login/")
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.evopsInjected = 1;';"
        " document.body.appendChild(s); }"
    )
    page.wait_for_function("window.evopsCspViolations.length > 0")
    assert page.evaluate("window.evopsInjected") is None
    with pytest.raises(AssertionError):
        assert_no_csp_violations(page)


def test_browser_launch_args_never_download():
    # The test uses the system browser only.
    assert shutil.which(CHROMIUM) == CHROMIUM
    assert "--no-sandbox" in LAUNCH_ARGS
