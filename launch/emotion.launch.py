"""Launch erc_ros: `ros2 launch erc_ros emotion.launch.py [composed:=true] [model_dir:=...]`,
e.g. `namespace:=robot1 image_transport:=compressed audio_reliability:=best_effort
log_level:=debug respawn:=true`
(`ros2 launch erc_ros emotion.launch.py --show-args` lists every argument).

Thin on purpose: which nodes, parameters and remappings are decided by
erc_ros.ros.launch_config.plan (tested in test/test_ros_launch.py); this file only declares
the arguments and turns each planned node into a launch_ros Node, which the launch system
configures and activates (autostart parameter).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from erc_ros.ros import launch_config


def _nodes(context, *args, **kwargs):
    values = {name: LaunchConfiguration(name).perform(context)
              for name in launch_config.ARGUMENTS}
    actions = []
    for spec in launch_config.plan(values):
        kw = dict(package=spec.package, executable=spec.executable,
                  namespace=spec.namespace or None, parameters=spec.parameters,
                  remappings=spec.remappings, output="screen",
                  ros_arguments=spec.ros_arguments or None, respawn=spec.respawn,
                  respawn_delay=spec.respawn_delay, additional_env=spec.env or None)
        if spec.name:
            kw["name"] = spec.name
        actions.append(Node(**kw))
    return actions


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=desc)
            for name, (default, desc) in launch_config.ARGUMENTS.items()]
    return LaunchDescription([*args, OpaqueFunction(function=_nodes)])
