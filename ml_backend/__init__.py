"""Label Studio ML backend: Whisper inference engine, HTTP server, model registry reader."""
