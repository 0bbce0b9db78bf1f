"""The container format itself: constants and limits, the 64-byte header, the manifest's
pydantic models (the schema), and the consistency checks a reader runs before any blob."""
