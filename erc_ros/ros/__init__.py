"""ROS 2 layer: the only modules of erc_ros that import rclpy."""
