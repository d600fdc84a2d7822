"""embodied package."""
