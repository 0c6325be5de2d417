"""The worker's executors: a thread pool and a process pool from the standard library,
with what the server needs around them. Each task is reported to the worker's Rust side
(hooks) as it is submitted, starts and ends, so `ctl requests`, the inspector and the
metrics list it without taking the GIL. A drain waits for pending work, then cancels it
and logs what it cancelled.

The process pool spawns its processes (a worker has threads: forking it is unsafe) and
pickles each call in the caller, so an unpicklable function or argument is a clear
`NotPicklable` at the call. When one of its processes dies, the standard library breaks
the whole pool: every task in it gets `ProcessDied`, and the next call starts a new pool.
"""

import asyncio
import contextvars
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

_log = logging.getLogger("genro_asgi.executors")

POOLS = ("thread", "process")

# The request whose task is running: set by the worker for every request (its handle, which
# knows the request id), inherited by the tasks the request starts.
current_request = contextvars.ContextVar("genro_asgi.request", default=None)


class ExecutorOff(RuntimeError):
    """The pool asked for is configured with 0 threads or processes."""


class NotPicklable(pickle.PicklingError):
    """The function or an argument cannot be sent to the process pool."""


class ProcessDied(BrokenProcessPool):
    """A process of the process pool died while the task was running or queued."""


class _NoHooks:
    """Outside a genro-asgi worker: nobody to report to."""

    def submitted(self, pool, name, request_id):
        return 0

    def started(self, key):
        pass

    def finished(self, key, outcome):
        pass


def _name(func):
    inner = getattr(func, "func", func)  # functools.partial
    module = getattr(inner, "__module__", None) or "?"
    return "%s.%s" % (module, getattr(inner, "__qualname__", type(inner).__name__))


def _request_id():
    handle = current_request.get()
    return None if handle is None else handle.request_id


def _in_thread(hooks, key, context, func, args):
    hooks.started(key)
    return context.run(func, *args)


def _in_process(payload):
    func, args = pickle.loads(payload)
    return func(*args)


def _child_init():
    # Ctrl-C reaches the whole process group: the worker drains, and stops these itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Task:
    __slots__ = ("key", "pool", "name", "request_id", "submitted")

    def __init__(self, key, pool, name, request_id):
        self.key = key
        self.pool = pool
        self.name = name
        self.request_id = request_id
        self.submitted = time.monotonic()

    def describe(self):
        who = " for request %s" % self.request_id if self.request_id else ""
        return "%s (%s pool%s, submitted %.1fs ago)" % (
            self.name, self.pool, who, time.monotonic() - self.submitted)


class Executors:
    """The pools. One per process: `genro_asgi.executors`."""

    def __init__(self):
        cpus = os.cpu_count() or 1
        self.threads = min(32, cpus + 4)
        self.processes = cpus
        self._hooks = _NoHooks()
        # Reentrant: a future already done runs its callback (which locks) inside _track.
        self._lock = threading.RLock()
        self._thread_pool = None
        self._process_pool = None
        self._pending = {}  # concurrent future -> _Task
        self._closed = False

    def configure(self, threads, processes, hooks):
        """Called by the worker before the app is imported."""
        self.threads = threads
        self.processes = processes
        self._hooks = hooks

    async def run_in_executor(self, func, *args, pool="thread"):
        """Runs `func(*args)` in the pool and returns its result (or raises its exception).
        Keyword arguments: `functools.partial`. `pool="process"` needs a function importable
        by name (module level) and picklable arguments."""
        if pool == "thread":
            return await self._run_thread(func, args)
        if pool == "process":
            return await self._run_process(func, args)
        raise ValueError("pool must be 'thread' or 'process', not %r" % (pool,))

    async def _run_thread(self, func, args):
        name = _name(func)
        with self._lock:
            executor = self._thread_pool = self._thread_pool or self._new("thread")
            task = self._task("thread", name)
            try:
                future = executor.submit(_in_thread, self._hooks, task.key, contextvars.copy_context(),
                                         func, args)
            except BaseException:
                self._hooks.finished(task.key, "cancelled")
                raise
            self._track(future, task)
        return await asyncio.wrap_future(future)

    async def _run_process(self, func, args):
        name = _name(func)
        try:
            payload = pickle.dumps((func, args), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise NotPicklable(
                "run_in_executor(pool='process') cannot send %s to a process: %s: %s. The "
                "process pool calls functions by name: use a module-level function and "
                "picklable arguments (or pool='thread')" % (name, type(exc).__name__, exc)) from exc
        with self._lock:
            executor = self._process_pool = self._process_pool or self._new("process")
            task = self._task("process", name)
            try:
                future = executor.submit(_in_process, payload)
            except BrokenProcessPool:
                # Broken by a death another task saw first: this task goes to a new pool.
                executor = self._process_pool = self._new("process")
                future = executor.submit(_in_process, payload)
            except BaseException:
                self._hooks.finished(task.key, "cancelled")
                raise
            self._track(future, task)
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            with self._lock:
                if self._process_pool is executor:
                    self._process_pool = None  # the next call starts a new pool
            raise ProcessDied(
                "a process of the process pool died while %s was running or queued in it "
                "(killed, crashed or out of memory); the pool is restarted for the next "
                "task" % name) from exc

    def _new(self, pool):
        """A new pool; called with the lock held."""
        if self._closed:
            raise RuntimeError("the worker is shutting down: it takes no new executor work")
        if pool == "thread":
            if self.threads <= 0:
                raise ExecutorOff("the thread pool is off: set [executors] threads "
                                  "(GENRO_ASGI_EXECUTORS_THREADS) to a number of threads")
            return ThreadPoolExecutor(self.threads, thread_name_prefix="genro-executor")
        if self.processes <= 0:
            raise ExecutorOff("the process pool is off: set [executors] processes "
                              "(GENRO_ASGI_EXECUTORS_PROCESSES) to a number of processes")
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_child_init)

    def _task(self, pool, name):
        request_id = _request_id()
        return _Task(self._hooks.submitted(pool, name, request_id), pool, name, request_id)

    def _track(self, future, task):
        self._pending[future] = task
        future.add_done_callback(self._done)

    def _done(self, future):
        with self._lock:
            task = self._pending.pop(future, None)
        if task is None:
            return
        if future.cancelled():
            outcome = "cancelled"
        elif future.exception() is not None:
            outcome = "failed"
        else:
            outcome = "completed"
        self._hooks.finished(task.key, outcome)

    async def drain(self, timeout):
        """The worker stops: new work is refused, pending work gets `timeout` seconds, then
        queued work is cancelled and the process pool's processes are killed. Returns how
        many threads still run abandoned work (they cannot be stopped)."""
        with self._lock:
            self._closed = True
            pending = dict(self._pending)
            threads, processes = self._thread_pool, self._process_pool
        if pending:
            _log.info("waiting up to %.1fs for %d executor task(s) to finish", timeout, len(pending))
            if timeout > 0:
                await asyncio.wait([asyncio.wrap_future(future) for future in pending], timeout=timeout)
        late = [(future, task) for future, task in pending.items() if not future.done()]
        abandoned = 0
        for future, task in late:
            if future.cancel():
                _log.warning("executor: cancelled %s, still queued after shutdown_timeout", task.describe())
            elif task.pool == "process":
                _log.warning("executor: stopped %s after shutdown_timeout: the pool's processes are killed",
                             task.describe())
            else:
                abandoned += 1
                _log.warning("executor: abandoned %s, still running after shutdown_timeout (a thread "
                             "cannot be stopped)", task.describe())
        if processes is not None:
            if any(task.pool == "process" for _, task in late):
                for process in list(getattr(processes, "_processes", {}).values()):
                    process.kill()
            processes.shutdown(wait=True, cancel_futures=True)
        if threads is not None:
            threads.shutdown(wait=not abandoned, cancel_futures=True)
        return abandoned

    def pending(self):
        """The tasks submitted and not finished, oldest first (for tests and debugging)."""
        with self._lock:
            return sorted((t.name, t.pool) for t in self._pending.values())


executors = Executors()


async def run_in_executor(func, *args, pool="thread"):
    """`await run_in_executor(func, *args, pool="thread" | "process")`: see Executors."""
    return await executors.run_in_executor(func, *args, pool=pool)
