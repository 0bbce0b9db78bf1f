// Plane codecs (spec/FORMAT.md, section 4): each turns a tile's checked blob into packed code
// rows or little-endian value bytes, refusing anything but the geometry the manifest promises.

import { fail } from './errors.js';
import { decodePngPacked } from './png.js';
import { decompressExact, frameSize } from './zstd.js';

const packedSize = (rows, cols, depth) => rows * Math.ceil((cols * depth) / 8);

function exactly(data, size, what) {
  if (data.length !== size) throw fail('decode', `${what} holds ${data.length} bytes, expected ${size}`);
  return data;
}

/** Byte-shuffled elements (all first bytes, then all second bytes...) back to C order. */
function unshuffle(planes, count, size) {
  if (size === 1) return planes;
  const out = new Uint8Array(count * size);
  for (let b = 0; b < size; b++) {
    const plane = planes.subarray(b * count, (b + 1) * count);
    for (let i = 0, j = b; i < count; i++, j += size) out[j] = plane[i];
  }
  return out;
}

/** floatz byte planes back to little-endian elements (see the spec for the split). */
function mergeFloatz(planes, count, dtype, size) {
  const out = new Uint8Array(count * size);
  if (dtype === 'bfloat16' || dtype === 'float32') {
    const [exp, top] = planes;
    for (let i = 0, j = 0; i < count; i++, j += size) {
      if (size === 4) {
        out[j] = planes[3][i];
        out[j + 1] = planes[2][i];
      }
      out[j + size - 2] = ((exp[i] & 1) << 7) | (top[i] & 0x7f);
      out[j + size - 1] = (top[i] & 0x80) | (exp[i] >> 1);
    }
    return out;
  }
  for (let p = 0; p < size; p++) {
    const plane = planes[p];
    const b = size - 1 - p; // plane p holds byte size-1-p: most significant first
    for (let i = 0, j = b; i < count; i++, j += size) out[j] = plane[i];
  }
  return out;
}

export const CODECS = {
  png: {
    codes: true,
    values: false,
    exact: false,
    maxInflation: 1032,
    decodePacked: (data, rows, cols, depth, entries) => decodePngPacked(data, rows, cols, depth, entries),
  },
  zstd: {
    codes: true,
    values: true,
    exact: false,
    maxInflation: 32768,
    decodePacked: (data, rows, cols, depth) => decompressExact(data, packedSize(rows, cols, depth)),
    decodeValues: async (data, rows, cols, dtype, size) => unshuffle(await decompressExact(data, rows * cols * size), rows * cols, size),
  },
  raw: {
    codes: true,
    values: true,
    exact: true,
    maxInflation: 1,
    decodePacked: async (data, rows, cols, depth) => exactly(data, packedSize(rows, cols, depth), 'plane'),
    decodeValues: async (data, rows, cols, dtype, size) => exactly(data, rows * cols * size, 'raw plane'),
  },
  floatz: {
    codes: false,
    values: true,
    exact: false,
    maxInflation: 32768,
    decodeValues: async (data, rows, cols, dtype, size) => {
      const count = rows * cols;
      const planes = [];
      let rest = data;
      for (let i = 0; i < size; i++) {
        let end;
        try {
          end = frameSize(rest);
        } catch {
          throw fail('decode', `floatz byte plane ${i}: not a complete zstd frame`);
        }
        planes.push(await decompressExact(rest.subarray(0, end), count));
        rest = rest.subarray(end);
      }
      if (rest.length) throw fail('decode', `floatz plane has ${rest.length} bytes after its last frame`);
      return mergeFloatz(planes, count, dtype, size);
    },
  },
};

const byteCodes = new Map();

/** For each byte value, the 8 / depth codes packed in it (most significant first). */
export function codesOfBytes(depth) {
  if (!byteCodes.has(depth)) {
    const perByte = 8 / depth;
    const mask = (1 << depth) - 1;
    const table = new Uint8Array(256 * perByte);
    for (let b = 0; b < 256; b++) {
      for (let j = 0; j < perByte; j++) table[b * perByte + j] = (b >> (8 - depth * (j + 1))) & mask;
    }
    byteCodes.set(depth, table);
  }
  return byteCodes.get(depth);
}

/** Codes of packed rows (most significant bits first), each checked below `entries`. */
export function unpackCodes(packed, rows, cols, depth, entries) {
  const codes = new Uint8Array(rows * cols);
  const stride = Math.ceil((cols * depth) / 8);
  const perByte = 8 / depth;
  const table = codesOfBytes(depth);
  let max = 0;
  for (let r = 0; r < rows; r++) {
    const line = r * stride;
    const o = r * cols;
    for (let c = 0; c < cols; c++) {
      const code = table[packed[line + ((c / perByte) | 0)] * perByte + (c % perByte)];
      codes[o + c] = code;
      if (code > max) max = code;
    }
  }
  if (rows * cols && max >= entries) throw fail('decode', `plane holds code ${max} >= ${entries} codebook entries`);
  return codes;
}
