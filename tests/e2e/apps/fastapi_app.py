"""A FastAPI app for the framework tests: the same file runs under uvicorn and our workers.

Path and query parameters with validation, a pydantic request body, a
dependency that checks a header (401 without it), a WebSocket endpoint with a
path parameter, and lifespan state (an in-memory "database" made at start-up)
that requests reach through ``request.state``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, WebSocket
from fastapi.websockets import WebSocketDisconnect
from pydantic import BaseModel, Field


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    yield {"db": {1: "apple", 2: "banana"}}


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: list[str] = []


async def require_token(x_token: Annotated[str | None, Header()] = None) -> str:
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="bad or missing X-Token")
    return x_token


@app.get("/items/{item_id}")
async def read_item(request: Request, item_id: int, q: str | None = None, limit: int = 10) -> Any:
    db = request.state.db
    if item_id not in db:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    return {"item_id": item_id, "name": db[item_id], "q": q, "limit": limit}


@app.post("/items", status_code=201)
async def create_item(item: Item, token: Annotated[str, Depends(require_token)]) -> Any:
    return {"item": item.model_dump(), "total": round(item.price * 1.2, 2), "token": token}


@app.get("/sync")
def sync_endpoint(n: int = 3) -> Any:
    # A sync endpoint: FastAPI runs it in a thread.
    return {"squares": [i * i for i in range(n)]}


@app.websocket("/ws/{client_id}")
async def ws_endpoint(websocket: WebSocket, client_id: str) -> None:
    await websocket.accept()
    try:
        while True:
            data = await websocket.receive_json()
            await websocket.send_json({"client": client_id, "got": data, "n": len(str(data))})
    except WebSocketDisconnect:
        return
