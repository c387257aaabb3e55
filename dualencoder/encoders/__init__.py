"""Everything that embeds: one loader for every model spec, ensembles, CLIP, the embedding cache."""
