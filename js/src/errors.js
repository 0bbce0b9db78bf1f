// Every failure a reader reports for a bad file, a bad server or a bad argument.
// `kind` is the language-neutral kind of spec/conformance/README.md (format, version, limits,
// integrity, decode, storage, not_found), the same as the Python reader's.

export class KFormatError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = 'KFormatError';
    this.kind = kind;
  }
}

export const fail = (kind, message) => new KFormatError(kind, message);
