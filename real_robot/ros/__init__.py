"""ROS bridge: a `Robot` over a ROS graph (native rospy or rosbridge websocket), a simulated
arm as a ROS node, and a small rosbridge-protocol server for tests."""
