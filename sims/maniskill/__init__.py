"""The ManiSkill3 backend (extra ``maniskill``): ManiSkill's GPU-parallel tasks as `BatchedEnv`s."""
