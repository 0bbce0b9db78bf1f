// The language-neutral conformance suite (spec/conformance/) under Node's test runner: every
// golden vector decodes to exactly the expected bytes, every attack fails with its kind.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createHash } from 'node:crypto';
import { openModel, KFormatError } from '../kformat.js';
import { fileFetch } from './helpers.js';

const SUITE = fileURLToPath(new URL('../../spec/conformance/', import.meta.url));
const vectors = JSON.parse(await readFile(`${SUITE}vectors.json`, 'utf8'));
const attacks = JSON.parse(await readFile(`${SUITE}attacks.json`, 'utf8'));
const urlOf = (path) => pathToFileURL(`${SUITE}${path}`).href + (path.endsWith('/') ? '/' : '');
const bytesOf = (data) => new Uint8Array(data.buffer, data.byteOffset, data.byteLength);

for (const [path, vector] of Object.entries(vectors)) {
  test(`golden vector ${path} decodes to the expected tensors`, async () => {
    const url = path.endsWith('.kf') ? urlOf(path) : `${urlOf(path)}/`;
    const model = await openModel(url, { fetch: fileFetch() });
    assert.deepEqual(model.names, vector.tensors.map((t) => t.name));
    for (const expected of vector.tensors) {
      const got = await model.tensor(expected.name);
      assert.equal(got.dtype, expected.dtype, expected.name);
      assert.deepEqual(got.shape, expected.shape, expected.name);
      const want = await readFile(`${SUITE}${expected.data}`);
      const bytes = bytesOf(got.data);
      assert.equal(createHash('sha256').update(bytes).digest('hex'), expected.sha256, `${path} ${expected.name}: bytes differ`);
      assert.equal(Buffer.compare(Buffer.from(bytes), want), 0);
    }
  });
}

for (const [path, attack] of Object.entries(attacks)) {
  test(`attack ${path} fails with kind ${attack.kind}`, async () => {
    const url = path.endsWith('/') ? urlOf(path) : urlOf(path);
    let error = null;
    try {
      const model = await openModel(url, { fetch: fileFetch() });
      for (const name of model.names) await model.tensor(name);
    } catch (err) {
      error = err;
    }
    assert.ok(error, `${path} (${attack.forges}) was read without an error`);
    assert.ok(error instanceof KFormatError, `${path}: ${error?.constructor?.name}: ${error?.stack}`);
    assert.equal(error.kind, attack.kind, `${path}: ${error.message}`);
  });
}
