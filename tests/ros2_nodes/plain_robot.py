"""A robot written with plain rclpy and standard messages only (no project code): the peer
the ros2 transport tests drive.

    python plain_robot.py --domain-id 5

It publishes sensor_msgs/JointState on /plain/joint_states at 50 Hz (joints a, b, c) and
moves its positions to the last command it received: std_msgs/Float64MultiArray on
/plain/command, or the last point of a trajectory_msgs/JointTrajectory on /plain/trajectory
(joint names matched by name). It prints "ready" once spinning, and exits when stdin closes.
"""

import argparse
import sys
import threading

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

JOINTS = ["a", "b", "c"]


class PlainRobot(Node):
    def __init__(self) -> None:
        super().__init__("plain_robot")
        self.position = [0.0, 0.0, 0.0]
        self.pub = self.create_publisher(JointState, "/plain/joint_states",
                                         qos_profile_sensor_data)
        self.create_subscription(Float64MultiArray, "/plain/command", self.on_command, 10)
        self.create_subscription(JointTrajectory, "/plain/trajectory", self.on_trajectory, 10)
        self.create_timer(0.02, self.tick)

    def on_command(self, msg: Float64MultiArray) -> None:
        self.position = list(msg.data)[:3]

    def on_trajectory(self, msg: JointTrajectory) -> None:
        last = msg.points[-1].positions
        by_name = dict(zip(msg.joint_names, last, strict=True))
        old = self.position
        self.position = [float(by_name.get(j, p)) for j, p in zip(JOINTS, old, strict=True)]

    def tick(self) -> None:
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = JOINTS
        msg.position = self.position
        msg.velocity = [0.0] * 3
        self.pub.publish(msg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain-id", type=int, default=0)
    args = parser.parse_args()
    rclpy.init(domain_id=args.domain_id)
    node = PlainRobot()
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("ready", flush=True)
    try:
        while rclpy.ok() and not done.is_set():
            rclpy.spin_once(node, timeout_sec=0.05)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
