"""`python -m genro_asgi_worker`: one genro-asgi worker, started by `genro-asgi serve`.

`--probe` prints, as one JSON line, what the supervisor needs to know about this
interpreter before it starts workers in it (and `genro-asgi check` shows).
"""

import sys

# `python -m` put the current directory first on sys.path (unless -P or PYTHONSAFEPATH
# asked it not to). A worker imports the app from `[application] app_dir`, which the
# worker puts first itself, and nothing from wherever the supervisor happened to start.
if not getattr(sys.flags, "safe_path", False) and sys.path:
    del sys.path[0]


def probe():
    import json
    import sysconfig

    from genro_asgi_worker._native import __version__

    return json.dumps({
        "version": sys.version.split()[0],
        "version_info": list(sys.version_info[:2]),
        "implementation": sys.implementation.name,
        "executable": sys.executable,
        "prefix": sys.prefix,
        "path": sys.path,
        "worker_version": __version__,
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
    })


if sys.argv[1:] == ["--probe"]:
    print(probe())
else:
    from genro_asgi_worker._native import main

    sys.exit(main(sys.argv[1:]))
