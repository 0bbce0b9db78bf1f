// A strict msgpack decoder for manifests: maps with string keys given once, no binary or
// extension types (the manifest is plain data, valid as JSON). Integers beyond 2^53 come back
// as BigInt, so a forged dimension of 2^62 is seen as what it is. Floats are wrapped in
// MsgFloat so the schema can tell 1.0 (refused where an integer is due) from 1.

import { fail } from './errors.js';

export class MsgFloat {
  constructor(value) {
    this.value = value;
  }
}

const MAX_DEPTH = 64;

export function decodeMsgpack(bytes, source) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const text = new TextDecoder('utf-8', { fatal: true });
  let pos = 0;
  const bad = (what) => fail('format', `${source}: manifest is not valid msgpack: ${what} at byte ${pos}`);
  const need = (n) => {
    if (pos + n > bytes.length) throw bad('unexpected end of data');
  };
  const u8 = () => (need(1), bytes[pos++]);
  const u16 = () => (need(2), (pos += 2), view.getUint16(pos - 2));
  const u32 = () => (need(4), (pos += 4), view.getUint32(pos - 4));
  const int = (big) => (big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big);
  const str = (n) => {
    need(n);
    const s = bytes.subarray(pos, pos + n);
    pos += n;
    try {
      return text.decode(s);
    } catch {
      throw bad('invalid UTF-8 string');
    }
  };
  const array = (n, depth) => {
    if (n > bytes.length - pos) throw bad(`array of ${n} items`);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = value(depth + 1);
    return out;
  };
  const map = (n, depth) => {
    if (n > bytes.length - pos) throw bad(`map of ${n} entries`);
    const out = Object.create(null);
    for (let i = 0; i < n; i++) {
      const key = value(depth + 1);
      if (typeof key !== 'string') throw bad('a map key that is not a string');
      if (Object.prototype.hasOwnProperty.call(out, key)) throw bad(`key '${key}' appears twice in one map`);
      out[key] = value(depth + 1);
    }
    return out;
  };
  function value(depth) {
    if (depth > MAX_DEPTH) throw bad('nesting too deep');
    const b = u8();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f, depth);
    if ((b & 0xf0) === 0x90) return array(b & 0x0f, depth);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xca: need(4); pos += 4; return new MsgFloat(view.getFloat32(pos - 4));
      case 0xcb: need(8); pos += 8; return new MsgFloat(view.getFloat64(pos - 8));
      case 0xcc: return u8();
      case 0xcd: return u16();
      case 0xce: return u32();
      case 0xcf: need(8); pos += 8; return int(view.getBigUint64(pos - 8));
      case 0xd0: need(1); pos += 1; return view.getInt8(pos - 1);
      case 0xd1: need(2); pos += 2; return view.getInt16(pos - 2);
      case 0xd2: need(4); pos += 4; return view.getInt32(pos - 4);
      case 0xd3: need(8); pos += 8; return int(view.getBigInt64(pos - 8));
      case 0xd9: return str(u8());
      case 0xda: return str(u16());
      case 0xdb: return str(u32());
      case 0xdc: return array(u16(), depth);
      case 0xdd: return array(u32(), depth);
      case 0xde: return map(u16(), depth);
      case 0xdf: return map(u32(), depth);
      default: throw bad(`type byte 0x${b.toString(16)} (binary and extension types are not plain data)`);
    }
  }
  const result = value(0);
  if (pos !== bytes.length) throw bad('trailing bytes after the manifest');
  return result;
}
