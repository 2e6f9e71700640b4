"""Tollgate's Snowflake stand-in: fakesnow (DuckDB) behind a TLS front that adds what fakesnow lacks.

It serves HTTPS itself (uvicorn with a real certificate) on one address, for two names that the
agent's /etc/hosts resolves to it: the account host `<account>.snowflakecomputing.com` and a
storage host (default `sfc-results.s3.us-west-2.amazonaws.com`) that serves result chunks. Real
SQL runs in fakesnow's ASGI handlers in-process; this wrapper adds, as Snowflake does:

- login: `masterToken`, `sessionId`, `validityInSeconds`, `masterValidityInSeconds` beside
  fakesnow's token; any credential is accepted, the authenticator is recorded in the log;
- JSON results (`queryResultFormat: "json"`, `rowset` of strings/null, numbers as strings, dates
  as epoch days, timestamps as "seconds.nanos[ tz]") for the Node driver (CLIENT_APP_ID
  "JavaScript") or when a session/query parameter `*QUERY_RESULT_FORMAT` asks for JSON; Arrow
  (`rowsetBase64`) otherwise; `total` and `returned` always;
- a stalled statement: `/*standin:stall=N*/` holds the statement's POST N seconds before it is
  answered (a statement still running when its connection dies);
- in-progress answers: `/*standin:slow=N*/` in the SQL text → `333333` with `getResultUrl`
  `/queries/<qid>/result`, which answers 333333 (each GET held up to 0.5 s) until N seconds have
  passed, then the result; `asyncExec: true` → `333334` likewise (and `/monitoring/queries/<qid>`
  says RUNNING until then);
- session expiry: `/*standin:expire*/` (or `POST /standin/expire-all`) expires the session
  token: that query answers `390112`; `POST /session/token-request` with the master token issues
  a new session token; the query re-sent with the same requestId runs normally (logged with
  `"repeated_request_id": true`);
- chunked results: results with more rows than the chunk size (`--chunk-rows`, default 10000, or
  `/*standin:chunk_rows=N*/`) carry the first chunk inline (`--first-chunk-rows` rows, default
  the chunk size; Snowflake's inline part is small) and `chunks[]` (url, rowCount,
  uncompressedSize, compressedSize) whose URLs are `https://<storage-host>/results/<qid>/<n>`,
  with `qrmk` (or, with `/*standin:chunk_headers*/`, `chunkHeaders`); chunk bodies are Arrow IPC
  streams or JSON rows without the outer `[]`, gzip'd unless `--no-chunk-gzip`, and need the
  header `x-amz-server-side-encryption-customer-key` equal to the qrmk (403 otherwise);
- broken results, to test what a proxy does with them: `/*standin:corrupt_chunks=MODE*/` serves
  every chunk of that result cut in half (`truncate`), as bytes that are not gzip under a gzip
  header (`badgzip`), or as valid gzip of bytes that are not the result format (`garbage`);
  `/*standin:corrupt_inline*/` replaces the inline Arrow/JSON rows with bytes that are not Arrow
  (Arrow) or a rowset that is not an array of rows (JSON);
- `/session/heartbeat`, `/session?delete=true`, `/queries/v1/abort-request`,
  `/monitoring/queries/<qid>`, `/telemetry/send`.

Every request is appended to `--request-log` as one JSON line: time, host, method, path, query,
requestId, sqlText (if any), body (decoded JSON, except login passwords/tokens), headers minus
Authorization, the answer's HTTP status and Snowflake code. Tests read it to prove what did (not)
reach "Snowflake".

`--seed-sql FILE` runs statements (separated by `;` at line ends) at start-up, before listening.
Synthetic data only. The line `standin ready` on stdout means it is listening.

Usage: standin.py --host :: --port 443 --cert server.pem --key server.key \
           --request-log requests.jsonl [--seed-sql seed.sql] [--storage-host NAME]
"""

from __future__ import annotations

import argparse
import importlib
import asyncio
import base64
import datetime as dt
import decimal
import gzip
import io
import json
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from typing import Any

import pyarrow as pa
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# `fakesnow.server` is shadowed by a function of that name in fakesnow/__init__.py.
fs_server = importlib.import_module("fakesnow.server")

fs_arrow = importlib.import_module("fakesnow.arrow")
_fakesnow_ts_struct = fs_arrow.timestamp_to_sf_struct


def _ts_struct_keeping_nulls(ts: Any) -> Any:
    # fakesnow 0.12.1 builds the timestamp struct without a validity mask, so NULL timestamps
    # reach the driver as 1970-01-01; Snowflake sends NULL.
    out = _fakesnow_ts_struct(ts)
    if isinstance(ts, pa.ChunkedArray):
        ts = ts.combine_chunks()
    if ts.null_count == 0:
        return out
    fields = [out.type.field(i) for i in range(out.type.num_fields)]
    return pa.StructArray.from_arrays(out.flatten(), fields=fields, mask=ts.is_null())


fs_arrow.timestamp_to_sf_struct = _ts_struct_keeping_nulls

ARGS: argparse.Namespace
LOG_LOCK = threading.Lock()

SLOW_RE = re.compile(r"/\*\s*standin:slow=(\d+(?:\.\d+)?)\s*\*/")
# Holds the statement's POST itself this many seconds before answering (a statement still
# running in Snowflake when its connection dies).
STALL_RE = re.compile(r"/\*\s*standin:stall=(\d+(?:\.\d+)?)\s*\*/")
CHUNK_RE = re.compile(r"/\*\s*standin:chunk_rows=(\d+)\s*\*/")
EXPIRE_MARK = "/*standin:expire*/"
CHUNK_HEADERS_MARK = "/*standin:chunk_headers*/"
CORRUPT_CHUNKS_RE = re.compile(r"/\*\s*standin:corrupt_chunks=(truncate|badgzip|garbage)\s*\*/")
CORRUPT_INLINE_MARK = "/*standin:corrupt_inline*/"


class Session:
    """One login: tokens, client kind and result format."""

    def __init__(self, token: str, client_app: str, authenticator: str, json_results: bool) -> None:
        self.token = token
        self.master = secrets.token_urlsafe(32)
        self.session_id = secrets.randbelow(10**15)
        self.client_app = client_app
        self.authenticator = authenticator
        self.json_results = json_results
        self.expired = False
        # fakesnow gives a session one DuckDB connection, which refuses a second statement while
        # one runs; Snowflake runs a session's statements concurrently, so queue them here.
        self.lock = asyncio.Lock()


SESSIONS: dict[str, Session] = {}  # by session token
MASTERS: dict[str, Session] = {}  # by master token
EXPIRED_REQUEST_IDS: set[str] = set()
PENDING: dict[str, tuple[float, dict[str, Any]]] = {}  # qid -> (ready_at, final body)
CHUNKS: dict[tuple[str, int], tuple[bytes, str]] = {}  # (qid, n) -> (body, key)


# ---------------------------------------------------------------------------------------------
# helpers


async def body_json(request: Request) -> Any:
    raw = await request.body()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def token_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    m = re.search(r'Token="([^"]*)"', auth)
    return m.group(1) if m else None


def envelope_error(code: str, message: str, status: int = 200) -> JSONResponse:
    return JSONResponse({"data": None, "code": code, "message": message, "success": False}, status_code=status)


def expired_response() -> JSONResponse:
    return envelope_error("390112", "Your session has expired. Please login again.")


def log_request(request: Request, body: Any, status: int, code: Any, extra: dict[str, Any]) -> None:
    if not ARGS.request_log:
        return
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        body = {"data": {k: ("<redacted>" if k in ("PASSWORD", "TOKEN", "PASSCODE") else v) for k, v in body["data"].items()}}
    rec = {
        "time": time.time(),
        "host": request.headers.get("host", ""),
        "method": request.method,
        "path": request.url.path,
        "query": request.url.query,
        "requestId": request.query_params.get("requestId") or request.query_params.get("request_id"),
        "sqlText": body.get("sqlText") if isinstance(body, dict) else None,
        "body": body if request.url.path != "/session/v1/login-request" else body,
        "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
        "status": status,
        "code": code,
        **extra,
    }
    line = json.dumps(rec, default=str)
    with LOG_LOCK, open(ARGS.request_log, "a") as f:
        f.write(line + "\n")


def logged(handler):
    async def wrapped(request: Request) -> Response:
        body = await body_json(request)
        extra: dict[str, Any] = {}
        resp = await handler(request, body, extra)
        code = None
        if isinstance(resp, JSONResponse):
            try:
                code = json.loads(resp.body).get("code")
            except ValueError:
                pass
        log_request(request, body, resp.status_code, code, extra)
        return resp

    return wrapped


# ---------------------------------------------------------------------------------------------
# JSON results: Snowflake's string encoding of each logical type


def sf_json_value(v: Any, col: dict[str, Any]) -> str | None:
    if v is None:
        return None
    t = (col.get("type") or "").lower()
    if t == "boolean" or isinstance(v, bool):
        return "1" if v else "0"
    if t == "date" or (isinstance(v, dt.date) and not isinstance(v, dt.datetime)):
        return str((v - dt.date(1970, 1, 1)).days)
    if t.startswith("timestamp"):
        if isinstance(v, dict):  # fakesnow's Snowflake struct: epoch, fraction[, timezone]
            s = f"{v['epoch']}.{int(v['fraction']):09d}"
            if "timezone" in v and t == "timestamp_tz":
                s += f" {v['timezone']}"
            return s
        return str(v)
    if t == "time" and isinstance(v, int):  # nanoseconds since midnight
        return f"{v // 1_000_000_000}.{v % 1_000_000_000:09d}"
    if t == "fixed":
        scale = int(col.get("scale") or 0)
        if isinstance(v, decimal.Decimal):
            return f"{v:.{scale}f}" if scale else str(int(v))
        if isinstance(v, int) and scale:
            return str(decimal.Decimal(v).scaleb(-scale))
        return str(v)
    if t == "real" or isinstance(v, float):
        return repr(float(v))
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex().upper()
    return str(v)


def arrow_table(b64: str) -> pa.Table | None:
    if not b64:
        return None
    return pa.ipc.open_stream(io.BytesIO(base64.b64decode(b64))).read_all()


def json_rows(table: pa.Table, rowtype: list[dict[str, Any]]) -> list[list[str | None]]:
    cols = [c.to_pylist() for c in table.columns]
    return [[sf_json_value(v, rowtype[i]) for i, v in enumerate(row)] for row in zip(*cols)]


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def shape_result(data: dict[str, Any], json_results: bool, sql: str) -> None:
    """Rewrites fakesnow's `data` in place: JSON conversion, chunking, total/returned."""
    m = CHUNK_RE.search(sql)
    chunk_rows = int(m.group(1)) if m else ARGS.chunk_rows
    qid = data.get("queryId") or str(uuid.uuid4())
    rowtype = data.get("rowtype") or []
    if data.get("queryResultFormat") == "arrow":
        table = arrow_table(data.get("rowsetBase64", ""))
        total = table.num_rows if table is not None else 0
        if json_results:
            rows = json_rows(table, rowtype) if table is not None else []
            data["queryResultFormat"] = "json"
            data.pop("rowsetBase64", None)
            data["rowset"] = rows
            parts = [rows[i : i + chunk_rows] for i in range(0, len(rows), chunk_rows)] if chunk_rows else [rows]
            if len(parts) > 1:
                data["rowset"] = parts[0]
                bodies = [",".join(json.dumps(r) for r in p).encode() for p in parts[1:]]
                add_chunks(data, qid, bodies, [len(p) for p in parts[1:]], sql)
        elif table is not None and chunk_rows and total > chunk_rows:
            first = min(ARGS.first_chunk_rows or chunk_rows, chunk_rows)
            slices = [table.slice(0, first)] + [table.slice(i, chunk_rows) for i in range(first, total, chunk_rows)]
            data["rowsetBase64"] = base64.b64encode(to_ipc(slices[0])).decode()
            add_chunks(data, qid, [to_ipc(s) for s in slices[1:]], [s.num_rows for s in slices[1:]], sql)
        data["total"] = total
        data["returned"] = total
    else:
        rows = data.get("rowset") or []
        data.setdefault("rowset", rows)
        data.setdefault("total", len(rows))
        data["returned"] = data["total"]
    if CORRUPT_INLINE_MARK in sql:
        if data.get("queryResultFormat") == "arrow":
            data["rowsetBase64"] = base64.b64encode(b"\xff\xff\xff\xffnot an arrow stream at all").decode()
        else:
            data["rowset"] = [["1", "2"], "not a row"]
    data.setdefault("queryId", qid)
    data.setdefault("finalRoleName", "PUBLIC")
    data.setdefault("finalWarehouseName", None)
    data["sendResultTime"] = int(time.time() * 1000)


def add_chunks(data: dict[str, Any], qid: str, bodies: list[bytes], counts: list[int], sql: str) -> None:
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    chunks = []
    corrupt = CORRUPT_CHUNKS_RE.search(sql)
    mode = corrupt.group(1) if corrupt else None
    for n, (raw, count) in enumerate(zip(bodies, counts)):
        if mode == "garbage":
            raw = b"\x00garbage that is neither Arrow nor JSON rows\x01" * 64
        stored = gzip.compress(raw, 1) if ARGS.chunk_gzip else raw
        if mode == "truncate":
            stored = stored[: len(stored) // 2]
        elif mode == "badgzip":
            stored = b"\x1f\x8b\x08\x00" + secrets.token_bytes(512)
        CHUNKS[(qid, n)] = (stored, key)
        chunks.append(
            {
                "url": f"https://{ARGS.storage_host}/results/{qid}/{n}?X-Amz-Signature=standin",
                "rowCount": count,
                "uncompressedSize": len(raw),
                "compressedSize": len(stored),
            }
        )
    data["chunks"] = chunks
    if CHUNK_HEADERS_MARK in sql:
        data["chunkHeaders"] = {
            "x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key": key,
        }
    else:
        data["qrmk"] = key


# ---------------------------------------------------------------------------------------------
# routes


async def login(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    d = (body or {}).get("data", {}) if isinstance(body, dict) else {}
    resp = await fs_server.login_request(request)
    out = json.loads(resp.body)
    if not out.get("success"):
        return resp
    params = d.get("SESSION_PARAMETERS") or {}
    fmt = str(params.get("PYTHON_CONNECTOR_QUERY_RESULT_FORMAT") or params.get("QUERY_RESULT_FORMAT") or "").upper()
    client = str(d.get("CLIENT_APP_ID") or "")
    authenticator = str(d.get("AUTHENTICATOR") or "SNOWFLAKE")
    s = Session(out["data"]["token"], client, authenticator, client == "JavaScript" or fmt == "JSON")
    SESSIONS[s.token] = s
    MASTERS[s.master] = s
    extra.update(authenticator=authenticator, client_app=client, login_name=d.get("LOGIN_NAME"))
    q = request.query_params
    out["data"].update(
        masterToken=s.master,
        validityInSeconds=3600,
        masterValidityInSeconds=14400,
        sessionId=s.session_id,
        displayUserName=d.get("LOGIN_NAME"),
        idToken=None,
        firstLogin=False,
        healthCheckInterval=45,
    )
    out["data"]["sessionInfo"].update(warehouseName=q.get("warehouse"), roleName=q.get("roleName") or "PUBLIC")
    out.update(code=None, message=None)
    return JSONResponse(out)


def session_of(request: Request) -> Session | None:
    tok = token_of(request)
    return SESSIONS.get(tok) if tok else None


async def query(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    s = session_of(request)
    if s is None:
        return envelope_error("390104", "User must login again to access the service.", 401)
    rid = request.query_params.get("requestId") or ""
    sql = (body or {}).get("sqlText", "") if isinstance(body, dict) else ""
    if rid and rid in EXPIRED_REQUEST_IDS:
        extra["repeated_request_id"] = True
    elif EXPIRE_MARK in sql:
        s.expired = True
        EXPIRED_REQUEST_IDS.add(rid)
    if s.expired:
        return expired_response()
    stall = STALL_RE.search(sql)
    if stall:
        extra["stalled_s"] = float(stall.group(1))
        await asyncio.sleep(float(stall.group(1)))
    async with s.lock:
        resp = await fs_server.query_request(request)
    out = json.loads(resp.body)
    if not out.get("success"):
        data = out.get("data") or {}
        if isinstance(data, dict):
            data.setdefault("queryId", str(uuid.uuid4()))
        return JSONResponse(out, status_code=resp.status_code)
    data = out["data"]
    params = (body or {}).get("parameters") or {}
    fmt = str(params.get("PYTHON_CONNECTOR_QUERY_RESULT_FORMAT") or params.get("QUERY_RESULT_FORMAT") or "").upper()
    json_results = s.json_results or fmt == "JSON"
    if "rowtype" in data:
        await asyncio.get_running_loop().run_in_executor(None, shape_result, data, json_results, sql)
    extra.update(result_format=data.get("queryResultFormat"), chunks=len(data.get("chunks") or []), total=data.get("total"))
    m = SLOW_RE.search(sql)
    is_async = bool((body or {}).get("asyncExec"))
    if m or is_async:
        qid = data.get("queryId") or str(uuid.uuid4())
        data["queryId"] = qid
        delay = float(m.group(1)) if m else 0.0
        PENDING[qid] = (time.monotonic() + delay, out)
        extra["pending_until_s"] = delay
        code, msg = (
            ("333334", "Asynchronous execution in progress. Use provided query id to perform query monitoring and management.")
            if is_async
            else ("333333", "Query execution in progress.")
        )
        return JSONResponse(
            {
                "data": {
                    "queryId": qid,
                    "getResultUrl": f"/queries/{qid}/result",
                    "queryAbortsAfterSecs": 300,
                    "progressDesc": None,
                },
                "code": code,
                "message": msg,
                "success": True,
            }
        )
    return JSONResponse(out)


async def query_result(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    s = session_of(request)
    if s is None:
        return envelope_error("390104", "User must login again to access the service.", 401)
    if s.expired:
        return expired_response()
    qid = request.path_params["qid"]
    pending = PENDING.get(qid)
    if pending is None:
        return envelope_error("000709", f"Statement {qid} not found")
    ready_at, out = pending
    wait = ready_at - time.monotonic()
    if wait > 0:
        await asyncio.sleep(min(wait, 0.5))
    if time.monotonic() < ready_at:
        return JSONResponse(
            {
                "data": {"queryId": qid, "getResultUrl": f"/queries/{qid}/result", "queryAbortsAfterSecs": 300, "progressDesc": None},
                "code": "333333",
                "message": "Query execution in progress.",
                "success": True,
            }
        )
    return JSONResponse(out)


async def token_request(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    s = MASTERS.get(token_of(request) or "")
    if s is None:
        return envelope_error("390114", "Authentication token has expired.  The user must authenticate again.")
    old = s.token
    new = secrets.token_urlsafe(32)
    conn = fs_server.sessions.pop(old, None)
    if conn is not None:
        fs_server.sessions[new] = conn
    SESSIONS.pop(old, None)
    s.token = new
    s.expired = False
    SESSIONS[new] = s
    extra["renewed"] = True
    return JSONResponse(
        {
            "data": {
                "sessionToken": new,
                "validityInSecondsST": 3600,
                "masterToken": s.master,
                "validityInSecondsMT": 14400,
                "sessionId": s.session_id,
            },
            "code": None,
            "message": None,
            "success": True,
        }
    )


async def session_ep(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    s = session_of(request)
    if s is None:
        return envelope_error("390104", "User must login again to access the service.", 401)
    if request.query_params.get("delete") == "true":
        fs_server.sessions.pop(s.token, None)
        SESSIONS.pop(s.token, None)
        MASTERS.pop(s.master, None)
    elif s.expired:
        return expired_response()
    return JSONResponse({"data": None, "code": None, "message": None, "success": True})


async def heartbeat(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    s = session_of(request)
    if s is None:
        return envelope_error("390104", "User must login again to access the service.", 401)
    if s.expired:
        return expired_response()
    return JSONResponse({"data": None, "code": None, "message": None, "success": True})


async def abort(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    return JSONResponse({"data": None, "code": None, "message": None, "success": True})


async def monitoring(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    s = session_of(request)
    if s is None:
        return envelope_error("390104", "User must login again to access the service.", 401)
    qid = request.path_params["qid"]
    pending = PENDING.get(qid)
    if pending is not None:
        status = "RUNNING" if time.monotonic() < pending[0] else "SUCCESS"
        return JSONResponse({"data": {"queries": [{"id": qid, "status": status}]}, "code": None, "message": None, "success": True})
    return JSONResponse({"data": {"queries": [{"id": qid, "status": "SUCCESS"}]}, "code": None, "message": None, "success": True})


async def telemetry(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    return JSONResponse({"data": "Log Received", "code": None, "message": None, "success": True})


async def chunk(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    key = (request.path_params["qid"], int(request.path_params["n"]))
    found = CHUNKS.get(key)
    if found is None:
        return Response(b"NoSuchKey", status_code=404)
    raw, qrmk = found
    if request.headers.get("x-amz-server-side-encryption-customer-key") != qrmk:
        extra["denied"] = "sse-c key missing or wrong"
        return Response(b"AccessDenied", status_code=403)
    headers = {"content-type": "binary/octet-stream"}
    if ARGS.chunk_gzip:
        headers["content-encoding"] = "gzip"
    return Response(raw, headers=headers)


async def expire_all(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    for s in SESSIONS.values():
        s.expired = True
    return JSONResponse({"expired": len(SESSIONS)})


async def not_found(request: Request, body: Any, extra: dict[str, Any]) -> Response:
    return Response(b"Not Found", status_code=404)


ROUTES = [
    Route("/session/v1/login-request", logged(login), methods=["POST"]),
    Route("/session/token-request", logged(token_request), methods=["POST"]),
    Route("/session/heartbeat", logged(heartbeat), methods=["POST"]),
    Route("/session", logged(session_ep), methods=["POST"]),
    Route("/queries/v1/query-request", logged(query), methods=["POST"]),
    Route("/queries/v1/abort-request", logged(abort), methods=["POST"]),
    Route("/queries/{qid}/result", logged(query_result), methods=["GET"]),
    Route("/monitoring/queries/{qid}", logged(monitoring), methods=["GET"]),
    Route("/telemetry/send", logged(telemetry), methods=["POST"]),
    Route("/results/{qid}/{n:int}", logged(chunk), methods=["GET"]),
    Route("/standin/expire-all", logged(expire_all), methods=["POST"]),
    Route("/{rest:path}", logged(not_found), methods=["GET", "POST", "PUT", "DELETE"]),
]


def seed(path: str) -> None:
    text = open(path).read()
    stmts = [s.strip() for s in re.split(r";\s*$", text, flags=re.M)]
    conn = fs_server.shared_fs.connect(None, None)
    cur = conn.cursor()
    for s in stmts:
        body = "\n".join(l for l in s.splitlines() if not l.strip().startswith("--")).strip()
        if body:
            cur.execute(body)


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="::")
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--request-log", default="")
    p.add_argument("--seed-sql", default="")
    p.add_argument("--storage-host", default="sfc-results.s3.us-west-2.amazonaws.com")
    p.add_argument("--chunk-rows", type=int, default=10000, help="rows per result chunk (0: never chunk)")
    p.add_argument("--first-chunk-rows", type=int, default=0, help="rows of a chunked result inline (0: the chunk size)")
    p.add_argument("--no-chunk-gzip", dest="chunk_gzip", action="store_false")
    ARGS = p.parse_args()
    if ARGS.seed_sql:
        t = time.monotonic()
        seed(ARGS.seed_sql)
        print(f"standin: seeded in {time.monotonic() - t:.2f}s", file=sys.stderr, flush=True)
    app = Starlette(routes=ROUTES)
    config = uvicorn.Config(
        app,
        host=ARGS.host,
        port=ARGS.port,
        ssl_certfile=ARGS.cert,
        ssl_keyfile=ARGS.key,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
    )
    server = uvicorn.Server(config)

    # One dual-stack socket when the host is IPv6 (asyncio would set IPV6_V6ONLY on its own).
    family = socket.AF_INET6 if ":" in ARGS.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((ARGS.host, ARGS.port))
    sock.listen(1024)
    sock.set_inheritable(True)

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                return
            await asyncio.sleep(0.02)
        print("standin ready", flush=True)
        await task

    asyncio.run(run())


if __name__ == "__main__":
    main()
