"""The worker's half of the remote debugger (`[debug] enabled` and `remote_pdb`).

When the app raises, the request waits (`[debug] wait`) for a debugger before it gets its
500. The worker listens on a Unix socket of its own, `<run_dir>/debug-<pid>.sock` (mode
0600), where only the supervisor connects: the supervisor checks the peer, the secret and
the attempts of `genro-asgi debug attach`, then relays the session here. Each connection
sends one JSON line:

- `{"op": "list"}`: the answer is one JSON line, the waiting requests;
- `{"op": "attach", "request_id": ..., "peer": ...}`: the connection becomes a pdb
  post-mortem session on the request's exception, in a thread of its own, so the event
  loop keeps serving. `continue`, `quit` or the end of the connection release the request.
"""

import asyncio
import json
import os
import pdb
import socket
import tempfile
import threading
import time
import traceback

# Bounds: requests held at once (more get their 500 at once), pdb sessions and connections
# at once, the first line's size and time, a session's idle time, and the exception's text
# in a listing.
MAX_WAITING = 16
MAX_SESSIONS = 4
MAX_CONNECTIONS = 8
MAX_LINE = 4096
LINE_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0
MAX_EXCEPTION_TEXT = 300


class _Pdb(pdb.Pdb):
    """pdb over the connection, with `envelope`: the request's facts."""

    def __init__(self, session, stdin, stdout):
        super().__init__(stdin=stdin, stdout=stdout, readrc=False)
        self.use_rawinput = False
        self.prompt = "(Pdb) "
        self._session = session

    def do_envelope(self, arg):
        """envelope
        The request that raised: id, method, path, query, client, headers, worker."""
        self.message(self._session.envelope_text())

    def do_interact(self, arg):
        """interact
        Not in a remote session (it would read the worker's own stdin): use `!statement`."""
        self.error("interact is not available in a remote session; run statements with !")


class Session:
    """One request waiting for a debugger (or being debugged)."""

    def __init__(self, loop, request_id, scope, exc):
        self.loop = loop
        self.request_id = request_id
        self.scope = scope
        self.exc = exc
        self.waiting_since = time.monotonic()
        self.attached = loop.create_future()  # set (on the loop) when a debugger attaches
        self.released = loop.create_future()  # set when the session ends
        self.peer = None
        self.owner = None  # the connection debugging it
        # Made here, on the loop: listing runs no app code (the exception's __str__).
        try:
            text = "%s: %s" % (type(exc).__name__, exc)
        except Exception:
            text = type(exc).__name__
        if len(text) > MAX_EXCEPTION_TEXT:
            text = text[:MAX_EXCEPTION_TEXT] + "..."
        self.facts = {
            "request_id": request_id,
            "method": scope.get("method", "WEBSOCKET"),
            "path": scope.get("path", ""),
            "exception": text,
            "pid": os.getpid(),
        }

    def summary(self):
        return dict(self.facts, age=round(time.monotonic() - self.waiting_since, 3),
                    attached=self.peer is not None)

    def envelope_text(self):
        scope = self.scope
        client = scope.get("client")
        lines = [
            "request id  %s" % self.request_id,
            "method      %s" % scope.get("method", "WEBSOCKET"),
            "path        %s" % scope.get("path", ""),
            "query       %s" % scope.get("query_string", b"").decode("latin-1"),
            "client      %s" % ("%s:%s" % tuple(client) if client else "-"),
            "http        %s %s" % (scope.get("scheme", ""), scope.get("http_version", "")),
            "worker pid  %d" % os.getpid(),
            "headers",
        ]
        for name, value in scope.get("headers", []):
            lines.append("  %s: %s" % (name.decode("latin-1"), value.decode("latin-1")))
        return "\n".join(lines)


class Debugger:
    def __init__(self, path, wait, log):
        self.path = path
        self.wait = wait
        self.log = log
        self.sessions = {}
        self.lock = threading.Lock()
        self.connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.debugging = threading.BoundedSemaphore(MAX_SESSIONS)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        # Bound in a private directory, made 0600, then moved into place: never reachable
        # by another user, whatever the run directory's mode (and no process-wide umask).
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        private = tempfile.mkdtemp(dir=os.path.dirname(os.fspath(path)))
        try:
            bound = os.path.join(private, "s")
            self.listener.bind(bound)
            os.chmod(bound, 0o600)
            os.rename(bound, path)
        finally:
            os.rmdir(private)
        self.listener.listen(8)
        threading.Thread(target=self._accept, name="genro-debugger", daemon=True).start()

    def close(self):
        try:
            os.unlink(self.path)
        except OSError:
            pass
        self.listener.close()

    async def hold(self, exc, handle, scope):
        """The app raised `exc` for this request: wait for a debugger, then for its end."""
        loop = asyncio.get_running_loop()
        request_id = handle.request_id
        session = Session(loop, request_id, scope, exc)  # runs the exception's __str__: unlocked
        with self.lock:
            if len(self.sessions) >= MAX_WAITING:
                self.log("WARNING", "request %s raised, but %d requests already wait for a debugger: "
                         "answering it now" % (request_id, MAX_WAITING))
                return
            self.sessions[request_id] = session
        self.log("WARNING", "request %s raised %s: waiting up to %.0fs for a debugger "
                 "(genro-asgi debug attach)" % (request_id, type(exc).__name__, self.wait))
        draining = scope.get("extensions", {}).get("genro.draining", {}).get("event")
        stop = asyncio.ensure_future(draining.wait()) if draining is not None else loop.create_future()
        claimed = False
        try:
            await asyncio.wait([session.attached, stop], timeout=self.wait,
                               return_when=asyncio.FIRST_COMPLETED)
            # Whether a debugger claimed it is decided under the lock: one that claims it
            # after this finds it gone, one that claimed it before gets it.
            with self.lock:
                claimed = session.owner is not None
                if not claimed:
                    self.sessions.pop(request_id, None)
            if claimed:
                await session.released
            elif stop.done():
                self.log("INFO", "request %s stops waiting for a debugger: the worker drains" % request_id)
            else:
                self.log("INFO", "no debugger attached to request %s within %.0fs" % (request_id, self.wait))
        finally:
            stop.cancel()
            with self.lock:
                self.sessions.pop(request_id, None)

    # The listener's threads.

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.connections.acquire(blocking=False):
                self._reply(conn, {"error": "too many debugger connections to this worker"})
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name="genro-debugger-session",
                             daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(LINE_TIMEOUT)
            request = self._read_line(conn)
            if request is None:
                return
            op = request.get("op")
            if op == "list":
                with self.lock:
                    waiting = [s.summary() for s in self.sessions.values()]
                self._reply(conn, {"sessions": waiting})
            elif op == "attach":
                self._attach(conn, str(request.get("request_id", "")), str(request.get("peer", "?")))
            else:
                self._reply(conn, {"error": "unknown op %r" % (op,)})
        except OSError:
            pass
        finally:
            conn.close()
            self.connections.release()

    def _read_line(self, conn):
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(MAX_LINE)
            if not chunk:
                return None
            data += chunk
            if len(data) > MAX_LINE:
                self._reply(conn, {"error": "request line longer than %d bytes" % MAX_LINE})
                return None
        try:
            request = json.loads(data.split(b"\n", 1)[0])
        except ValueError:
            self._reply(conn, {"error": "the request line is not JSON"})
            return None
        if not isinstance(request, dict):
            self._reply(conn, {"error": "the request line is not a JSON object"})
            return None
        return request

    @staticmethod
    def _reply(conn, answer):
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass

    def _attach(self, conn, request_id, peer):
        if not self.debugging.acquire(blocking=False):
            self._reply(conn, {"error": "%d debugger sessions already run in this worker" % MAX_SESSIONS})
            return
        try:
            self._debug(conn, request_id, peer)
        finally:
            self.debugging.release()

    def _debug(self, conn, request_id, peer):
        with self.lock:
            session = self.sessions.get(request_id)
            if session is not None and session.owner is None:
                session.owner, session.peer = conn, peer
        if session is None:
            self._reply(conn, {"error": "no request %s waits for a debugger in this worker" % request_id})
            return
        if session.owner is not conn:
            self._reply(conn, {"error": "request %s already has a debugger (%s)" % (request_id, session.peer)})
            return
        attached = session.loop.call_soon_threadsafe
        try:
            attached(_set, session.attached)
        except RuntimeError:  # the loop is closed: the worker is gone
            return
        self.log("WARNING", "debugger attached to request %s from %s" % (request_id, peer))
        self._reply(conn, {"attached": request_id})
        conn.settimeout(IDLE_TIMEOUT)
        stdin = conn.makefile("r", encoding="utf-8", errors="replace", newline="\n")
        stdout = conn.makefile("w", encoding="utf-8", errors="replace", newline="\n")
        try:
            debugger = _Pdb(session, stdin, stdout)
            exc = session.exc
            stdout.write("genro-asgi: request %s %s %s raised:\n%s\n"
                         "'envelope' shows the request; 'continue' or 'quit' (or Ctrl-D) "
                         "releases it with its 500.\n"
                         % (request_id, session.scope.get("method", "WEBSOCKET"),
                            session.scope.get("path", ""),
                            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))))
            stdout.flush()
            debugger.reset()
            debugger.interaction(None, exc.__traceback__)
        except (OSError, ValueError):
            pass  # the connection ended (or idled out) mid-session
        finally:
            self.log("INFO", "debugger detached from request %s (%s)" % (request_id, peer))
            try:
                session.loop.call_soon_threadsafe(_set, session.released)
            except RuntimeError:
                pass


def _set(future):
    if not future.done():
        future.set_result(None)


_debugger = None


def start(path, wait, log):
    global _debugger
    _debugger = Debugger(path, wait, log)
    return _debugger


def stop():
    if _debugger is not None:
        _debugger.close()
