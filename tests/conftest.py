import pytest

from fi_resources.settings import get_settings


@pytest.fixture
def fi_home(tmp_path, monkeypatch):
    """A fresh data root for one test, seen by the settings, the CLI and the definitions."""
    home = tmp_path / "fi_home"
    monkeypatch.setenv("FI_HOME", str(home))
    monkeypatch.delenv("FI_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
