"""App for the remote debugger tests (issue 18): `/boom` raises ZeroDivisionError two
frames down, with locals worth looking at; `/` answers at once."""

from plain_lifespan import plain_lifespan


def average(values, label):
    count = len(values) - len(values)  # zero: the bug the debugger session finds
    return sum(values) / count


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await plain_lifespan(receive, send)
    if scope["path"] == "/boom":
        basket = [3, 4, 5]
        average(basket, label="basket-7")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
