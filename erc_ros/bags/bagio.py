"""rosbag2 I/O with `rosbags` (pure Python: no rosbag2_py, no ROS install needed).

`make_typestore()` gives a ROS 2 Kilted type store with erc_ros's interfaces and, where the
store lacks them, audio_common_msgs / hri_msgs registered from their .msg text, so bags with
our topics can be written and read anywhere. `to_rosbags()` turns an rclpy message into the
equivalent rosbags object (for writing what nodes publish); raw CDR from a bag deserializes
with rclpy's `deserialize_message` byte for byte (tested in test/test_interfaces_bag.py).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

REPO_ROOT = Path(__file__).resolve().parents[2]


def interface_msg_dirs() -> list[tuple[str, Path]]:
    """(package, folder of .msg files) for erc_ros and the dev-only interface packages.

    Looks in the source tree first, then in an installed ``share/<pkg>/msg`` (a colcon
    install, found through AMENT_PREFIX_PATH).
    """

    found: dict[str, Path] = {}
    candidates = [("erc_ros", REPO_ROOT / "msg")]
    for pkg in ("audio_common_msgs", "hri_msgs"):
        candidates.append((pkg, REPO_ROOT / "test" / "interfaces" / pkg / "msg"))
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        for pkg in ("erc_ros", "audio_common_msgs", "hri_msgs"):
            candidates.append((pkg, Path(prefix) / "share" / pkg / "msg"))
    for pkg, folder in candidates:
        if pkg not in found and folder.is_dir() and any(folder.glob("*.msg")):
            found[pkg] = folder
    return sorted(found.items())


@lru_cache(maxsize=None)
def make_typestore(extra: tuple[tuple[str, str], ...] = ()):
    """A Kilted type store with our interfaces registered.

    ``extra``: further (package, msg folder) pairs to register.
    """

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for pkg, folder in [*interface_msg_dirs(), *((p, Path(f)) for p, f in extra)]:
        for path in sorted(Path(folder).glob("*.msg")):
            name = f"{pkg}/msg/{path.stem}"
            if name in store.types:  # the real definition wins
                continue
            types.update(get_types_from_msg(path.read_text(), name))
    store.register(types)
    return store


def ros_type_name(msg_or_cls: Any) -> str:
    """'pkg/msg/Name' of an rclpy message (instance or class)."""
    cls = msg_or_cls if isinstance(msg_or_cls, type) else type(msg_or_cls)
    pkg = cls.__module__.split(".")[0]
    return f"{pkg}/msg/{cls.__name__}"


def to_rosbags(msg: Any, store=None) -> Any:
    """Convert an rclpy message to the rosbags object of the same type, field by field."""
    store = store or make_typestore()
    return _convert(msg, ros_type_name(msg), store)


def _convert(msg: Any, typename: str, store) -> Any:
    cls = store.types[typename]
    fields = type(msg).get_fields_and_field_types()
    values = {}
    for name in fields:
        values[name] = _convert_value(getattr(msg, name), store)
    # rosbags classes take the fields positionally in declaration order, as keywords too
    return cls(**values)


def _convert_value(value: Any, store) -> Any:
    if hasattr(type(value), "get_fields_and_field_types"):
        return _convert(value, ros_type_name(value), store)
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        items = list(value)
        if items and hasattr(type(items[0]), "get_fields_and_field_types"):
            return [_convert_value(v, store) for v in items]
        return items
    if hasattr(value, "typecode"):  # array.array of a numeric sequence
        return np.frombuffer(value.tobytes(), dtype=np.dtype(value.typecode)).copy()
    return value


def write_messages(path: Path | str, messages: Iterable[tuple[str, int, Any]],
                   storage: str = "mcap") -> None:
    """Write (topic, timestamp_ns, rclpy message) triples to a new rosbag2 at ``path``."""

    store = make_typestore()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        connections: dict[tuple[str, str], Any] = {}
        for topic, stamp_ns, msg in messages:
            typename = ros_type_name(msg)
            key = (topic, typename)
            if key not in connections:
                connections[key] = writer.add_connection(topic, typename, typestore=store)
            data = store.serialize_cdr(to_rosbags(msg, store), typename)
            writer.write(connections[key], int(stamp_ns), data)
