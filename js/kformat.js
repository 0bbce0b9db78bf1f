// kformat for JavaScript: read kformat containers in browsers and Node 20+.
//
//   import { openModel } from 'kformat';
//   const model = await openModel('https://cdn.example.com/digits/', { cache: await caches.open('kformat') });
//   const { shape, data } = await model.tensor('fc1.weight');   // Float32Array for lossy rules
//
// Header and manifest with range requests, checked in the reference reader's order; every
// blob's SHA-256 checked with WebCrypto; PNG planes inflated by the platform's
// DecompressionStream, zstd planes by zstd's own decoder in WebAssembly (zstddec; fzstd where
// WebAssembly cannot run); errors are KFormatError with a `kind`.

export { openModel, Model, MAX_MANIFEST_BYTES } from './src/reader.js';
export { KFormatError } from './src/errors.js';
