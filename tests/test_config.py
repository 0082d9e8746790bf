"""The settings model: the example loads, overrides work, bad files list every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import TIMING_KEYS, Destination, Settings, Timing, load_settings
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


def test_each_timing_key_is_declared_once_in_timing() -> None:
    """Timing's class body is the only place a timing key is declared; the
    top-level keys and the per-destination overrides are made from it."""
    import ast

    import daemon.config

    tree = ast.parse(Path(daemon.config.__file__).read_text())
    declared: dict[str, list[str]] = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                declared.setdefault(stmt.target.id, []).append(cls.name)
    assert {key for key, where in declared.items() if "Timing" in where} == set(TIMING_KEYS)
    for key in TIMING_KEYS:
        assert declared[key] == ["Timing"], (key, declared[key])


def test_top_level_keys_and_destination_overrides_share_one_definition() -> None:
    """Type, default, bound and description: the same at the top level; in a
    destination the same but optional (None: the top level's value)."""
    for key, info in Timing.model_fields.items():
        top, dest = Settings.model_fields[key], Destination.model_fields[key]
        assert (top.annotation, top.default, top.metadata, top.description) == (
            info.annotation,
            info.default,
            info.metadata,
            info.description,
        ), key
        assert dest.annotation == info.annotation | None, key
        assert dest.default is None, key
        assert (dest.metadata, dest.description) == (info.metadata, info.description), key
        assert info.metadata, f"{key} has no bound"


def test_defaults_are_used_where_no_table_sets_a_key(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, MINIMAL))
    timing = settings.destination[0].timing
    assert timing == Timing()
    assert (settings.settle_seconds, timing.settle_seconds, timing.rescan_seconds) == (3, 3, 60)
    assert isinstance(timing.embed_max_bytes, int) and isinstance(timing.settle_seconds, float)


# A value each timing key refuses, and the plain words it is refused with.
BAD_TIMING = {
    "settle_seconds": ("-1", "must be at least 0.0"),
    "rescan_seconds": ("0", "must be greater than 0.0"),
    "sidecar_timeout_seconds": ("-5", "must be greater than 0.0"),
    "retry_base_seconds": ('"soon"', "must be a number"),
    "retry_cap_seconds": ("0", "must be greater than 0.0"),
    "give_up_after_hours": ("-72", "must be greater than 0.0"),
    "embed_max_bytes": ("1.5", "must be a whole number"),
    "upload_max_bytes": ("0", "must be greater than 0"),
}


def test_every_timing_key_has_a_refused_value_here() -> None:
    assert set(BAD_TIMING) == set(TIMING_KEYS)


@pytest.mark.parametrize(("key", "bad"), BAD_TIMING.items())
def test_a_bad_timing_value_is_refused_in_the_same_words_at_top_level_and_in_a_destination(
    tmp_path: Path, key: str, bad: tuple[str, str]
) -> None:
    value, words = bad
    with pytest.raises(ConfigError) as top:
        load_settings(_write(tmp_path, f"{key} = {value}\n" + MINIMAL))
    assert top.value.problems == [f"{key}: {words}"]
    with pytest.raises(ConfigError) as dest:
        load_settings(_write(tmp_path, MINIMAL + f"{key} = {value}\n"))
    assert dest.value.problems == [f'[[destination]] "consents" {key}: {words}']


def test_a_misspelt_timing_key_in_a_destination_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, MINIMAL + "give_up_after_hour = 1\n"))
    assert info.value.problems == [
        '[[destination]] "consents" give_up_after_hour: is not a setting chartdrop knows; '
        "did you mean give_up_after_hours?"
    ]


def test_an_environment_variable_sets_a_timing_key_every_destination_inherits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTDROP_RESCAN_SECONDS", "5")
    settings = load_settings(_write(tmp_path, "rescan_seconds = 30\n" + MINIMAL))
    assert settings.destination[0].timing.rescan_seconds == 5


def test_the_example_and_the_readme_give_every_timing_key_its_default() -> None:
    """config.example.toml sets each at the top level to its default; the README's
    table marks exactly these keys "¹" (overridable per destination), with their
    defaults."""
    import re
    import tomllib

    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    readme = (ROOT / "README.md").read_text()
    marked: dict[str, str] = {}
    for keys, defaults in re.findall(r"^\| (`[^|]*¹[^|]*) \| ([^|]*) \|", readme, re.M):
        names = re.findall(r"`(\w+)` ¹", keys)
        marked |= dict(zip(names, defaults.split(", "), strict=True))
    assert set(marked) == set(TIMING_KEYS)
    for key, info in Timing.model_fields.items():
        assert example[key] == info.default, key
        assert marked[key] == str(info.default), key
