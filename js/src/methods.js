// Quantization methods: which tables each needs (spec/FORMAT.md, section 5) and how a tile's
// plane becomes float32 values, bit for bit as the reference reader computes them (every
// formula is one IEEE float32 operation, done here with Math.fround).

import { fail } from './errors.js';
import { halfToFloat } from './dtypes.js';
import { codesOfBytes } from './codecs.js';

const groupsOf = (rows, groupRows) => Math.ceil(rows / groupRows);

export const METHODS = {
  kmeans: { codes: true, lossless: false, storage: () => 'uint8' },
  linear: { codes: true, lossless: false, storage: () => 'uint8' },
  fp16: { codes: false, lossless: false, storage: () => 'float16' },
  raw: { codes: false, lossless: true, storage: (dtype) => dtype },
};

export function tableSpecs(quant, rows) {
  switch (quant.method) {
    case 'kmeans': {
      const specs = [{ name: 'codebook', shape: [groupsOf(rows, quant.group_rows), 2 ** quant.bits], dtypes: ['float16', 'float32'] }];
      if (quant.scale !== null) specs.push({ name: 'scale', shape: [rows], dtypes: ['float16', 'float32'] });
      return specs;
    }
    case 'linear': {
      const groups = groupsOf(rows, quant.group_rows);
      return [
        { name: 'scale', shape: [groups], dtypes: ['float32'] },
        { name: 'zero_point', shape: [groups], dtypes: ['uint8'] },
      ];
    }
    default:
      return [];
  }
}

/** A table's values from its checked blob: float32 for float tables, refusing what no writer stores. */
export function decodeTable(method, name, dtype, bytes, where) {
  let values;
  if (dtype === 'uint8') return bytes.slice();
  if (dtype === 'float16') {
    const half = halfToFloat();
    const bits = new Uint16Array(bytes.slice().buffer);
    values = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) values[i] = half[bits[i]];
  } else {
    values = new Float32Array(bytes.slice().buffer);
  }
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) throw fail('decode', `${where} holds NaN or infinite values`);
  }
  if (method === 'linear' && name === 'scale') {
    let largest = 0;
    for (const v of values) largest = Math.max(largest, Math.abs(v));
    if (!Number.isFinite(Math.fround(largest * 255))) throw fail('decode', `${where} ${largest} overflows float32`);
  }
  return values;
}

/** The float32 value of each code of row group `g`, or null when a value depends on the row. */
function codeValues(method, tables, g, entries) {
  const out = new Float32Array(entries);
  if (method === 'kmeans') {
    out.set(tables.codebook.subarray(g * entries, (g + 1) * entries));
  } else {
    const scale = tables.scale[g];
    const zero = tables.zero_point[g];
    for (let q = 0; q < entries; q++) out[q] = Math.fround(scale * (q - zero));
  }
  return out;
}

/** row -> the float32 value of each code in that row's group (built once per group). */
function rowValues(quant, tables) {
  const entries = 2 ** quant.bits;
  let group = -1;
  let lut = null;
  return (row) => {
    const g = Math.floor(row / quant.group_rows);
    if (g !== group) {
      lut = codeValues(quant.method, tables, g, entries);
      group = g;
    }
    return lut;
  };
}

/** The per-row scales of a scaled k-means tensor, or null. */
const rowScales = (quant, tables) => (quant.method === 'kmeans' && tables.scale ? tables.scale : null);

/**
 * Dequantize a tile's codes (uint8, rows x cols, each < 2^bits) into `out` (Float32Array of
 * the view, `stride` columns wide) at (row0, col0).
 */
export function dequantizeCodes(tensor, tables, codes, tile, out, stride) {
  const lutOf = rowValues(tensor.quant, tables);
  const scale = rowScales(tensor.quant, tables);
  for (let r = 0; r < tile.rows; r++) {
    const row = tile.row + r;
    const lut = lutOf(row);
    const base = row * stride + tile.col;
    const src = r * tile.cols;
    if (scale) {
      const s = scale[row];
      for (let c = 0; c < tile.cols; c++) out[base + c] = Math.fround(lut[codes[src + c]] * s);
    } else {
      for (let c = 0; c < tile.cols; c++) out[base + c] = lut[codes[src + c]];
    }
  }
}

/**
 * Dequantize a tile's packed code rows straight into `out`, when every code is valid (bits ==
 * depth): one byte yields 8 / depth values through a per-byte table, codes never unpacked.
 */
export function dequantizePacked(tensor, tables, packed, tile, out, stride) {
  const q = tensor.quant;
  const depth = q.bits;
  const perByte = 8 / depth;
  const table = codesOfBytes(depth);
  const rowBytes = Math.ceil((tile.cols * depth) / 8);
  const cols = tile.cols;
  const full = Math.floor(cols / perByte);
  const lutOf = rowValues(q, tables);
  const scale = rowScales(q, tables);
  for (let r = 0; r < tile.rows; r++) {
    const row = tile.row + r;
    const lut = lutOf(row);
    const start = row * stride + tile.col;
    const line = r * rowBytes;
    // Monomorphic loops per depth: this is the hot loop of loading.
    if (depth === 8) {
      for (let c = 0; c < cols; c++) out[start + c] = lut[packed[line + c]];
    } else if (depth === 4) {
      let o = start;
      for (let i = 0; i < full; i++) {
        const b = packed[line + i];
        out[o] = lut[b >> 4];
        out[o + 1] = lut[b & 15];
        o += 2;
      }
      if (cols & 1) out[o] = lut[packed[line + full] >> 4];
    } else {
      let o = start;
      for (let i = 0; i < full; i++) {
        const at = packed[line + i] * perByte;
        for (let j = 0; j < perByte; j++) out[o++] = lut[table[at + j]];
      }
      const at = packed[line + full] * perByte;
      for (let j = 0; j < cols - full * perByte; j++) out[o++] = lut[table[at + j]];
    }
    if (scale) {
      const s = scale[row];
      for (let c = start; c < start + cols; c++) out[c] = Math.fround(out[c] * s);
    }
  }
}

/** Widen a tile of float16 bits (little-endian bytes) into `out` at (row0, col0). */
export function dequantizeHalf(bytes, tile, out, stride) {
  const half = halfToFloat();
  for (let r = 0; r < tile.rows; r++) {
    const base = (tile.row + r) * stride + tile.col;
    let i = 2 * r * tile.cols;
    for (let c = 0; c < tile.cols; c++, i += 2) out[base + c] = half[bytes[i] | (bytes[i + 1] << 8)];
  }
}
