"""genro-asgi's worker: the extension module that the `genro-asgi` supervisor starts in
your own Python as `python -m genro_asgi_worker`, one process per worker slot.

It is not an API: run your app with `genro-asgi serve` (docs/ARCHITECTURE.md).
"""

from genro_asgi_worker._native import __version__

__all__ = ["__version__"]
