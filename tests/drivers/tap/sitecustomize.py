"""Tollgate's receive tap for Python agents: every decrypted byte a TLS connection receives.

Loaded by putting `tests/drivers/tap` on PYTHONPATH (Python imports `sitecustomize` at start-up);
the agent script itself is not modified. It does nothing unless `TOLLGATE_TAP_DIR` is set. When
it is, the plaintext returned by every TLS read is appended, in order, to one file per
connection: `$TOLLGATE_TAP_DIR/py-<pid>-<n>.bin` (n counts connections within the process).
The files hold exactly the bytes the HTTP client read (responses, headers included), so a test
can search them for values that must never reach the agent.

Where the plaintext comes from, for snowflake-connector-python 4.8.1:

- The connector injects pyOpenSSL into its vendored urllib3 (`ssl_wrap_socket.inject_into_urllib3`),
  so its REST calls and its result-chunk downloads read through `OpenSSL.SSL.Connection.recv_into`
  (via urllib3's `WrappedSocket`) and `recv`/`read`. These are wrapped; MSG_PEEK reads are not
  recorded (the bytes are recorded when actually consumed).
- Anything using the standard library (`ssl.SSLSocket`: plain requests/urllib3, http.client)
  reads through `SSLSocket.read`, which `recv` and `recv_into` delegate to, so only `read` is
  wrapped (wrapping all three would record every byte twice).
- asyncio TLS reads through `ssl.SSLObject.read`; wrapped as well.

`bio_read` (ciphertext) and everything sent are left alone. Files are written with unbuffered
O_APPEND writes, so a killed agent still leaves what it received. If the environment already had
a `sitecustomize` module further down sys.path, it is loaded after the tap is installed.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import weakref
from typing import Any, Callable

_DIR = os.environ.get("TOLLGATE_TAP_DIR")
_COUNTER = itertools.count()
_LOCK = threading.Lock()
# per connection object: (pid, fd); weak so a closed connection's entry (and fd) goes with it
_FILES: "weakref.WeakKeyDictionary[Any, tuple[int, int]]" = weakref.WeakKeyDictionary()


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _fd_for(conn: Any) -> int | None:
    pid = os.getpid()
    with _LOCK:
        entry = _FILES.get(conn)
        if entry is not None and entry[0] == pid:
            return entry[1]
        path = os.path.join(_DIR, f"py-{pid}-{next(_COUNTER)}.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        _FILES[conn] = (pid, fd)
        weakref.finalize(conn, _close_fd, fd)
        return fd


def _record(conn: Any, data: Any) -> None:
    if not data:
        return
    try:
        fd = _fd_for(conn)
        if fd is None:
            return
        view = memoryview(data).cast("B")
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except Exception as e:  # the tap must never break the agent; say so once on stderr
        if not getattr(_record, "warned", False):
            _record.warned = True  # type: ignore[attr-defined]
            print(f"tollgate tap: recording failed: {e!r}", file=sys.stderr)


def _peek(flags: Any) -> bool:
    return bool(flags) and bool(flags & socket.MSG_PEEK)


def _wrap_read(orig: Callable[..., Any]) -> Callable[..., Any]:
    """`read(len=1024, buffer=None)`: returns bytes, or a count written into `buffer`."""

    def read(self: Any, len: int = 1024, buffer: Any = None) -> Any:  # noqa: A002
        out = orig(self, len, buffer) if buffer is not None else orig(self, len)
        if buffer is not None:
            if isinstance(out, int) and out > 0:
                _record(self, memoryview(buffer).cast("B")[:out])
        else:
            _record(self, out)
        return out

    read.__wrapped__ = orig  # type: ignore[attr-defined]
    return read


def _wrap_openssl_recv(orig: Callable[..., Any]) -> Callable[..., Any]:
    def recv(self: Any, bufsiz: int, flags: Any = None) -> bytes:
        out = orig(self, bufsiz, flags)
        if not _peek(flags):
            _record(self, out)
        return out

    recv.__wrapped__ = orig  # type: ignore[attr-defined]
    return recv


def _wrap_openssl_recv_into(orig: Callable[..., Any]) -> Callable[..., Any]:
    def recv_into(self: Any, buffer: Any, nbytes: Any = None, flags: Any = None) -> int:
        n = orig(self, buffer, nbytes, flags)
        if n and not _peek(flags):
            _record(self, memoryview(buffer).cast("B")[:n])
        return n

    recv_into.__wrapped__ = orig  # type: ignore[attr-defined]
    return recv_into


def _install() -> None:
    import ssl

    ssl.SSLSocket.read = _wrap_read(ssl.SSLSocket.read)  # type: ignore[method-assign]
    ssl.SSLObject.read = _wrap_read(ssl.SSLObject.read)  # type: ignore[method-assign]
    try:
        from OpenSSL import SSL
    except ImportError:
        return
    conn = SSL.Connection
    # `read = recv` in the class body: two names, one function; wrap each name once.
    orig_recv = conn.recv
    conn.recv = _wrap_openssl_recv(orig_recv)  # type: ignore[method-assign]
    conn.read = conn.recv if conn.read is orig_recv else _wrap_openssl_recv(conn.read)  # type: ignore[method-assign]
    conn.recv_into = _wrap_openssl_recv_into(conn.recv_into)  # type: ignore[method-assign]


def _chain_shadowed_sitecustomize() -> None:
    """Runs the `sitecustomize` this file shadows, if any (none in Tollgate's test venv)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            with open(candidate, "rb") as f:
                code = compile(f.read(), candidate, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": candidate})
            return


if _DIR:
    os.makedirs(_DIR, exist_ok=True)
    _install()
_chain_shadowed_sitecustomize()
