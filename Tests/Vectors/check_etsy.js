// A second, independent check of the etsy rows of hash-vectors.tsv: the node `hashring`
// algorithm as etsy statsd's proxy.js configures it, written again in JavaScript so that its
// arithmetic is the engine's own (Math.floor over IEEE doubles, V8's stable Array sort, Node's
// crypto md5 over the key's UTF-8). Needs only node itself: `node Tests/Vectors/check_etsy.js`.
// Prints the number of rows checked and exits 1 at the first disagreement.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

function parseBackend(spec) {
  let weight = 1;
  const eq = spec.lastIndexOf('=');
  if (eq >= 0) { weight = +spec.slice(eq + 1); spec = spec.slice(0, eq); }
  if (spec[0] === '[') {
    const close = spec.indexOf(']');
    return { host: spec.slice(1, close), port: +spec.slice(close + 2).split(':')[0], weight };
  }
  const parts = spec.split(':');
  return { host: parts[0], port: +parts[1], weight };
}

// First 4 bytes of md5(text), little-endian, as an unsigned 32-bit number.
function value(text) {
  const x = crypto.createHash('md5').update(text).digest();
  return ((x[3] << 24) | (x[2] << 16) | (x[1] << 8) | x[0]) >>> 0;
}

function build(backends) {
  const servers = backends.map(parseBackend);
  const total = servers.reduce((sum, s) => sum + s.weight, 0);
  const ring = [];
  const counts = [];
  servers.forEach((server, index) => {
    const length = Math.floor(server.weight / total * 40 * servers.length);
    counts.push(length);
    for (let i = 0; i < length; i++) ring.push({ value: value(server.host + ':' + server.port + '-' + i), owner: index });
  });
  ring.sort((a, b) => (a.value === b.value ? 0 : a.value > b.value ? 1 : -1));
  return { ring, counts };
}

// libketama's binary search, as hashring's `find` writes it.
function find(ring, hashValue) {
  let high = ring.length, low = 0;
  for (;;) {
    const mid = (low + high) >> 1;
    if (mid === ring.length) return 0;
    const middle = ring[mid].value;
    const prev = mid === 0 ? 0 : ring[mid - 1].value;
    if (hashValue <= middle && hashValue > prev) return mid;
    if (middle < hashValue) low = mid + 1; else high = mid - 1;
    if (low > high) return 0;
  }
}

const rows = fs.readFileSync(path.join(__dirname, 'hash-vectors.tsv'), 'utf8').split('\n');
const rings = new Map();
let checked = 0;
const ringRows = new Map();
for (const row of rows) {
  const f = row.split('\t');
  if (f[1] !== 'etsy') continue;
  const backends = f[2];
  if (!rings.has(backends)) rings.set(backends, build(backends.split(',')));
  const { ring, counts } = rings.get(backends);
  let ok;
  if (f[0] === 'points') {
    ok = counts.join(',') === f[3];
  } else if (f[0] === 'ring') {
    const index = ringRows.get(backends) || 0;
    ringRows.set(backends, index + 1);
    ok = ring[index].value === parseInt(f[3], 16) && ring[index].owner === +f[4];
  } else if (f[0] === 'route') {
    const v = value(f[3]);
    ok = v === parseInt(f[4], 16) && ring[find(ring, v)].owner === +f[5];
  } else continue;
  if (!ok) { console.error('disagrees: ' + row); process.exit(1); }
  checked++;
}
console.log(`${checked} etsy rows agree`);
