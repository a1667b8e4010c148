"""Training config files shipped with the package (``default.json``)."""
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).with_name("default.json")
