"""The standalone generator: sources, exemplar selection, synthesis, shards, manifests, audit. Never imported by `train`."""
