"""VLA policies: every class here speaks the :class:`~vla_grpo.policies.base.TokenPolicyMixin` contract.

``POLICIES`` lists them for contract tests and benchmarks; pick one in YAML by
``class_path`` or on the command line with ``--model.policy=...``.
"""
from __future__ import annotations

from vla_grpo.policies.base import TokenPolicyMixin
from vla_grpo.policies.hf import HFVLAPolicy
from vla_grpo.policies.reading import ReadingVLAPolicy
from vla_grpo.policies.tiny import TinyVLAPolicy

#: every registered policy (transformers is only imported when a policy that needs it is built)
POLICIES = (ReadingVLAPolicy, TinyVLAPolicy, HFVLAPolicy)

__all__ = ["POLICIES", "HFVLAPolicy", "ReadingVLAPolicy", "TinyVLAPolicy", "TokenPolicyMixin"]
