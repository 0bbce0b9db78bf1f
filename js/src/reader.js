// Opening a container (header, manifest, validation: spec/FORMAT.md sections 2, 3 and 6) and
// reading its tensors (sections 4 and 5), as the reference reader does.

import { fail, KFormatError } from './errors.js';
import { decodeMsgpack } from './msgpack.js';
import { parseManifest } from './schema.js';
import { checkExtensions, decodedBytes, namedTables, planeDepth, storedBytes, validateManifest } from './validate.js';
import { CODECS, unpackCodes } from './codecs.js';
import { METHODS, decodeTable, dequantizeCodes, dequantizeHalf, dequantizePacked } from './methods.js';
import { DTYPES, LITTLE_ENDIAN, itemsize } from './dtypes.js';
import { Fetcher, pooled, sha256Hex } from './fetcher.js';

const MAGIC = [0x89, 0x4b, 0x46, 0x4d, 0x54, 0x0d, 0x0a, 0x1a];
const HEADER = 64;
const OPEN_READ = 16 << 10;
const CHECK_FILES_ABOVE = 64 * 2 ** 20;
export const MAX_MANIFEST_BYTES = 64 * 2 ** 20;

const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

function decodeHeader(data, source, maxManifest) {
  if (data.length < HEADER) {
    if (!data.length) throw fail('format', `${source}: not a kformat file (bad magic): it is empty`);
    if (data.some((b, i) => i < 8 && b !== MAGIC[i])) throw fail('format', `${source}: not a kformat file (bad magic)`);
    throw fail('format', `${source}: truncated: ${data.length} bytes, the header alone is ${HEADER}`);
  }
  if (MAGIC.some((b, i) => data[i] !== b)) throw fail('format', `${source}: not a kformat file (bad magic)`);
  const view = new DataView(data.buffer, data.byteOffset, HEADER);
  const major = view.getUint16(8, true);
  const minor = view.getUint16(10, true);
  if (major !== 1) throw fail('version', `${source}: format version ${major}.${minor} is newer than this reader (supports 1.x); upgrade kformat`);
  const length = view.getBigUint64(16, true);
  const dataOffset = view.getBigUint64(24, true);
  if (length > BigInt(maxManifest)) throw fail('format', `${source}: manifest of ${length} bytes exceeds the cap of ${maxManifest}`);
  if (dataOffset && dataOffset < BigInt(HEADER) + length) throw fail('format', `${source}: data offset ${dataOffset} lies inside the manifest`);
  if (dataOffset > BigInt(Number.MAX_SAFE_INTEGER)) throw fail('format', `${source}: data offset ${dataOffset} is past any file`);
  return { major, minor, length: Number(length), dataOffset: Number(dataOffset), sha256: toHex(data.subarray(32, 64)) };
}

async function readManifest(io, url, isManifestFile, options) {
  const source = url;
  const first = isManifestFile ? HEADER + options.maxManifest : OPEN_READ;
  const head = await io.prefix(url, first);
  const header = decodeHeader(head, source, options.maxManifest);
  if (options.manifestSha256 && header.sha256 !== options.manifestSha256) {
    throw fail('integrity', `${source}: manifest SHA-256 is ${header.sha256}, pinned ${options.manifestSha256}: not the expected model`);
  }
  const end = HEADER + header.length;
  let body = head.subarray(HEADER, end);
  if (body.length < header.length && head.length === first) {
    try {
      const rest = await io.range(url, head.length, end);
      const whole = new Uint8Array(header.length);
      whole.set(body);
      whole.set(rest, body.length);
      body = whole;
    } catch (err) {
      if (err instanceof KFormatError && err.kind === 'storage') throw fail('format', `${source}: truncated inside the manifest (${err.message})`);
      throw err;
    }
  }
  if (body.length !== header.length) throw fail('format', `${source}: truncated: manifest should be ${header.length} bytes, got ${body.length}`);
  if ((await sha256Hex(body)) !== header.sha256) throw fail('format', `${source}: manifest hash mismatch (corrupted manifest)`);
  const manifest = parseManifest(decodeMsgpack(body, source), source);
  if (manifest.version[0] !== header.major) {
    throw fail('format', `${source}: manifest version ${manifest.version} disagrees with header ${header.major}`);
  }
  checkExtensions(manifest, source);
  if (manifest.layout === 'sharded') {
    if (header.dataOffset) throw fail('format', `${source}: a sharded manifest has a data region`);
  } else if (!header.dataOffset) {
    throw fail('format', `${source}: a single-file container without a data region`);
  }
  validateManifest(manifest, source);
  return { manifest, header };
}

async function open(io, url, options) {
  if (url.endsWith('/')) return { ...(await readManifest(io, `${url}manifest.kf`, true, options)), url: `${url}manifest.kf` };
  const path = url.split(/[?#]/)[0];
  if (path.endsWith('.kf')) return { ...(await readManifest(io, url, path.endsWith('/manifest.kf'), options)), url };
  try {
    return { ...(await readManifest(io, url, false, options)), url };
  } catch (err) {
    if (!(err instanceof KFormatError) || !['format', 'storage', 'not_found'].includes(err.kind)) throw err;
    try {
      return { ...(await readManifest(io, `${url}/manifest.kf`, true, options)), url: `${url}/manifest.kf` };
    } catch {
      throw err;
    }
  }
}

/** Open a kformat container: a single .kf file, or a sharded directory (its URL ending in /). */
export async function openModel(url, options = {}) {
  if (!LITTLE_ENDIAN) throw fail('storage', 'this reader needs a little-endian platform');
  const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
  if (!fetchImpl) throw new TypeError('no fetch: pass options.fetch');
  const settings = {
    maxManifest: options.maxManifest ?? MAX_MANIFEST_BYTES,
    manifestSha256: options.manifestSha256 ?? null,
    maxTensorBytes: options.maxTensorBytes ?? null,
  };
  const io = new Fetcher({ fetch: fetchImpl, cache: options.cache ?? null, onProgress: options.onProgress ?? null, signal: options.signal ?? null });
  const opened = await open(io, String(url), settings);
  return new Model(io, opened, settings);
}

export class Model {
  constructor(io, { manifest, header, url }, settings) {
    this.io = io;
    this.manifest = manifest;
    this.url = url;
    this.manifestSha256 = header.sha256;
    this.dataOffset = header.dataOffset;
    this.settings = settings;
    this.base = url.slice(0, url.lastIndexOf('/') + 1);
    this.entries = new Map(manifest.tensors.map((t) => [t.name, t]));
    const tied = new Map();
    for (const [alias, name] of Object.entries(manifest.aliases)) tied.set(name, [...(tied.get(name) ?? []), alias]);
    this.names = manifest.tensors.flatMap((t) => [t.name, ...(tied.get(t.name) ?? [])]);
    for (const [alias, name] of Object.entries(manifest.aliases)) this.entries.set(alias, this.entries.get(name));
    io.total = io.loaded + manifest.tensors.reduce((a, t) => a + storedBytes(t), 0);
  }

  get bytesRead() {
    return this.io.loaded;
  }

  get networkBytes() {
    return this.io.networkBytes;
  }

  get requests() {
    return this.io.requests;
  }

  get cacheHits() {
    return this.io.cacheHits;
  }

  entry(name) {
    const t = this.entries.get(name);
    if (!t) throw fail('not_found', `${this.url}: no tensor named '${name}'`);
    return t;
  }

  /** Shape, dtype, rule and stored bytes of a tensor, from the manifest alone. */
  info(name) {
    const t = this.entry(name);
    return {
      name,
      shape: t.shape.map(Number),
      dtype: t.dtype,
      rule: t.rule,
      method: t.quant.method,
      bits: t.quant.bits,
      codec: t.codec,
      storedBytes: storedBytes(t),
      decodedDtype: METHODS[t.quant.method].lossless ? t.dtype : 'float32',
    };
  }

  where(ref) {
    if (this.manifest.layout === 'sharded') {
      const shard = this.manifest.shards[Number(ref.shard)];
      const start = Number(ref.offset);
      return { url: `${this.base}shards/${shard.name}`, start, end: start + Number(ref.length), shard };
    }
    const start = this.dataOffset + Number(ref.offset);
    return { url: this.url, start, end: start + Number(ref.length), shard: null };
  }

  /** Fetch blobs ([ref, label]) and check each one's length and SHA-256 before use. */
  async checkedBlobs(items) {
    const datas = await this.io.blobs(items.map(([ref]) => this.where(ref)));
    await pooled(
      items.map(([ref, label], i) => async () => {
        if (datas[i].length !== Number(ref.length)) throw fail('integrity', `${this.url}: ${label}: got ${datas[i].length} bytes, expected ${ref.length}`);
        if ((await sha256Hex(datas[i])) !== ref.sha256) throw fail('integrity', `${this.url}: ${label}: hash mismatch; the blob is corrupted`);
      }),
      16,
    );
    return datas;
  }

  async tables(t) {
    const named = namedTables(t.quant);
    const datas = await this.checkedBlobs(named.map(([n, table]) => [table.blob, `tensor '${t.name}' ${n}`]));
    return Object.fromEntries(named.map(([n, table], i) => [n, decodeTable(t.quant.method, n, table.dtype, datas[i], `${this.url}: tensor '${t.name}' ${n}`)]));
  }

  /** Before allocating a large tensor: the files really hold its blobs (one byte read each). */
  async checkFilesHold(t) {
    const ends = new Map();
    for (const ref of [...t.tiles.map((tile) => tile.blob), ...namedTables(t.quant).map(([, table]) => table.blob)]) {
      const w = this.where(ref);
      ends.set(w.url, Math.max(ends.get(w.url) ?? 0, w.end));
    }
    for (const [url, end] of ends) {
      if (end > 0) await this.io.range(url, end - 1, end);
    }
  }

  async allocate(t, Type) {
    const bytes = decodedBytes(t);
    const max = this.settings.maxTensorBytes;
    if (max !== null && bytes > BigInt(max)) throw fail('limits', `${this.url}: tensor '${t.name}' needs ${bytes} bytes, more than maxTensorBytes ${max}`);
    if (bytes > BigInt(CHECK_FILES_ABOVE) && !this.io.cache) await this.checkFilesHold(t);
    try {
      return new Type(Number(bytes) / Type.BYTES_PER_ELEMENT);
    } catch {
      throw fail('limits', `${this.url}: tensor '${t.name}': cannot allocate ${bytes} bytes`);
    }
  }

  async planes(t, each) {
    const labels = t.tiles.map((tile, i) => [tile.blob, `tensor '${t.name}' tile ${i} (rows ${tile.row}..${tile.row + tile.rows}, cols ${tile.col}..${tile.col + tile.cols})`]);
    const codec = CODECS[t.codec];
    const batch = 64;
    for (let i = 0; i < labels.length; i += batch) {
      const part = labels.slice(i, i + batch);
      const datas = await this.checkedBlobs(part);
      await pooled(
        datas.map((data, j) => async () => {
          const tile = t.tiles[i + j];
          try {
            await each(tile, data, codec);
          } catch (err) {
            if (err instanceof KFormatError) throw fail(err.kind, `${this.url}: ${part[j][1]}: ${err.message}`);
            throw err;
          }
        }),
        4,
      );
    }
  }

  async codesOf(t, tile, data, codec) {
    const depth = planeDepth(t.quant.bits);
    const entries = 2 ** t.quant.bits;
    const packed = await codec.decodePacked(data, tile.rows, tile.cols, depth, entries);
    return unpackCodes(packed, tile.rows, tile.cols, depth, entries);
  }

  /**
   * The whole tensor: { shape, dtype, data } with data a Float32Array for lossy rules, and the
   * natural typed array of the source dtype for raw ones (float16/bfloat16/float8: their bits).
   */
  async tensor(name) {
    const t = this.entry(name);
    const shape = t.shape.map(Number);
    const [, cols] = t.view.map(Number);
    const method = METHODS[t.quant.method];
    if (method.lossless) {
      const out = await this.allocate(t, DTYPES[t.dtype].array);
      const bytes = new Uint8Array(out.buffer);
      const size = itemsize(t.dtype);
      await this.planes(t, async (tile, data, codec) => {
        const values = await codec.decodeValues(data, tile.rows, tile.cols, t.dtype, size);
        for (let r = 0; r < tile.rows; r++) {
          const at = ((tile.row + r) * cols + tile.col) * size;
          bytes.set(values.subarray(r * tile.cols * size, (r + 1) * tile.cols * size), at);
        }
      });
      return { name, shape, dtype: t.dtype, data: out };
    }
    const tables = await this.tables(t);
    const out = await this.allocate(t, Float32Array);
    await this.planes(t, async (tile, data, codec) => {
      if (method.codes && planeDepth(t.quant.bits) === t.quant.bits) {
        const packed = await codec.decodePacked(data, tile.rows, tile.cols, t.quant.bits, 2 ** t.quant.bits);
        dequantizePacked(t, tables, packed, tile, out, cols);
      } else if (method.codes) {
        dequantizeCodes(t, tables, await this.codesOf(t, tile, data, codec), tile, out, cols);
      } else {
        dequantizeHalf(await codec.decodeValues(data, tile.rows, tile.cols, 'float16', 2), tile, out, cols);
      }
    });
    return { name, shape, dtype: 'float32', data: out };
  }

  /** Codes and tables (code methods) or stored values (fp16, raw), without dequantizing. */
  async quantized(name) {
    const t = this.entry(name);
    const [rows, cols] = t.view.map(Number);
    const method = METHODS[t.quant.method];
    const base = { name, method: t.quant.method, bits: t.quant.bits, groupRows: t.quant.group_rows, shape: t.shape.map(Number), view: [rows, cols] };
    if (!method.codes) {
      const storage = t.storage;
      const size = itemsize(storage);
      const out = new DTYPES[storage].array(rows * cols);
      const bytes = new Uint8Array(out.buffer);
      await this.planes(t, async (tile, data, codec) => {
        const values = await codec.decodeValues(data, tile.rows, tile.cols, storage, size);
        for (let r = 0; r < tile.rows; r++) bytes.set(values.subarray(r * tile.cols * size, (r + 1) * tile.cols * size), ((tile.row + r) * cols + tile.col) * size);
      });
      return { ...base, storage, values: out };
    }
    const tables = await this.tables(t);
    const codes = new Uint8Array(rows * cols);
    await this.planes(t, async (tile, data, codec) => {
      const plane = await this.codesOf(t, tile, data, codec);
      for (let r = 0; r < tile.rows; r++) codes.set(plane.subarray(r * tile.cols, (r + 1) * tile.cols), (tile.row + r) * cols + tile.col);
    });
    return { ...base, codes, tables };
  }

  /** Every tensor, in file order, aliases sharing their tensor's object. */
  async loadAll() {
    const out = new Map();
    for (const t of this.manifest.tensors) {
      const value = await this.tensor(t.name);
      out.set(t.name, value);
      for (const [alias, name] of Object.entries(this.manifest.aliases)) if (name === t.name) out.set(alias, { ...value, name: alias });
    }
    return out;
  }
}
