"""The live workbench's logic: cached re-embedding, per-layer quantization state, its figures."""
