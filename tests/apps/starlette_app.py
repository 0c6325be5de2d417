"""Starlette app for the framework tests: a JSON route reporting request.url, and a
StreamingResponse."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


async def whoami(request):
    return JSONResponse({
        "url": str(request.url),
        "host": request.url.hostname,
        "port": request.url.port,
        "scheme": request.url.scheme,
        "http_version": request.scope.get("http_version"),
        "path_param": request.path_params.get("name"),
    })


async def stream(request):
    n = int(request.query_params.get("n", "5"))

    async def chunks():
        for i in range(n):
            yield ("chunk-%d\n" % i).encode()

    return StreamingResponse(chunks(), media_type="text/plain")


app = Starlette(routes=[
    Route("/whoami", whoami),
    Route("/hello/{name}", whoami),
    Route("/stream", stream),
])
