"""FastAPI app for the framework tests: path params, a pydantic body, a lifespan
context manager that sets app.state, and a WebSocket endpoint (a tiny chat room)."""

import contextlib
import os

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.started = "lifespan-ran"
    app.state.pid = os.getpid()
    yield
    app.state.started = "stopped"


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/items/{item_id}")
async def get_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}


@app.post("/echo")
async def echo(item: Item):
    return {"name": item.name, "price": item.price, "tags": item.tags, "total": item.price * 2}


@app.get("/state")
async def state(request: Request):
    return {"started": request.app.state.started, "pid": request.app.state.pid}


ROOM = set()


@app.websocket("/ws/{name}")
async def chat(websocket: WebSocket, name: str):
    if name == "intruder":
        await websocket.close(code=1008)
        return
    await websocket.accept(subprotocol="chat")
    ROOM.add(websocket)
    try:
        while True:
            data = await websocket.receive_json()
            for peer in list(ROOM):
                await peer.send_json({"from": name, "text": data["text"]})
    except WebSocketDisconnect as exc:
        print("FASTAPI_WS_GONE", name, exc.code, flush=True)
    finally:
        ROOM.discard(websocket)
