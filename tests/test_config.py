"""Settings: precedence, the document root, and the token never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from habla_ls.config import ConfigError, load_settings


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    config = tmp_path / "habla-ls.toml"
    config.write_text('label_studio_url = "http://file:1/"\nproject_title = "from file"\nhome = "/from/file"\n')
    env = {"LABEL_STUDIO_URL": "http://env:2", "HABLA_LS_HOME": str(tmp_path / "env-home")}
    settings = load_settings(config, environ=env, home=str(tmp_path / "flag-home"))
    assert settings.label_studio_url == "http://env:2"
    assert settings.project_title == "from file"
    assert settings.home == tmp_path / "flag-home"
    assert settings.archive_dir == tmp_path / "flag-home" / "archive"


def test_document_root_defaults_to_home_and_reads_label_studio_variable(tmp_path: Path) -> None:
    assert load_settings(environ={}, home=str(tmp_path)).document_root == tmp_path.resolve()
    env = {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path / "root")}
    assert load_settings(environ=env, home=str(tmp_path / "root" / "home")).document_root == (tmp_path / "root").resolve()


def test_token_is_not_in_repr_and_missing_token_is_a_clear_error(tmp_path: Path) -> None:
    settings = load_settings(environ={"LABEL_STUDIO_API_KEY": "secret-token-123"})
    assert "secret-token-123" not in repr(settings)
    assert settings.require_api_key() == "secret-token-123"
    with pytest.raises(ConfigError, match="LABEL_STUDIO_API_KEY"):
        load_settings(environ={}).require_api_key()


def test_unknown_setting_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "habla-ls.toml"
    config.write_text('label_studio_ulr = "typo"\n')
    with pytest.raises(ConfigError, match="label_studio_ulr"):
        load_settings(config, environ={})
