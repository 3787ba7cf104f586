"""Model loading, tokenisation and the model adapter (no knowledge of methods or storage)."""
