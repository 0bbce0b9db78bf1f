// Element types by the numpy names the manifest stores, with the typed array a raw tensor
// comes back as. JavaScript has no float16, bfloat16 or float8 arrays: those come back as
// their bits (Uint16Array, Uint8Array), as stored.

export const DTYPES = {
  float16: { size: 2, array: Uint16Array },
  float32: { size: 4, array: Float32Array },
  float64: { size: 8, array: Float64Array },
  bool: { size: 1, array: Uint8Array },
  int8: { size: 1, array: Int8Array },
  int16: { size: 2, array: Int16Array },
  int32: { size: 4, array: Int32Array },
  int64: { size: 8, array: BigInt64Array },
  uint8: { size: 1, array: Uint8Array },
  uint16: { size: 2, array: Uint16Array },
  uint32: { size: 4, array: Uint32Array },
  uint64: { size: 8, array: BigUint64Array },
  bfloat16: { size: 2, array: Uint16Array },
  float8_e4m3fn: { size: 1, array: Uint8Array },
  float8_e5m2: { size: 1, array: Uint8Array },
};

export const itemsize = (name) => DTYPES[name].size;

// Typed arrays use the platform's byte order; the format is little-endian.
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

let halfTable = null;

/** float32 value of every float16 bit pattern (exact: every half is a float). */
export function halfToFloat() {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v;
    if (exp === 0) v = sign * frac * 2 ** -24;
    else if (exp === 31) v = frac ? NaN : sign * Infinity;
    else v = sign * (1 + frac / 1024) * 2 ** (exp - 15);
    halfTable[h] = v;
  }
  return halfTable;
}
