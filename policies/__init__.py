"""Pure policy: load a TOML policy, validate it, compile per-identity decision tables, decide, explain.

The reference for the file format and the decision procedure is ``docs/policy.md``. Nothing here does
I/O (except reading the file in :func:`load_policy`), logs, or reads a clock: time is an argument.
Imports only :mod:`protocols`.
"""

from policies.decision import Decision
from policies.errors import PolicyError, PolicyIssue
from policies.explain import Explanation
from policies.model import Asset, DenyAction, EnipIdentity, OpcUaUser
from policies.opcua.nodes import UA_NAMESPACE
from policies.opcua.paths import browse_name, browse_path_of
from policies.policy import Policy, load_policy, parse_policy
from policies.view import SubjectView

__all__ = [
    "UA_NAMESPACE",
    "Asset",
    "Decision",
    "DenyAction",
    "EnipIdentity",
    "Explanation",
    "OpcUaUser",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "SubjectView",
    "browse_name",
    "browse_path_of",
    "load_policy",
    "parse_policy",
]
