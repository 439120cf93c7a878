"""Model files (TOML): reading, checking and writing."""

from dynlearn.io.model_file import ModelFile, load_model_file, model_to_toml, parse_model_text

__all__ = ["ModelFile", "load_model_file", "model_to_toml", "parse_model_text"]
