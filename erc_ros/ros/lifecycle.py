"""What every erc_ros node shares: documented and validated parameters, auto-activation,
and the main loop of a node process (standalone or composed).

Parameters: each is declared with its description and, where it has one, its allowed
values (:mod:`erc_ros.ros.choices`) or range. A bad value is refused with a reason — by
``ros2 param set`` at once (a set-parameters callback), and when it came from a params
file or ``-p`` at start, by ``configure`` (FAILURE with a log naming it) instead of a
traceback in the constructor. An integer given for a double parameter (``ros2 param set
/emotion_node shutdown_timeout 2``, ``-p poll_period:=1``, ``poll_period: 1`` in YAML) is
that double: rclpy would refuse it with "Wrong parameter type" before any set-parameters
callback runs, so a pre-set callback (rclpy of Iron and later) makes it a double first.
The nodes read their parameters in ``on_configure``: a value set while configured is
accepted with a warning that it applies at the next configure.

Shutdown: the first Ctrl-C (or SIGTERM) ends the spin loop; then every node goes through
the lifecycle shutdown transition (:func:`shut_down`: its ``on_shutdown`` finishes the work
it took — the utterance node's recognizer its accepted speech — and publishes it, bounded by
its ``shutdown_timeout``), is destroyed, and rclpy shuts down. rclpy's own signal handlers
are not installed (``SignalHandlerOptions.NO``): they shut the context down at the signal,
so nothing could be published after it, and the nodes would be destroyed without their
shutdown transition while the recognizer's thread is still inside CTranslate2 (exit -11 /
-6 at interpreter exit, the speech being transcribed lost). The clean-up runs with further
SIGINTs ignored — ``ros2 launch`` forwards the terminal's Ctrl-C and sends its own, and a
second one would interrupt ``destroy_node`` with a KeyboardInterrupt traceback and exit
code -2. They are ignored from the moment the first one is handled (:func:`_first_sigint`).
The spin loop wakes every :data:`WAKE_SECONDS` to see Python's part of the signal.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from erc_ros import process
from erc_ros.ros.choices import CHOICES, check_choice

#: Parameters that are never re-read after start (the rest apply at the next configure).
READ_AT_START = {"autostart"}


def descriptor(name: str, default: Any, description: str,
               bounds: Optional[tuple[float, float]] = None) -> ParameterDescriptor:
    """The ROS descriptor of one parameter: description, allowed values, range."""
    d = ParameterDescriptor(description=description)
    if name in CHOICES:
        d.additional_constraints = "one of: " + ", ".join(CHOICES[name])
    if bounds is not None and not isinstance(default, bool):
        lo, hi = bounds
        if isinstance(default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo),
                                                         to_value=float(hi), step=0.0)]
    return d


def declare_documented(node, params: dict[str, tuple[Any, str]],
                       bounds: Optional[dict[str, tuple[float, float]]] = None) -> list[str]:
    """Declare ``name -> (default, description)`` parameters with their descriptors.

    A value given at start (params file, ``-p``) that its descriptor refuses (wrong type,
    out of range) does not raise here: the parameter keeps its default and the reason is
    returned, for ``on_configure`` to refuse with a log instead of a traceback."""
    errors = []
    # The values given at start: rclpy keeps them here and has no public accessor.
    given = getattr(node, "_parameter_overrides", {})
    for name, (default, desc) in params.items():
        d = descriptor(name, default, desc, (bounds or {}).get(name))
        value, ignore = default, False
        if isinstance(default, float) and name in given and \
                given[name].type_ == Parameter.Type.INTEGER:
            value, ignore = float(given[name].value), True  # an integer for a double
        try:
            node.declare_parameter(name, value, d, ignore_override=ignore)
        except (InvalidParameterTypeException, InvalidParameterValueException) as err:
            errors.append(f"{name}: {err}")
            node.declare_parameter(name, default, d, ignore_override=True)
    return errors


class ParameterGuard:
    """The set-parameters callback of a node: refuses values outside :data:`CHOICES` (and
    whatever ``extra(name, value)`` refuses, returning a reason), and says when an accepted
    change only applies at the next configure."""

    def __init__(self, node, extra: Optional[Callable[[str, Any], str]] = None):
        self.node = node
        self.extra = extra
        self.configured = False  # set by the node between configure and cleanup
        if hasattr(node, "add_pre_set_parameters_callback"):  # rclpy of Iron and later
            node.add_pre_set_parameters_callback(self._as_declared)
        node.add_on_set_parameters_callback(self._on_set)

    def _as_declared(self, params: list) -> list:
        """Before rclpy checks the types: an integer for a double parameter is that double
        (``ros2 param set`` sends ``0`` as an integer)."""
        out = []
        for p in params:
            if p.type_ == Parameter.Type.INTEGER and self.node.has_parameter(p.name):
                d = self.node.describe_parameter(p.name)
                if d.type == ParameterType.PARAMETER_DOUBLE and not d.dynamic_typing:
                    p = Parameter(p.name, Parameter.Type.DOUBLE, float(p.value))
            out.append(p)
        return out

    def check(self, name: str, value: Any) -> str:
        reason = check_choice(name, value)
        if not reason and self.extra is not None:
            reason = self.extra(name, value)
        return reason

    def check_all(self, names) -> list[str]:
        """Reasons against the node's current values (``on_configure``)."""
        out = []
        for name in names:
            reason = self.check(name, self.node.get_parameter(name).value)
            if reason:
                out.append(reason)
        return out

    def _on_set(self, params) -> SetParametersResult:
        for p in params:
            reason = self.check(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        later = [p.name for p in params if self.configured and p.name not in READ_AT_START
                 and p.name != "use_sim_time"]
        if later:
            msg = (f"{', '.join(later)} changed while configured: applies at the next "
                   f"configure (deactivate, cleanup, configure, activate)")
            self.node.get_logger().warning(msg)
            return SetParametersResult(successful=True, reason=msg)
        return SetParametersResult(successful=True)


def diagnostics_timer(node) -> tuple[Any, Any]:
    """The node's ``/diagnostics`` publisher and the timer (own callback group, period: its
    ``diagnostics_period`` parameter) that calls its ``publish_diagnostics``. Made in
    ``__init__``: they live as long as the node, so a failed configure is reported too."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

    pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
    timer = node.create_timer(node.get_parameter("diagnostics_period").value,
                              node.publish_diagnostics,
                              callback_group=MutuallyExclusiveCallbackGroup())
    return pub, timer


def read_parameters(node, params: dict[str, tuple[Any, str]]) -> tuple[dict[str, Any], list[str]]:
    """At configure: the node's values of ``params`` and what is wrong with them (values
    refused at declaration, the guard's checks); when nothing is, the /diagnostics timer
    (:func:`diagnostics_timer`) takes the ``diagnostics_period`` now set, and the node's
    health its ``diagnostics_window``."""
    p = {n: node.get_parameter(n).value for n in params}
    bad = node._param_errors + node.guard.check_all(params)
    if not bad:
        node._diag_timer.timer_period_ns = int(p["diagnostics_period"] * 1e9)
        node.health.window_s = float(p["diagnostics_window"])
    return p, bad

def fail(node, msg: str, free: Optional[Callable[[], None]] = None) -> TransitionCallbackReturn:
    """A failed transition: log ``msg``, keep it as the node's health error, free what the
    transition made (``free``), publish /diagnostics at once, return FAILURE."""
    node.get_logger().error(msg)
    node.health.error = msg
    if free is not None:
        free()
    node.publish_diagnostics()
    return TransitionCallbackReturn.FAILURE


def wait_acked(pubs, timeout: float) -> None:
    """Give reliable subscribers of ``pubs`` at most ``timeout`` s in all to acknowledge
    what was published (the last messages of a shutdown), before the publishers go."""
    if timeout <= 0:
        return
    deadline = time.monotonic() + timeout
    for pub in pubs:
        try:
            pub.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))
        except Exception:  # a publisher already gone: nothing to wait for
            pass


def autostart(node) -> bool:
    """Configure and activate when the ``autostart`` parameter says so (there is no launch
    file here to drive the lifecycle)."""
    if not node.get_parameter("autostart").value:
        return True
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        return False
    ok = node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    if not ok:
        node.get_logger().error("failed to activate (see the log above)")
    return ok


_spinning = False
#: Set by Python's part of SIGINT / SIGTERM: the spin loop ends at its next wake-up.
_stop_requested = False
#: How often the spin loop wakes with nothing to do, to see whether it must stop.
WAKE_SECONDS = 0.5


def _first_sigint(signum, frame) -> None:
    """The SIGINT handler: every later SIGINT is ignored from now on, so none can interrupt
    the shutdown. While the executor spins nothing is raised here (the spin loop sees the
    request): a KeyboardInterrupt lands wherever the main thread is, e.g. in a destructor
    the collector runs (a traceback under "Exception ignored in"). Before it spins (loading
    the models), KeyboardInterrupt stops the start-up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _sigterm(signum, frame)


def _sigterm(signum, frame) -> None:
    """The SIGTERM handler (``ros2 launch``'s second step, ``kill``), and the first SIGINT's:
    the spin loop ends at its next wake-up; before it spins, the start-up stops. One that
    comes while the nodes shut down changes nothing (their shutdown is bounded)."""
    global _stop_requested
    _stop_requested = True
    if not _spinning:
        raise KeyboardInterrupt


def _spin(ex, context=None) -> None:
    """Spin ``ex`` until rclpy shuts down or a signal asks to stop, waking at least every
    :data:`WAKE_SECONDS` to see the request (a Python signal handler runs only when the main
    thread is back in Python; a node on simulated time whose /clock has stopped has no timer
    to wake it, and ``executor.spin()`` waited for ever)."""
    while rclpy.ok(context=context) and not _stop_requested:
        ex.spin_once(timeout_sec=WAKE_SECONDS)


def shut_down(node) -> None:
    """The lifecycle shutdown transition of ``node``, from whatever state it is in (its
    ``on_shutdown`` finishes and publishes the work it took, bounded); a node already
    finalized, or caught inside a transition by the signal, is left as it is."""
    try:
        node.trigger_shutdown()
    except Exception as err:
        node.get_logger().warning(f"no shutdown transition: {err}")


def _work_threads() -> list[threading.Thread]:
    """erc_ros's own work threads (named ``erc*``: node workers, the recognizer) still
    running."""
    return [t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and t.name.startswith("erc")]


def run(build: Callable[[], tuple[Sequence, Callable[[], bool], Callable[[], None]]],
        threads: int, argv=None) -> int:
    """``main()`` of a node process: ``build()`` returns (nodes, start, close); start
    (configure + activate), spin until shutdown, close (the nodes' shutdown transitions,
    then destroy them). Returns the exit code: 1 when start-up failed, else 0 — also after
    Ctrl-C or SIGTERM, however often they come."""
    process.set_environment()  # before anything loads torch
    global _stop_requested
    _stop_requested = False
    signal.signal(signal.SIGINT, _first_sigint)
    signal.signal(signal.SIGTERM, _sigterm)
    # rclpy's handlers would shut the context down at the signal: the shutdown transitions
    # could publish nothing (see the module documentation).
    rclpy.init(args=argv if argv is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO)
    close: Optional[Callable[[], None]] = None
    ex = None
    ok = True
    try:
        nodes, start, close = build()
        # The process-wide settings, once, from the nodes' parameters (the first node's
        # request wins: in the composed process the utterance node's; the others are told).
        for node in nodes:
            asked = node.process_request()
            settings = process.configure(**asked, by=node.get_name())
            if asked.get("torch_threads") != settings.torch_threads:
                node.get_logger().info(
                    f"torch threads stay {settings.torch_threads} in this process (set by "
                    f"{settings.set_by}); this node's thread parameters size its ONNX "
                    f"Runtime sessions")
        nodes[0].get_logger().info(settings.describe())
        ok = start()
        global _spinning
        _spinning = True  # from here rclpy's handler ends spin() (at once if already shut down)
        if not ok:
            nodes[-1].get_logger().error("failed to start (see the log above)")
        ex = MultiThreadedExecutor(num_threads=threads)
        for node in nodes:
            ex.add_node(node)
        process.freeze_heap()
        _spin(ex)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # rclpy's signal handler shut the context down while the executor was building its
        # wait set (RCLError "the given context is not valid"): a shutdown, not a failure.
        if rclpy.ok():
            raise
    finally:
        # Shutting down now: a second Ctrl-C must not interrupt it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if ex is not None:
            ex.shutdown(timeout_sec=5.0)  # callbacks in flight end before the nodes go
        if close is not None:
            close()
        rclpy.try_shutdown()
    code = 0 if ok else 1
    stragglers = _work_threads()
    if stragglers:
        # A thread still inside native code (CTranslate2, libtorch) while the interpreter
        # finalizes and the libraries' exit-time destructors run crashes the process
        # (SIGSEGV / "terminate called without an active exception"): end it here instead.
        print(f"[erc_ros] exiting without finalizing: {', '.join(t.name for t in stragglers)}"
              f" still running after the nodes' shutdown", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)
    return code


def run_node(node_class, argv=None) -> int:
    """``main()`` of a standalone node process."""
    def build():
        node = node_class()

        def close() -> None:
            shut_down(node)
            node.destroy_node()
        return [node], lambda: autostart(node), close

    return run(build, threads=2, argv=argv)
