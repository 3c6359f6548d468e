"""The HTTP floor: an ASGI app that reads the body and answers 200, and does nothing else.

Served by the same uvicorn, loop, parser and number of workers as the gateway, it is what
any gateway on this server stack costs before it does any work, and it shows the load
generator is not the limit: it pushes this far beyond what the gateway sustains.

    uvicorn bench.floor:app --loop asyncio --http httptools
"""

from starlette.types import Receive, Scope, Send

BODY = b'{"results":[{"index":0,"message_id":"0:0:-1:-1"}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
