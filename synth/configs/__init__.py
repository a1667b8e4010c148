"""Default config files shipped with the generator (synthesis.json: the transform ranges of issue 3)."""
