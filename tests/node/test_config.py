"""The node's configuration: sizes, addresses, and `config.toml` under the flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import (
    DEFAULT_PORT,
    NodeConfig,
    load_config,
    parse_address,
    parse_duration,
    parse_size,
)
from node.errors import ConfigError

MiB = 1024**2
GiB = 1024**3


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        (1048576, 1048576),
        (0, 0),
        ("0", 0),
        ("100 MiB", 100 * MiB),
        ("2.5GB", 2_500_000_000),
        ("20GiB", 20 * GiB),
        ("1k", 1000),
        ("1KB", 1000),
        ("3mib", 3 * MiB),
        ("0.5 KiB", 512),
        (" 7 B ", 7),
        ("1 TiB", 1024**4),
    ],
)
def test_parse_size_accepts_si_and_iec_units(text: str | int, size: int) -> None:
    """Plain byte counts, SI and IEC units and decimals parse, case-insensitively."""
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lots", "not a size"),
        ("", "not a size"),
        ("-5", "not a size"),
        ("5 XB", "unknown size unit 'XB'"),
        ("1e3", "not a size"),
        (-1, "cannot be negative"),
        (True, "not a size"),
    ],
)
def test_parse_size_refuses_what_is_not_a_size(text: str | int, message: str) -> None:
    """Text that is not a size, a negative count or a bool is a ConfigError saying so."""
    with pytest.raises(ConfigError, match=message):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:4410", ("127.0.0.1", 4410)),
        ("example.org:1", ("example.org", 1)),
        (" 10.0.0.1:0 ", ("10.0.0.1", 0)),
        ("[::1]:4410", ("::1", 4410)),
        ("[2001:db8::7]:65535", ("2001:db8::7", 65535)),
    ],
)
def test_parse_address_reads_host_and_port(text: str, address: tuple[str, int]) -> None:
    """HOST:PORT and [IPv6]:PORT give (host, port)."""
    assert parse_address(text) == address


def test_parse_address_uses_the_default_port_only_when_given_one() -> None:
    """A bare host takes the default port if there is one, and is an error if not."""
    assert parse_address("example.org", default_port=4410) == ("example.org", 4410)
    assert parse_address("[::1]", default_port=4410) == ("::1", 4410)
    with pytest.raises(ConfigError, match="no port"):
        parse_address("example.org")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":4410", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("host:99999", "bad port"),
        ("host:-1", "bad port"),
        ("host:http", "bad port"),
        ("[::1", r"expected \[IPv6\]:PORT"),
        ("[::1]4410", r"expected \[IPv6\]:PORT"),
        ("[]:4410", "expected HOST:PORT"),
    ],
)
def test_parse_address_refuses_malformed_addresses(text: str, message: str) -> None:
    """A missing host, a port out of range or not a number, or broken brackets is a
    ConfigError saying what is wrong."""
    with pytest.raises(ConfigError, match=message):
        parse_address(text, default_port=4410)


def write_config(data_dir: Path, text: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text(text, encoding="utf-8")


def test_defaults_without_a_config_file(tmp_path: Path) -> None:
    """With no config.toml and no flags, the node gets NodeConfig's defaults."""
    config = load_config(tmp_path)
    assert config == NodeConfig(data_dir=tmp_path)
    assert config.listen == ("127.0.0.1", DEFAULT_PORT)
    assert config.control_path == tmp_path / "control.sock"


def test_file_keys_are_the_flag_names(tmp_path: Path) -> None:
    """config.toml takes the flags' names, with `_` or `-`, and converts sizes and
    addresses as the flags do."""
    write_config(
        tmp_path,
        """
        listen = "0.0.0.0:4411"
        bootstrap = ["203.0.113.5:4410", "[2001:db8::1]", "198.51.100.7"]
        capacity = "50 GiB"
        k = 2
        n = 5
        happy = 4
        segment-size = "1 MiB"
        workers = 3
        log_level = "debug"
        """,
    )
    config = load_config(tmp_path)
    assert config.listen == ("0.0.0.0", 4411)
    assert config.bootstrap == (
        ("203.0.113.5", 4410),
        ("2001:db8::1", DEFAULT_PORT),
        ("198.51.100.7", DEFAULT_PORT),
    )
    assert config.capacity == 50 * GiB
    assert (config.k, config.n, config.happy) == (2, 5, 4)
    assert config.segment_size == MiB
    assert config.workers == 3
    assert config.log_level == "DEBUG"


def test_a_single_bootstrap_string_is_a_list_of_one(tmp_path: Path) -> None:
    """`bootstrap = "HOST:PORT"` means the same as a list holding that address."""
    write_config(tmp_path, 'bootstrap = "203.0.113.5:7"\n')
    assert load_config(tmp_path).bootstrap == (("203.0.113.5", 7),)


def test_flags_override_the_file(tmp_path: Path) -> None:
    """Flags given win over the file; flags not given (None) leave the file's values."""
    write_config(tmp_path, 'listen = "0.0.0.0:4411"\ncapacity = "1 GiB"\nk = 2\n')
    config = load_config(
        tmp_path,
        {"listen": "127.0.0.1:0", "bootstrap": ["127.0.0.1:9"], "capacity": None},
    )
    assert config.listen == ("127.0.0.1", 0)
    assert config.bootstrap == (("127.0.0.1", 9),)
    assert config.capacity == GiB
    assert config.k == 2


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    """A misspelt key is refused, naming the key and the file, never silently ignored."""
    write_config(tmp_path, "capcity = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert "'capcity'" in str(caught.value)
    assert str(tmp_path / "config.toml") in str(caught.value)
    with pytest.raises(ConfigError, match="unknown setting 'data_dir'"):
        load_config(tmp_path / "other", {"data_dir": "/elsewhere"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('capacity = "lots"', "capacity"),
        ("capacity = -1", "capacity"),
        ("capacity = 1.5", "capacity"),
        ('k = "3"', "k"),
        ("happy = true", "happy"),
        ("listen = 4410", "listen"),
        ('listen = "host:99999"', "listen"),
        ("bootstrap = 5", "bootstrap"),
        ("bootstrap = [5]", "bootstrap"),
        ('bootstrap = ["host:x"]', "bootstrap"),
        ("log_level = 3", "log_level"),
        ('log_level = "verbose"', "log_level"),
        ("workers = -1", "workers"),
        ("k = 11", "k"),
        ("happy = 11", "happy"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    """A value of the wrong type or out of range is a ConfigError naming its key."""
    write_config(tmp_path, text + "\n")
    with pytest.raises(ConfigError, match=key):
        load_config(tmp_path)


def test_bad_flag_values_name_the_flag(tmp_path: Path) -> None:
    """A malformed flag is a ConfigError naming the flag and the command line."""
    with pytest.raises(ConfigError, match="command line: capacity: not a size"):
        load_config(tmp_path, {"capacity": "lots"})
    with pytest.raises(ConfigError, match="command line: listen: bad port"):
        load_config(tmp_path, {"listen": "127.0.0.1:99999"})


def test_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    """A config.toml that is not TOML (or not UTF-8) is a ConfigError naming the file."""
    write_config(tmp_path, "capacity = \n")
    with pytest.raises(ConfigError, match=r"cannot read .*config\.toml"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_bytes(b"k = '\xff'\n")
    with pytest.raises(ConfigError, match=r"cannot read .*config\.toml"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (2.5, 2.5),
        ("90", 90.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("24h", 86400.0),
        ("7d", 7 * 86400.0),
        ("2w", 14 * 86400.0),
        (" 1.5 H ", 5400.0),
        (0, 0.0),
    ],
)
def test_parse_duration_reads_seconds_and_units(text: str | float, seconds: float) -> None:
    """Durations are seconds, or a number with s, m, h, d or w, case-insensitively."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "10 min", "-5", "1e3", -1, True, float("inf")])
def test_parse_duration_refuses_what_is_not_a_duration(text: str | float) -> None:
    """Words, unknown units, negative or infinite times and bools are refused."""
    with pytest.raises(ConfigError, match="duration"):
        parse_duration(text)


def test_stewardship_keys_from_the_file_and_the_flags(tmp_path: Path) -> None:
    """The keys that say how a node keeps files alive read from config.toml with units,
    flags win, and the threshold defaults to n - 4 (at least k)."""
    write_config(
        tmp_path,
        'audit_interval = "6h"\nrepair_grace = 3600\nrepair_delay = "90s"\n'
        'repair_bandwidth = "256 KiB"\nrepair_threshold = 6\n',
    )
    config = load_config(tmp_path)
    assert (config.audit_interval, config.repair_grace, config.repair_delay) == (
        6 * 3600.0,
        3600.0,
        90.0,
    )
    assert (config.repair_bandwidth, config.repair_at) == (256 * 1024, 6)
    flagged = load_config(tmp_path, {"audit_interval": "2s", "repair_threshold": 8})
    assert (flagged.audit_interval, flagged.repair_at) == (2.0, 8)
    assert NodeConfig(data_dir=tmp_path).repair_at == 6
    assert NodeConfig(data_dir=tmp_path, k=3, n=4, happy=3).repair_at == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('audit_interval = "often"', "audit_interval: not a duration"),
        ("audit_interval = 0", "audit_interval and repair_delay must be positive"),
        ("repair_grace = -1", "repair_grace"),
        ("repair_threshold = 10", r"repair_threshold must be k..n-1 \(3..9\)"),
        ("repair_threshold = 2", "repair_threshold must be k..n-1"),
        ('repair_bandwidth = "0"', "repair_bandwidth must be at least 1"),
    ],
)
def test_bad_stewardship_values_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    """Out-of-range stewardship settings are refused with the range they must be in."""
    write_config(tmp_path, text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path)


def test_lease_and_quota_keys(tmp_path: Path) -> None:
    """The lease and quota keys take durations and fractions, and refuse what makes no
    sense with one line."""
    (tmp_path / "config.toml").write_text(
        'lease_length = "60d"\nlease_renew_at = "20d"\ntrash_grace = "2d"\n'
        "key_share = 0.5\nprefix_share = 1\nsweep_interval = 600\n"
    )
    config = load_config(tmp_path)
    settings = config.lease_settings()
    assert (settings.length, settings.renew_at, settings.trash_grace) == (
        60 * 86400.0,
        20 * 86400.0,
        2 * 86400.0,
    )
    assert settings.sweep_interval == 600.0
    quota = config.quota_settings()
    assert (quota.key_share, quota.prefix_share, quota.owner_reserve) == (0.5, 1.0, 0.1)
    for text, problem in [
        ('lease_renew_at = "100d"', "lease_renew_at < lease_length"),
        ("key_share = 1.5", "key_share must be a fraction"),
        ('key_share = "half"', "fraction"),
        ("sweep_interval = 0", "sweep_interval must be positive"),
    ]:
        (tmp_path / "config.toml").write_text(text + "\n")
        with pytest.raises(ConfigError, match=problem):
            load_config(tmp_path)


def test_quotas_default_to_the_whole_space_on_loopback(tmp_path: Path) -> None:
    """A node listening on loopback (a testnet: all its peers are its user's) gives
    every key and prefix the whole donated space unless told otherwise."""
    loopback = load_config(tmp_path, {"listen": "127.0.0.1:0"}).quota_settings()
    public = load_config(tmp_path, {"listen": "0.0.0.0:4410"}).quota_settings()
    assert (loopback.key_share, loopback.prefix_share) == (1.0, 1.0)
    assert (public.key_share, public.prefix_share) == (0.25, 0.25)


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("capacity", "99999999999999999999TiB", "largest size a setting takes, 1 EiB"),
        ("capacity", 2**70, "largest size"),
        ("repair_bandwidth", "2000000 TiB", "largest size"),
        ("lease_length", "99999999999999999999d", "longest duration a setting takes"),
        ("repair_grace", "5300w", "100 years"),
    ],
)
def test_sizes_and_durations_out_of_range_are_one_line_errors(
    tmp_path: Path, flag: str, value: object, problem: str
) -> None:
    """A size past 1 EiB or a duration past a century is refused when read, with one
    line, not an OverflowError later (in the control socket's answer, or a lease's
    64-bit expiry)."""
    with pytest.raises(ConfigError, match=problem):
        load_config(tmp_path, {flag: value})


def test_the_proof_of_work_is_twenty_bits_off_loopback(tmp_path: Path) -> None:
    """A public node's network asks for 20 bits of proof of work on NodeIds, a loopback
    testnet for none; a configured value rules; out of range is one line."""
    assert load_config(tmp_path, {"listen": "0.0.0.0:4410"}).network_difficulty == 20
    assert load_config(tmp_path, {"listen": "127.0.0.1:0"}).network_difficulty == 0
    (tmp_path / "config.toml").write_text("id_difficulty = 12\n")
    assert load_config(tmp_path, {"listen": "0.0.0.0:4410"}).network_difficulty == 12
    assert load_config(tmp_path, {"listen": "127.0.0.1:0"}).network_difficulty == 12
    for bad, problem in ((33, "0..32 bits"), (-1, "0..32 bits"), ("8", "an integer")):
        with pytest.raises(ConfigError, match=problem):
            load_config(tmp_path, {"id_difficulty": bad})
