// Tollgate's receive tap for Node agents: every decrypted byte a TLS socket receives.
//
// Loaded with `NODE_OPTIONS=--require /abs/path/tap.js`; the agent script is not modified. It
// does nothing unless TOLLGATE_TAP_DIR is set. When it is, the plaintext each `tls.TLSSocket`
// receives is appended, in order, to one file per socket: `$TOLLGATE_TAP_DIR/node-<pid>-<n>.bin`
// (n counts sockets within the process). The files hold exactly the bytes the HTTP client
// (snowflake-sdk's axios → https → http parser) consumed, headers included, so a test can search
// them for values that must never reach the agent.
//
// Where the plaintext comes from: the TLS wrap hands decrypted records to the socket through
// `stream.push(chunk)` (lib/internal/stream_base_commons.js onStreamRead), and everything that
// reads the socket ('data' listeners such as the http client's parser, `read()`, pipes) gets it
// from the readable buffer fed by push. So wrapping `TLSSocket.prototype.push` sees each byte
// exactly once, whatever consumes it, including the parallel chunk downloads (one socket each).
// `push(null)` (end of stream) records nothing. Writes are synchronous appends, so a killed agent
// still leaves what it received.
'use strict';

const dir = process.env.TOLLGATE_TAP_DIR;

if (dir) {
  const fs = require('fs');
  const path = require('path');
  const tls = require('tls');

  fs.mkdirSync(dir, { recursive: true });
  const kFd = Symbol('tollgateTapFd');
  let counter = 0;
  let warned = false;

  const fdFor = (socket) => {
    if (socket[kFd] === undefined) {
      const file = path.join(dir, `node-${process.pid}-${counter++}.bin`);
      const fd = fs.openSync(file, 'a', 0o644);
      socket[kFd] = fd;
      socket.once('close', () => {
        try {
          fs.closeSync(fd);
        } catch (_) {
          // already closed
        }
        socket[kFd] = null;
      });
    }
    return socket[kFd];
  };

  const record = (socket, chunk, encoding) => {
    if (chunk === null || chunk === undefined) return;
    try {
      const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding);
      if (buf.length === 0) return;
      const fd = fdFor(socket);
      if (fd === null) return; // data after close: not expected; nothing to append to
      let off = 0;
      while (off < buf.length) off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (!warned) {
        warned = true;
        process.stderr.write(`tollgate tap: recording failed: ${e && e.stack ? e.stack : e}\n`);
      }
    }
  };

  const origPush = tls.TLSSocket.prototype.push;
  tls.TLSSocket.prototype.push = function push(chunk, encoding) {
    record(this, chunk, encoding);
    return origPush.call(this, chunk, encoding);
  };
}
