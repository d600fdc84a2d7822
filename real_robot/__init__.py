"""real_robot package."""
