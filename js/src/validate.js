// Consistency checks of a manifest before any blob is read (spec/FORMAT.md, section 6), in the
// reference reader's order (kformat/format/validate.py), with the same kinds of error.

import { fail } from './errors.js';
import { CODECS } from './codecs.js';
import { METHODS, tableSpecs } from './methods.js';
import { DTYPES, itemsize } from './dtypes.js';

export const FEATURES = ['aliases', 'scaled-codebooks'];
export const LIMITS = {
  maxTensorElements: 2 ** 40,
  maxRank: 32,
  maxAmplification: 4096,
  amplificationSlack: 64 * 2 ** 20,
  maxTileElements: 2 ** 26,
  inflationSlack: 64,
};
const SHARD_NAME = /^[0-9a-f]{64}\.kfs$/;
const big = (v) => (typeof v === 'bigint' ? v : BigInt(v));

export function planeDepth(bits) {
  for (const d of [1, 2, 4, 8]) if (bits <= d) return d;
  throw fail('format', `codes of ${bits} bits do not fit an index plane`);
}

export const rowBytes = (cols, depth) => Math.ceil((cols * depth) / 8);

export function view2d(shape) {
  if (shape.length === 0) return [1, 1];
  if (shape.length === 1) return [1, shape[0]];
  return [shape[0], shape.slice(1).reduce((a, b) => a * b, 1)];
}

export function checkExtensions(manifest, source) {
  const known = new Set([
    ...Object.keys(METHODS).map((m) => `method:${m}`),
    ...Object.keys(CODECS).map((c) => `codec:${c}`),
    ...FEATURES,
  ]);
  const unknown = [...new Set(manifest.must_understand.filter((x) => !known.has(x)))].sort();
  if (unknown.length) {
    throw fail('version', `${source}: needs extension(s) ${unknown.join(', ')} that this reader does not know`);
  }
}

export const storedBytes = (t) =>
  t.tiles.reduce((a, tile) => a + Number(tile.blob.length), 0) +
  namedTables(t.quant).reduce((a, [, table]) => a + Number(table.blob.length), 0);

export function namedTables(quant) {
  const out = [];
  for (const slot of ['codebook', 'scale', 'zero_point']) if (quant[slot]) out.push([slot, quant[slot]]);
  for (const [name, table] of Object.entries(quant.tables)) out.push([name, table]);
  return out;
}

export function decodedBytes(t) {
  const size = METHODS[t.quant.method].lossless ? itemsize(t.dtype) : 4;
  return t.shape.reduce((a, d) => a * big(d), 1n) * BigInt(size);
}

function checkTensor(t, source, blobs) {
  const where = `tensor '${t.name}'`;
  const bad = (what) => fail('format', `${source}: ${where}: ${what}`);
  if (!DTYPES[t.dtype]) throw bad(`unsupported dtype '${t.dtype}'`);
  if (t.shape.length > LIMITS.maxRank) {
    throw fail('limits', `${source}: ${where}: rank ${t.shape.length} exceeds the limit of ${LIMITS.maxRank} dimensions`);
  }
  if (t.shape.some((d) => d < 0)) throw bad(`negative dimension in shape [${t.shape}]`);
  const maxDim = BigInt(LIMITS.maxTensorElements);
  if ([...t.shape, ...t.view].some((d) => big(d) > maxDim)) {
    throw fail('limits', `${source}: ${where}: a dimension of shape [${t.shape}] or view [${t.view}] exceeds ${maxDim}`);
  }
  const size = t.shape.reduce((a, d) => a * big(d), 1n);
  if (size > maxDim) throw fail('limits', `${source}: ${where}: ${size} elements exceed the limit of ${maxDim}`);
  // From here every dimension is at most 2^40: exact as a Number.
  const shape = t.shape.map(Number);
  const [rows, cols] = t.view.map(Number);
  if (BigInt(rows) * BigInt(cols) !== size || rows < 0 || cols < 0) {
    throw bad(`view ${rows}x${cols} does not hold shape [${shape}]`);
  }
  const [er, ec] = view2d(shape);
  if (rows !== er) throw bad(`view has ${rows} rows, shape [${shape}] implies ${er}`);
  if (cols !== ec) throw bad(`view has ${cols} columns, shape [${shape}] implies ${ec}`);
  const q = t.quant;
  const method = METHODS[q.method];
  if (!method) throw fail('version', `${source}: ${where}: unknown quantization method '${q.method}'; upgrade kformat or register it`);
  const codec = CODECS[t.codec];
  if (!codec) throw fail('version', `${source}: ${where}: unknown plane codec '${t.codec}'; upgrade kformat or register it`);
  if (method.codes) {
    if (q.bits === null || t.storage !== 'uint8' || t.depth !== planeDepth(q.bits)) {
      throw bad(`code planes need bits, uint8 storage and depth ${q.bits && planeDepth(q.bits)}`);
    }
    if (!codec.codes) throw bad(`the ${t.codec} codec cannot hold code planes`);
    if (!(1 <= q.group_rows && q.group_rows <= Math.max(rows, 1))) throw bad(`group_rows ${q.group_rows} outside 1..${rows}`);
  } else {
    const want = method.storage(t.dtype);
    if (t.depth !== null || q.bits !== null) {
      throw bad(`${q.method} planes hold values, not codes (bits ${q.bits}, depth ${t.depth})`);
    }
    if (t.storage !== want || !codec.values) throw bad(`${q.method} planes must be ${want} values, not ${t.storage} in ${t.codec}`);
  }
  const specs = tableSpecs(q, rows);
  const present = namedTables(q).map(([n]) => n).sort();
  const wanted = specs.map((s) => s.name).sort();
  if (present.join() !== wanted.join()) {
    throw bad(`${q.method} needs tables [${specs.map((s) => s.name)}], the entry has [${present}]`);
  }
  for (const spec of specs) {
    const tab = spec.name in q && ['codebook', 'scale', 'zero_point'].includes(spec.name) ? q[spec.name] : q.tables[spec.name];
    const what = `${where} ${spec.name}`;
    if (!spec.dtypes.includes(tab.dtype) || tab.shape.length !== spec.shape.length || tab.shape.some((d, i) => d !== spec.shape[i])) {
      throw fail('format', `${source}: ${what}: expected ${spec.dtypes.join('/')} [${spec.shape}], got ${tab.dtype} [${tab.shape}]`);
    }
    const want = spec.shape.reduce((a, d) => a * d, 1) * itemsize(tab.dtype);
    if (Number(tab.blob.length) !== want) throw fail('format', `${source}: ${what}: blob of ${tab.blob.length} bytes, expected ${want}`);
    blobs.push([tab.blob, what]);
  }
  const [tr, tc] = t.tile;
  if (tr < 1 || tc < 1) throw bad(`tile size [${t.tile}] must be positive`);
  const expected = size ? Math.ceil(rows / tr) * Math.ceil(cols / tc) : 0;
  if (t.tiles.length !== expected) throw bad(`${t.tiles.length} tiles, the ${tr}x${tc} grid over ${rows}x${cols} needs ${expected}`);
  const gridCols = size ? Math.ceil(cols / tc) : 1;
  const item = t.depth ? 0 : itemsize(t.storage);
  t.tiles.forEach((tile, i) => {
    const row = Math.floor(i / gridCols) * tr;
    const col = (i % gridCols) * tc;
    if (tile.row !== row || tile.col !== col || tile.rows !== Math.min(tr, rows - row) || tile.cols !== Math.min(tc, cols - col)) {
      throw fail('format', `${source}: ${where} tile ${i}: rectangle (${tile.row}, ${tile.col}, ${tile.rows}x${tile.cols}) is not grid cell (${row}, ${col}); tiles are listed row-major`);
    }
    if (tile.rows * tile.cols > LIMITS.maxTileElements) {
      throw fail('limits', `${source}: ${where} tile ${i}: ${tile.rows}x${tile.cols} exceeds the limit of ${LIMITS.maxTileElements} elements per tile`);
    }
    const plane = tile.rows * (t.depth ? rowBytes(tile.cols, t.depth) : tile.cols * item);
    const length = Number(tile.blob.length);
    if (codec.exact) {
      if (length !== plane) throw fail('format', `${source}: ${where} tile ${i}: ${t.codec} blob of ${length} bytes, expected ${plane}`);
    } else if (plane > codec.maxInflation * length + LIMITS.inflationSlack) {
      throw fail('limits', `${source}: ${where} tile ${i}: a ${t.codec} blob of ${length} bytes cannot hold a ${plane}-byte plane (more than ${codec.maxInflation}:1)`);
    }
    blobs.push([tile.blob, `${where} tile ${i} (rows ${tile.row}.., cols ${tile.col}..)`]);
  });
  const decoded = decodedBytes(t);
  const stored = BigInt(storedBytes(t));
  if (decoded > BigInt(LIMITS.maxAmplification) * stored + BigInt(LIMITS.amplificationSlack)) {
    throw fail('limits', `${source}: ${where}: ${decoded} bytes of values from ${stored} stored bytes (more than ${LIMITS.maxAmplification}:1 beyond 64 MiB)`);
  }
}

export function validateManifest(manifest, source) {
  checkExtensions(manifest, source);
  const names = new Set();
  const blobs = [];
  for (const t of manifest.tensors) {
    if (names.has(t.name)) throw fail('format', `${source}: tensor name '${t.name}' appears twice`);
    names.add(t.name);
    checkTensor(t, source, blobs);
  }
  const aliases = Object.entries(manifest.aliases);
  if (aliases.length && !manifest.must_understand.includes('aliases')) {
    throw fail('format', `${source}: the manifest has aliases but does not list 'aliases' in must_understand`);
  }
  for (const [alias, name] of aliases) {
    if (!alias || names.has(alias)) throw fail('format', `${source}: alias '${alias}' is empty or the name of a stored tensor`);
    if (!names.has(name)) throw fail('format', `${source}: alias '${alias}' names '${name}', which is not a stored tensor`);
  }
  const scaled = manifest.tensors.filter((t) => t.quant.method === 'kmeans' && t.quant.scale !== null);
  if (scaled.length && !manifest.must_understand.includes('scaled-codebooks')) {
    throw fail('format', `${source}: tensor '${scaled[0].name}' has a scaled codebook but 'scaled-codebooks' is not in must_understand`);
  }
  let limits = null;
  if (manifest.layout === 'sharded') {
    for (const s of manifest.shards) {
      if (!SHARD_NAME.test(s.name) || s.name !== `${s.sha256}.kfs`) throw fail('format', `${source}: shard name '${s.name}' is not <sha256>.kfs`);
    }
    limits = manifest.shards.map((s) => big(s.length));
  } else if (manifest.shards.length) {
    throw fail('format', `${source}: a single-file container lists shards`);
  }
  const byShard = new Map();
  for (const [ref, label] of blobs) {
    const start = big(ref.offset);
    const end = start + big(ref.length);
    if (limits !== null) {
      if (big(ref.shard) >= BigInt(limits.length)) throw fail('format', `${source}: ${label}: shard ${ref.shard} does not exist (${limits.length} shards)`);
      if (end > limits[Number(ref.shard)]) throw fail('format', `${source}: ${label}: bytes ${start}..${end} lie past the end of shard ${ref.shard}`);
    } else if (big(ref.shard) !== 0n) {
      throw fail('format', `${source}: ${label}: refers to shard ${ref.shard} in a single file`);
    }
    const key = String(ref.shard);
    if (!byShard.has(key)) byShard.set(key, []);
    byShard.get(key).push([start, end, label]);
  }
  for (const spans of byShard.values()) {
    spans.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
    for (let i = 1; i < spans.length; i++) {
      if (spans[i][0] < spans[i - 1][1]) throw fail('format', `${source}: ${spans[i][2]} overlaps ${spans[i - 1][2]}`);
    }
  }
  return blobs;
}
