"""The baseline for ingest benchmarks: a bare aiohttp server that parses JSON and answers ok."""

import sys

import orjson
from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
