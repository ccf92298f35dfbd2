"""Channel definitions: the directory setting, known locations, one-line errors, output plan."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from erpsync.channels import (
    CHANNELS_DIR,
    REFERENCE_LOCATIONS,
    ChannelConfigError,
    OutputPlan,
    configured_channels,
    load_channels,
)
from erpsync.settings import Settings


@pytest.fixture
def channels_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "channels"
    shutil.copytree(CHANNELS_DIR, directory)
    return directory


def test_the_reference_channels_name_only_reference_locations() -> None:
    channels = {c.id: c for c in load_channels()}
    assert set(channels) == {"b2b-portal", "inside-sales", "marketplace"}
    assert channels["marketplace"].locations == ("DC-EAST",)
    assert REFERENCE_LOCATIONS == ("DC-EAST", "DC-WEST", "DC-CENTRAL")
    assert Settings().flows.locations == REFERENCE_LOCATIONS


def test_a_misspelled_location_is_an_error_naming_file_key_and_the_likely_name(channels_dir: Path) -> None:
    path = channels_dir / "marketplace.toml"
    path.write_text(path.read_text().replace('["DC-EAST"]', '["DC-EAT"]'))
    with pytest.raises(ChannelConfigError) as err:
        load_channels(channels_dir)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "key 'locations'" in message and "'DC-EAT'" in message
    assert "did you mean 'DC-EAST'" in message


def test_declared_locations_come_from_the_setting(channels_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (channels_dir / "wholesale-eu.toml").write_text('id = "wholesale-eu"\nlocations = ["EU-ROTTERDAM"]\n')
    with pytest.raises(ChannelConfigError, match="unknown location 'EU-ROTTERDAM'"):
        configured_channels(Settings(flows={"channels_dir": channels_dir}))
    monkeypatch.setenv("ERPSYNC_FLOWS__CHANNELS_DIR", str(channels_dir))
    monkeypatch.setenv("ERPSYNC_FLOWS__LOCATIONS", '["DC-EAST", "DC-WEST", "DC-CENTRAL", "EU-ROTTERDAM"]')
    channels = {c.id: c for c in configured_channels(Settings())}
    assert channels["wholesale-eu"].locations == ("EU-ROTTERDAM",)
    assert set(channels) == {"b2b-portal", "inside-sales", "marketplace", "wholesale-eu"}


def test_the_channel_directory_setting_replaces_the_packaged_one(tmp_path: Path) -> None:
    directory = tmp_path / "only-one"
    directory.mkdir()
    (directory / "b2b-portal.toml").write_text((CHANNELS_DIR / "b2b-portal.toml").read_text())
    assert [c.id for c in configured_channels(Settings(flows={"channels_dir": directory}))] == ["b2b-portal"]
    assert len(configured_channels(Settings())) == 3  # default: the packaged definitions


@pytest.mark.parametrize(("content", "expected"), [
    ('id = "x"\nshare = 1.5\n', "key 'share': Input should be less than or equal to 1 (got 1.5)"),
    ('id = "x"\nshare = "lots"\n', "key 'share': Input should be a valid number"),
    ('id = "x"\nshrae = 0.5\n', "key 'shrae': not a channel setting"),
    ('id = "x"\n[intake]\nprice_tolerance = "a cent"\n', "key 'intake.price_tolerance'"),
    ('id = "x"\nlocations = []\n', "key 'locations': locations: leave it out for every location"),
    ('share = 0.5\n', "key 'id': required"),
    ('id = "x"\nshare = = 1\n', "not valid TOML: Invalid value (at line 2, column 9)"),
    ('id = "X Y"\n', "key 'id': String should match pattern"),
])
def test_a_bad_definition_is_one_line_naming_file_and_key(channels_dir: Path, content: str, expected: str) -> None:
    path = channels_dir / "zz-bad.toml"
    path.write_text(content)
    with pytest.raises(ChannelConfigError) as err:
        load_channels(channels_dir)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"channel definition {path}: ")
    assert expected in str(err.value)


def test_two_files_with_one_id_are_named_both(channels_dir: Path) -> None:
    (channels_dir / "copy.toml").write_text((channels_dir / "marketplace.toml").read_text())
    with pytest.raises(ChannelConfigError, match=r"copy.toml: key 'id': 'marketplace' is already defined by .*"
                                                 r"marketplace.toml|marketplace.toml: key 'id': 'marketplace' is "
                                                 r"already defined by .*copy.toml"):
        load_channels(channels_dir)


def test_an_empty_or_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ChannelConfigError, match="not a directory"):
        load_channels(tmp_path / "nope")
    with pytest.raises(ChannelConfigError, match="no channel definitions"):
        load_channels(tmp_path)


def test_output_plan_follows_each_channels_outputs(channels_dir: Path) -> None:
    (channels_dir / "storefront.toml").write_text(
        'id = "storefront"\n[outputs]\nformat = "json"\nkafka = true\nredis = false\n')
    (channels_dir / "redis-only.toml").write_text('id = "redis-only"\n[outputs]\nkafka = false\n')
    plan = OutputPlan.of(load_channels(channels_dir))
    assert plan.json_topics == {"availability.storefront", "order-status.storefront",
                                "availability.inside-sales", "order-status.inside-sales"}
    assert plan.kafka_off == {"availability.redis-only", "order-status.redis-only"}
    assert plan.redis_channels == {"b2b-portal", "inside-sales", "marketplace", "redis-only"}
    assert plan.format_of("availability.storefront") == "json" and plan.format_of("availability.marketplace") == "avro"
