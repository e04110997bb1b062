"""erc_ros: emotion recognition in conversation for social robots.

Subpackages, lowest layer first (README, "Architecture"; the contracts in ``.importlinter``):
``core`` (perception, no rclpy), ``models`` (torch modules), ``datasets`` (corpus readers),
``runtime`` (export, backends, pipeline), ``training``, ``ros`` (the nodes, the only rclpy
users), ``synth`` (generated speech and conversations), ``bags``, ``evaluation``, ``bench``
and ``commands``.
"""
from pkgutil import extend_path

# The generated interfaces (erc_ros.msg and its type-support libraries) may be installed in
# another directory named erc_ros (the development venv keeps our sources in the work tree,
# rosidl installs the generated module into site-packages): look in all of them.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
