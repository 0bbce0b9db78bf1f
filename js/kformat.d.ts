// Type declarations of the kformat JavaScript reader.

export type ErrorKind = 'format' | 'version' | 'limits' | 'integrity' | 'decode' | 'storage' | 'not_found';

export class KFormatError extends Error {
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, message: string);
}

export type DType =
  | 'float16' | 'float32' | 'float64' | 'bfloat16' | 'float8_e4m3fn' | 'float8_e5m2'
  | 'int8' | 'int16' | 'int32' | 'int64' | 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'bool';

export type TypedArray =
  | Float32Array | Float64Array | Int8Array | Int16Array | Int32Array | BigInt64Array
  | Uint8Array | Uint16Array | Uint32Array | BigUint64Array;

export interface Progress {
  /** bytes received so far (network or cache) */
  loaded: number;
  /** bytes of the manifest and every blob of the model */
  total: number;
}

export interface OpenOptions {
  /** the fetch to use (default: globalThis.fetch); must honour `Range` request headers */
  fetch?: (url: string, init?: RequestInit) => Promise<Response>;
  /** a Cache API cache: immutable shards of a sharded model are kept there and served from it */
  cache?: Cache;
  onProgress?: (progress: Progress) => void;
  signal?: AbortSignal;
  /** refuse any manifest but this one (the hex digest `kformat inspect` prints) */
  manifestSha256?: string;
  /** largest manifest accepted (default 64 MiB) */
  maxManifest?: number;
  /** refuse to materialise a tensor larger than this many bytes */
  maxTensorBytes?: number;
}

export interface TensorInfo {
  name: string;
  shape: number[];
  dtype: DType;
  rule: string;
  method: 'kmeans' | 'linear' | 'fp16' | 'raw';
  bits: number | null;
  codec: 'png' | 'zstd' | 'raw' | 'floatz';
  storedBytes: number;
  /** what tensor() returns: float32 for lossy rules, the source dtype for raw ones */
  decodedDtype: DType;
}

export interface Tensor {
  name: string;
  shape: number[];
  dtype: DType;
  /** Float32Array for lossy rules; the natural typed array for raw ones (float16, bfloat16, float8: their bits) */
  data: TypedArray;
}

export interface Quantized {
  name: string;
  method: string;
  bits: number | null;
  groupRows: number;
  shape: number[];
  view: [number, number];
  /** code methods: one code per weight of the 2-D view, row-major */
  codes?: Uint8Array;
  /** code methods: codebook (groups x 2^bits), scale, zero_point, as float32 (zero_point: uint8) */
  tables?: Record<string, Float32Array | Uint8Array>;
  /** value methods (fp16, raw): the stored values */
  storage?: DType;
  values?: TypedArray;
}

export interface Manifest {
  format: 'kformat';
  version: [number, number];
  layout: 'single' | 'sharded';
  must_understand: string[];
  metadata: Record<string, string>;
  aliases: Record<string, string>;
  tensors: unknown[];
  shards: { name: string; length: number; sha256: string }[];
}

export class Model {
  readonly url: string;
  readonly manifest: Manifest;
  readonly manifestSha256: string;
  /** every tensor name, in file order, each stored tensor followed by its aliases */
  readonly names: string[];
  /** bytes received so far, from the network or the cache */
  readonly bytesRead: number;
  /** of bytesRead, those that came over the network */
  readonly networkBytes: number;
  readonly requests: number;
  readonly cacheHits: number;
  info(name: string): TensorInfo;
  tensor(name: string): Promise<Tensor>;
  quantized(name: string): Promise<Quantized>;
  /** every tensor, aliases sharing their tensor's data */
  loadAll(): Promise<Map<string, Tensor>>;
}

export const MAX_MANIFEST_BYTES: number;

/** Open a single .kf file, or a sharded directory (a URL ending in "/"). */
export function openModel(url: string | URL, options?: OpenOptions): Promise<Model>;
