// The manifest's schema, checked strictly as the reference reader's pydantic models do
// (kformat/format/manifest.py, spec/schema/): "37" is not a dimension, true is not 1, 1.0 is
// not an integer; unknown keys are ignored; defaults are filled in. Returns plain objects.

import { fail } from './errors.js';
import { MsgFloat } from './msgpack.js';

class SchemaError extends Error {}

const HEX64 = /^[0-9a-f]{64}$/;
const isMap = (v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof MsgFloat);

function at(path, message) {
  return new SchemaError(`manifest field ${path}: ${message}`);
}

function int(v, path, { min = null, max = null, nullable = false } = {}) {
  if (v === null && nullable) return null;
  if (typeof v === 'bigint') {
    if (min !== null && v < BigInt(min)) throw at(path, `must be >= ${min}`);
    if (max !== null && v > BigInt(max)) throw at(path, `must be <= ${max}`);
    return v;
  }
  if (typeof v !== 'number' || !Number.isInteger(v)) throw at(path, 'Input should be a valid integer');
  if (min !== null && v < min) throw at(path, `Input should be greater than or equal to ${min}`);
  if (max !== null && v > max) throw at(path, `Input should be less than or equal to ${max}`);
  return v;
}

function str(v, path, { minLength = 0 } = {}) {
  if (typeof v !== 'string') throw at(path, 'Input should be a valid string');
  if (v.length < minLength) throw at(path, `String should have at least ${minLength} character`);
  return v;
}

function float(v, path) {
  if (v instanceof MsgFloat) return v.value;
  if (typeof v === 'number') return v;
  throw at(path, 'Input should be a valid number');
}

function list(v, path, item) {
  if (!Array.isArray(v)) throw at(path, 'Input should be a valid list');
  return v.map((x, i) => item(x, `${path}.${i}`));
}

function pair(v, path) {
  if (!Array.isArray(v) || v.length !== 2) throw at(path, 'Input should be a valid tuple of 2 items');
  return [int(v[0], `${path}.0`), int(v[1], `${path}.1`)];
}

function dict(v, path, item) {
  if (!isMap(v)) throw at(path, 'Input should be a valid dictionary');
  const out = Object.create(null);
  for (const [k, x] of Object.entries(v)) out[k] = item(x, `${path}.${k}`);
  return out;
}

function required(obj, key, path) {
  if (!Object.prototype.hasOwnProperty.call(obj, key)) throw at(`${path}${path ? '.' : ''}${key}`, 'Field required');
  return obj[key];
}

function model(v, path) {
  if (!isMap(v)) throw at(path || 'root', 'Input should be a valid dictionary');
  return v;
}

const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
const opt = (o, k, dflt) => (has(o, k) ? o[k] : dflt);

function blobRef(v, path) {
  model(v, path);
  const sha256 = str(required(v, 'sha256', path), `${path}.sha256`);
  if (!HEX64.test(sha256)) throw at(`${path}.sha256`, 'Value error, must be 64 lowercase hex digits');
  return {
    shard: int(opt(v, 'shard', 0), `${path}.shard`, { min: 0 }),
    offset: int(required(v, 'offset', path), `${path}.offset`, { min: 0 }),
    length: int(required(v, 'length', path), `${path}.length`, { min: 0 }),
    sha256,
  };
}

function tile(v, path) {
  model(v, path);
  return {
    row: int(required(v, 'row', path), `${path}.row`, { min: 0 }),
    col: int(required(v, 'col', path), `${path}.col`, { min: 0 }),
    rows: int(required(v, 'rows', path), `${path}.rows`, { min: 1 }),
    cols: int(required(v, 'cols', path), `${path}.cols`, { min: 1 }),
    blob: blobRef(required(v, 'blob', path), `${path}.blob`),
  };
}

function table(v, path, nullable = false) {
  if (v === null && nullable) return null;
  model(v, path);
  const dtype = required(v, 'dtype', path);
  if (!['float16', 'float32', 'uint8'].includes(dtype)) {
    throw at(`${path}.dtype`, "Input should be 'float16', 'float32' or 'uint8'");
  }
  return {
    dtype,
    shape: list(required(v, 'shape', path), `${path}.shape`, (x, p) => int(x, p)),
    blob: blobRef(required(v, 'blob', path), `${path}.blob`),
  };
}

function quant(v, path) {
  model(v, path);
  return {
    method: str(required(v, 'method', path), `${path}.method`, { minLength: 1 }),
    bits: int(opt(v, 'bits', null), `${path}.bits`, { min: 1, max: 8, nullable: true }),
    group_rows: int(opt(v, 'group_rows', 0), `${path}.group_rows`, { min: 0 }),
    codebook: table(opt(v, 'codebook', null), `${path}.codebook`, true),
    scale: table(opt(v, 'scale', null), `${path}.scale`, true),
    zero_point: table(opt(v, 'zero_point', null), `${path}.zero_point`, true),
    tables: dict(opt(v, 'tables', {}), `${path}.tables`, (x, p) => table(x, p)),
  };
}

function tensor(v, path) {
  model(v, path);
  return {
    name: str(required(v, 'name', path), `${path}.name`, { minLength: 1 }),
    dtype: str(required(v, 'dtype', path), `${path}.dtype`),
    shape: list(required(v, 'shape', path), `${path}.shape`, (x, p) => int(x, p)),
    view: pair(required(v, 'view', path), `${path}.view`),
    storage: str(required(v, 'storage', path), `${path}.storage`),
    depth: int(opt(v, 'depth', null), `${path}.depth`, { nullable: true }),
    codec: str(required(v, 'codec', path), `${path}.codec`, { minLength: 1 }),
    tile: pair(required(v, 'tile', path), `${path}.tile`),
    quant: quant(required(v, 'quant', path), `${path}.quant`),
    tiles: list(required(v, 'tiles', path), `${path}.tiles`, tile),
    rule: str(required(v, 'rule', path), `${path}.rule`),
    reason: str(opt(v, 'reason', ''), `${path}.reason`),
    stats: dict(opt(v, 'stats', {}), `${path}.stats`, float),
  };
}

function shard(v, path) {
  model(v, path);
  return {
    name: str(required(v, 'name', path), `${path}.name`),
    length: int(required(v, 'length', path), `${path}.length`, { min: 0 }),
    sha256: str(required(v, 'sha256', path), `${path}.sha256`),
  };
}

function plain(v) {
  if (v instanceof MsgFloat) return v.value;
  if (Array.isArray(v)) return v.map(plain);
  if (isMap(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

export function parseManifest(raw, source) {
  try {
    const v = model(raw, '');
    const format = opt(v, 'format', 'kformat');
    if (format !== 'kformat') throw at('format', "Input should be 'kformat'");
    const layout = opt(v, 'layout', 'single');
    if (layout !== 'single' && layout !== 'sharded') throw at('layout', "Input should be 'single' or 'sharded'");
    const recipe = opt(v, 'recipe', null);
    if (recipe !== null && !isMap(recipe)) throw at('recipe', 'Input should be a valid dictionary');
    return {
      format,
      version: pair(opt(v, 'version', [1, 0]), 'version'),
      generator: str(opt(v, 'generator', ''), 'generator'),
      layout,
      alignment: int(opt(v, 'alignment', 64), 'alignment'),
      must_understand: list(opt(v, 'must_understand', []), 'must_understand', (x, p) => str(x, p)),
      shards: list(opt(v, 'shards', []), 'shards', shard),
      tensors: list(required(v, 'tensors', ''), 'tensors', tensor),
      recipe: recipe === null ? null : plain(recipe),
      metadata: dict(opt(v, 'metadata', {}), 'metadata', (x, p) => str(x, p)),
      aliases: dict(opt(v, 'aliases', {}), 'aliases', (x, p) => str(x, p)),
    };
  } catch (err) {
    if (err instanceof SchemaError) throw fail('format', `${source}: ${err.message}`);
    throw err;
  }
}
