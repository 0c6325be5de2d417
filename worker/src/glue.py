"""Python side of the genro-asgi worker: app loading, the event loop, lifespan, and the
coroutine that runs one HTTP exchange. Everything per-byte lives in Rust; this file only
holds what is clearer in Python and is off the hot path (or one call per request)."""

import asyncio
import importlib
import logging
import sys
import traceback

from genro_asgi._executors import current_request as _current_request

_log = None  # set by setup(): a callable (level, message) into the Rust log sink
_debugger = None  # the remote debugger (genro_asgi_worker.debugger), when it is on
_request_timeout = 0.0  # [limits] request_timeout


class _Handler(logging.Handler):
    """Sends the app's `logging` records to the server's sink: same destination, same
    format, the record's logger name and level."""

    def __init__(self, emit):
        super().__init__()
        self._emit = emit
        self._formatter = logging.Formatter()

    def emit(self, record):
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self._formatter.formatException(record.exc_info)
            if record.stack_info:
                message += "\n" + self._formatter.formatStack(record.stack_info)
            self._emit(record.name, record.levelno, record.levelname, message, record.module,
                       record.threadName or "")
        except Exception:
            self.handleError(record)


def setup(log, emit, level):
    global _log
    _log = log
    # On the root logger: records of every logger propagate here unless the app configures
    # logging otherwise (logging.basicConfig then sees a handler and keeps it).
    logging.root.addHandler(_Handler(emit))
    logging.root.setLevel(level)


def format_exception(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def load_app(spec, app_dir, factory):
    """Import `module:attr` (attr may be dotted) with app_dir first on sys.path."""
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(
                "module %r has no attribute %r (from application.app = %r)" % (module_name, attr, spec)
            ) from None
    if factory:
        obj = obj()
    if not callable(obj):
        raise ImportError("%r is not callable (from application.app = %r)" % (obj, spec))
    return obj


def new_loop(kind):
    """kind: auto | asyncio | uvloop. Returns (loop, name)."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ImportError("[server] loop = uvloop but uvloop is not installed (pip install uvloop)")
        else:
            return uvloop.new_event_loop(), "uvloop"
    return asyncio.new_event_loop(), "asyncio"


def set_request_timeout(seconds):
    """`[limits] request_timeout` (0: none)."""
    global _request_timeout
    _request_timeout = seconds


def _expire(task, handle):
    # The handle answers 504 (or aborts) at once; the app unwinds at its next await.
    if handle.expire():
        task.cancel()


async def run_http(app, scope, handle):
    """One HTTP exchange. The handle (Rust) turns the outcome into a response or an abort."""
    _current_request.set(handle)  # this task's context: the executors tag their work with it
    timer = None
    if _request_timeout and scope["type"] == "http":
        timer = asyncio.get_running_loop().call_later(
            _request_timeout, _expire, asyncio.current_task(), handle)
    try:
        await app(scope, handle.receive, handle.send)
    except asyncio.CancelledError:
        handle.cancelled()
        raise
    except BaseException as exc:  # noqa: B036 - KeyboardInterrupt etc. must also reach the handle
        if _debugger is not None and isinstance(exc, Exception):
            if timer is not None:
                timer.cancel()  # a request held for a debugger is not timed out
            try:
                await _debugger.hold(exc, handle, scope)  # `[debug] remote_pdb`
            finally:
                handle.failed(format_exception(exc))
            return
        handle.failed(format_exception(exc))
        if not isinstance(exc, Exception):
            raise
    else:
        handle.finished()
    finally:
        if timer is not None:
            timer.cancel()


class Lifespan:
    """ASGI lifespan protocol, driven from the worker's main thread."""

    def __init__(self, app, mode, state):
        self.app = app
        self.mode = mode  # auto | on | off
        self.state = state
        self.incoming = asyncio.Queue()
        self.outcome = None  # future resolved by the app's answers
        self.task = None
        self.supported = True

    async def _receive(self):
        return await self.incoming.get()

    async def _send(self, message):
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in (
            "lifespan.startup.complete",
            "lifespan.startup.failed",
            "lifespan.shutdown.complete",
            "lifespan.shutdown.failed",
        ):
            if self.outcome is not None and not self.outcome.done():
                self.outcome.set_result(message)
        else:
            raise RuntimeError("unexpected lifespan message %r" % (kind,))

    async def _main(self):
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:  # noqa: B036
            if self.outcome is not None and not self.outcome.done():
                self.outcome.set_exception(exc)
        finally:
            if self.outcome is not None and not self.outcome.done():
                self.outcome.set_result(None)

    async def _step(self, event):
        loop = asyncio.get_running_loop()
        self.outcome = loop.create_future()
        if self.task is None:
            self.task = loop.create_task(self._main())
        await self.incoming.put({"type": event})
        return await self.outcome

    async def startup(self):
        """Returns None when the app may serve; raises RuntimeError when startup failed."""
        if self.mode == "off":
            self.supported = False
            return None
        try:
            answer = await self._step("lifespan.startup")
        except BaseException as exc:  # noqa: B036
            if self.mode == "auto":
                self.supported = False
                _log("INFO", "ASGI lifespan is not supported by the app; continuing without it (%s: %s)"
                     % (type(exc).__name__, exc))
                return None
            raise RuntimeError("lifespan startup raised:\n" + format_exception(exc)) from None
        if answer is None:
            if self.mode == "auto":
                self.supported = False
                _log("INFO", "the app returned from lifespan without answering startup; continuing without it")
                return None
            raise RuntimeError("the app returned from lifespan without answering lifespan.startup")
        if answer["type"] == "lifespan.startup.failed":
            raise RuntimeError("lifespan startup failed: %s" % answer.get("message", ""))
        return None

    async def shutdown(self, timeout):
        if not self.supported or self.task is None or self.task.done():
            return
        try:
            answer = await asyncio.wait_for(self._step("lifespan.shutdown"), timeout)
        except asyncio.TimeoutError:
            _log("WARNING", "lifespan shutdown did not finish within %.1fs" % timeout)
            return
        except BaseException as exc:  # noqa: B036
            _log("ERROR", "lifespan shutdown raised:\n" + format_exception(exc))
            return
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            _log("ERROR", "lifespan shutdown failed: %s" % answer.get("message", ""))


_ticker = None  # the loop-lag ticker task, started by start_ticker()


async def _tick(report, period):
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(period)
        report(loop.time() - start - period)


def start_ticker(report, period):
    """Measure the loop's lag: `report(seconds_late)` after every `period` of sleep."""
    global _ticker
    _ticker = asyncio.get_event_loop().create_task(_tick(report, period))


async def cancel_remaining(timeout, lifespan):
    """Cancel the request tasks still running after the drain (not the lifespan task,
    which must still see lifespan.shutdown) and give them a moment to unwind."""
    if _ticker is not None:
        _ticker.cancel()
    keep = {asyncio.current_task(), lifespan.task, _ticker}
    tasks = [t for t in asyncio.all_tasks() if t not in keep and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    return len(tasks)
