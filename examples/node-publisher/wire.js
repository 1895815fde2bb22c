'use strict';
// The channels-lite wire format (docs/wire-protocol.md, version 1), for Node.js.
//
// Written from the document alone. @msgpack/msgpack writes the scalars in
// their smallest form: `str` for JS strings, `bin` for Uint8Array/Buffer,
// timestamp ext -1 for Date. Two rules need help, both in this file:
// integers (native msgpack ints up to 64 bits, smallest form, uint for
// non-negative and int for negative; ext type 1 beyond: `normalize`), and
// maps whose keys are not strings (a JS Map, which @msgpack/msgpack does not
// write; only dead letters have them): `pack` writes the container headers
// itself and hands every scalar to @msgpack/msgpack.

const { Encoder, ExtData } = require('@msgpack/msgpack');

const VERSION = '1';
const BIGINT_EXT = 1;
const INT32_MIN = -(2 ** 31);
const UINT32_LIMIT = 2 ** 32;
const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

// useBigInt64: a bigint is written as int64 / uint64 (normalize passes only
// those that need 64 bits).
const encoder = new Encoder({ useBigInt64: true });

function bigIntExt(value) {
  // Ext type 1: big-endian two's complement in the fewest bytes holding the sign.
  const magnitude = value < 0n ? -value : value;
  const length = Math.floor((magnitude.toString(2).length + 8) / 8);
  let unsigned = BigInt.asUintN(length * 8, value);
  const bytes = new Uint8Array(length);
  for (let i = length - 1; i >= 0; i--) {
    bytes[i] = Number(unsigned & 0xffn);
    unsigned >>= 8n;
  }
  return new ExtData(BIGINT_EXT, bytes);
}

// A scalar with the integer encoding the protocol requires; other scalars as they are.
function normalize(value) {
  if (typeof value === 'bigint') {
    if (value >= BigInt(INT32_MIN) && value < BigInt(UINT32_LIMIT)) return Number(value);
    if (value >= INT64_MIN && value <= UINT64_MAX) return value; // int64 / uint64
    return bigIntExt(value);
  }
  if (typeof value === 'number') {
    // Safe integers past 32 bits take 64 bits (with useBigInt64 the encoder
    // would otherwise write them as floats).
    if (Number.isSafeInteger(value) && (value < INT32_MIN || value >= UINT32_LIMIT)) {
      return BigInt(value);
    }
    return value;
  }
  return value;
}

function header(size, fix, fixLimit, code16, code32) {
  if (size < fixLimit) return Buffer.from([fix + size]);
  if (size < 0x10000) return Buffer.from([code16, size >> 8, size & 0xff]);
  const b = Buffer.alloc(5);
  b[0] = code32;
  b.writeUInt32BE(size, 1);
  return b;
}

// One value as msgpack, per the document's "Encoding" section. Map keys and
// object keys are written in their insertion order: the order is part of the
// exact bytes (see the document's "Exact bytes").
function pack(value) {
  if (Array.isArray(value)) {
    return Buffer.concat([header(value.length, 0x90, 16, 0xdc, 0xdd), ...value.map(pack)]);
  }
  const isPlainObject = value !== null && typeof value === 'object' && !ArrayBuffer.isView(value)
    && !(value instanceof Date) && !(value instanceof ExtData);
  if (isPlainObject) {
    const entries = value instanceof Map
      ? [...value]
      : Object.entries(value).filter(([, v]) => v !== undefined);
    const parts = [header(entries.length, 0x80, 16, 0xde, 0xdf)];
    for (const [k, v] of entries) parts.push(pack(k), pack(v));
    return Buffer.concat(parts);
  }
  return Buffer.from(encoder.encode(normalize(value)));
}

function checkMessage(message) {
  if (message === null || typeof message !== 'object' || Array.isArray(message)) {
    throw new TypeError('a message must be an object');
  }
  if (typeof message.type !== 'string') throw new TypeError("a message needs a string 'type'");
}

// Stream-entry fields, in the order the document gives them: v, k, (to,) d.
function channelMessageFields(to, message) {
  checkMessage(message);
  return [['v', VERSION], ['k', 'msg'], ['to', pack(to)], ['d', pack(message)]];
}

function taskFields(channel, message, attempts = 0) {
  checkMessage(message);
  const task = { channel, message };
  if (attempts) task.attempts = attempts; // only when not 0
  return [['v', VERSION], ['k', 'task'], ['d', pack(task)]];
}

// Any envelope of the document, given as in the test vectors' `input`.
function envelopeFields(input) {
  switch (input.kind) {
    case 'msg':
      return channelMessageFields(input.to, input.message);
    case 'task':
      return taskFields(input.channel, input.message, input.attempts);
    case 'conn': {
      const d = { conn: input.conn, reply_to: input.reply_to, scope: input.scope, events: input.events };
      if (input.server) d.server = input.server;
      return [['v', VERSION], ['k', 'conn'], ['d', pack(d)]];
    }
    case 'ev':
      return [['v', VERSION], ['k', 'ev'], ['d', pack({ conn: input.conn, seq: input.seq, event: input.event })]];
    case 'dead':
      return [['v', VERSION], ['k', 'dead'],
        ['d', pack({ stream: input.stream, id: input.id, fields: input.fields, error: input.error })]];
    default:
      throw new Error(`unknown envelope kind ${input.kind}`);
  }
}

// The JSON convention of tests/vectors (and of publish.js's MESSAGE_JSON):
// {"$bytes": hex}, {"$int": decimal}, {"$datetime": iso}, {"$map": [[k, v], ...]}.
function fromJson(value) {
  if (Array.isArray(value)) return value.map(fromJson);
  if (value === null || typeof value !== 'object') return value;
  const keys = Object.keys(value);
  if (keys.length === 1) {
    const [tag] = keys;
    const body = value[tag];
    if (tag === '$bytes') return Buffer.from(body, 'hex');
    if (tag === '$int') return BigInt(body);
    if (tag === '$datetime') return new Date(body);
    if (tag === '$map') return new Map(body.map(([k, v]) => [fromJson(k), fromJson(v)]));
  }
  const out = {};
  for (const k of keys) out[k] = fromJson(value[k]);
  return out;
}

// Keys (document section "Keys").
function nonLocal(channel) {
  const bang = channel.indexOf('!');
  return bang < 0 ? channel : channel.slice(0, bang + 1);
}
const keys = {
  channelStream: (prefix, channel) => `${prefix}:ch:${nonLocal(channel)}`,
  groupSet: (prefix, group) => `${prefix}:grp:${group}`,
  taskStream: (prefix, channel) => `${prefix}:task:${channel}`,
  TASKS_GROUP: 'tasks',
};

module.exports = {
  VERSION, pack, normalize, channelMessageFields, taskFields, envelopeFields, fromJson, nonLocal, keys,
};
