"""Shared fixtures. Each fixtures module belongs to the part of the product it serves."""

import os
import tempfile

pytest_plugins = [
    "tests.fixtures_labelstudio",
    "tests.fixtures_audio",
    "tests.fixtures_models",
]

# Kokoro voice packs a developer installed (make kokoro-voices) would change which voices exist; the tests
# see only the five shipped ones, plus packs a test installs itself.
os.environ["HABLA_LS_KOKORO_VOICES"] = tempfile.mkdtemp(prefix="habla-ls-test-voices-")
