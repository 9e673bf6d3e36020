"""What the gateway remembers of one client session's state on the device, sans-IO.

- **Subscription ids** are the gateway's own on each side: the client sees ids this table hands out
  (1, 2, ...), the device sees its own. Every request naming a subscription is rewritten on the way up,
  every response naming one on the way down. An id the client never got maps to 0, which servers do not
  hand out (asyncua's count from 78), so the device answers BadSubscriptionIdInvalid in its own terms.
  Subscriptions cannot be transferred between gateway sessions for the same reason: another session's
  ids mean nothing here.
- **Monitored items** (device subscription id, item id) -> the node and attribute the gateway decided on
  when it let the item be created, so ModifyMonitoredItems is decided on the same node.
- **Continuation points** of Browse and BrowseNext -> the node being browsed, so BrowseNext is decided on
  that node (a point the gateway never saw decides as no node, which no rule allows).

Tables are bounded: a client that piles up state past the limits loses the oldest entries, which only
makes its later requests fail (closed), never reach further.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from asyncua import ua

from protocols.opcua.operations import Operation

MAX_SUBSCRIPTIONS = 1_000
MAX_MONITORED_ITEMS = 100_000
MAX_CONTINUATION_POINTS = 1_000
UNKNOWN_SUBSCRIPTION_ID = 0
# Services whose requests or responses carry subscription ids: their bytes cannot be relayed unchanged.
SUBSCRIPTION_SERVICES = frozenset(
    (
        "CreateSubscription",
        "ModifySubscription",
        "SetPublishingMode",
        "DeleteSubscriptions",
        "TransferSubscriptions",
        "Publish",
        "Republish",
        "CreateMonitoredItems",
        "ModifyMonitoredItems",
        "DeleteMonitoredItems",
        "SetMonitoringMode",
        "SetTriggering",
    )
)
# Services whose responses the session must see to keep these tables.
TRACKED_RESPONSES = SUBSCRIPTION_SERVICES | {"Browse", "BrowseNext"}


def _good(status: ua.StatusCode | None) -> bool:
    return status is None or status.value & 0xC000_0000 == 0


class _Bounded(OrderedDict[Any, Any]):
    """An insertion-ordered dict that forgets its oldest entries past ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)


class SessionTracking:
    def __init__(self) -> None:
        self._device_ids: _Bounded = _Bounded(MAX_SUBSCRIPTIONS)  # client id -> device id
        self._client_ids: dict[int, int] = {}  # device id -> client id
        self._next_client_id = 1
        self._items: _Bounded = _Bounded(MAX_MONITORED_ITEMS)  # (device sub, item) -> (node, attribute)
        self._points: _Bounded = _Bounded(MAX_CONTINUATION_POINTS)  # continuation point -> node

    @property
    def subscriptions(self) -> int:
        return len(self._device_ids)

    # ------------------------------------------------------------------------------ subscriptions

    def device_id(self, client_id: int) -> int:
        return int(self._device_ids.get(client_id, UNKNOWN_SUBSCRIPTION_ID))

    def client_id(self, device_id: int) -> int:
        return self._client_ids.get(device_id, UNKNOWN_SUBSCRIPTION_ID)

    def _new_subscription(self, device_id: int) -> int:
        client_id = self._next_client_id
        self._next_client_id += 1
        self._device_ids.remember(client_id, device_id)
        self._client_ids[device_id] = client_id
        if len(self._client_ids) > len(self._device_ids):  # the table forgot its oldest: follow it
            kept = set(self._device_ids.values())
            self._client_ids = {d: c for d, c in self._client_ids.items() if d in kept}
        return client_id

    def _forget_subscription(self, client_id: int) -> None:
        device_id = self._device_ids.pop(client_id, None)
        if device_id is None:
            return
        self._client_ids.pop(device_id, None)
        for key in [key for key in self._items if key[0] == device_id]:
            del self._items[key]

    def request_to_device(self, service: str, request: Any) -> None:
        """Rewrite the subscription ids in ``request`` (in place) from the client's to the device's."""
        rewrite = _REQUEST_REWRITES.get(service)
        if rewrite is not None:
            rewrite(self, request.Parameters)

    def response_to_client(self, service: str, request: Any, response: Any) -> None:
        """Learn from a device response to ``request`` (already rewritten for the device) and rewrite
        the subscription ids in it (in place) to the client's."""
        learn = _RESPONSE_RULES.get(service)
        if learn is not None:
            learn(self, request, response)

    # ------------------------------------------------------------------- what operations reach

    def resolve(self, service: str, request: Any, operations: list[Operation]) -> list[Operation]:
        """Operations that name no node (BrowseNext, ModifyMonitoredItems), given the node they reach."""
        if service == "BrowseNext":
            return [
                dataclasses.replace(op, node_id=self._points.get(bytes(op.continuation_point or b"")))
                for op in operations
            ]
        if service == "ModifyMonitoredItems":
            device_sub = self.device_id(request.Parameters.SubscriptionId)
            resolved = []
            for op in operations:
                node, attribute = self._items.get((device_sub, op.monitored_item_id), (None, None))
                resolved.append(dataclasses.replace(op, node_id=node, attribute_id=attribute))
            return resolved
        return operations


# ------------------------------------------------------------------------------ request rewrites


def _one(tracking: SessionTracking, parameters: Any) -> None:
    parameters.SubscriptionId = tracking.device_id(parameters.SubscriptionId)


def _many(tracking: SessionTracking, parameters: Any) -> None:
    parameters.SubscriptionIds = [tracking.device_id(i) for i in parameters.SubscriptionIds or ()]


def _acknowledgements(tracking: SessionTracking, parameters: Any) -> None:
    for ack in parameters.SubscriptionAcknowledgements or ():
        ack.SubscriptionId = tracking.device_id(ack.SubscriptionId)


_REQUEST_REWRITES: dict[str, Callable[[SessionTracking, Any], None]] = {
    "ModifySubscription": _one,
    "Republish": _one,
    "CreateMonitoredItems": _one,
    "ModifyMonitoredItems": _one,
    "DeleteMonitoredItems": _one,
    "SetMonitoringMode": _one,
    "SetTriggering": _one,
    "SetPublishingMode": _many,
    "DeleteSubscriptions": _many,
    "TransferSubscriptions": _many,
    "Publish": _acknowledgements,
}

# ----------------------------------------------------------------------------- response rules


def _created_subscription(tracking: SessionTracking, _request: Any, response: Any) -> None:
    result = response.Parameters
    if _good(response.ResponseHeader.ServiceResult):
        result.SubscriptionId = tracking._new_subscription(result.SubscriptionId)


def _published(tracking: SessionTracking, _request: Any, response: Any) -> None:
    response.Parameters.SubscriptionId = tracking.client_id(response.Parameters.SubscriptionId)


def _deleted_subscriptions(tracking: SessionTracking, request: Any, response: Any) -> None:
    by_device = {device: client for client, device in tracking._device_ids.items()}
    for device_id, status in zip(
        request.Parameters.SubscriptionIds or (), response.Results or (), strict=False
    ):
        client_id = by_device.get(device_id)
        if client_id is not None and _good(status):
            tracking._forget_subscription(client_id)


def _created_items(tracking: SessionTracking, request: Any, response: Any) -> None:
    device_sub = request.Parameters.SubscriptionId
    for item, result in zip(request.Parameters.ItemsToCreate or (), response.Results or (), strict=False):
        if _good(result.StatusCode):
            watched = item.ItemToMonitor
            tracking._items.remember(
                (device_sub, result.MonitoredItemId), (watched.NodeId, watched.AttributeId)
            )


def _deleted_items(tracking: SessionTracking, request: Any, response: Any) -> None:
    device_sub = request.Parameters.SubscriptionId
    for item_id, status in zip(
        request.Parameters.MonitoredItemIds or (), response.Results or (), strict=False
    ):
        if _good(status):
            tracking._items.pop((device_sub, item_id), None)


def _browsed(tracking: SessionTracking, request: Any, response: Any) -> None:
    for item, result in zip(request.Parameters.NodesToBrowse or (), response.Results or (), strict=False):
        if result.ContinuationPoint:
            tracking._points.remember(bytes(result.ContinuationPoint), item.NodeId)


def _browsed_next(tracking: SessionTracking, request: Any, response: Any) -> None:
    parameters = request.Parameters
    # Every point sent is used up (or released), whatever came back.
    nodes = [tracking._points.pop(bytes(point), None) for point in parameters.ContinuationPoints or ()]
    if parameters.ReleaseContinuationPoints:
        return
    for node, result in zip(nodes, response.Parameters.Results or (), strict=False):
        if result.ContinuationPoint and node is not None:
            tracking._points.remember(bytes(result.ContinuationPoint), node)


_RESPONSE_RULES: dict[str, Callable[[SessionTracking, Any, Any], None]] = {
    "CreateSubscription": _created_subscription,
    "Publish": _published,
    "DeleteSubscriptions": _deleted_subscriptions,
    "CreateMonitoredItems": _created_items,
    "DeleteMonitoredItems": _deleted_items,
    "Browse": _browsed,
    "BrowseNext": _browsed_next,
}
