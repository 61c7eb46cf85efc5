"""Tiny random Whisper models with the real multilingual tokenizer, and the real whisper-base."""
