"""The tabletop task suite. Importing this package registers every task."""

from sims.tasks import pick_cube, place_in_bin, push_cube, reach, stack_cube  # noqa: F401  (registration)
from sims.tasks.base import TASKS, ScriptedExpert, Task, register_task

__all__ = ["TASKS", "ScriptedExpert", "Task", "register_task"]
