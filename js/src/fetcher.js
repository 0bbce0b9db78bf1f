// Every byte the reader gets: ranged fetches whose replies are checked for exactly the bytes
// asked, bodies read incrementally and dropped once they pass what was asked, immutable
// shards served from (and stored in) a Cache API cache, progress and abort.

import { fail } from './errors.js';

const MERGE_GAP = 4096;
const MERGE_MAX = 16 << 20;
const CONCURRENCY = 6;

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  let hex = '';
  for (const b of digest) hex += b.toString(16).padStart(2, '0');
  return hex;
}

/** Run `jobs` (functions returning promises) at most `limit` at a time; results in order. */
export async function pooled(jobs, limit = CONCURRENCY) {
  const results = new Array(jobs.length);
  let next = 0;
  const worker = async () => {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return results;
}

export class Fetcher {
  constructor({ fetch, cache = null, onProgress = null, signal = null }) {
    this.fetchImpl = fetch;
    this.cache = cache;
    this.onProgress = onProgress;
    this.signal = signal;
    this.loaded = 0;
    this.total = 0;
    this.requests = 0;
    this.cacheHits = 0;
    this.networkBytes = 0; // of `loaded`: what came over the network (the rest: from the cache)
    this.shards = new Map(); // shard URL -> its bytes (promise), when shards are cached whole
  }

  checkAborted() {
    if (this.signal?.aborted) throw this.signal.reason ?? new DOMException('aborted', 'AbortError');
  }

  progress(n) {
    this.loaded += n;
    this.onProgress?.({ loaded: this.loaded, total: Math.max(this.total, this.loaded) });
  }

  async request(url, headers) {
    this.checkAborted();
    this.requests += 1;
    try {
      return await this.fetchImpl(url, { headers, signal: this.signal ?? undefined, cache: 'no-store' });
    } catch (err) {
      if (err?.name === 'AbortError' || this.signal?.aborted) throw this.signal?.reason ?? err;
      throw fail('storage', `${url}: cannot fetch (${err?.message ?? err})`);
    }
  }

  /** Read at most `limit` bytes of a reply's body; `over` is true when it had more. */
  async body(response, limit) {
    const out = new Uint8Array(Math.min(limit + 1, Math.max(1, Number(response.headers.get('content-length')) || 65536)));
    let buffer = out;
    let got = 0;
    if (!response.body) {
      const all = new Uint8Array(await response.arrayBuffer());
      this.networkBytes += all.length;
      this.progress(Math.min(all.length, limit));
      return { bytes: all.subarray(0, limit), over: all.length > limit };
    }
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (got + value.length > limit) {
          reader.cancel().catch(() => {});
          return { bytes: buffer.subarray(0, got), over: true };
        }
        if (got + value.length > buffer.length) {
          const grown = new Uint8Array(Math.min(limit + 1, Math.max(2 * buffer.length, got + value.length)));
          grown.set(buffer.subarray(0, got));
          buffer = grown;
        }
        buffer.set(value, got);
        got += value.length;
        this.networkBytes += value.length;
        this.progress(value.length);
      }
    } catch (err) {
      if (this.signal?.aborted) throw this.signal.reason ?? err;
      throw fail('storage', `${response.url}: the reply broke off (${err?.message ?? err})`);
    }
    return { bytes: buffer.subarray(0, got), over: false };
  }

  status(response, url, start, end) {
    if (response.status === 404 || response.status === 410) throw fail('not_found', `${url}: not found (HTTP ${response.status})`);
    if (response.status === 416) {
      throw fail('storage', `${url}: bytes ${start}..${end} asked, but the file is shorter than the manifest says (truncated?)`);
    }
    if (!response.ok) throw fail('storage', `${url}: HTTP ${response.status} for bytes ${start}..${end}`);
  }

  /** Up to `length` bytes from the start of `url` (fewer when the file is shorter). */
  async prefix(url, length) {
    const response = await this.request(url, { Range: `bytes=0-${length - 1}` });
    this.status(response, url, 0, length);
    const { bytes, over } = await this.body(response, length);
    if (over) throw fail('storage', `${url}: asked for ${length} bytes, the server sent more (it ignores Range)`);
    return bytes;
  }

  /** Exactly bytes [start, end) of `url`. */
  async range(url, start, end) {
    const response = await this.request(url, { Range: `bytes=${start}-${end - 1}` });
    this.status(response, url, start, end);
    const first = /^bytes (\d+)-/.exec(response.headers.get('content-range') ?? '');
    if (response.status === 200 && start !== 0) {
      throw fail('storage', `${url}: the server ignores Range (sent the whole file); serve it with range support`);
    }
    if (first && Number(first[1]) !== start) throw fail('storage', `${url}: asked for bytes from ${start}, got bytes from ${first[1]}`);
    const { bytes, over } = await this.body(response, end - start);
    if (over) throw fail('storage', `${url}: asked for ${end - start} bytes, the server sent more (it ignores Range)`);
    if (bytes.length < end - start) {
      throw fail('storage', `${url}: bytes ${start}..${end} asked, got ${bytes.length}: the file is shorter than the manifest says (truncated?)`);
    }
    return bytes;
  }

  /** A whole immutable shard: from the cache when it holds it, else fetched and stored there. */
  shard(url, length, sha256) {
    if (!this.shards.has(url)) {
      const loading = this.fetchShard(url, length, sha256);
      loading.catch(() => this.shards.delete(url));
      this.shards.set(url, loading);
    }
    return this.shards.get(url);
  }

  async fetchShard(url, length, sha256) {
    this.checkAborted();
    const hit = await this.cache.match(url);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      if (bytes.length === length) {
        this.cacheHits += 1;
        this.progress(bytes.length);
        return bytes;
      }
      await this.cache.delete(url); // a damaged entry: fetch it again
    }
    const response = await this.request(url, {});
    this.status(response, url, 0, length);
    const { bytes, over } = await this.body(response, length);
    if (over || bytes.length !== length) throw fail('storage', `${url}: shard of ${over ? 'more than ' : ''}${bytes.length} bytes, the manifest says ${length}`);
    if ((await sha256Hex(bytes)) !== sha256) throw fail('integrity', `${url}: hash mismatch: the shard is corrupted`);
    await this.cache.put(url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream' } }));
    return bytes;
  }

  /**
   * Bytes of several blobs ({url, start, end, shard}) in as few requests as possible: nearby
   * ranges of one file share a request; whole shards come from the cache when one is set.
   */
  async blobs(items) {
    const out = new Array(items.length);
    const order = items.map((item, i) => [item, i]).sort((a, b) => (a[0].url < b[0].url ? -1 : a[0].url > b[0].url ? 1 : a[0].start - b[0].start));
    const groups = [];
    for (const [item, i] of order) {
      const last = groups[groups.length - 1];
      if (!this.cache && last && last.url === item.url && item.start - last.end <= MERGE_GAP && item.end - last.start <= MERGE_MAX) {
        last.end = Math.max(last.end, item.end);
        last.members.push([item, i]);
      } else {
        groups.push({ url: item.url, start: item.start, end: item.end, shard: item.shard, members: [[item, i]] });
      }
    }
    await pooled(
      groups.map((g) => async () => {
        let bytes;
        let base = g.start;
        if (this.cache && g.shard) {
          bytes = await this.shard(g.url, g.shard.length, g.shard.sha256);
          base = 0;
          if (g.end > bytes.length) throw fail('storage', `${g.url}: shorter than the manifest says`);
        } else {
          bytes = await this.range(g.url, g.start, g.end);
        }
        for (const [item, i] of g.members) out[i] = bytes.subarray(item.start - base, item.end - base);
      }),
    );
    return out;
  }
}
