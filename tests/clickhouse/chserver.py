"""A real, modern ClickHouse server on loopback for Tollgate's tests and demo.

What
----
`python chserver.py --data DIR --http-port P --tcp-port T [--user SPEC]... [--users-xml FILE]...`
runs ClickHouse 26.9 (the LocalServer inside the PyPI wheel `chdb-core==26.9.0`) with its real
HTTP (port P) and native TCP (port T) listeners on 127.0.0.1 only, prints exactly one line
`ready http=P tcp=T` on stdout once `SELECT 1` over HTTP answers, and serves until it is killed.
Everything lives under DIR, so starting again on the same DIR gives the same databases, tables,
rows and users:

    DIR/conf/config.xml        listeners, ports, user directories (rewritten at every start)
    DIR/conf/users.xml         the `default` user (rewritten at every start)
    DIR/conf/users.d/*.xml     further users: from --user/--users-xml, kept across restarts
    DIR/data/                  ClickHouse's `path`: metadata, parts, tmp
    DIR/log/clickhouse.log     the server's own log (warnings and errors)

Why
---
Debian's `clickhouse-server` package is from 2018, and no other registry this project can reach
ships a server binary. The chdb wheel does ship a complete, current ClickHouse engine as a
Python extension; its legacy entry point `_chdb.query(sql, format, path=DIR)` runs the engine's
LocalServer for the duration of one call, and LocalServer executes `SYSTEM START LISTEN HTTP`
and `SYSTEM START LISTEN TCP` by opening the very same listeners a `clickhouse-server` opens.
They stay open for as long as that call runs, so the call goes on with a query that never ends
(`sleepEachRow` over `system.numbers`, one row a second), and the process serves until killed.
Data is written by the ordinary MergeTree code, so it survives `kill -9` like a real server's.

How (and the limits measured on this engine)
--------------------------------------------
- LocalServer reads `./config.xml` from the *current directory*, so this script imports chdb
  first (the import itself opens and closes a throw-away engine in the current directory) and
  only then changes into DIR/conf. The users file is loaded from `users_config`, and ClickHouse's
  config processor merges every `users.d/*.xml` beside it, as a real server does.
- Access management by SQL does not exist in LocalServer: it sets up only the read-only
  `users_xml` access storage and ignores `<user_directories>` (`local_directory`, `memory`,
  ...), so `CREATE USER` answers `Code: 514 ... there is no writeable access storage in user
  directories (ACCESS_STORAGE_FOR_INSERTION_NOT_FOUND)`. Users other than `default` are
  therefore declared in users.d files, each with its password hash and its grants (`<grants>`
  holds GRANT statements, exactly as a server's users.xml does); they take effect at the next
  start. `default` keeps `access_management` so that `SHOW GRANTS`/`SHOW USERS` work.
- `default` has no password and is allowed from 127.0.0.1 and ::1 only (ClickHouse shows that
  as host name `localhost` in system.users).
- The default profile sets `default_format = TabSeparated`: a real server answers in
  TabSeparated when a query names no FORMAT, whereas this engine would answer in the format of
  the LocalServer call (CSV).
- `--user NAME:SHA256HEX:GRANT[;GRANT...]` writes DIR/conf/users.d/NAME.xml, for example
  `--user tollgate_writer:5e88...:INSERT ON tollgate.events` (the hex is
  `sha256(password)`; each GRANT is written as `GRANT <grant>`). `--users-xml FILE` copies a
  ready-made users file into users.d instead. Both are optional: files already in users.d from
  an earlier start stay in force.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path
from xml.sax.saxutils import escape

CONFIG_XML = """<clickhouse>
    <!-- Loopback only: nothing else on this machine or beyond may reach a test server. -->
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http_port}</http_port>
    <tcp_port>{tcp_port}</tcp_port>
    <!-- Read by LocalServer directly; users.d/*.xml beside it is merged into it. -->
    <users_config>{conf}/users.xml</users_config>
    <logger>
        <level>warning</level>
        <log>{log}/clickhouse.log</log>
        <errorlog>{log}/clickhouse.err.log</errorlog>
        <console>0</console>
    </logger>
    <!-- LocalServer takes its log level from here (trace otherwise). -->
    <send_logs_level>warning</send_logs_level>
</clickhouse>
"""

USERS_XML = """<clickhouse>
    <profiles>
        <default>
            <!-- A real server answers in TabSeparated when no FORMAT is given; this engine
                 would answer in CSV (the format of the LocalServer call below). -->
            <default_format>TabSeparated</default_format>
        </default>
    </profiles>
    <quotas>
        <default/>
    </quotas>
    <users>
        <default>
            <no_password/>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
            <access_management>1</access_management>
            <named_collection_control>1</named_collection_control>
        </default>
    </users>
</clickhouse>
"""

USER_XML = """<clickhouse>
    <users>
        <{name}>
            <password_sha256_hex>{sha256}</password_sha256_hex>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
            <grants>
{grants}
            </grants>
        </{name}>
    </users>
</clickhouse>
"""

# Runs for ever: the listeners live as long as this one LocalServer call does. One row a second
# keeps the buffered result tiny (two bytes a second).
SERVE_SQL = (
    "SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; "
    "SELECT sleepEachRow(1) FROM system.numbers "
    "SETTINGS max_block_size = 1, max_execution_time = 0"
)


def user_file(spec: str) -> tuple[str, str]:
    """`NAME:SHA256HEX:GRANT[;GRANT...]` → (file name, users.d XML)."""
    try:
        name, sha256, grants = spec.split(":", 2)
    except ValueError:
        sys.exit(f"chserver: --user wants NAME:SHA256HEX:GRANT[;GRANT...], got {spec!r}")
    is_hex = len(sha256) == 64 and all(c in "0123456789abcdefABCDEF" for c in sha256)
    if not name.replace("_", "").isascii() or not name.replace("_", "").isalnum() or not is_hex:
        sys.exit(f"chserver: bad --user {spec!r} (name: [A-Za-z0-9_]+, hash: 64 hex digits)")
    lines = "\n".join(
        f"                <query>GRANT {escape(g.strip())}</query>"
        for g in grants.split(";")
        if g.strip()
    )
    return f"{name}.xml", USER_XML.format(name=name, sha256=sha256.lower(), grants=lines)


def write_config(data: Path, http_port: int, tcp_port: int, users: list[str], users_xml: list[str]) -> Path:
    """Writes DIR/conf (and users.d entries); returns the conf directory."""
    conf, log = data / "conf", data / "log"
    users_d = conf / "users.d"
    declared = [user_file(spec) for spec in users]  # validate before touching DIR
    for d in (conf, users_d, log, data / "data"):
        d.mkdir(parents=True, exist_ok=True)
    (conf / "config.xml").write_text(
        CONFIG_XML.format(http_port=http_port, tcp_port=tcp_port, conf=conf, log=log)
    )
    (conf / "users.xml").write_text(USERS_XML)
    for name, xml in declared:
        (users_d / name).write_text(xml)
    for f in users_xml:
        shutil.copyfile(f, users_d / Path(f).name)
    return conf


def announce_when_ready(http_port: int, tcp_port: int) -> None:
    """Prints the ready line once HTTP answers `SELECT 1` (the engine runs in the main thread)."""
    url = f"http://127.0.0.1:{http_port}/?query=SELECT%201"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.read().strip() == b"1":
                    print(f"ready http={http_port} tcp={tcp_port}", flush=True)
                    return
        except OSError:
            pass
        time.sleep(0.05)
    print("chserver: HTTP did not answer within 120 s", file=sys.stderr, flush=True)
    os._exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="state directory (kept across restarts)")
    ap.add_argument("--http-port", required=True, type=int)
    ap.add_argument("--tcp-port", required=True, type=int)
    ap.add_argument("--user", action="append", default=[], metavar="NAME:SHA256HEX:GRANT[;GRANT...]",
                    help="declare a user in users.d (repeatable)")
    ap.add_argument("--users-xml", action="append", default=[], metavar="FILE",
                    help="copy a users file into users.d (repeatable)")
    args = ap.parse_args()

    data = args.data.resolve()
    conf = write_config(data, args.http_port, args.tcp_port, args.user, args.users_xml)

    # Import before changing directory: the import starts (and stops) a throw-away engine in
    # the current directory, which must not pick up our config.xml and its ports.
    from chdb import _chdb  # noqa: PLC0415

    os.chdir(conf)
    threading.Thread(
        target=announce_when_ready, args=(args.http_port, args.tcp_port), daemon=True
    ).start()
    # Blocks for as long as the server serves; it returns only on an error.
    try:
        res = _chdb.query(SERVE_SQL, "CSV", path=str(data / "data"))
        msg = res.error_message() if res.has_error() else "the serving query ended"
    except Exception as e:  # noqa: BLE001
        msg = str(e)
    print(f"chserver: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
