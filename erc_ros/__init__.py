"""erc_ros: emotion recognition in conversation for social robots.

Subpackages: ``core`` (perception, no rclpy), ``models`` and ``training`` (torch),
``runtime`` (export, backends, pipeline), ``ros`` (the only rclpy users), ``tools``.
"""
from pkgutil import extend_path

# The generated interfaces (erc_ros.msg and its type-support libraries) may be installed in
# another directory named erc_ros (the development venv keeps our sources in the work tree,
# rosidl installs the generated module into site-packages): look in all of them.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
