"""Our messages, sensor_msgs/Image and audio written to a rosbag2 with `rosbags`, read back
and decoded by rclpy's deserializer, byte for byte.

CDR leaves alignment padding undefined and Fast CDR (rclpy) does not clear it: serializing the
same message twice with rclpy can differ in padding bytes. So "byte-identical" is checked
where it is defined: the bag's bytes decode with rclpy to a message equal to the original, and
that decoded message serializes back to exactly the bag's bytes; rclpy's own wire bytes carry
the same content (they decode to bytes equal to the bag's once re-serialized).
"""
from __future__ import annotations

import pytest
from rclpy.serialization import deserialize_message, serialize_message

import _sample_msgs as samples
from erc_ros.bags import bagio


def reserialize(msg, store) -> bytes:
    return bytes(store.serialize_cdr(bagio.to_rosbags(msg, store), bagio.ros_type_name(msg)))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_roundtrip_is_byte_identical(tmp_path, storage):
    originals = {name: make() for name, make in samples.ALL.items()}
    bag = tmp_path / f"bag_{storage}"
    bagio.write_messages(bag, ((f"/test/{name}", 1_000 + i, msg)
                               for i, (name, msg) in enumerate(originals.items())),
                         storage=storage)

    from rosbags.rosbag2 import Reader

    store = bagio.make_typestore()
    seen = {}
    with Reader(bag) as reader:
        for conn, stamp, raw in reader.messages():
            name = conn.topic.rsplit("/", 1)[-1]
            original = originals[name]
            assert conn.msgtype == bagio.ros_type_name(original)
            raw = bytes(raw)
            # rclpy decodes the bag's bytes to an equal message, every field intact ...
            decoded = deserialize_message(raw, type(original))
            assert decoded == original, name
            # ... which serializes back to exactly the bag's bytes,
            assert reserialize(decoded, store) == raw, name
            # and rclpy's own wire bytes hold the same content.
            wire = serialize_message(original)
            assert len(wire) == len(raw), name
            assert store.serialize_cdr(store.deserialize_cdr(wire, conn.msgtype),
                                       conn.msgtype) == raw, name
            seen[name] = stamp
    assert sorted(seen) == sorted(originals)
    if storage == "mcap":
        assert list(bag.glob("*.mcap")), "expected an MCAP file"


def test_typestore_knows_our_interfaces():
    store = bagio.make_typestore()
    for name in ("erc_ros/msg/Transcript", "erc_ros/msg/Utterance", "erc_ros/msg/EmotionEstimate",
                 "audio_common_msgs/msg/AudioDataStamped", "audio_common_msgs/msg/AudioInfo",
                 "hri_msgs/msg/LiveSpeech", "hri_msgs/msg/Expression", "hri_msgs/msg/IdsList"):
        assert name in store.types, name


def test_bag_readable_by_mcap_ros2_reader(tmp_path):
    """A second, independent reader (mcap + mcap-ros2-support) decodes our MCAP bag too."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    msg = samples.emotion_estimate()
    bag = tmp_path / "bag"
    bagio.write_messages(bag, [("/emotion", 5, msg)])
    (mcap_file,) = bag.glob("*.mcap")
    with open(mcap_file, "rb") as f:
        decoded = [m for _, _, _, m in make_reader(f, decoder_factories=[DecoderFactory()])
                   .iter_decoded_messages()]
    assert len(decoded) == 1
    assert decoded[0].label == "surprise"
    assert list(decoded[0].class_names) == list(msg.class_names)
    assert decoded[0].probabilities == pytest.approx(list(msg.probabilities))
