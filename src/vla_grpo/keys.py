"""TensorDict keys used across the trainer, in one place.

The VLA schema keys come from ``torchrl.data.vla``; the suite's prompt keys
from :mod:`vla_grpo.envs.base`. Keys introduced by the trainer live here.
"""
from __future__ import annotations

from torchrl.data.vla import (  # noqa: F401  (re-exported)
    ACTION_CHUNK_KEY,
    ACTION_KEY,
    ACTION_TOKENS_KEY,
    IMAGE_KEY,
    INSTRUCTION_KEY,
    STATE_KEY,
    VLA_ACTION_KEY,
)

from vla_grpo.envs.base import (  # noqa: F401  (re-exported)
    GROUP_ID_KEY,
    INIT_STATE_KEY,
    SUCCESS_KEY,
    TASK_INDEX_KEY,
    UNSTABLE_KEY,
)

#: per-token log-probs of the sampled tokens under the rollout (old) policy
SAMPLE_LOG_PROBS_KEY = (VLA_ACTION_KEY, "log_probs")
#: per-token log-probs under the current weights, written before the loss
LOG_PROBS_KEY = "log_probs"
#: per-token log-probs under the frozen reference policy (KL term)
REF_LOG_PROBS_KEY = "ref_log_probs"
#: per-token entropy of the current temperature-scaled distribution
ENTROPY_KEY = "entropy"
ADVANTAGE_KEY = "advantage"
#: trajectory return (binary success) broadcast to every decision of it
RETURN_KEY = "trajectory_return"
#: std of the returns in the trajectory's group (Dr.GRPO undoes the std division)
GROUP_STD_KEY = "group_return_std"
#: number of action tokens of the whole trajectory a decision belongs to
TRAJ_TOKENS_KEY = "trajectory_num_tokens"
#: globally unique id of the trajectory a decision belongs to
TRAJ_ID_KEY = "trajectory_id"
#: in a demo window, True where a chunk step ran past its episode's end (repeats the last action)
PAD_KEY = "action_is_pad"
