// zstd frames (RFC 8878) of planes: the declared size and the frame's extent are read from
// its headers here, then zstd's own decoder compiled to WebAssembly (zstddec) decompresses it
// into a buffer of exactly the size the manifest promises, so it can never inflate past it.
// Where WebAssembly cannot run (a page whose Content-Security-Policy lacks 'wasm-unsafe-eval',
// node --jitless), fzstd, zstd in JavaScript, does it instead, stopped as soon as it would
// pass that size: 1.5x the time of a whole VGG16 `mobile` decode in Node, but never a failure.

import { Decompress } from 'fzstd';
import { ZSTDDecoder } from 'zstddec';
import { fail } from './errors.js';

const MAGIC = 0xfd2fb528;

/** Frame_Content_Size declared in the header (a Number, or null when absent). */
function frameHeader(data) {
  if (data.length < 6) throw fail('decode', 'zstd frame header is corrupt: too short');
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (view.getUint32(0, true) !== MAGIC) throw fail('decode', 'zstd frame header is corrupt: bad magic');
  const fhd = data[4];
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  if ((fhd >> 3) & 1) throw fail('decode', 'zstd frame header is corrupt: reserved bit set');
  const dictFlag = fhd & 3;
  let pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag];
  const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag];
  if (pos + fcsBytes > data.length) throw fail('decode', 'zstd frame header is corrupt: truncated');
  let size = null;
  if (fcsBytes === 1) size = data[pos];
  else if (fcsBytes === 2) size = view.getUint16(pos, true) + 256;
  else if (fcsBytes === 4) size = view.getUint32(pos, true);
  else if (fcsBytes === 8) size = Number(view.getBigUint64(pos, true));
  return { size, headerEnd: pos + fcsBytes, checksum: (fhd >> 2) & 1 };
}

/** Bytes of the complete frame at the start of `data`, or a decode error. */
export function frameSize(data) {
  const { headerEnd, checksum } = frameHeader(data);
  let pos = headerEnd;
  for (;;) {
    if (pos + 3 > data.length) throw fail('decode', 'not a complete zstd frame');
    const header = data[pos] | (data[pos + 1] << 8) | (data[pos + 2] << 16);
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) throw fail('decode', 'zstd frame is corrupt: reserved block type');
    pos += 3 + (type === 1 ? 1 : size);
    if (pos > data.length) throw fail('decode', 'not a complete zstd frame');
    if (last) break;
  }
  pos += checksum ? 4 : 0;
  if (pos > data.length) throw fail('decode', 'not a complete zstd frame');
  return pos;
}

let decoder = null;

/** The WebAssembly decoder, instantiated on the first zstd plane (not at import); null where
 * WebAssembly cannot run. */
async function ready() {
  if (!decoder) {
    decoder = (async () => {
      if (typeof WebAssembly === 'undefined') return null;
      try {
        const made = new ZSTDDecoder();
        await made.init();
        return made;
      } catch {
        return null;
      }
    })();
  }
  return decoder;
}

/** The frame decompressed by zstddec into `size` bytes: ZSTD_decompress fails on a frame that
 * holds more rather than writing past them, and an error code comes back as a negative
 * length, so an empty copy. (zstddec takes a size of 0 for "read it from the frame": an empty
 * plane gets room for one byte instead.) */
function decompressInWebAssembly(zstd, frame, size) {
  try {
    return zstd.decode(frame, Math.max(size, 1));
  } catch (err) {
    throw fail('decode', `zstd frame is corrupt: ${err?.message ?? err}`);
  }
}

/** The frame decompressed by fzstd, stopped as soon as it would pass `size` bytes. */
function decompressInJavaScript(frame, size) {
  const out = new Uint8Array(size);
  let got = 0;
  const stream = new Decompress((chunk) => {
    if (got + chunk.length > size) throw fail('decode', `zstd frame decompresses to the wrong size (expected ${size} bytes)`);
    out.set(chunk, got);
    got += chunk.length;
  });
  try {
    stream.push(frame, true);
  } catch (err) {
    if (err?.kind) throw err;
    throw fail('decode', `zstd frame is corrupt: ${err?.message ?? err}`);
  }
  return got === size ? out : out.subarray(0, got);
}

/** One frame that must decompress to exactly `size` bytes; never inflated past that. */
export async function decompressExact(frame, size) {
  const { size: declared } = frameHeader(frame);
  if (declared !== null && declared !== size) {
    throw fail('decode', `zstd frame declares ${declared} bytes, expected ${size}`);
  }
  const end = frameSize(frame);
  if (end !== frame.length) throw fail('decode', 'zstd plane has trailing bytes after its frame');
  const zstd = await ready();
  const out = zstd === null ? decompressInJavaScript(frame, size) : decompressInWebAssembly(zstd, frame, size);
  if (out.length !== size) throw fail('decode', `zstd frame is corrupt or decompresses to the wrong size (expected ${size} bytes)`);
  return out;
}
