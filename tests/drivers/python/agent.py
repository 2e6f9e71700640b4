"""An ordinary Snowflake agent using snowflake-connector-python, as a real one would.

It connects to `<account>.snowflakecomputing.com` (the real name: no host, port or protocol
override), runs the statements of a JSON file and prints one JSON line per statement:

    {"ok": true, "rows": [...], "rowcount": n, "query_id": "..."}
    {"ok": false, "error": "ProgrammingError", "message": "...", "errno": 2003, "sqlstate": "42S02"}

Configuration comes only from argv and the environment (trust: REQUESTS_CA_BUNDLE, set by an
installer). The statements file is a JSON list; each item is an SQL string or an object:

    {"sql": "...", "bindings": [..] | {..},   # qmark bindings (sent as Snowflake `bindings`)
     "async": true,                           # execute_async, then fetch by query id
     "digest": true,                          # print rowcount, sha256, first and last row, no rows
     "count": true}                           # stream the rows, print only how many (large results)

`--concurrent` runs all statements at once, each on its own cursor of the one connection
(threads); the output keeps the input order.

Values are printed type-faithfully: JSON-native types as they are; others tagged,
e.g. {"decimal": "1.25"}, {"date": "1990-03-04"}, {"timestamp": "2024-05-06T07:08:09.123456"},
{"time": "..."}, {"binary": "<hex>"}, {"float": "nan"}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import hashlib
import json
import time
import math
import sys
import threading
from typing import Any

import snowflake.connector


def faithful(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, decimal.Decimal):
        return {"decimal": str(v)}
    if isinstance(v, dt.datetime):
        return {"timestamp": v.isoformat()}
    if isinstance(v, dt.date):
        return {"date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"time": v.isoformat()}
    if isinstance(v, (bytes, bytearray)):
        return {"binary": bytes(v).hex()}
    return {type(v).__name__: str(v)}


def run_one(conn: Any, stmt: Any) -> dict[str, Any]:
    if isinstance(stmt, str):
        stmt = {"sql": stmt}
    cur = conn.cursor()
    try:
        if stmt.get("async"):
            cur.execute_async(stmt["sql"], stmt.get("bindings"))
            qid = cur.sfqid
            cur.get_results_from_sfqid(qid)
        elif "bindings" in stmt:
            cur.execute(stmt["sql"], stmt["bindings"])
        else:
            cur.execute(stmt["sql"])
        if stmt.get("count"):
            n = 0
            for _ in cur:
                n += 1
            return {"ok": True, "rowcount": cur.rowcount, "query_id": cur.sfqid, "nrows": n}
        # after execute_async/get_results_from_sfqid the description appears only once fetched
        rows = [[faithful(v) for v in r] for r in cur.fetchall()] if cur.description or stmt.get("async") else []
        out: dict[str, Any] = {"ok": True, "rowcount": cur.rowcount, "query_id": cur.sfqid}
        if stmt.get("digest"):
            h = hashlib.sha256()
            for r in rows:
                h.update(json.dumps(r, sort_keys=True).encode() + b"\n")
            out.update(rows_sha256=h.hexdigest(), nrows=len(rows), first=rows[0] if rows else None, last=rows[-1] if rows else None)
        else:
            out["rows"] = rows
        if cur.description:
            out["columns"] = [d.name for d in cur.description]
        return out
    except snowflake.connector.errors.Error as e:
        return {"ok": False, "error": type(e).__name__, "message": e.msg, "errno": e.errno, "sqlstate": e.sqlstate, "query_id": e.sfqid}
    except Exception as e:  # what the driver raised besides its own errors (e.g. a chunk cut short)
        return {"ok": False, "error": type(e).__name__, "message": str(e)}
    finally:
        cur.close()


def main() -> int:
    p = argparse.ArgumentParser(description="snowflake-connector-python agent")
    p.add_argument("--account", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password")
    p.add_argument("--authenticator")
    p.add_argument("--token")
    p.add_argument("--database")
    p.add_argument("--schema")
    p.add_argument("--warehouse")
    p.add_argument("--role")
    p.add_argument("--statements", required=True, help="JSON file: a list of statements")
    p.add_argument("--concurrent", action="store_true")
    p.add_argument("--session-param", action="append", default=[], help="NAME=VALUE")
    a = p.parse_args()
    kw: dict[str, Any] = {"account": a.account, "user": a.user, "paramstyle": "qmark"}
    for k in ("password", "authenticator", "token", "database", "schema", "warehouse", "role"):
        if getattr(a, k):
            kw[k] = getattr(a, k)
    if a.session_param:
        kw["session_parameters"] = dict(s.split("=", 1) for s in a.session_param)
    with open(a.statements) as f:
        stmts = json.load(f)
    try:
        conn = snowflake.connector.connect(**kw)
    except snowflake.connector.errors.Error as e:
        print(json.dumps({"ok": False, "stage": "connect", "error": type(e).__name__, "message": e.msg, "errno": e.errno, "sqlstate": e.sqlstate}), flush=True)
        return 2
    try:
        if a.concurrent:
            results: list[Any] = [None] * len(stmts)

            def work(i: int) -> None:
                results[i] = run_one(conn, stmts[i])

            threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stmts))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for r in results:
                print(json.dumps(r), flush=True)
        else:
            for s in stmts:
                started = time.perf_counter()
                r = run_one(conn, s)
                r["elapsed_us"] = round((time.perf_counter() - started) * 1e6)
                print(json.dumps(r), flush=True)
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
