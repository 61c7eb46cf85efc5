"""Shared fixtures. Each fixtures module belongs to the part of the product it serves."""

pytest_plugins = [
    "tests.fixtures_labelstudio",
    "tests.fixtures_audio",
    "tests.fixtures_models",
]
