"""The chat examples in a real browser: two pages, two workers, one room.

Why: the examples promise that a page in one browser tab chats with a page in
another, whichever worker process runs each socket, and that a service outside
the deployment can post to the room. Only a browser checks the whole of it:
the HTML page, its JavaScript, the WebSocket handshake a browser makes (Origin
and all) and what the user finally sees.

Headless Chromium from the system's packages (Debian: ``apt-get install
chromium``; ``.ci/run`` installs it), driven by Playwright for Python over CDP.
Playwright's own browser download is never used: ``executable_path`` points at
the system's binary (``CHROMIUM`` in the environment overrides the search).
No Chromium fails the run, with that explanation: these tests never skip.

Each worker runs with ``--concurrency 1``, so while page A's socket is open
on one worker, page B's page load and socket can only go to the other: each
page shows the pid of its socket's worker, and the test checks they differ.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from channels_lite import Publisher

from ._examples import CHAT_EXAMPLES, ChatExample
from .conftest import Deploy, Deployment

NO_CHROMIUM = (
    "No Chromium for the browser tests: none of {tried} is an executable on PATH. Install Debian's "
    "(`apt-get install chromium`; .ci/run does it when it is missing) or set CHROMIUM "
    "to a Chromium or Chrome binary. Browser tests never skip."
)
TIMEOUT_MS = 10_000  # generous: two cores, shared with the whole suite


def find_chromium() -> str:
    # CHROMIUM, when set, is the only one tried: a typo must not fall back quietly.
    tried = [os.environ.get("CHROMIUM", "")]
    if not tried[0]:
        tried = ["chromium", "chromium-browser", "google-chrome"]
    for name in tried:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(NO_CHROMIUM.format(tried=", ".join(tried)), pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = find_chromium()
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


def open_chat(browser: Browser, deployment: Deployment, name: str) -> tuple[Page, int]:
    """A page of its own (a fresh browser context, like another user) in room lobby.

    Returns once the user is in the room (the page shows their own join) and
    the pid of the worker that runs its socket.
    """
    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{deployment.url}/?room=lobby&name={name}")
    expect(page.locator("#log li.join", has_text=f"{name} joined")).to_have_count(1)
    worker = page.locator("#status").get_attribute("data-worker")
    assert worker is not None
    return page, int(worker)


def say(page: Page, text: str, *, enter: bool = False) -> None:
    page.locator("#text").fill(text)
    if enter:
        page.locator("#text").press("Enter")
    else:
        page.locator("#send").click()


@pytest.mark.parametrize("example", CHAT_EXAMPLES, ids=lambda e: e.id)
def test_two_pages_chat_through_two_workers(
    browser: Browser, deploy: Deploy, example: ChatExample
) -> None:
    deployment = deploy(example.app, worker_args=example.worker_args("--concurrency", "1"))
    alice, alice_worker = open_chat(browser, deployment, "alice")
    bob, bob_worker = open_chat(browser, deployment, "bob")
    assert alice_worker != bob_worker
    assert {alice_worker, bob_worker} == {w.pid for w in deployment.workers}
    expect(bob.locator("#status")).to_have_text(
        f"bob in #lobby, served by {example.framework} on worker {bob_worker}"
    )
    expect(alice.locator("#log li.join", has_text="bob joined")).to_have_count(1)

    # Typed and clicked on one page, shown on the other, with the sender's worker.
    say(alice, "hello from <b>alice</b>")
    for page in (alice, bob):
        line = page.locator("#log li.message")
        expect(line).to_have_text([f"alice: hello from <b>alice</b> (worker {alice_worker})"])
        expect(page.locator("#log li.message b")).to_have_count(0)  # text, never markup
    say(bob, "hi alice", enter=True)
    for page in (alice, bob):
        expect(page.locator("#log li.message").last).to_have_text(
            f"bob: hi alice (worker {bob_worker})"
        )

    # A service outside the deployment posts to the room.
    with Publisher.from_url(deployment.redis_url) as publisher:
        event = {"type": "chat.message", "name": "ops", "text": "deploy at five"}
        publisher.group_send("chat-lobby", event)
    for page in (alice, bob):
        expect(page.locator("#log li.message").last).to_have_text("ops: deploy at five")

    # Bob closes his tab: Alice is told, and can still talk.
    bob.context.close()
    expect(alice.locator("#log li.leave")).to_have_text(["bob left"])
    say(alice, "anyone?")
    expect(alice.locator("#log li.message").last).to_have_text(
        f"alice: anyone? (worker {alice_worker})"
    )
    alice.context.close()
