"""Layout (b), `[server] threads = 0`: the connections run on the event loop's own thread
(worker/src/on_loop.rs). The worker has no I/O thread, and the request path's behaviours,
timers included, hold as in layout (a), and a blocked loop is still seen by the control
plane: a selection of the HTTP, body, WebSocket, limits and control tests runs again with
`threads = 0`."""

import os

import httpx
import pytest

import test_control
import test_http
import test_limits
import test_observability
import test_receive
import test_websocket
from conftest import ready_pids, status, wait_for


def thread_names(pid):
    names = []
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                names.append(f.read().strip())
        except OSError:
            pass  # the thread ended meanwhile
    return names


@pytest.mark.parametrize("threads", [0, 1])
def test_threads_zero_runs_the_connections_on_the_loop_thread(server, threads):
    s = server(sections={"server": {"threads": threads}})
    (pid,) = wait_for(lambda: ready_pids(s), what="worker ready")
    with httpx.Client(base_url=s.url, timeout=10) as h1, \
            httpx.Client(base_url=s.url, http1=False, http2=True, timeout=10) as h2:
        for _ in range(20):
            assert h1.get("/").status_code == 200
            assert h2.get("/").http_version == "HTTP/2"
    names = thread_names(pid)
    if threads == 0:
        assert "genro-io" not in names, names
        assert "genro-control" in names, names
    else:
        assert "genro-io" in names, names
        assert "genro-control" not in names, names
    assert status(s)["workers"][0]["state"] == "ready"


def on_the_loop(server):
    """The `server` fixture with `threads = 0` unless a test sets it."""
    def make(**kwargs):
        sections = {k: dict(v) for k, v in (kwargs.pop("sections", None) or {}).items()}
        sections.setdefault("server", {}).setdefault("threads", 0)
        return server(sections=sections, **kwargs)
    return make


AGAIN = [
    test_http.test_scope_http11,
    test_http.test_scope_http2_and_root_path,
    test_http.test_chunked_request_body,
    test_http.test_large_upload_is_streamed_not_buffered,
    test_http.test_pipelining,
    test_http.test_expect_continue_only_when_app_reads,
    test_http.test_trailers_over_http2,
    test_receive.test_dropped_receive_loses_no_byte,
    test_receive.test_wait_for_receive_retries_lose_no_byte_http2,
    test_receive.test_body_timeout_http1_answers_408,
    test_limits.test_header_read_timeout,
    test_limits.test_max_concurrency,
    test_websocket.test_echo_text_and_bytes_with_permessage_deflate,
    test_websocket.test_http2_extended_connect,
    test_websocket.test_a_receive_cancelled_after_its_message_was_set_loses_nothing,
    test_websocket.test_slow_client_makes_the_app_wait,
    test_websocket.test_keepalive_pings_close_a_silent_client,
    # The control plane runs on its own thread: a blocked loop still answers and is seen.
    test_control.test_ctl_stacks_shows_a_blocked_loop,
    test_observability.test_watchdog_reports_a_blocked_loop_with_the_loop_stack,
]


@pytest.mark.parametrize("test", AGAIN, ids=[t.__name__ for t in AGAIN])
def test_on_the_loop_thread(server, test):
    test(on_the_loop(server))
