"""What every erc_ros node shares: documented parameters, auto-activation, and the
executor loop of a node process (standalone or composed)."""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn


def declare_documented(node, params: dict[str, tuple[Any, str]]) -> None:
    """Declare ``name -> (default, description)`` parameters, descriptions included."""
    for name, (default, desc) in params.items():
        node.declare_parameter(name, default, ParameterDescriptor(description=desc))


def autostart(node) -> bool:
    """Configure and activate when the ``autostart`` parameter says so (there is no launch
    file here to drive the lifecycle)."""
    if not node.get_parameter("autostart").value:
        return True
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def spin(nodes: Sequence, ok: bool, on_exit: Callable[[], None], threads: int) -> int:
    """Spin ``nodes`` on one multi-threaded executor until shutdown, then ``on_exit()``;
    returns the process exit code (1 when start-up failed)."""
    ex = MultiThreadedExecutor(num_threads=threads)
    for node in nodes:
        ex.add_node(node)
    quiet_gc()
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        on_exit()
        rclpy.try_shutdown()
    return 0 if ok else 1


def quiet_gc() -> None:
    """After start-up: collect once, then freeze what survived (torch, ONNX Runtime, the
    model, the message types) out of the collector's reach. A full collection then walks
    only what the running node allocates, instead of pausing every thread (the GIL) for
    tens of milliseconds over the whole start-up heap: those pauses were the tail of the
    end-to-end latency."""
    import gc

    gc.collect()
    gc.freeze()


def run_node(node_class, argv=None) -> int:
    """``main()`` of a standalone node process: init, build, auto-activate, spin."""
    rclpy.init(args=argv if argv is not None else sys.argv)
    node = node_class()
    ok = autostart(node)
    if not ok:
        node.get_logger().error("failed to start (see the log above)")

    def close() -> None:
        if node.worker:
            node.worker.stop()
        node.destroy_node()

    return spin([node], ok, close, threads=2)
