"""Following a ROS4HRI ``tracked`` list (``hri_msgs/IdsList`` on ``/humans/<kind>s/tracked``)
with one set of resources per tracked id: the utterance node's per-voice LiveSpeech
subscriptions (``asr_type: hri_voices``) and the face-expression node's per-face crop
subscription and Expression publisher.

Each list received replaces the previous one: ids no longer in it lose their resources
(``remove``), new ones get theirs (``add``). An id that cannot be a topic-name token is
refused (``refused.<kind>_id``: ROS4HRI ids are short ASCII strings, and a topic made from
anything else would be invalid), and at most ``limit`` ids are followed
(``refused.<kind>s_full`` once per list that asks for more).

Per-id entities are made with :func:`subscription` and :func:`publisher`, never with the
node's plain ``create_*``: ids come and go while the executor spins (hri_face_detect's list
changes whenever someone flickers), so their entities are destroyed on a callback thread
while the executor's thread builds its wait set. rclpy skips a subscription destroyed in
that window, but not a QoS event handler (a waitable: rclpy gives every publisher and
subscription two by default, incompatible QoS and type): it catches the failed ``enter``
and then adds the destroyed event to the wait set anyway, and the executor dies with
``InvalidHandle: cannot use Destroyable because destruction was requested`` (ros2/rclpy
#1142). A face node following 50 lists a second with crops at 10 Hz died within 7-50 s.
Entities without event handlers have nothing in that path, so they may go at any time. The
nodes make every entity they destroy while spinning so (the inputs, destroyed at deactivate
from the lifecycle service's thread, too): the incompatible-QoS and -type warnings those
handlers logged are /diagnostics errors of the utterance node instead
(:mod:`erc_ros.ros.input_health`).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Optional

from erc_ros.ros.diagnostics import NodeHealth
from erc_ros.ros.topic_names import is_topic_token


def subscription(node, msg_type, topic: str, callback: Callable[[Any], None], qos):
    """A subscription that may be destroyed while the executor spins (no QoS event handlers:
    see the module's docstring)."""
    from rclpy.event_handler import SubscriptionEventCallbacks
    return node.create_subscription(
        msg_type, topic, callback, qos,
        event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))


def publisher(node, msg_type, topic: str, qos):
    """A publisher that may be destroyed while the executor spins (no QoS event handlers: see
    the module's docstring)."""
    from rclpy.event_handler import PublisherEventCallbacks
    return node.create_publisher(
        msg_type, topic, qos,
        event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))


class TrackedIds:
    """The ids of a tracked list and the resources of each (thread-safe: :attr:`lock` is
    held while resources are made or freed, so a thread using one holds it too)."""

    def __init__(self, kind: str, limit: int, limit_name: str, health: NodeHealth,
                 add: Callable[[str], Any], remove: Callable[[str, Any], None]):
        self.kind, self.limit, self.limit_name = kind, int(limit), limit_name
        self.health = health
        self._add, self._remove = add, remove
        self.lock = threading.RLock()
        self.items: dict[str, Any] = {}  # id -> its resources
        self.closed = False

    def update(self, ids: Iterable[str]) -> None:
        """Follow a new tracked list (an IdsList's ``ids``)."""
        tracked = []
        for i in dict.fromkeys(ids):
            if is_topic_token(i):
                tracked.append(i)
            else:
                self.health.refuse(f"{self.kind}_id", f"{self.kind} id {i[:40]!r} is not a "
                                                      "valid topic name token")
        with self.lock:
            if self.closed:  # a list delivered while the node deactivated: nothing to follow
                return
            for i in [i for i in self.items if i not in tracked]:
                self._remove(i, self.items.pop(i))
            for i in tracked:
                if i in self.items:
                    continue
                if len(self.items) >= self.limit:
                    self.health.refuse(f"{self.kind}s_full", f"more than {self.limit} tracked "
                                                             f"{self.kind}s ({self.limit_name})")
                    break
                self.items[i] = self._add(i)

    def get(self, i: str) -> Optional[Any]:
        with self.lock:
            return self.items.get(i)

    def close(self) -> None:
        """Free every id's resources and follow no list from now on (deactivate: a list
        callback still running must not make new ones)."""
        with self.lock:
            self.closed = True
            while self.items:
                i, res = self.items.popitem()
                self._remove(i, res)

    def __len__(self) -> int:
        return len(self.items)
