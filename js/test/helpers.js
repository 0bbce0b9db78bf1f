// A fetch for file:// URLs with HTTP range semantics (206, 416, 404), so the reader runs on
// local files under Node exactly as it runs against a server.

import { open, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

export function fileFetch(log = []) {
  return async (url, init = {}) => {
    const path = fileURLToPath(url);
    const range = /^bytes=(\d+)-(\d+)$/.exec(init.headers?.Range ?? '');
    log.push({ url, range: init.headers?.Range ?? null });
    let info;
    try {
      info = await stat(path);
    } catch {
      return new Response('not found', { status: 404 });
    }
    if (!info.isFile()) return new Response('not found', { status: 404 });
    const start = range ? Number(range[1]) : 0;
    const end = range ? Math.min(Number(range[2]) + 1, info.size) : info.size;
    if (range && start >= info.size) return new Response(null, { status: 416, headers: { 'content-range': `bytes */${info.size}` } });
    const handle = await open(path, 'r');
    try {
      const bytes = new Uint8Array(Math.max(0, end - start));
      await handle.read(bytes, 0, bytes.length, start);
      const headers = { 'content-length': String(bytes.length) };
      if (range) headers['content-range'] = `bytes ${start}-${end - 1}/${info.size}`;
      return new Response(bytes, { status: range ? 206 : 200, headers });
    } finally {
      await handle.close();
    }
  };
}
