"""``ztgate policy explain`` for EtherNet/IP: a CIP request's decision with the reasons around it.

As for Modbus (:mod:`policies.explain`), the decision comes from the compiled view the gateway runs;
this module adds the request in words (service with its class, tag or class/instance/attribute, the
values written, the route), the entry the decision rests on, and the windows of the rules that name
the service.
"""

from __future__ import annotations

from collections.abc import Callable

from policies.decision import Decision
from policies.enip.evaluate import EnipCandidate, covers_target, enip_covers, enip_touches, request_text
from policies.enip.services import service_text
from policies.explain import Explanation, at_text, decision_line, rule_line, window_lines
from policies.model import Rule
from policies.view import SubjectView, route_of
from protocols.enip.requests import CipRequest
from protocols.enip.spec import FIRST_CLASS_SPECIFIC_SERVICE, GeneralStatus

__all__ = ["describe_enip_request", "explain_enip_view"]

_STATUS_NAMES = {int(status): status.name.lower().replace("_", " ") for status in GeneralStatus}
_SHOWN_VALUES = 8


def describe_enip_request(request: CipRequest) -> str:
    if request.error is not None:
        service = service_text(request.class_id, request.service, request.name)
        return f"{service}, does not parse: {request.error}"
    parts = [request_text(request)]
    if request.writes:
        if request.opaque_values:
            parts.append("writes data whose values the gateway cannot read")
        elif request.values:
            shown = ", ".join(
                repr(v) if isinstance(v, float) else str(v) for v in request.values[:_SHOWN_VALUES]
            )
            more = f", ... ({len(request.values)} values)" if len(request.values) > _SHOWN_VALUES else ""
            parts.append(f"values {shown}{more}")
    route = route_of(request)
    if route:
        parts.append("route " + "/".join(str(hop) for hop in route))
    return ", ".join(parts)


def _names_service(rule: Rule, request: CipRequest) -> bool:
    class_id, service = request.class_id, request.service
    for entry in rule.enip:
        if entry.every_service or (class_id, service) in entry.services:
            return True
        if (
            service < FIRST_CLASS_SPECIFIC_SERVICE
            and (None, service) in entry.services
            and (entry.classes is None or (class_id is not None and class_id in entry.classes))
        ):
            return True
    return False


def _deciding_entry(view: SubjectView, decision: Decision, request: CipRequest, now: float) -> str | None:
    """The entry of the deciding (or closest) rule that the decision rests on, in policy notation."""
    table = view.enip_table(request)
    if table is None or decision.rule_id is None:
        return None
    tag = view.request_tag(request)
    # In the order the evaluator looks: a matching deny entry, an allowing entry, then the closest miss
    # (an entry allowing what the request addresses before one that does not).
    passes: tuple[tuple[tuple[EnipCandidate, ...], Callable[[EnipCandidate], bool]], ...] = (
        (table.deny, lambda c: enip_touches(c, request, tag, now)),
        (table.allow, lambda c: enip_covers(c, request, tag, now)),
        (table.allow, lambda c: covers_target(c, request, tag)),
        (table.allow, lambda c: True),
    )
    for candidates, matches in passes:
        for c in candidates:
            if c.rule_id == decision.rule_id and matches(c):
                return c.entry.describe()
    return None


def explain_enip_view(view: SubjectView, request: CipRequest, now: float, source: str) -> Explanation:
    decision = view.decide_enip(request, now)
    asset = view.asset
    lines = [
        decision_line(decision, "general status", _STATUS_NAMES),
        rule_line(decision, view.rules),
        f"reason: {decision.reason}",
    ]
    entry = _deciding_entry(view, decision, request, now)
    if entry is not None:
        lines.append(f"entry: {entry}")
    if decision.monitor_rule_id is not None:
        flip = "deny" if decision.verdict == "allow" else "allow"
        lines.append(f"monitor: rule {decision.monitor_rule_id} (monitor mode) would {flip} this request")
    route = "/".join(str(hop) for hop in asset.route) or "none"
    lines += [
        f"subject: {view.subject}",
        f"asset: {asset.name} ({asset.protocol}, upstream {asset.upstream_host}:{asset.upstream_port},"
        f" route {route}, mode {asset.mode})",
        f"request: {describe_enip_request(request)}",
        f"time: {at_text(now)}",
    ]
    relevant = [rule for rule in view.rules if _names_service(rule, request)]
    lines.extend(window_lines(service_text(request.class_id, request.service, request.name), relevant, now))
    lines.append(f"policy: {source} revision {view.policy_revision}")
    return Explanation(decision, lines)
