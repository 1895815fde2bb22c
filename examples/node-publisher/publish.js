#!/usr/bin/env node
'use strict';
// Publish to channels-lite from Node.js, following docs/wire-protocol.md.
//
//   node publish.js --redis redis://localhost:6379/0 --group chat '{"type":"chat.message","text":"hi"}'
//   node publish.js --redis redis://localhost:6379/0 --task thumbnails '{"type":"thumb.make","id":7}'
//
// MESSAGE_JSON is JSON, plus the tags of tests/vectors/README.md for what JSON
// cannot say: {"$bytes": "00ff"} (msgpack bin), {"$int": "123..."} (any
// integer, exactly), {"$datetime": "2024-01-01T00:00:00Z"} (timestamp).
//
// --group prints {"reached": N} (members sent to; a member whose stream is at
// capacity is skipped, as group_send does). --task prints the entry id.

const { parseArgs } = require('node:util');
const { createClient } = require('redis');
const { channelMessageFields, taskFields, fromJson, keys } = require('./wire');

// "Publishing a channel message from outside": refuse at capacity, add, set
// the stream's TTL, atomically. KEYS[1]: stream. ARGV: capacity, ttl_ms, to, d.
const APPEND = `
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'v', '1', 'k', 'msg', 'to', ARGV[3], 'd', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

async function groupSend(client, group, message, opts) {
  const { prefix, groupExpiry, expiry, capacity } = opts;
  // Members added within group_expiry, by the Redis clock.
  const [sec, usec] = await client.sendCommand(['TIME']);
  const nowMs = Number(sec) * 1000 + Math.floor(Number(usec) / 1000);
  const members = await client.sendCommand([
    'ZRANGEBYSCORE', keys.groupSet(prefix, group), String(nowMs - Math.round(groupExpiry * 1000)), '+inf',
  ]);
  const byStream = new Map();
  for (const member of members) {
    const stream = keys.channelStream(prefix, member);
    if (!byStream.has(stream)) byStream.set(stream, []);
    byStream.get(stream).push(member);
  }
  const ttlMs = String(Math.round(expiry * 1000) + 10000);
  let reached = 0;
  for (const [stream, to] of byStream) {
    // One entry per stream, naming every member on it.
    const fields = new Map(channelMessageFields(to, message));
    const added = await client.sendCommand([
      'EVAL', APPEND, '1', stream, String(capacity), ttlMs, fields.get('to'), fields.get('d'),
    ]);
    if (Number(added) === 1) reached += to.length;
  }
  return reached;
}

async function enqueue(client, taskChannel, message, opts) {
  const stream = keys.taskStream(opts.prefix, taskChannel);
  try {
    // Created from id 0: a task enqueued before any worker started waits for the first.
    await client.sendCommand(['XGROUP', 'CREATE', stream, keys.TASKS_GROUP, '0', 'MKSTREAM']);
  } catch (err) {
    if (!String(err.message).includes('BUSYGROUP')) throw err;
  }
  const fields = taskFields(taskChannel, message).flat();
  return client.sendCommand(['XADD', stream, 'MAXLEN', '~', String(opts.maxlen), '*', ...fields]);
}

function usage(message) {
  if (message) console.error(`error: ${message}`);
  console.error(
    'usage: node publish.js [--redis URL] [--prefix asgi] (--group GROUP | --task TASK_CHANNEL) MESSAGE_JSON\n'
    + '       [--group-expiry 86400] [--expiry 60] [--capacity 100] [--maxlen 100000]',
  );
  process.exit(2);
}

const NAME = /^[A-Za-z0-9_.-]{1,99}$/;

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        redis: { type: 'string', default: process.env.REDIS_URL || 'redis://localhost:6379/0' },
        prefix: { type: 'string', default: 'asgi' },
        group: { type: 'string' },
        task: { type: 'string' },
        'group-expiry': { type: 'string', default: '86400' },
        expiry: { type: 'string', default: '60' },
        capacity: { type: 'string', default: '100' },
        maxlen: { type: 'string', default: '100000' },
      },
    });
  } catch (err) {
    usage(err.message);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) usage('give exactly one MESSAGE_JSON');
  if ((values.group === undefined) === (values.task === undefined)) usage('give --group or --task');
  const target = values.group ?? values.task;
  if (!NAME.test(target)) usage(`bad name ${JSON.stringify(target)}: 1-99 ASCII letters, digits, - _ .`);
  let message;
  try {
    message = fromJson(JSON.parse(positionals[0]));
  } catch (err) {
    usage(`MESSAGE_JSON is not JSON: ${err.message}`);
  }
  if (message === null || typeof message !== 'object' || typeof message.type !== 'string') {
    usage("MESSAGE_JSON must be an object with a string 'type'");
  }
  const opts = {
    prefix: values.prefix,
    groupExpiry: Number(values['group-expiry']),
    expiry: Number(values.expiry),
    capacity: Number(values.capacity),
    maxlen: Number(values.maxlen),
  };

  // No endless reconnecting: a CLI that cannot reach Redis says so and exits.
  const client = createClient({ url: values.redis, socket: { reconnectStrategy: false, connectTimeout: 5000 } });
  client.on('error', () => {}); // reported by the failing command below
  await client.connect();
  try {
    if (values.group !== undefined) {
      console.log(JSON.stringify({ reached: await groupSend(client, values.group, message, opts) }));
    } else {
      console.log(String(await enqueue(client, values.task, message, opts)));
    }
  } finally {
    await client.quit();
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(`error: ${err.message}`);
    process.exit(1);
  });
}

module.exports = { groupSend, enqueue };
