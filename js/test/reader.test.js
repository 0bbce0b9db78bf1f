// The reader's options and API beyond the conformance suite: aliases, quantized(), progress,
// abort, the shard cache, pinning, errors for missing names.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { openModel, KFormatError } from '../kformat.js';
import { fileFetch } from './helpers.js';

const SUITE = fileURLToPath(new URL('../../spec/conformance/vectors/', import.meta.url));
const url = (name) => pathToFileURL(`${SUITE}${name}`).href + (name.endsWith('.kf') ? '' : '/');

class MemoryCache {
  constructor() {
    this.entries = new Map();
  }
  async match(key) {
    const bytes = this.entries.get(String(key));
    return bytes ? new Response(bytes) : undefined;
  }
  async put(key, response) {
    this.entries.set(String(key), new Uint8Array(await response.arrayBuffer()));
  }
  async delete(key) {
    return this.entries.delete(String(key));
  }
}

test('aliases follow their tensor and decode to the same values', async () => {
  const model = await openModel(url('tied_kmeans4.kf'), { fetch: fileFetch() });
  const [alias, target] = Object.entries(model.manifest.aliases)[0];
  assert.equal(model.names[model.names.indexOf(target) + 1], alias);
  const a = await model.tensor(alias);
  const b = await model.tensor(target);
  assert.deepEqual(a.data, b.data);
  const all = await model.loadAll();
  assert.equal(all.get(alias).data, all.get(target).data); // the same array: tied stays tied
});

test('quantized() gives codes and tables that dequantize to tensor()', async () => {
  const model = await openModel(url('kmeans4_group.kf'), { fetch: fileFetch() });
  const name = model.manifest.tensors.find((t) => t.quant.method === 'kmeans').name;
  const q = await model.quantized(name);
  const { data } = await model.tensor(name);
  const [rows, cols] = q.view;
  const entries = 2 ** q.bits;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const g = Math.floor(r / q.groupRows);
      assert.equal(data[r * cols + c], q.tables.codebook[g * entries + q.codes[r * cols + c]]);
    }
  }
  assert.deepEqual(model.info(name).shape, (await model.tensor(name)).shape);
});

test('progress counts every byte fetched, up to the total', async () => {
  const seen = [];
  const model = await openModel(url('mobile_sharded'), { fetch: fileFetch(), onProgress: (p) => seen.push(p) });
  for (const name of model.names) await model.tensor(name);
  const last = seen[seen.length - 1];
  assert.ok(seen.length > 1);
  assert.equal(last.loaded, model.bytesRead);
  assert.ok(last.loaded <= last.total + 0 || last.total >= last.loaded);
  assert.ok(seen.every((p, i) => i === 0 || p.loaded >= seen[i - 1].loaded));
});

test('a shard cache serves the second load: only the manifest is fetched', async () => {
  const cache = new MemoryCache();
  const first = [];
  const model = await openModel(url('mobile_sharded'), { fetch: fileFetch(first), cache });
  for (const name of model.names) await model.tensor(name);
  assert.equal(cache.entries.size, model.manifest.shards.length);
  const second = [];
  const again = await openModel(url('mobile_sharded'), { fetch: fileFetch(second), cache });
  const a = await again.tensor(again.names[0]);
  for (const name of again.names) await again.tensor(name);
  assert.deepEqual(second.map((r) => r.url.split('/').pop()), ['manifest.kf']);
  assert.equal(again.cacheHits, model.manifest.shards.length);
  assert.deepEqual(a.data, (await model.tensor(model.names[0])).data);
});

test('a damaged cache entry is fetched again', async () => {
  const cache = new MemoryCache();
  const model = await openModel(url('mobile_sharded'), { fetch: fileFetch(), cache });
  for (const name of model.names) await model.tensor(name);
  for (const key of cache.entries.keys()) cache.entries.set(key, new Uint8Array(3));
  const again = await openModel(url('mobile_sharded'), { fetch: fileFetch(), cache });
  for (const name of again.names) await again.tensor(name);
  assert.equal(again.cacheHits, 0);
});

test('abort stops a load with the signal reason', async () => {
  const controller = new AbortController();
  const model = await openModel(url('mobile_sharded'), { fetch: fileFetch(), signal: controller.signal });
  controller.abort(new Error('user left the page'));
  await assert.rejects(model.tensor(model.names[0]), /user left the page/);
});

test('pinning the manifest digest refuses any other model', async () => {
  const model = await openModel(url('kmeans4.kf'), { fetch: fileFetch() });
  await openModel(url('kmeans4.kf'), { fetch: fileFetch(), manifestSha256: model.manifestSha256 });
  await assert.rejects(
    openModel(url('kmeans8.kf'), { fetch: fileFetch(), manifestSha256: model.manifestSha256 }),
    (err) => err instanceof KFormatError && err.kind === 'integrity',
  );
});

test('missing tensors, files and limits are KFormatErrors with their kind', async () => {
  const model = await openModel(url('kmeans4.kf'), { fetch: fileFetch() });
  assert.throws(() => model.info('nope'), (err) => err.kind === 'not_found');
  await assert.rejects(openModel(url('nothing-here.kf'), { fetch: fileFetch() }), (err) => err.kind === 'not_found');
  const small = await openModel(url('kmeans4.kf'), { fetch: fileFetch(), maxTensorBytes: 16 });
  await assert.rejects(small.tensor(small.names[0]), (err) => err.kind === 'limits');
});
