"""Demonstrations and datasets: recording experts into LeRobot datasets, reading them back."""
