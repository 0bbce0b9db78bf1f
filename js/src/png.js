// Code planes as palette PNG images. The browser's (or Node's) own DecompressionStream
// inflates them, stopped as soon as it would pass the size the manifest promises; every chunk
// CRC is checked, and all five row filters are undone.

import { fail } from './errors.js';

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
let crcTables = null;

/** CRC-32 of bytes[start, end), slicing by 8 (the PNG chunk checksum). */
function crc32(bytes, start, end) {
  if (!crcTables) {
    crcTables = Array.from({ length: 8 }, () => new Uint32Array(256));
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTables[0][n] = c >>> 0;
    }
    for (let n = 0; n < 256; n++) {
      for (let t = 1; t < 8; t++) crcTables[t][n] = (crcTables[t - 1][n] >>> 8) ^ crcTables[0][crcTables[t - 1][n] & 0xff];
    }
  }
  const [t0, t1, t2, t3, t4, t5, t6, t7] = crcTables;
  let c = 0xffffffff;
  let i = start;
  for (; i + 8 <= end; i += 8) {
    const a = (c ^ (bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24))) >>> 0;
    c = t7[a & 0xff] ^ t6[(a >>> 8) & 0xff] ^ t5[(a >>> 16) & 0xff] ^ t4[a >>> 24] ^
      t3[bytes[i + 4]] ^ t2[bytes[i + 5]] ^ t1[bytes[i + 6]] ^ t0[bytes[i + 7]];
  }
  for (; i < end; i++) c = t0[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function* chunks(data) {
  for (let i = 0; i < 8; i++) if (data[i] !== SIGNATURE[i]) throw fail('decode', 'not a PNG image (bad signature)');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = 8;
  while (pos < data.length) {
    if (pos + 12 > data.length) throw fail('decode', `PNG truncated inside the chunk header at byte ${pos}`);
    const length = view.getUint32(pos);
    const kind = String.fromCharCode(...data.subarray(pos + 4, pos + 8));
    const end = pos + 8 + length;
    if (length > 0x7fffffff || end + 4 > data.length) throw fail('decode', `PNG chunk '${kind}' at byte ${pos} runs past the end of the image`);
    if (crc32(data, pos + 4, end) !== view.getUint32(end)) throw fail('decode', `PNG chunk '${kind}' at byte ${pos} has a bad CRC`);
    yield [kind, data.subarray(pos + 8, end)];
    pos = end + 4;
    if (kind === 'IEND') return;
  }
  throw fail('decode', 'PNG has no IEND chunk');
}

/** A zlib stream that must inflate to exactly `size` bytes. */
export async function inflateExact(stream, size) {
  const inflater = new DecompressionStream('deflate');
  const writer = inflater.writable.getWriter();
  const reader = inflater.readable.getReader();
  writer.write(stream).then(() => writer.close()).catch(() => {});
  const out = new Uint8Array(size);
  let got = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      if (got + value.length > size) {
        reader.cancel().catch(() => {});
        throw fail('decode', `PNG image data inflates to the wrong size (expected ${size} bytes)`);
      }
      out.set(value, got);
      got += value.length;
    }
  } catch (err) {
    if (err?.kind) throw err;
    throw fail('decode', `PNG image data is corrupt: ${err?.message ?? err}`);
  }
  if (got !== size) throw fail('decode', `PNG image data inflates to the wrong size (expected ${size} bytes)`);
  return out;
}

function unfilter(raw, rows, stride) {
  const out = new Uint8Array(rows * stride);
  for (let r = 0; r < rows; r++) {
    const type = raw[r * (stride + 1)];
    const line = raw.subarray(r * (stride + 1) + 1, (r + 1) * (stride + 1));
    const o = r * stride;
    const up = r > 0 ? o - stride : -1;
    switch (type) {
      case 0:
        out.set(line, o);
        break;
      case 1:
        for (let i = 0; i < stride; i++) out[o + i] = (line[i] + (i ? out[o + i - 1] : 0)) & 0xff;
        break;
      case 2:
        for (let i = 0; i < stride; i++) out[o + i] = (line[i] + (up >= 0 ? out[up + i] : 0)) & 0xff;
        break;
      case 3:
        for (let i = 0; i < stride; i++) {
          const a = i ? out[o + i - 1] : 0;
          const b = up >= 0 ? out[up + i] : 0;
          out[o + i] = (line[i] + ((a + b) >> 1)) & 0xff;
        }
        break;
      case 4:
        for (let i = 0; i < stride; i++) {
          const a = i ? out[o + i - 1] : 0;
          const b = up >= 0 ? out[up + i] : 0;
          const c = i && up >= 0 ? out[up + i - 1] : 0;
          const p = a + b - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - b);
          const pc = Math.abs(p - c);
          out[o + i] = (line[i] + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c)) & 0xff;
        }
        break;
      default:
        throw fail('decode', `PNG row uses unknown filter type ${type}`);
    }
  }
  return out;
}

/** Packed rows (rows * ceil(cols * depth / 8) bytes) of a palette PNG the manifest describes. */
export async function decodePngPacked(data, rows, cols, depth, paletteEntries) {
  let header = null;
  let palette = null;
  const idat = [];
  for (const [kind, body] of chunks(data)) {
    if (kind === 'IHDR') {
      if (body.length !== 13) throw fail('decode', 'PNG IHDR chunk has the wrong length');
      const v = new DataView(body.buffer, body.byteOffset, 13);
      header = [v.getUint32(0), v.getUint32(4), body[8], body[9], body[12]];
    } else if (kind === 'PLTE') {
      palette = Math.floor(body.length / 3);
    } else if (kind === 'IDAT') {
      idat.push(body);
    }
  }
  if (!header) throw fail('decode', 'PNG has no IHDR chunk');
  const expected = [cols, rows, depth, 3, 0];
  if (header.some((v, i) => v !== expected[i])) {
    throw fail('decode', `PNG plane is not the promised one: expected (width, height, depth, colour type, interlace) (${expected}), got (${header})`);
  }
  if (palette === null || palette < paletteEntries) throw fail('decode', `PNG palette has ${palette} entries, expected ${paletteEntries}`);
  const stride = Math.ceil((cols * depth) / 8);
  const total = idat.reduce((a, b) => a + b.length, 0);
  const stream = new Uint8Array(total);
  let pos = 0;
  for (const part of idat) {
    stream.set(part, pos);
    pos += part.length;
  }
  const raw = await inflateExact(stream, rows * (stride + 1));
  return unfilter(raw, rows, stride);
}
