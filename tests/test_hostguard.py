"""No web page can drive asyncwatch's HTTP ports (issue 14.3): DNS rebinding, cross-origin.

Real requests to the real ports: the console's web UI (aiomonitor, aiohttp) and the embedded
/metrics endpoint. A page rebound to 127.0.0.1 sends its own name as Host (and can send any
header, being same-origin with itself); a page elsewhere sends its Origin and cannot send a
custom header without a CORS preflight.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import asyncwatch
from asyncwatch import ConfigError

from .conftest import free_port, wait_for
from .console_client import AppThread

EVIL = "attacker.example"


class Victim:
    """An app whose one long task a request could cancel."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    async def main(self, app: AppThread) -> None:
        self.task = asyncio.create_task(asyncio.sleep(3600))
        app.ready.set()
        await app.until_stopped()
        self.task.cancel()


@pytest.fixture
def webui() -> Iterator[tuple[str, Victim]]:
    """The console with its web UI on, attached to a running app with one victim task."""
    port = free_port()
    asyncwatch.install(
        console=True,
        console_webui=True,
        console_port=free_port(),
        console_webui_port=port,
        console_repl_port=free_port(),
        metrics_exporters=("none",),
    )
    victim = Victim()
    with AppThread(victim.main):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/api/version"), what="the web UI")
        yield url, victim


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_the_web_ui_refuses_a_foreign_host_and_origin(webui: tuple[str, Victim]) -> None:
    url, _ = webui
    own = url.removeprefix("http://")
    assert httpx.get(url + "/").status_code == 200
    assert httpx.get(url + "/", headers={"Host": f"localhost:{own.split(':')[1]}"}).is_success
    assert httpx.get(url + "/", headers={"Host": EVIL}).status_code == 421
    assert httpx.get(url + "/", headers={"Host": f"{EVIL}:20102"}).status_code == 421
    listed = httpx.post(url + "/api/live-tasks", headers={"Host": EVIL, "HX-Request": "true"})
    assert listed.status_code == 421
    assert "sleep" not in listed.text
    cross = httpx.post(
        url + "/api/live-tasks", headers={"Origin": f"http://{EVIL}", "HX-Request": "true"}
    )
    assert cross.status_code == 403
    null = httpx.get(url + "/", headers={"Origin": "null"})
    assert null.status_code == 403
    own_page = httpx.post(
        url + "/api/live-tasks", headers={"Origin": url, "HX-Request": "true"}
    )
    assert own_page.status_code == 200


def test_cancelling_a_task_needs_the_proof_header_and_the_same_origin(
    webui: tuple[str, Victim],
) -> None:
    url, victim = webui
    assert victim.task is not None
    cancel = f"{url}/api/task?task_id={id(victim.task)}"
    refused: list[dict[str, str]] = [
        {},  # a plain DELETE: what a form or an image can't send, but a bare fetch() can
        {"Host": EVIL, "HX-Request": "true"},  # DNS rebinding: same-origin for the browser
        {"Origin": f"http://{EVIL}", "HX-Request": "true"},
        {"Origin": "http://localhost:3000", "HX-Request": "true"},  # another local origin
        {"HX-Request": "true", "Sec-Fetch-Site": "cross-site"},
    ]
    for headers in refused:
        response = httpx.delete(cancel, headers=headers)
        assert response.status_code in (403, 421), (headers, response.status_code)
    assert not victim.task.done()
    done = httpx.delete(cancel, headers={"HX-Request": "true", "Origin": url})
    assert done.status_code == 200, done.text
    wait_for(victim.task.done, what="the task cancelled")
    assert victim.task.cancelled()


def test_the_web_ui_is_off_unless_asked_for() -> None:
    port = free_port()
    asyncwatch.install(
        console=True,
        console_port=free_port(),
        console_webui_port=port,
        metrics_exporters=("none",),
    )
    watch = asyncwatch.current()
    assert watch is not None

    async def main(app: AppThread) -> None:
        app.ready.set()
        await app.until_stopped()

    with AppThread(main):
        wait_for(lambda: watch.console is not None and watch.console.monitor, what="console")
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing listens


@pytest.mark.parametrize("allowed", [(), ("metrics.internal",)])
def test_metrics_refuses_a_foreign_host_unless_allowed(allowed: tuple[str, ...]) -> None:
    port = free_port()
    asyncwatch.install(
        prometheus_port=port, metrics_exporters=("prometheus",), allowed_hosts=allowed
    )
    url = f"http://127.0.0.1:{port}/metrics"
    assert "process_cpu_time_seconds" in httpx.get(url).text
    assert httpx.get(url, headers={"Host": f"localhost:{port}"}).status_code == 200
    assert httpx.get(url, headers={"Host": f"[::1]:{port}"}).status_code == 200
    evil = httpx.get(url, headers={"Host": EVIL})
    assert evil.status_code == 421
    assert "process_cpu_time_seconds" not in evil.text
    assert httpx.get(url, headers={"Origin": f"https://{EVIL}"}).status_code == 403
    internal = httpx.get(url, headers={"Host": f"metrics.internal:{port}"})
    assert internal.status_code == (200 if allowed else 421)


@pytest.mark.parametrize(
    "value", ["http://example.com", "example.com:9464", "exa mple", "/metrics", ""]
)
def test_bad_allowed_hosts_fail_at_install(value: Any) -> None:
    with pytest.raises(ConfigError, match="allowed_hosts"):
        asyncwatch.install(allowed_hosts=(value,), metrics_exporters=("none",))
    assert asyncwatch.current() is None
