"""What genro-asgi offers the app itself (docs/DEVELOPMENT.md, "Executors").

    import genro_asgi

    async def endpoint(request):
        digest = await genro_asgi.run_in_executor(hash_file, path)                # thread pool
        image = await genro_asgi.run_in_executor(render, spec, pool="process")   # process pool

The pools are the worker's, sized by `[executors] threads` and `processes`; a drain or a
reload waits for their pending work (`shutdown_timeout`). The same object is in every
scope as `scope["extensions"]["genro.executors"]`. Outside genro-asgi (tests, another
server) the functions still work, on pools of their own.
"""

from genro_asgi._executors import ExecutorOff, NotPicklable, executors, run_in_executor

__all__ = ["ExecutorOff", "NotPicklable", "ProcessDied", "executors", "run_in_executor"]


def __getattr__(name):
    # ProcessDied is a BrokenProcessPool, made when first asked for: the process pool's
    # modules are not imported until something uses them.
    if name == "ProcessDied":
        from genro_asgi._executors import process_died

        return process_died()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
