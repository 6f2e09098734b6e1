"""reelora.data: licensed film library -> captioned clip shards with provenance, audit and takedown."""
