// zstd frames through the WebAssembly decoder: exact sizes only, and every bad frame a
// KFormatError of kind 'decode' (zstddec itself reports nothing: an error comes back short).

import { test } from 'node:test';
import { execFileSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { decompressExact } from '../src/zstd.js';
import { KFormatError } from '../kformat.js';

const MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

/** A frame of one last block: single segment with a 1-byte content size when `declared`,
 * else a window descriptor and no size. */
function frame(blockType, body, declared) {
  const header = declared === undefined ? [0x00, 0x58] : [0x20, declared];
  const blockHeader = 1 | (blockType << 1) | (body.length << 3);
  return new Uint8Array([...MAGIC, ...header, blockHeader & 0xff, (blockHeader >> 8) & 0xff, blockHeader >> 16, ...body]);
}

async function failure(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  return null;
}

test('a raw-block frame decodes to its bytes', async () => {
  const body = [1, 2, 3, 4, 5];
  assert.deepEqual([...(await decompressExact(frame(0, body, 5), 5))], body);
  assert.deepEqual([...(await decompressExact(frame(0, body), 5))], body);
});

test('a frame holding more than promised fails', async () => {
  const error = await failure(decompressExact(frame(0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 5));
  assert.ok(error instanceof KFormatError, String(error));
  assert.equal(error.kind, 'decode');
  assert.match(error.message, /wrong size/);
});

test('a frame holding less than promised fails', async () => {
  const error = await failure(decompressExact(frame(0, [1, 2, 3]), 5));
  assert.ok(error instanceof KFormatError, String(error));
  assert.equal(error.kind, 'decode');
});

test('a compressed block of garbage fails as a decode error', async () => {
  const error = await failure(decompressExact(frame(2, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 6), 6));
  assert.ok(error instanceof KFormatError, String(error));
  assert.equal(error.kind, 'decode');
});

test('a size declared in the header must be the promised one', async () => {
  const error = await failure(decompressExact(frame(0, [1, 2, 3, 4, 5], 5), 4));
  assert.ok(error instanceof KFormatError, String(error));
  assert.match(error.message, /declares 5 bytes, expected 4/);
});

test('an empty plane decodes from an empty frame, and only from one', async () => {
  assert.equal((await decompressExact(frame(0, []), 0)).length, 0);
  const error = await failure(decompressExact(frame(0, [7]), 0));
  assert.ok(error instanceof KFormatError, String(error));
  assert.equal(error.kind, 'decode');
});

test('without WebAssembly (node --jitless) zstd planes decode in JavaScript, bad ones still fail', () => {
  const script = `
    import { decompressExact } from ${JSON.stringify(new URL('../src/zstd.js', import.meta.url).href)};
    const frame = (body) => new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58, 1 | (body.length << 3), 0, 0, ...body]);
    const good = await decompressExact(frame([1, 2, 3]), 3);
    let kind = null;
    try { await decompressExact(frame([1, 2, 3, 4]), 3); } catch (err) { kind = err.kind; }
    console.log(typeof WebAssembly, [...good].join(','), kind);
  `;
  const out = execFileSync(process.execPath, ['--jitless', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  assert.equal(out.trim(), 'undefined 1,2,3 decode');
});
