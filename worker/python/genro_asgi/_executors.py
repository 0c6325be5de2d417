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
import functools
import logging
import os
import pickle
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# The process pool's modules (multiprocessing and the rest, 2 MiB in every worker) are
# imported when it is first used.

_log = logging.getLogger("genro_asgi.executors")

POOLS = ("thread", "process")

# The request whose task is running: set by the worker for every request (its handle, which
# knows the request id), inherited by the tasks the request starts.
current_request = contextvars.ContextVar("genro_asgi.request", default=None)


class ExecutorOff(RuntimeError):
    """The pool asked for is configured with 0 threads or processes."""


class NotPicklable(pickle.PicklingError):
    """The function or an argument cannot be sent to the process pool."""


_process_died = None


def process_died():
    """`ProcessDied`, a `BrokenProcessPool`: a process of the process pool died while the
    task was running or queued. Made on first use, like the pool."""
    global _process_died
    if _process_died is None:
        from concurrent.futures.process import BrokenProcessPool

        class ProcessDied(BrokenProcessPool):
            __doc__ = process_died.__doc__

        ProcessDied.__module__ = "genro_asgi"
        ProcessDied.__qualname__ = "ProcessDied"
        _process_died = ProcessDied
    return _process_died


def __getattr__(name):
    if name == "ProcessDied":
        return process_died()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


class _NoHooks:
    """Outside a genro-asgi worker: nobody to report to."""

    def submitted(self, pool, name, request_id):
        return 0

    def started(self, key):
        pass

    def finished(self, key, outcome):
        pass


def _broken_pool():
    """What a broken process pool raises; no pool imported, nothing to catch."""
    module = sys.modules.get("concurrent.futures.process")
    return module.BrokenProcessPool if module is not None else ()


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


_PR_SET_PDEATHSIG = 1


def _child_init(worker_pid):
    """In each pool process: die with the worker. A worker killed outright (a hung worker,
    the stop deadline) cannot stop its pool, and its processes would wait for work for
    ever. The worker's loop thread starts them, and lives as long as the worker."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != worker_pid:  # the worker died before the line above
        os._exit(1)


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
        # Guards the pools, _pending and _closed; never held while a pool's own locks are
        # taken (submit, cancel, shutdown), whose callbacks take it.
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
        future, _ = self._submit(
            "thread", _name(func),
            lambda task: (_in_thread, self._hooks, task.key, contextvars.copy_context(), func, args))
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
        future, executor = self._submit("process", name, lambda task: (_in_process, payload))
        from concurrent.futures.process import BrokenProcessPool  # loaded with the pool

        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool as exc:
            with self._lock:
                if self._process_pool is executor:
                    self._process_pool = None  # the next call starts a new pool
            raise process_died()(
                "a process of the process pool died while %s was running or queued in it "
                "(killed, crashed or out of memory); the pool is restarted for the next "
                "task" % name) from exc

    def _submit(self, pool, name, call):
        """Submits `call(task)` (a callable and its arguments) to `pool`; returns the future
        and the executor. The pool's own locks are never taken under ours."""
        with self._lock:
            executor = self._executor(pool)
            task = self._task(pool, name)
        try:
            try:
                future = executor.submit(*call(task))
            except _broken_pool():
                # Broken by a death another task saw first: this task goes to a new pool.
                with self._lock:
                    if self._process_pool is executor:
                        self._process_pool = None
                    executor = self._executor(pool)
                future = executor.submit(*call(task))
        except BaseException:
            self._hooks.finished(task.key, "cancelled")
            raise
        future.add_done_callback(functools.partial(self._done, task))
        with self._lock:
            if not future.done():
                self._pending[future] = task
        return future, executor

    def _executor(self, pool):
        """The pool, started if needed; called with the lock held. Refused once draining."""
        if self._closed:
            raise RuntimeError("the worker is shutting down: it takes no new executor work")
        if pool == "thread":
            if self._thread_pool is None:
                if self.threads <= 0:
                    raise ExecutorOff("the thread pool is off: set [executors] threads "
                                      "(GENRO_ASGI_EXECUTORS_THREADS) to a number of threads")
                self._thread_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="genro-executor")
            return self._thread_pool
        if self._process_pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            if self.processes <= 0:
                raise ExecutorOff("the process pool is off: set [executors] processes "
                                  "(GENRO_ASGI_EXECUTORS_PROCESSES) to a number of processes")
            self._process_pool = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init, initargs=(os.getpid(),))
        return self._process_pool

    def _task(self, pool, name):
        request_id = _request_id()
        return _Task(self._hooks.submitted(pool, name, request_id), pool, name, request_id)

    def _done(self, task, future):
        with self._lock:
            self._pending.pop(future, None)
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
        with self._lock:  # nothing new came in: submissions are refused while closed
            late = [(future, task) for future, task in self._pending.items() if not future.done()]
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


executors = Executors()


async def run_in_executor(func, *args, pool="thread"):
    """`await run_in_executor(func, *args, pool="thread" | "process")`: see Executors."""
    return await executors.run_in_executor(func, *args, pool=pool)
