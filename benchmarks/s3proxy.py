"""(Copied from the workplace's shared tools, ../shared/tools/s3proxy.py, so that tests and benchmarks run on a clean clone.)

A loopback S3 proxy in front of moto_server that adds latency and injects faults.

python s3proxy.py --listen 127.0.0.1:PORT --upstream http://127.0.0.1:MOTO_PORT \
    [--latency-ms 20] [--fail-put 0.1] [--fail-get 0.0] [--seed 0] [--max-seconds 3600]

Faults: a failed request gets HTTP 503 SlowDown (the error S3 returns under load) without reaching
moto, so the object is not written. Counts are printed to stdout on exit (SIGTERM or max-seconds).
Needs aiohttp (ray[default] installs it). Point clients at it with AWS_ENDPOINT_URL=http://127.0.0.1:PORT.
"""

import argparse
import asyncio
import json
import random
import signal

from aiohttp import ClientSession, web

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization", "host"}
SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--fail-put", type=float, default=0.0)
    p.add_argument("--fail-get", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=3600)
    a = p.parse_args()
    rng = random.Random(a.seed)
    counts = {"requests": 0, "put": 0, "get": 0, "failed_put": 0, "failed_get": 0}
    host, port = a.listen.rsplit(":", 1)

    async def handle(req: web.Request) -> web.StreamResponse:
        body = await req.read()
        counts["requests"] += 1
        kind = "put" if req.method in ("PUT", "POST") else "get" if req.method in ("GET", "HEAD") else None
        if kind:
            counts[kind] += 1
        if a.latency_ms:
            await asyncio.sleep(a.latency_ms / 1000)
        if kind and rng.random() < (a.fail_put if kind == "put" else a.fail_get):
            counts["failed_" + kind] += 1
            return web.Response(status=503, body=SLOWDOWN, content_type="application/xml")
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP}
        headers["Host"] = req.headers.get("Host", "")
        async with req.app["session"].request(
            req.method, a.upstream + req.rel_url.raw_path_qs, headers=headers, data=body, allow_redirects=False
        ) as up:
            data = await up.read()
            drop = HOP if req.method == "HEAD" else HOP | {"content-length"}
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in drop}
            if req.method == "HEAD":  # keep the object's length; send no body
                resp = web.Response(status=up.status, headers=out_headers)
                resp.body = None
                return resp
            return web.Response(status=up.status, body=data, headers=out_headers)

    async def run() -> None:
        app = web.Application(client_max_size=1 << 30)
        app["session"] = ClientSession(auto_decompress=False)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, host, int(port)).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, stop.set)
        try:
            await asyncio.wait_for(stop.wait(), a.max_seconds)
        except TimeoutError:
            pass
        await app["session"].close()
        await runner.cleanup()
        print(json.dumps(counts), flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
