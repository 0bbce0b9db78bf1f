"""The pack journey: source tensors -> plan (recipe) -> encode (method) -> tiles (codec) ->
sink (single file or shards, atomically). Also relayout (publish) and bit allocation."""
