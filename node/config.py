"""The node's configuration: flags, `<data-dir>/config.toml`, and their defaults.

One frozen dataclass (`NodeConfig`), validated once. Its sources, the later winning:
the defaults below, `<data-dir>/config.toml`, then the command-line flags. The file's
keys are the flags' names with `_` or `-` (`listen`, `bootstrap`, `capacity`, ...), so
what an operator writes in one place means the same in the other:

    listen = "0.0.0.0:4410"
    bootstrap = ["203.0.113.5:4410", "198.51.100.7:4410"]
    capacity = "50 GiB"

Unknown keys are an error, not a silent no-op: a typo in a volunteer's config must not
quietly run the node with a default.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from node.errors import ConfigError

if TYPE_CHECKING:  # imported when used: the CLI loads this module and must start fast
    from node.leases import LeaseSettings
    from node.quota import QuotaSettings

__all__ = [
    "ADDRESS_FILE",
    "CONFIG_FILE_NAME",
    "DATA_DIR_ENVIRONMENT",
    "DEFAULT_CAPACITY",
    "DEFAULT_HAPPY",
    "DEFAULT_ID_DIFFICULTY",
    "DEFAULT_PORT",
    "EXIT_WITH_PARENT_ENVIRONMENT",
    "MAX_DURATION",
    "MAX_SIZE",
    "NodeConfig",
    "default_data_dir",
    "format_size",
    "is_loopback",
    "load_config",
    "parse_address",
    "parse_duration",
    "parse_size",
]

CONFIG_FILE_NAME: Final = "config.toml"
# Where a node with a control socket writes the HOST:PORT it listens on, once serving
# (node/testnet.py reads it to learn ports the kernel chose).
ADDRESS_FILE: Final = "node.address"
DATA_DIR_ENVIRONMENT: Final = "FREEHOLD_DATA_DIR"
# Set by node.testnet for its nodes: the testnet's pid; each stops when it goes.
EXIT_WITH_PARENT_ENVIRONMENT: Final = "FREEHOLD_EXIT_WITH_PARENT"
DEFAULT_PORT: Final = 4410
DEFAULT_CAPACITY: Final = 10 * 1024**3
DEFAULT_METRICS_PORT: Final = 9410
DEFAULT_WEB_PORT: Final = 4480
# The fewest distinct nodes that must take an upload's chunks (of n = 10) for it to count.
DEFAULT_HAPPY: Final = 7
# The proof of work on NodeIds of a network not on loopback, in bits
# (docs/PROTOCOL.md#proof-of-work-on-nodeids says why 20): about 2**20 key generations, some 17 s
# of one core, once, when a node first starts; one hash to check.
DEFAULT_ID_DIFFICULTY: Final = 20
MAX_ID_DIFFICULTY: Final = 32

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_PATTERN: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


Address = tuple[str, int]


MAX_SIZE: Final = 1024**6
"""The largest size any setting takes: 1 EiB, far beyond any disk, and well inside the
64-bit integers the wire and the control socket carry."""

MAX_DURATION: Final = 100 * 365 * 86400.0
"""The longest duration any setting takes: a century (a lease's expiry must fit 64 bits)."""


def parse_size(text: str | int) -> int:
    """Bytes from `1048576`, `"100 MiB"`, `"2.5GB"` (SI and IEC units, case-insensitive),
    at most `MAX_SIZE`."""
    if isinstance(text, bool):
        raise ConfigError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"a size cannot be negative: {text}")
        return _at_most_max_size(text, str(text))
    match = _SIZE_PATTERN.match(text)
    if match is None:
        raise ConfigError(f"not a size: {text!r} (try e.g. 500MB or 20GiB)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ConfigError(f"unknown size unit {unit!r} in {text!r} (use B, KB, MB, GB, KiB, ...)")
    return _at_most_max_size(int(float(number) * factor), text)


def _at_most_max_size(size: int, text: str) -> int:
    if size > MAX_SIZE:
        raise ConfigError(f"{text!r} is more than the largest size a setting takes, 1 EiB")
    return size


_DURATION_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PATTERN: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]?)\s*$")


def parse_duration(text: str | float) -> float:
    """Seconds from `90`, `2.5`, `"30s"`, `"10m"`, `"24h"`, `"7d"` or `"2w"`."""
    if isinstance(text, bool):
        raise ConfigError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION_PATTERN.match(text)
        factor = _DURATION_UNITS.get(match.group(2).lower()) if match else None
        if match is None or factor is None:
            raise ConfigError(f"not a duration: {text!r} (try e.g. 90, 30s, 10m, 24h or 7d)")
        seconds = float(match.group(1)) * factor
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(f"a duration must be a finite number of seconds, got {text!r}")
    if seconds > MAX_DURATION:
        raise ConfigError(
            f"{text!r} is longer than the longest duration a setting takes, 100 years"
        )
    return seconds


def format_size(size: float) -> str:
    """`1.5 MiB`-style text for a byte count."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def capacity_warning(capacity: int, used: int, free: int, where: Path) -> str | None:
    """What to tell the owner if the capacity promised is more than the disk can give:
    the chunks held (`used`) plus the disk's `free` bytes at `where`. None if it fits."""
    if capacity <= used + free:
        return None
    return (
        f"capacity {format_size(capacity)} is more than the disk can give: "
        f"{format_size(used)} of chunks held and {format_size(free)} free in {where}; "
        "stores will fail once the disk is full (lower --capacity, or free some space)"
    )


def parse_address(text: str, *, default_port: int | None = None) -> Address:
    """`(host, port)` from `HOST:PORT` or `[IPv6]:PORT` (or HOST alone with a default)."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"not an address: {text!r} (expected [IPv6]:PORT)")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, ""
    if not host:
        raise ConfigError(f"not an address: {text!r} (expected HOST:PORT)")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"no port in {text!r} (expected HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"bad port in {text!r}: must be 0..65535")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether `host` (as configured) is this machine's loopback."""
    return host in ("localhost", "::1") or host.startswith("127.")


def default_data_dir() -> Path:
    """`$FREEHOLD_DATA_DIR`, else the platform's user data directory (platformdirs)."""
    from_environment = os.environ.get(DATA_DIR_ENVIRONMENT)
    if from_environment:
        return Path(from_environment).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("freehold", appauthor=False))


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything `freehold node` needs to run. Sizes in bytes, times in seconds."""

    data_dir: Path
    listen: Address = ("127.0.0.1", DEFAULT_PORT)
    bootstrap: tuple[Address, ...] = ()
    capacity: int = DEFAULT_CAPACITY
    # Erasure code of new uploads (docs/PROTOCOL.md#files): any k of n chunks rebuild
    # a segment; an upload fails unless `happy` distinct nodes took chunks.
    k: int = 3
    n: int = 10
    happy: int = DEFAULT_HAPPY
    segment_size: int = 4 * 1024 * 1024
    # Threads for encryption, erasure coding and hashing (they release the GIL), and for
    # the chunk store's disk work; 0 runs it all inline (simulations under MockClock).
    workers: int = 2
    # Stewardship (node/stewardship.py): how often the holders of a segment audit it,
    # when they repair it (this many chunks of n left, or fewer; by default n - 4, at
    # least k: 6 of 10, chosen by `python -m simulations durability`), how long a missing
    # holder has to come back before its chunk counts as lost, how long the other
    # holders wait per rank for the elected one, and the repair traffic's share of
    # bandwidth in bytes per second.
    audit_interval: float = 24 * 3600.0
    repair_threshold: int | None = None
    repair_grace: float = 24 * 3600.0
    repair_delay: float = 600.0
    repair_bandwidth: int = 1024 * 1024
    # Leases (node/leases.py, docs/PROTOCOL.md#leases): how long the leases of the
    # owner's files last, how much of one is left when it is renewed, the longest this
    # node counts anyone's lease, how long a chunk stays without one after its upload,
    # and how long an unleased chunk waits in the trash (in running time).
    lease_length: float = 90 * 24 * 3600.0
    lease_renew_at: float = 30 * 24 * 3600.0
    lease_max: float = 365 * 24 * 3600.0
    upload_lease: float = 24 * 3600.0
    trash_grace: float = 7 * 24 * 3600.0
    # How often the lease book is swept: expired chunks to the trash, the trash's grace
    # counted, what is due deleted.
    sweep_interval: float = 3600.0
    # Quotas (node/quota.py): the most of the donated space one key, and one network
    # prefix (/24, /48), may keep here (unset: 0.25, or 1.0 on a node listening on
    # loopback, whose peers are all its own user's: a testnet); the share of capacity
    # kept for the owner's own.
    key_share: float | None = None
    prefix_share: float | None = None
    owner_reserve: float = 0.10
    # The network's proof of work on NodeIds, in bits: a node refuses peers (and their
    # contacts) whose id misses it, and makes its own id to meet it. Every node of a
    # network must use the same value. Unset: 20, or 0 on a node listening on loopback
    # (a testnet, whose nodes are all one user's).
    id_difficulty: int | None = None
    # Where to serve Prometheus metrics (node/metrics.py); unset: not served.
    metrics_listen: Address | None = None
    # The node's web page (node/web/), on a loopback address only; "off": none.
    web_listen: Address | None = ("127.0.0.1", DEFAULT_WEB_PORT)
    log_level: str = "INFO"
    # The log's file (relative to the data directory; unset: standard error), rotated
    # at `log_max_size`, keeping `log_backups` old files.
    log_file: Path | None = None
    log_max_size: int = 10 * 1024 * 1024
    log_backups: int = 5
    # "disk": chunks under <data-dir>/chunks/, SQLite files, the key file, the control
    # socket. "memory": nothing touches the disk (tests and simulations run thousands
    # of nodes this way); the identity must then be given to the Node.
    storage: str = "disk"

    def __post_init__(self) -> None:
        if self.storage not in ("disk", "memory"):
            raise ConfigError(f"storage must be disk or memory, got {self.storage!r}")
        if not 1 <= self.k <= self.n <= 256:
            raise ConfigError(f"need 1 <= k <= n <= 256, got k={self.k}, n={self.n}")
        if not 1 <= self.happy <= self.n:
            raise ConfigError(f"happy must be 1..n ({self.n}), got {self.happy}")
        if self.capacity < 0:
            raise ConfigError("capacity cannot be negative")
        for name in ("capacity", "segment_size", "repair_bandwidth"):
            if getattr(self, name) > MAX_SIZE:
                raise ConfigError(f"{name} is more than the largest size a setting takes, 1 EiB")
        if self.workers < 0:
            raise ConfigError("workers cannot be negative")
        if not self.audit_interval > 0 or not self.repair_delay > 0:
            raise ConfigError("audit_interval and repair_delay must be positive")
        if self.repair_grace < 0:
            raise ConfigError("repair_grace cannot be negative")
        if self.repair_threshold is not None and not self.k <= self.repair_threshold < self.n:
            raise ConfigError(
                f"repair_threshold must be k..n-1 ({self.k}..{self.n - 1}), "
                f"got {self.repair_threshold}"
            )
        if self.repair_bandwidth < 1:
            raise ConfigError("repair_bandwidth must be at least 1 byte a second")
        if not 0 < self.lease_renew_at < self.lease_length <= self.lease_max:
            raise ConfigError("need 0 < lease_renew_at < lease_length <= lease_max")
        if not self.upload_lease > 0 or self.trash_grace < 0 or not self.sweep_interval > 0:
            raise ConfigError(
                "upload_lease and sweep_interval must be positive, trash_grace not negative"
            )
        for name in ("key_share", "prefix_share", "owner_reserve"):
            if not 0.0 <= (getattr(self, name) or 0.0) <= 1.0:
                raise ConfigError(f"{name} must be a fraction between 0 and 1")
        if self.id_difficulty is not None and not 0 <= self.id_difficulty <= MAX_ID_DIFFICULTY:
            raise ConfigError(f"id_difficulty must be 0..{MAX_ID_DIFFICULTY} bits")
        if self.web_listen is not None and not is_loopback(self.web_listen[0].strip("[]")):
            raise ConfigError(
                f"web_listen must be a loopback address (127.0.0.1, ::1), not "
                f"{self.web_listen[0]}: the page is this machine's only"
            )
        if not 0 < self.log_max_size <= MAX_SIZE or not 0 <= self.log_backups <= 1000:
            raise ConfigError("log_max_size must be 1 byte..1 EiB, log_backups 0..1000")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR: {self.log_level}")

    def lease_settings(self) -> LeaseSettings:
        """The lease lengths this node uses and accepts."""
        from node.leases import LeaseSettings

        return LeaseSettings(
            length=self.lease_length,
            renew_at=self.lease_renew_at,
            max_length=self.lease_max,
            upload_length=self.upload_lease,
            trash_grace=self.trash_grace,
            sweep_interval=self.sweep_interval,
        )

    @property
    def on_loopback(self) -> bool:
        """Whether this node listens on loopback: a testnet, all of it one user's."""
        return is_loopback(self.listen[0])

    @property
    def network_difficulty(self) -> int:
        """The proof of work in force on NodeIds: the configured one, else 20 bits (0 on
        loopback)."""
        if self.id_difficulty is not None:
            return self.id_difficulty
        return 0 if self.on_loopback else DEFAULT_ID_DIFFICULTY

    def quota_settings(self) -> QuotaSettings:
        """The shares of donated space this node gives each key and prefix."""
        from node.quota import DEFAULT_SHARE, QuotaSettings

        default = 1.0 if self.on_loopback else DEFAULT_SHARE
        return QuotaSettings(
            key_share=default if self.key_share is None else self.key_share,
            prefix_share=default if self.prefix_share is None else self.prefix_share,
            owner_reserve=self.owner_reserve,
        )

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE_NAME

    @property
    def repair_at(self) -> int:
        """The repair threshold in force: the configured one, else n - 4 (at least k)."""
        if self.repair_threshold is not None:
            return self.repair_threshold
        return max(self.k, self.n - 4)

    @property
    def log_path(self) -> Path | None:
        """The log file in force (relative paths under the data directory), or None."""
        if self.log_file is None:
            return None
        return self.data_dir / self.log_file

    @property
    def control_path(self) -> Path:
        return self.data_dir / "control.sock"

    @property
    def address_path(self) -> Path:
        return self.data_dir / ADDRESS_FILE

    @property
    def key_path(self) -> Path:
        return self.data_dir / "node.key"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "node.sqlite3"


_FILE_KEYS: Final = {item.name for item in fields(NodeConfig)} - {"data_dir", "storage"}


def _from_mapping(config: NodeConfig, values: Mapping[str, Any], source: str) -> NodeConfig:
    changes: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in _FILE_KEYS:
            known = ", ".join(sorted(_FILE_KEYS))
            raise ConfigError(f"{source}: unknown setting {raw_key!r} (known: {known})")
        try:
            changes[key] = _convert(key, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {raw_key}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{source}: {raw_key}: {exc}") from None
    return replace(config, **changes)


def _convert(key: str, value: Any) -> Any:
    if key == "listen":
        return parse_address(_text(value), default_port=DEFAULT_PORT)
    if key == "bootstrap":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, Sequence):
            raise ConfigError("expected HOST:PORT or a list of them")
        return tuple(parse_address(_text(item), default_port=DEFAULT_PORT) for item in items)
    if key in ("capacity", "segment_size"):
        return parse_size(value)
    if key in (
        "audit_interval",
        "repair_grace",
        "repair_delay",
        "lease_length",
        "lease_renew_at",
        "lease_max",
        "upload_lease",
        "trash_grace",
        "sweep_interval",
    ):
        return parse_duration(value)
    if key in ("key_share", "prefix_share", "owner_reserve"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a fraction between 0 and 1, got {value!r}")
        return float(value)
    if key == "repair_bandwidth":
        return parse_size(value)
    if key in ("k", "n", "happy", "workers", "repair_threshold", "id_difficulty"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}")
        return value
    if key == "web_listen":
        text = _text(value)
        if text.strip().lower() in ("off", "none", ""):
            return None
        return parse_address(text, default_port=DEFAULT_WEB_PORT)
    if key == "metrics_listen":
        return parse_address(_text(value), default_port=DEFAULT_METRICS_PORT)
    if key == "log_level":
        return _text(value).upper()
    if key == "log_file":
        return Path(_text(value)).expanduser()
    if key == "log_max_size":
        return parse_size(value)
    if key == "log_backups":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}")
        return value
    raise AssertionError(key)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}")
    return value


def load_config(data_dir: Path, overrides: Mapping[str, Any] | None = None) -> NodeConfig:
    """The defaults, then `<data_dir>/config.toml` if present, then `overrides` (flags
    given on the command line; None values are flags not given)."""
    config = NodeConfig(data_dir=data_dir)
    path = config.config_path
    if path.exists():
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        config = _from_mapping(config, values, str(path))
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    return _from_mapping(config, given, "command line")
