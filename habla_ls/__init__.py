"""habla-ls: Habla recordings -> Label Studio -> a better Spanish Whisper."""

__version__ = "0.1.0"
