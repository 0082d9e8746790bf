"""The settings model: the example loads, overrides work, bad files list every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import TIMING_KEYS, Settings, load_settings
from daemon.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_with_documented_defaults() -> None:
    settings = load_settings(ROOT / "config.example.toml")
    dest = settings.get_destination("consents")
    assert settings.workers == 4
    assert settings.redox.token_url == "https://api.redoxengine.com/v2/auth/token"
    assert dest.model == "Media"
    assert dest.timing.settle_seconds == 3
    assert dest.timing.embed_max_bytes == 200_000
    assert dest.timing.upload_max_bytes == 30_000_000
    assert dest.timing.give_up_after_hours == 72
    assert dest.defaults["Media"]["DocumentType"] == "Consent Form"


def test_example_config_documents_every_key() -> None:
    text = (ROOT / "config.example.toml").read_text()
    for key in Settings.model_fields:
        assert f"{key} =" in text or f"[{key}]" in text or f"[[{key}]]" in text, key
    from daemon.config import (
        AlertsSettings,
        Destination,
        FhirSettings,
        MetricsSettings,
        RedoxSettings,
    )

    for model in (Destination, RedoxSettings, FhirSettings, AlertsSettings, MetricsSettings):
        for key in model.model_fields:
            assert f"{key} =" in text or f"[destination.{key}]" in text, f"{model.__name__}.{key}"


def test_every_key_has_a_description() -> None:
    from daemon.config import (
        AlertsSettings,
        Destination,
        FhirSettings,
        MetricsSettings,
        RedoxSettings,
    )

    for model in (
        Settings,
        Destination,
        RedoxSettings,
        FhirSettings,
        AlertsSettings,
        MetricsSettings,
    ):
        for name, info in model.model_fields.items():
            if name in ("redox", "fhir"):
                continue
            assert info.description, f"{model.__name__}.{name} has no description"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


MINIMAL = """
[redox]
client_id = "x"
[[destination]]
name = "consents"
inbox = "in"
done = "done"
failed = "failed"
redox_destination_id = "d"
"""


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, 'state_dir = "state"\n' + MINIMAL))
    assert settings.state_dir == tmp_path / "state"
    assert settings.destination[0].inbox == tmp_path / "in"
    assert settings.redox.private_key_file == tmp_path / "redox-key.pem"


def test_destination_overrides_timing_keys(tmp_path: Path) -> None:
    text = "settle_seconds = 5\nretry_cap_seconds = 60\n" + MINIMAL + "settle_seconds = 30\n"
    dest = load_settings(_write(tmp_path, text)).destination[0]
    assert dest.timing.settle_seconds == 30
    assert dest.timing.retry_cap_seconds == 60
    assert all(getattr(dest, key) is not None for key in TIMING_KEYS)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHARTDROP_WORKERS", "9")
    monkeypatch.setenv("CHARTDROP_REDOX__API_URL", "https://example.test")
    settings = load_settings(_write(tmp_path, "workers = 2\n" + MINIMAL))
    assert settings.workers == 9
    assert settings.redox.api_url == "https://example.test"


def test_credentials_directory_supplies_secret_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "redox-key").write_text("key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = MINIMAL.replace('client_id = "x"', 'client_id = "x"\nprivate_key_file = "redox-key"')
    assert load_settings(_write(tmp_path, text)).redox.private_key_file == creds / "redox-key"


def test_bad_file_lists_every_problem_with_key_paths(tmp_path: Path) -> None:
    text = """
workers = "many"
settle_seconds = -1
bogus = 1
[redox]
api_url = "ftp://x"
[[destination]]
name = "has space"
inbox = "x"
"""
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    problems = info.value.problems
    assert sorted(problems) == sorted(
        [
            "workers: must be a whole number",
            "settle_seconds: must be at least 0.0",
            "bogus: is not a setting chartdrop knows (check its spelling)",
            "[redox] api_url: must be an http(s) URL",
            '[[destination]] "has space" name: may hold only letters, digits, _ . and - '
            "(at most 64, starting with a letter or digit)",
            '[[destination]] "has space" done: is required but missing',
            '[[destination]] "has space" failed: is required but missing',
            "[[destination]] \"has space\": redox_destination_id is required for model = 'Media'",
        ]
    )


def test_plain_words_typo_suggestions_and_every_problem_in_one_run(tmp_path: Path) -> None:
    """Destinations by name, the closest known key for a typo, and cross-field
    problems reported alongside field problems (pydantic alone would skip them)."""
    text = """
settle_secnds = 3
[redox]
private_key_fle = "k.pem"
[[destination]]
name = "consents"
inbox = "i"
done = "d"
failed = "f"
modle = "Notes"
redox_destination_id = "d"
[[destination]]
name = "gateway"
inbox = "i2"
done = "d2"
failed = "f2"
model = "FHIR"
[[destination]]
name = "letters"
inbox = "i3"
model = "Notes"
[[destination]]
name = "letters"
inbox = "i4"
done = "d4"
failed = "f4"
redox_destination_id = "d"
"""
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    problems = info.value.problems
    assert sorted(problems) == sorted(
        [
            "settle_secnds: is not a setting chartdrop knows; did you mean settle_seconds?",
            "[redox] private_key_fle: is not a setting chartdrop knows; "
            "did you mean private_key_file?",
            '[[destination]] "consents" modle: is not a setting chartdrop knows; '
            "did you mean model?",
            '[[destination]] "letters" done: is required but missing',
            '[[destination]] "letters" failed: is required but missing',
            "[[destination]] \"letters\": redox_destination_id is required for model = 'Notes'",
            "destination names must be unique (repeated: letters)",
            "[[destination]] \"gateway\" (model = 'FHIR') needs [fhir].base_url "
            "or its own base_url",
            "[[destination]] \"gateway\" (model = 'FHIR') needs [fhir].token_url "
            "and client_secret_file",
        ]
    )
    text = "\n".join(problems)
    assert "Extra inputs" not in text and "destination[" not in text


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('model = "Notes"\n', "redox_destination_id is required for model = 'Notes'"),
        (
            'model = "FHIR"\n',
            "[[destination]] \"consents\" (model = 'FHIR') needs [fhir].base_url "
            "or its own base_url",
        ),
        ('model = "Results"\nredox_destination_id = "d"\nbase_url = "https://x"\n', "only for"),
        (
            'model = "Fax"\n',
            "[[destination]] \"consents\" model: must be one of 'Media', 'Notes', 'Results'",
        ),
        ('accepted_types = ["DOCX"]\nredox_destination_id = "d"\n', "accepted_types[0]"),
    ],
)
def test_model_specific_keys_are_checked(tmp_path: Path, extra: str, expected: str) -> None:
    base = '[[destination]]\nname = "consents"\ninbox = "i"\ndone = "d"\nfailed = "f"\n'
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, base + extra))
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_legacy_auth_needs_api_key_and_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs api_key and secret_file"):
        load_settings(_write(tmp_path, MINIMAL.replace('client_id = "x"', 'auth = "legacy"')))
    text = MINIMAL.replace('client_id = "x"', 'auth = "legacy"\napi_key = "k"\nsecret_file = "s"')
    settings = load_settings(_write(tmp_path, text))
    assert settings.redox.secret_file == tmp_path / "s"


def test_duplicate_destination_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unique"):
        load_settings(_write(tmp_path, MINIMAL + MINIMAL.split("[redox]")[1].split("\n", 2)[2]))


def test_toml_syntax_error_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "workers = = 3\n"))
    assert len(info.value.problems) == 1
    assert "not valid TOML" in info.value.problems[0]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_spool_dir_defaults_to_state_dir_and_can_be_set(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, 'state_dir = "st"\n' + MINIMAL))
    assert settings.spool_dir == tmp_path / "st" / "spool"
    settings = load_settings(_write(tmp_path, 'spool_dir = "/srv/x/spool"\n' + MINIMAL))
    assert settings.spool_dir == Path("/srv/x/spool")
    assert settings.state_dir == Path("/var/lib/chartdrop")


def test_timing_keys_are_one_list_with_one_type_each() -> None:
    """Timing is the one definition of the keys: each is a top-level setting with a
    default and a per-destination override of the same type, resolved typed."""
    import dataclasses
    import typing

    from daemon.config import Destination, Settings, Timing, TimingOverrides

    hints = typing.get_type_hints(Timing)
    assert set(TimingOverrides.model_fields) == set(hints)
    for key, kind in hints.items():
        assert Settings.model_fields[key].annotation is kind, key
        assert Destination.model_fields[key].annotation == kind | None, key
    settings = load_settings(ROOT / "config.example.toml")
    timing = settings.get_destination("consents").timing
    assert isinstance(timing, Timing) and dataclasses.is_dataclass(timing)
    assert isinstance(timing.embed_max_bytes, int) and isinstance(timing.settle_seconds, float)
