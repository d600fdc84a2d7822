"""The tabletop task suite. Importing this package registers every task."""

from sims.tasks.base import TASKS, ScriptedExpert, Task, register_task
from sims.tasks import pick_cube, reach  # noqa: F401  (registration)

__all__ = ["TASKS", "ScriptedExpert", "Task", "register_task"]
