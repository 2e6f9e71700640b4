"""A forward proxy on a test host: HTTP CONNECT and SOCKS5 (no authentication), the tunnels an
agent could use to reach Snowflake on ports other than 443.

    tunnel_proxy.py --http-port 3128 --socks-port 1080 [--map NAME=IP ...] [--log FILE]

Names are resolved with `--map` first (the test hosts' names are known to no resolver). Every
tunnel opened is appended to `--log` as a JSON line (`{"kind", "target"}`), so a test can tell
whether a tunnel reached this proxy at all. Prints `tunnel proxy ready` once both listen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

ARGS: argparse.Namespace


def resolve(host: str) -> str:
    for m in ARGS.map:
        name, ip = m.split("=", 1)
        if name == host:
            return ip
    return host


def log(kind: str, target: str) -> None:
    if ARGS.log:
        with open(ARGS.log, "a") as f:
            f.write(json.dumps({"kind": kind, "target": target}) + "\n")


async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            w.close()
        except Exception:
            pass


async def splice(cr: asyncio.StreamReader, cw: asyncio.StreamWriter, host: str, port: int) -> None:
    ur, uw = await asyncio.open_connection(resolve(host), port)
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw))


async def http_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    head = await r.readuntil(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode()
    method, target, _ = line.split(" ", 2)
    if method != "CONNECT":
        w.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
        w.close()
        return
    host, port = target.rsplit(":", 1)
    log("http_connect", target)
    w.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await w.drain()
    await splice(r, w, host.strip("[]"), int(port))


async def socks_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    ver, n = await r.readexactly(2)
    await r.readexactly(n)
    w.write(b"\x05\x00")
    await w.drain()
    _, cmd, _, atyp = await r.readexactly(4)
    if atyp == 1:
        host = socket.inet_ntop(socket.AF_INET, await r.readexactly(4))
    elif atyp == 4:
        host = socket.inet_ntop(socket.AF_INET6, await r.readexactly(16))
    else:
        (length,) = await r.readexactly(1)
        host = (await r.readexactly(length)).decode()
    port = int.from_bytes(await r.readexactly(2), "big")
    log("socks5", f"{host}:{port}")
    w.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
    await w.drain()
    await splice(r, w, host, port)


async def main() -> None:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--socks-port", type=int, required=True)
    p.add_argument("--map", action="append", default=[])
    p.add_argument("--log", default="")
    ARGS = p.parse_args()
    a = await asyncio.start_server(http_client, "0.0.0.0", ARGS.http_port)
    b = await asyncio.start_server(socks_client, "0.0.0.0", ARGS.socks_port)
    print("tunnel proxy ready", flush=True)
    async with a, b:
        await asyncio.gather(a.serve_forever(), b.serve_forever())


if __name__ == "__main__":
    asyncio.run(main())
