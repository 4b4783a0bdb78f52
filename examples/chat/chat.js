#!/usr/bin/env node
// A terminal chat client for flow_engine.
//
// Each line you type is one turn: SELECT * FROM flow_process(flow, session,
// line, variables).  The client LISTENs on channel flow_engine and prints
// the run's new assistant and human messages as they are committed, so the
// replies of the worker (tools, LLM calls) and of a human agent appear when
// they arrive, without polling.  One turn is sent at a time: the next line
// waits until the run is no longer running (or --timeout passes).
//
//   node chat.js --flow support_call --session +447700900123 [--variables '{"name": "Ann"}']
//   node chat.js --intent help --session room-7
//
// The connection comes from the usual libpq variables (PGHOST, PGPORT,
// PGUSER, PGDATABASE, PGPASSWORD).  Reading from a pipe works the same way,
// which is how test/chat.sh drives it.
'use strict';

const readline = require('readline');
const { Client } = require('pg');

function parseArgs(argv) {
  const args = { timeout: 30000 };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (argv[i + 1] === undefined) throw new Error(`--${key} needs a value`);
    args[key] = key === 'timeout' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!args.session || (!args.flow && !args.intent)) {
    throw new Error('usage: chat.js (--flow NAME | --intent INTENT) --session ID [--variables JSON] [--timeout MS]');
  }
  if (args.variables) JSON.parse(args.variables); // refuse bad JSON before connecting
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const db = new Client();
  await db.connect();
  await db.query('LISTEN flow_engine');

  let run = null;      // the session's run
  let shown = 0;       // the last message seq printed
  let inTurn = false;  // a flow_process call is on its way: its result prints the replies
  let settle = null;   // resolves when the run is no longer running
  let printing = Promise.resolve();

  const print = (role, content) => {
    const who = role === 'human' ? 'agent' : 'bot';
    process.stdout.write(`${who}> ${content}\n`);
  };

  // Print what the run said after `shown`; serialised, so nothing prints twice.
  const showNew = () => {
    printing = printing.then(async () => {
      if (!run) return;
      const r = await db.query(
        `SELECT seq, role, content FROM flow_messages
          WHERE run_id = $1 AND seq > $2 AND role IN ('assistant', 'human') ORDER BY seq`, [run, shown]);
      for (const m of r.rows) {
        print(m.role, m.content);
        shown = Math.max(shown, m.seq);
      }
    });
    return printing;
  };

  db.on('notification', (n) => {
    let p;
    try { p = JSON.parse(n.payload); } catch (e) { return; }
    if (inTurn || !run || p.run !== run) return;
    showNew().then(() => {
      if (p.status !== 'running' && settle) { const s = settle; settle = null; s(p.status); }
    });
  });

  const waitSettled = async () => {
    const done = new Promise((resolve) => { settle = resolve; });
    // the run may have settled before we began to listen for it
    const now = await db.query('SELECT status FROM flow_runs WHERE id = $1', [run]);
    await showNew();
    if (now.rows[0].status !== 'running') { settle = null; return now.rows[0].status; }
    const timeout = new Promise((resolve) => setTimeout(() => resolve('timeout'), args.timeout));
    const status = await Promise.race([done, timeout]);
    settle = null;
    if (status === 'timeout') process.stdout.write(`(no reply within ${args.timeout} ms)\n`);
    return status;
  };

  const turn = async (line) => {
    inTurn = true;
    let t;
    try {
      const sql = args.intent
        ? 'SELECT * FROM flow_route($1, $2, $3, $4)'
        : 'SELECT * FROM flow_process($1, $2, $3, $4)';
      const r = await db.query(sql, [args.intent || args.flow, args.session, line, args.variables || null]);
      t = r.rows[0];
    } catch (e) {
      process.stdout.write(`error> ${e.message}${e.hint ? ` (${e.hint})` : ''}\n`);
      return;
    } finally {
      inTurn = false;
    }
    if (t.run !== run) { run = t.run; shown = 0; }
    await printing;
    // the turn's replies, unless a notification already printed them
    const fresh = await db.query(
      `SELECT seq, role, content FROM flow_messages
        WHERE run_id = $1 AND seq > $2 AND role IN ('assistant', 'human') ORDER BY seq`, [run, shown]);
    for (const m of fresh.rows) { print(m.role, m.content); shown = Math.max(shown, m.seq); }
    let status = t.status;
    if (status === 'running') status = await waitSettled();
    if (t.handoff || status === 'completed' || status === 'failed') {
      const s = await db.query('SELECT status, handoff FROM flow_runs WHERE id = $1', [run]);
      if (s.rows[0].handoff) process.stdout.write(`(a human has the conversation: ${s.rows[0].handoff.reason})\n`);
      if (s.rows[0].status !== 'waiting' && s.rows[0].status !== 'running') {
        process.stdout.write(`(the run is ${s.rows[0].status})\n`);
      }
    }
  };

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  const lines = [];
  let wake = null;
  let closed = false;
  rl.on('line', (l) => { lines.push(l); if (wake) { wake(); wake = null; } });
  rl.on('close', () => { closed = true; if (wake) { wake(); wake = null; } });
  if (process.stdin.isTTY) process.stdout.write('you> ');

  for (;;) {
    if (lines.length === 0) {
      if (closed) break;
      await new Promise((resolve) => { wake = resolve; });
      continue;
    }
    const line = lines.shift().trim();
    if (line === '') continue;
    if (!process.stdin.isTTY) process.stdout.write(`you> ${line}\n`);
    await turn(line);
    if (process.stdin.isTTY) process.stdout.write('you> ');
  }
  await printing;
  await db.end();
}

main().catch((e) => {
  process.stderr.write(`chat.js: ${e.message}\n`);
  process.exit(1);
});
