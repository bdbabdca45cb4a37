"""The operator's console (``GET /ui``) in a real headless browser: Debian's chromium driven by
selenium through chromium-driver, against a manager with real Redis and Docker.

Every selenium call runs in a thread: the manager under test shares this event loop.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import aiohttp
import pytest
from pydantic import SecretStr

from tests.support.availability import unavailable
from tests.support.flows import Harness

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])
TOKEN = "console-test-token-0123456789"
HOSTILE_META = "<script>window.pwned=1</script>"
HOSTILE_OUTPUT = "<img src=x onerror=window.pwned=2>"
T = TypeVar("T")


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        unavailable("chromium and chromium-driver are needed (apt-get install chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--proxy-server=direct://"):
        options.add_argument(flag)
    options.add_argument("--disable-dev-shm-usage")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


async def off_loop(fn: Callable[[], T]) -> T:
    return await asyncio.to_thread(fn)


async def wait_for(driver: Any, check: Callable[[Any], Any], what: str, timeout: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    def waited() -> Any:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(check, what)

    return await off_loop(waited)


def by_id(element_id: str) -> Callable[[Any], Any]:
    from selenium.common.exceptions import NoSuchElementException
    from selenium.webdriver.common.by import By

    def find(driver: Any) -> Any:
        try:
            return driver.find_element(By.ID, element_id)
        except NoSuchElementException:
            return False

    return find


async def test_the_fleet_live_a_worker_page_and_its_delete(harness: Harness, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    manager = await harness.start(http=True, http_addr="127.0.0.1:0", ui_token=SecretStr(TOKEN))
    assert manager.http is not None
    base = manager.http.url
    first = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=CAT,
        metadata=json.dumps({"note": HOSTILE_META, "team": "search"}),
    )
    assert first.ok and first.worker_id, first
    assert await harness.wait_status(first.worker_id, "RUNNING", "FAILED") == "RUNNING"

    # Nothing without the token: the page sends a browser to the form, a script gets 401.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/ui/rows") as response:
            assert response.status == 401
        async with http.get(
            f"{base}/ui/rows", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response:
            assert response.status == 200 and first.worker_id in await response.text()
    await off_loop(lambda: browser.get(f"{base}/ui"))
    token_box = await wait_for(browser, lambda d: d.find_element(By.NAME, "token"), "login")
    await off_loop(lambda: token_box.send_keys(TOKEN))
    await off_loop(lambda: token_box.submit())
    row = await wait_for(browser, by_id(f"w-{first.worker_id}"), "the first worker's row")
    text = await off_loop(lambda: row.text)
    assert "RUNNING" in text and HOSTILE_META in text  # shown as text, never run
    assert await off_loop(lambda: browser.execute_script("return window.pwned")) is None
    page_text = await off_loop(lambda: browser.find_element(By.TAG_NAME, "body").text)
    assert manager.settings.manager_id in page_text  # the managers, with their presence
    assert "worker:" in page_text and "kept" in page_text  # the images and the next GC

    # A worker created later appears without a reload (the lifecycle stream, live).
    second = await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
    assert second.ok and second.worker_id
    await wait_for(browser, by_id(f"w-{second.worker_id}"), "the second worker, live", 60)

    # The worker's page: its output as the worker prints it, hostile text as text.
    link = await off_loop(lambda: browser.find_element(By.LINK_TEXT, first.worker_id))
    await off_loop(link.click)
    await wait_for(browser, by_id("output"), "the worker page")
    await harness.client.send_input(first.worker_id, HOSTILE_OUTPUT)
    await wait_for(
        browser,
        lambda d: HOSTILE_OUTPUT in d.find_element(By.ID, "output").text,
        "the output, live",
    )
    assert await off_loop(lambda: browser.execute_script("return window.pwned")) is None

    # Delete from the page: through the command stream, like any producer.
    delete = await off_loop(
        lambda: browser.find_element(By.CSS_SELECTOR, "form[action$='/delete'] button")
    )
    await off_loop(delete.click)
    assert await harness.wait_status(first.worker_id, "STOPPED", timeout=60) == "STOPPED"
    record = await harness.redis.hgetall(harness.keys.worker(first.worker_id))
    assert record["reason"] == "deleted"
    await wait_for(
        browser, lambda d: d.find_element(By.ID, "status").text == "STOPPED", "STOPPED shown"
    )


async def test_a_form_post_without_its_csrf_token_is_refused(harness: Harness) -> None:
    manager = await harness.start(http=True, http_addr="127.0.0.1:0", ui_token=SecretStr(TOKEN))
    assert manager.http is not None
    base = manager.http.url
    # unsafe: keep cookies of an IP address (127.0.0.1), as a browser does
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(
            f"{base}/ui/login", data={"token": TOKEN}, allow_redirects=False
        ) as response:
            assert response.status == 303
            cookie = response.cookies["wm_session"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        async with http.post(
            f"{base}/ui/workers/x/delete", data={"csrf": "forged"}, allow_redirects=False
        ) as response:
            assert response.status == 403
        async with http.post(  # a script with the token: no CSRF, but only real workers
            f"{base}/ui/workers/no:such:worker/send",
            data={"content": "hi"},
            headers={"Authorization": f"Bearer {TOKEN}"},
            allow_redirects=False,
        ) as response:
            assert response.status == 404
        async with http.post(
            f"{base}/ui/login", data={"token": "wrong"}, allow_redirects=False
        ) as response:
            assert response.status == 401


async def test_fork_and_snapshot_from_a_workers_page(harness: Harness, browser: Any) -> None:
    """SPEC §10 from the console: Fork opens the copy's page; Snapshot keeps the worker's state
    and lists it; both go through the command stream like any producer's."""
    from selenium.webdriver.common.by import By

    manager = await harness.start(http=True, http_addr="127.0.0.1:0", ui_token=SecretStr(TOKEN))
    assert manager.http is not None
    base = manager.http.url
    source = await harness.client.request("create", agent_type="CUSTOM", agent_command=CAT)
    assert source.ok and source.worker_id
    assert await harness.wait_status(source.worker_id, "RUNNING", "FAILED") == "RUNNING"

    await off_loop(lambda: browser.get(f"{base}/ui/workers/{source.worker_id}"))
    token_box = await wait_for(browser, lambda d: d.find_element(By.NAME, "token"), "login")
    await off_loop(lambda: token_box.send_keys(TOKEN))
    await off_loop(lambda: token_box.submit())
    await off_loop(lambda: browser.get(f"{base}/ui/workers/{source.worker_id}"))
    fork = await wait_for(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, "form[action$='/fork'] button"), "Fork"
    )
    await off_loop(fork.click)
    await wait_for(
        browser,
        lambda d: "/ui/workers/" in d.current_url and source.worker_id not in d.current_url,
        "the copy's page",
    )
    copy_id = str(await off_loop(lambda: browser.current_url)).rsplit("/", 1)[-1]
    record = await harness.redis.hgetall(harness.keys.worker(copy_id))
    assert record["forked_from"] == source.worker_id

    await off_loop(lambda: browser.get(f"{base}/ui/workers/{source.worker_id}"))
    name_box = await wait_for(browser, lambda d: d.find_element(By.NAME, "name"), "name box")
    await off_loop(lambda: name_box.send_keys("from-the-console"))
    snap = await off_loop(
        lambda: browser.find_element(By.CSS_SELECTOR, "form[action$='/snapshot'] button")
    )
    await off_loop(snap.click)
    try:
        table = await wait_for(browser, by_id("snapshots"), "the snapshots page", 60)
    except Exception:
        body = await off_loop(lambda: browser.find_element(By.TAG_NAME, "body").text)
        raise AssertionError(f"not the snapshots page: {body[:500]}") from None
    text = await off_loop(lambda: table.text)
    assert "from-the-console" in text and source.worker_id in text
    for worker_id in (source.worker_id, copy_id):
        assert (await harness.client.request("delete", worker_id=worker_id)).ok
    assert (await harness.client.request("delete_snapshot", name="from-the-console")).ok


async def test_a_team_page_its_members_its_board_live_and_a_post(
    harness: Harness, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    manager = await harness.start(http=True, http_addr="127.0.0.1:0", ui_token=SecretStr(TOKEN))
    assert manager.http is not None
    base = manager.http.url
    ids = []
    for _ in range(2):
        reply = await harness.client.request(
            "create", agent_type="CUSTOM", agent_command=CAT, team="console-team"
        )
        assert reply.ok and reply.worker_id, reply
        ids.append(reply.worker_id)
    for worker_id in ids:
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

    await off_loop(lambda: browser.get(f"{base}/ui/login"))
    token_box = await wait_for(browser, lambda d: d.find_element(By.NAME, "token"), "login")
    await off_loop(lambda: token_box.send_keys(TOKEN))
    await off_loop(lambda: token_box.submit())
    await off_loop(lambda: browser.get(f"{base}/ui/workers/{ids[0]}"))
    link = await wait_for(browser, by_id("team"), "the team's link on a member's page")
    await off_loop(link.click)

    def members_shown(d: Any) -> bool:
        # The board says who joined (the manager writes it from the lifecycle stream).
        text = d.find_element(By.ID, "members").text
        if all(worker_id in text for worker_id in ids):
            return True
        d.refresh()
        return False

    await wait_for(browser, members_shown, "both members on the team page", 60)
    box = await off_loop(lambda: browser.find_element(By.NAME, "content"))
    await off_loop(lambda: box.send_keys(HOSTILE_OUTPUT))
    await off_loop(lambda: box.submit())
    await wait_for(
        browser,
        lambda d: HOSTILE_OUTPUT in d.find_element(By.ID, "board").text,
        "the post on the board",
    )
    assert await off_loop(lambda: browser.execute_script("return window.pwned")) is None
    board = await harness.redis.xrange(harness.keys.team_board("console-team"))
    assert [f["sender"] for _i, f in board if f.get("kind") == "post"] == ["producer"]

    # Live: a teammate's status appears without a reload.
    await harness.redis.xadd(
        harness.keys.team_board("console-team"),
        {"sender": ids[1], "kind": "status", "content": "blocked", "note": "needs a schema"},
    )
    await wait_for(
        browser,
        lambda d: "is blocked: needs a schema" in d.find_element(By.ID, "board").text,
        "a new entry, live",
    )
    # The member's next prompt carries the post (the agent, cat, prints it).
    input_id = await harness.client.send_input(ids[0], "hello")
    events = await harness.events_until_done(ids[0], input_id=input_id)
    printed = "\n".join(e["content"] for e in events if e["type"] == "stdout")
    assert HOSTILE_OUTPUT in printed.split("hello")[0], printed
