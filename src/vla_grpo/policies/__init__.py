"""VLA policies: token heads (:class:`~vla_grpo.policies.base.TokenPolicyMixin`) and flow-matching heads
(:class:`~vla_grpo.policies.flow.FlowPolicyMixin`), one contract for the trainer.

``POLICIES`` lists them for contract tests and benchmarks (``TOKEN_POLICIES`` and
``FLOW_POLICIES`` by family); pick one in YAML by ``class_path`` or on the command
line with ``--model.policy=...`` (``--model.policy=vla_grpo.policies.FlowVLAPolicy``).
"""
from __future__ import annotations

from vla_grpo.policies.base import TokenPolicyMixin
from vla_grpo.policies.flow import FlowPolicyMixin
from vla_grpo.policies.flow_reading import FlowVLAPolicy
from vla_grpo.policies.hf import HFVLAPolicy
from vla_grpo.policies.reading import ReadingVLAPolicy
from vla_grpo.policies.tiny import TinyVLAPolicy

#: the token-head policies (transformers is only imported when a policy that needs it is built)
TOKEN_POLICIES = (ReadingVLAPolicy, TinyVLAPolicy, HFVLAPolicy)
#: the flow-matching policies
FLOW_POLICIES = (FlowVLAPolicy,)
#: every registered policy
POLICIES = TOKEN_POLICIES + FLOW_POLICIES

__all__ = ["FLOW_POLICIES", "POLICIES", "TOKEN_POLICIES", "FlowPolicyMixin", "FlowVLAPolicy", "HFVLAPolicy",
           "ReadingVLAPolicy", "TinyVLAPolicy", "TokenPolicyMixin"]
