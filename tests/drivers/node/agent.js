// An ordinary Snowflake agent using snowflake-sdk, as a real one would.
//
// It connects to `<account>.snowflakecomputing.com` (the real name: no host, port or protocol
// override), runs the statements of a JSON file and prints one JSON line per statement:
//
//   {"ok": true, "rows": [...], "rowcount": n, "query_id": "..."}
//   {"ok": false, "error": "OperationFailedError", "message": "...", "errno": "002003", "sqlstate": "42S02"}
//
// Configuration comes only from argv and the environment (trust: NODE_EXTRA_CA_CERTS, set by an
// installer). Each statements-file item is an SQL string or
//   {"sql": "...", "bindings": [...], "async": true, "digest": true}
// (`digest`: print rowcount, sha256, first and last row instead of the rows).
// `--concurrent` runs all statements at once on the one connection; output keeps input order.
// `--sessions N --seconds S [--pause-ms P]` is a load run: N connections (sessions) at once, each
// running the statements in turn for S seconds, pausing P ms after each; it prints one JSON line,
//   {"ok": true, "sessions": N, "connected": n, "statements": n, "errors": n, "error_samples": [...],
//    "latency_ms": {"p50": …, "p90": …, "p99": …, "max": …}}
//
// Values are printed type-faithfully: JSON-native types as they are; dates and timestamps tagged
// with their Snowflake column type, e.g. {"date": "1990-03-04"}, binary as {"binary": "<hex>"}.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const snowflake = require('snowflake-sdk');

function parseArgs(argv) {
  const a = { sessionParam: [] };
  for (let i = 2; i < argv.length; i++) {
    const k = argv[i];
    if (k === '--concurrent') { a.concurrent = true; continue; }
    const v = argv[++i];
    if (v === undefined) throw new Error(`${k} needs a value`);
    const name = k.replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (name === 'sessionParam') a.sessionParam.push(v); else a[name] = v;
  }
  for (const r of ['account', 'user', 'statements']) {
    if (!a[r]) throw new Error(`--${r} is required`);
  }
  return a;
}

function faithful(v, col) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'bigint') return { bigint: v.toString() };
  if (Buffer.isBuffer(v)) return { binary: v.toString('hex') };
  if (v instanceof Date) return { [col ? col.getType() : 'date']: v.toJSON() };
  if (typeof v === 'number' && !Number.isFinite(v)) return { float: String(v) };
  return v;
}

function execute(conn, stmt) {
  if (typeof stmt === 'string') stmt = { sql: stmt };
  return new Promise((resolve) => {
    const opts = {
      sqlText: stmt.sql,
      complete: (err, st, rows) => {
        if (err) {
          resolve({
            ok: false,
            error: err.name || err.constructor.name,
            message: err.message,
            errno: err.code === undefined ? null : err.code,
            sqlstate: err.sqlState === undefined ? null : err.sqlState,
            query_id: st && st.getQueryId ? st.getQueryId() || null : null,
          });
          return;
        }
        if (stmt.async) {
          const qid = st.getQueryId();
          conn.getResultsFromQueryId({ queryId: qid }).then(
            (st2) => collect(st2, resolve),
            (e) => resolve({ ok: false, error: e.name, message: e.message, errno: e.code ?? null, sqlstate: e.sqlState ?? null }),
          );
          return;
        }
        resolve(shape(st, rows, stmt));
      },
    };
    if (stmt.bindings) opts.binds = stmt.bindings;
    if (stmt.async) opts.asyncExec = true;
    conn.execute(opts);
  });
}

function collect(st, resolve) {
  const rows = [];
  st.streamRows()
    .on('error', (e) => resolve({ ok: false, error: e.name, message: e.message, errno: e.code ?? null, sqlstate: e.sqlState ?? null }))
    .on('data', (r) => rows.push(r))
    .on('end', () => resolve(shape(st, rows, {})));
}

function shape(st, rows, stmt) {
  const cols = st.getColumns() || [];
  const out = { ok: true, rowcount: null, query_id: st.getQueryId() };
  const printed = (rows || []).map((r) => cols.map((c) => faithful(r[c.getName()], c)));
  const updated = st.getNumUpdatedRows();
  out.rowcount = typeof updated === 'number' && updated >= 0 ? updated : printed.length;
  if (stmt.digest) {
    const h = crypto.createHash('sha256');
    for (const r of printed) h.update(JSON.stringify(r) + '\n');
    Object.assign(out, {
      rows_sha256: h.digest('hex'),
      nrows: printed.length,
      first: printed.length ? printed[0] : null,
      last: printed.length ? printed[printed.length - 1] : null,
    });
  } else {
    out.rows = printed;
  }
  out.columns = cols.map((c) => c.getName());
  return out;
}

async function main() {
  const a = parseArgs(process.argv);
  const stmts = JSON.parse(fs.readFileSync(a.statements, 'utf8'));
  snowflake.configure({ logLevel: 'ERROR' });
  const opts = { account: a.account, username: a.user };
  if (a.password) opts.password = a.password;
  if (a.authenticator) opts.authenticator = a.authenticator;
  if (a.token) opts.token = a.token;
  for (const k of ['database', 'schema', 'warehouse', 'role']) if (a[k]) opts[k] = a[k];
  for (const p of a.sessionParam) {
    const i = p.indexOf('=');
    opts[p.slice(0, i)] = p.slice(i + 1);
  }
  if (a.sessions) {
    await load(a, opts, stmts);
    return;
  }
  const conn = snowflake.createConnection(opts);
  try {
    await new Promise((res, rej) => conn.connect((err) => (err ? rej(err) : res())));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, stage: 'connect', error: e.name, message: e.message, errno: e.code ?? null, sqlstate: e.sqlState ?? null }));
    process.exitCode = 2;
    return;
  }
  try {
    if (a.concurrent) {
      const results = await Promise.all(stmts.map((s) => execute(conn, s)));
      for (const r of results) console.log(JSON.stringify(r));
    } else {
      for (const s of stmts) {
        const started = process.hrtime.bigint();
        const r = await execute(conn, s);
        r.elapsed_us = Number((process.hrtime.bigint() - started) / 1000n);
        console.log(JSON.stringify(r));
      }
    }
  } finally {
    await new Promise((res) => conn.destroy(() => res()));
  }
}

// A load run (see the top of this file): every session logs in, then runs until the deadline.
async function load(a, opts, stmts) {
  const sessions = Number(a.sessions);
  const deadline = Date.now() + Number(a.seconds || 60) * 1000;
  const pause = Number(a.pauseMs || 0);
  const latencies = [];
  const samples = [];
  let connected = 0;
  let errors = 0;
  const fail = (what) => {
    errors += 1;
    if (samples.length < 10) samples.push(what);
  };
  const session = async (n) => {
    const conn = snowflake.createConnection(opts);
    try {
      await new Promise((res, rej) => conn.connect((err) => (err ? rej(err) : res())));
    } catch (e) {
      fail({ session: n, stage: 'connect', error: e.name, message: e.message });
      return;
    }
    connected += 1;
    for (let i = n; Date.now() < deadline; i++) {
      const started = process.hrtime.bigint();
      const r = await execute(conn, stmts[i % stmts.length]);
      if (r.ok) {
        latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
      } else {
        fail({ session: n, error: r.error, message: r.message });
      }
      if (pause > 0) await new Promise((res) => setTimeout(res, pause));
    }
    await new Promise((res) => conn.destroy(() => res()));
  };
  await Promise.all(Array.from({ length: sessions }, (_, n) => session(n)));
  latencies.sort((x, y) => x - y);
  const pct = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
  console.log(JSON.stringify({
    ok: errors === 0 && connected === sessions,
    sessions,
    connected,
    statements: latencies.length + errors,
    errors,
    error_samples: samples,
    latency_ms: { p50: pct(0.5), p90: pct(0.9), p99: pct(0.99), max: latencies.length ? latencies[latencies.length - 1] : null },
  }));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exitCode = 1;
});
