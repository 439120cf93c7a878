"""Model files (TOML): reading, checking and writing."""

from dynlearn.io.model_file import (
    MODEL_FILE_KEYS,
    ModelFile,
    load_model_file,
    looks_like_csv,
    model_to_toml,
    parse_model_text,
)

__all__ = ["MODEL_FILE_KEYS", "ModelFile", "load_model_file", "looks_like_csv", "model_to_toml",
           "parse_model_text"]
