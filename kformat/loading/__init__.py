"""The load journey: URL -> store -> container (opening, blobs, tables, stream, decode,
verify) -> lazy tensors and models."""
