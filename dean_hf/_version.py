"""The installed dean_hf version (read by the package root, configs, score files and the build)."""

__version__ = "0.2.0"
