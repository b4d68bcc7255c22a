"""Checkpoint and archive I/O: safetensors read and written by byte range, peft LoRA folders, GGUF, pinned PyPI
archives, tensor sources streamed one tensor at a time, and outputs published all or nothing."""
