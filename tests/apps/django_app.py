"""Minimal Django project in one module: settings configured in code, one JSON view."""

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="x",
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        USE_TZ=True,
    )
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def hello(request, name):
    return JsonResponse({
        "hello": name,
        "method": request.method,
        "host": request.get_host(),
        "secure": request.is_secure(),
        "q": request.GET.get("q"),
    })


async def echo(request):
    return JsonResponse({"len": len(request.body), "body": request.body.decode("utf-8", "replace")})


urlpatterns = [
    path("hello/<str:name>", hello),
    path("echo", echo),
]

application = get_asgi_application()
