"""What the gateway remembers of one client session's state on the device, sans-IO.

- **Subscription ids** are the gateway's own on each side: the client sees ids this table hands out
  (1, 2, ...), the device sees its own. Every request naming a subscription is rewritten on the way up,
  every response naming one on the way down. An id the client never got maps to 0, which servers do not
  hand out (asyncua's count from 78), so the device answers BadSubscriptionIdInvalid in its own terms.
  Subscriptions cannot be transferred between gateway sessions for the same reason: another session's
  ids mean nothing here.
- **Monitored item ids** are the gateway's own too, per subscription (1, 2, ...), mapped to the device's
  in every request that names one. Each item keeps the request that created it, as modified since
  (ModifyMonitoredItems, SetMonitoringMode): the node and attribute it watches decide ModifyMonitoredItems,
  and the whole request re-creates it on a new device session.
- **Sequence numbers** of a subscription re-created on a new device session (the device restarted) go on
  from where the client's left off: the device's count from 1 is shifted past the gateway's own message
  that told the client of the gap (:meth:`SessionTracking.recreate`). Acknowledgements of messages from
  before the gap map to sequence number 0, which the device answers BadSequenceNumberUnknown.
- **Continuation points** of Browse and BrowseNext -> the node being browsed, so BrowseNext is decided on
  that node (a point the gateway never saw decides as no node, which no rule allows).

Tables are bounded: a client that piles up state past the limits loses the oldest entries, which only
makes its later requests fail (closed), never reach further.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from asyncua import ua

from protocols.opcua.operations import Operation

MAX_SUBSCRIPTIONS = 1_000
MAX_MONITORED_ITEMS = 100_000
MAX_CONTINUATION_POINTS = 1_000
UNKNOWN_SUBSCRIPTION_ID = 0
UNKNOWN_MONITORED_ITEM_ID = 0
UNKNOWN_SEQUENCE_NUMBER = 0  # never used by a subscription (Part 4, 7.38: sequence numbers start at 1)
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


@dataclasses.dataclass
class Item:
    """A monitored item as the client asked for it: enough to create it again."""

    device_id: int
    request: ua.MonitoredItemCreateRequest
    timestamps: ua.TimestampsToReturn


@dataclasses.dataclass
class Subscription:
    """A subscription as the client asked for it, its monitored items by the client's ids, and how its
    sequence numbers map between the two sides."""

    device_id: int
    parameters: ua.CreateSubscriptionParameters
    items: dict[int, Item] = dataclasses.field(default_factory=dict)
    next_item_id: int = 1
    sequence_offset: int = 0  # the client's sequence number = the device's + sequence_offset
    last_sequence: int = 0  # the highest sequence number the client was sent

    def device_item(self, client_item: int) -> int:
        item = self.items.get(client_item)
        return UNKNOWN_MONITORED_ITEM_ID if item is None else item.device_id

    def client_item(self, device_item: int) -> int | None:
        return next((c for c, item in self.items.items() if item.device_id == device_item), None)

    def device_sequence(self, client_sequence: int) -> int:
        device_sequence = client_sequence - self.sequence_offset
        return device_sequence if device_sequence > 0 else UNKNOWN_SEQUENCE_NUMBER


@dataclasses.dataclass
class Recreated:
    """What became of one subscription on a new device session (``subscription`` None: the device did not
    create it again) and of its monitored items."""

    client_id: int
    subscription: Subscription | None
    failed_items: list[tuple[int, ua.StatusCode]]  # client handle, the device's status
    sequence_number: int  # of the gateway's message about the gap


class SessionTracking:
    def __init__(self) -> None:
        self._subscriptions: _Bounded = _Bounded(MAX_SUBSCRIPTIONS)  # client id -> Subscription
        self._client_ids: dict[int, int] = {}  # device id -> client id
        self._next_client_id = 1
        self._item_count = 0
        self._points: _Bounded = _Bounded(MAX_CONTINUATION_POINTS)  # continuation point -> node

    @property
    def subscriptions(self) -> int:
        return len(self._subscriptions)

    def tracked(self) -> Iterator[tuple[int, Subscription]]:
        """The client's subscriptions, by its ids."""
        return iter(list(self._subscriptions.items()))

    # ------------------------------------------------------------------------------ subscriptions

    def subscription(self, client_id: int) -> Subscription | None:
        subscription: Subscription | None = self._subscriptions.get(client_id)
        return subscription

    def device_id(self, client_id: int) -> int:
        subscription = self.subscription(client_id)
        return UNKNOWN_SUBSCRIPTION_ID if subscription is None else subscription.device_id

    def client_id(self, device_id: int) -> int:
        return self._client_ids.get(device_id, UNKNOWN_SUBSCRIPTION_ID)

    def _by_device(self, device_id: int) -> Subscription | None:
        return self.subscription(self.client_id(device_id))

    def _new_subscription(self, device_id: int, parameters: ua.CreateSubscriptionParameters) -> int:
        client_id = self._next_client_id
        self._next_client_id += 1
        self._subscriptions.remember(client_id, Subscription(device_id, copy.deepcopy(parameters)))
        self._client_ids[device_id] = client_id
        if len(self._client_ids) > len(self._subscriptions):  # the table forgot its oldest: follow it
            kept = {s.device_id for s in self._subscriptions.values()}
            self._client_ids = {d: c for d, c in self._client_ids.items() if d in kept}
            self._item_count = sum(len(s.items) for s in self._subscriptions.values())
        return client_id

    def forget(self, client_id: int) -> None:
        subscription = self._subscriptions.pop(client_id, None)
        if subscription is None:
            return
        if self._client_ids.get(subscription.device_id) == client_id:
            del self._client_ids[subscription.device_id]
        self._item_count -= len(subscription.items)

    def _new_item(self, subscription: Subscription, item: Item) -> int:
        if self._item_count >= MAX_MONITORED_ITEMS and subscription.items:
            # Past the bound the subscription's oldest item is forgotten: requests naming it fail.
            del subscription.items[next(iter(subscription.items))]
            self._item_count -= 1
        client_item = subscription.next_item_id
        subscription.next_item_id += 1
        subscription.items[client_item] = item
        self._item_count += 1
        return client_item

    # ------------------------------------------------------------------------- a new device session

    def recreate(
        self,
        client_id: int,
        created: ua.CreateSubscriptionResponse | None,
        items: list[tuple[int, Item]],
        results: list[ua.MonitoredItemCreateResult | None],
        failure: ua.StatusCode,
    ) -> Recreated:
        """Take the device's answers to re-creating subscription ``client_id`` on a new device session:
        ``created`` to its CreateSubscription (None: no answer), ``results`` to its ``items`` in order
        (None: no answer, then ``failure`` is the item's status). The new device ids are mapped to the
        client's, the sequence numbers shifted past the gateway's message about the gap (the client's next
        one), and what the device did not create again forgotten."""
        subscription = self.subscription(client_id)
        assert subscription is not None
        sequence_number = subscription.last_sequence + 1
        self._client_ids.pop(subscription.device_id, None)
        if created is None or not _good(created.ResponseHeader.ServiceResult):
            self.forget(client_id)
            return Recreated(client_id, None, [], sequence_number)
        subscription.device_id = created.Parameters.SubscriptionId
        self._client_ids[subscription.device_id] = client_id
        subscription.sequence_offset = subscription.last_sequence = sequence_number
        failed: list[tuple[int, ua.StatusCode]] = []
        for (client_item, item), result in zip(items, results, strict=True):
            if result is not None and _good(result.StatusCode):
                item.device_id = result.MonitoredItemId
                continue
            failed.append(
                (
                    item.request.RequestedParameters.ClientHandle,
                    failure if result is None else result.StatusCode,
                )
            )
            del subscription.items[client_item]
            self._item_count -= 1
        return Recreated(client_id, subscription, failed, sequence_number)

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
            subscription = self.subscription(request.Parameters.SubscriptionId)
            resolved = []
            for op in operations:
                item = None if subscription is None else subscription.items.get(op.monitored_item_id or 0)
                watched = None if item is None else item.request.ItemToMonitor
                resolved.append(
                    dataclasses.replace(
                        op,
                        node_id=None if watched is None else watched.NodeId,
                        attribute_id=None if watched is None else watched.AttributeId,
                    )
                )
            return resolved
        return operations


# ------------------------------------------------------------------------------ request rewrites


def _one(tracking: SessionTracking, parameters: Any) -> None:
    parameters.SubscriptionId = tracking.device_id(parameters.SubscriptionId)


def _many(tracking: SessionTracking, parameters: Any) -> None:
    parameters.SubscriptionIds = [tracking.device_id(i) for i in parameters.SubscriptionIds or ()]


def _device_item(subscription: Subscription | None, client_item: int) -> int:
    return UNKNOWN_MONITORED_ITEM_ID if subscription is None else subscription.device_item(client_item)


def _item_ids(tracking: SessionTracking, parameters: Any) -> None:
    subscription = tracking.subscription(parameters.SubscriptionId)
    parameters.MonitoredItemIds = [_device_item(subscription, i) for i in parameters.MonitoredItemIds or ()]
    _one(tracking, parameters)


def _items_to_modify(tracking: SessionTracking, parameters: Any) -> None:
    subscription = tracking.subscription(parameters.SubscriptionId)
    for item in parameters.ItemsToModify or ():
        item.MonitoredItemId = _device_item(subscription, item.MonitoredItemId)
    _one(tracking, parameters)


def _triggering(tracking: SessionTracking, parameters: Any) -> None:
    subscription = tracking.subscription(parameters.SubscriptionId)
    parameters.TriggeringItemId = _device_item(subscription, parameters.TriggeringItemId)
    parameters.LinksToAdd = [_device_item(subscription, i) for i in parameters.LinksToAdd or ()]
    parameters.LinksToRemove = [_device_item(subscription, i) for i in parameters.LinksToRemove or ()]
    _one(tracking, parameters)


def _republish(tracking: SessionTracking, parameters: Any) -> None:
    subscription = tracking.subscription(parameters.SubscriptionId)
    if subscription is not None:
        parameters.RetransmitSequenceNumber = subscription.device_sequence(
            parameters.RetransmitSequenceNumber
        )
    _one(tracking, parameters)


def _acknowledgements(tracking: SessionTracking, parameters: Any) -> None:
    for ack in parameters.SubscriptionAcknowledgements or ():
        subscription = tracking.subscription(ack.SubscriptionId)
        if subscription is None:
            ack.SubscriptionId = UNKNOWN_SUBSCRIPTION_ID
            continue
        ack.SubscriptionId = subscription.device_id
        ack.SequenceNumber = subscription.device_sequence(ack.SequenceNumber)


_REQUEST_REWRITES: dict[str, Callable[[SessionTracking, Any], None]] = {
    "ModifySubscription": _one,
    "Republish": _republish,
    "CreateMonitoredItems": _one,
    "ModifyMonitoredItems": _items_to_modify,
    "DeleteMonitoredItems": _item_ids,
    "SetMonitoringMode": _item_ids,
    "SetTriggering": _triggering,
    "SetPublishingMode": _many,
    "DeleteSubscriptions": _many,
    "TransferSubscriptions": _many,
    "Publish": _acknowledgements,
}

# ----------------------------------------------------------------------------- response rules


def _created_subscription(tracking: SessionTracking, request: Any, response: Any) -> None:
    result = response.Parameters
    if _good(response.ResponseHeader.ServiceResult):
        result.SubscriptionId = tracking._new_subscription(result.SubscriptionId, request.Parameters)


def _modified_subscription(tracking: SessionTracking, request: Any, response: Any) -> None:
    asked = request.Parameters
    subscription = tracking._by_device(asked.SubscriptionId)
    if subscription is None or not _good(response.ResponseHeader.ServiceResult):
        return
    kept = subscription.parameters
    kept.RequestedPublishingInterval = asked.RequestedPublishingInterval
    kept.RequestedLifetimeCount = asked.RequestedLifetimeCount
    kept.RequestedMaxKeepAliveCount = asked.RequestedMaxKeepAliveCount
    kept.MaxNotificationsPerPublish = asked.MaxNotificationsPerPublish
    kept.Priority = asked.Priority


def _publishing_mode(tracking: SessionTracking, request: Any, response: Any) -> None:
    parameters = request.Parameters
    results = response.Parameters.Results or ()
    for device_id, status in zip(parameters.SubscriptionIds or (), results, strict=False):
        subscription = tracking._by_device(device_id)
        if subscription is not None and _good(status):
            subscription.parameters.PublishingEnabled = parameters.PublishingEnabled


def _published(tracking: SessionTracking, _request: Any, response: Any) -> None:
    result = response.Parameters
    subscription = tracking._by_device(result.SubscriptionId)
    result.SubscriptionId = tracking.client_id(result.SubscriptionId)
    if subscription is None:
        return
    offset = subscription.sequence_offset
    message = result.NotificationMessage
    if offset:
        message.SequenceNumber += offset
        result.AvailableSequenceNumbers = [n + offset for n in result.AvailableSequenceNumbers or ()]
    if message.NotificationData and message.SequenceNumber > subscription.last_sequence:
        subscription.last_sequence = message.SequenceNumber  # a keep-alive's is the next one, not sent


def _republished(tracking: SessionTracking, request: Any, response: Any) -> None:
    subscription = tracking._by_device(request.Parameters.SubscriptionId)
    if subscription is not None and subscription.sequence_offset:
        response.NotificationMessage.SequenceNumber += subscription.sequence_offset


def _deleted_subscriptions(tracking: SessionTracking, request: Any, response: Any) -> None:
    for device_id, status in zip(
        request.Parameters.SubscriptionIds or (), response.Results or (), strict=False
    ):
        client_id = tracking.client_id(device_id)
        if client_id != UNKNOWN_SUBSCRIPTION_ID and _good(status):
            tracking.forget(client_id)


def _created_items(tracking: SessionTracking, request: Any, response: Any) -> None:
    parameters = request.Parameters
    subscription = tracking._by_device(parameters.SubscriptionId)
    if subscription is None:
        return
    for asked, result in zip(parameters.ItemsToCreate or (), response.Results or (), strict=False):
        if _good(result.StatusCode):
            item = Item(result.MonitoredItemId, copy.deepcopy(asked), parameters.TimestampsToReturn)
            result.MonitoredItemId = tracking._new_item(subscription, item)


def _modified_items(tracking: SessionTracking, request: Any, response: Any) -> None:
    subscription = tracking._by_device(request.Parameters.SubscriptionId)
    if subscription is None:
        return
    for asked, result in zip(request.Parameters.ItemsToModify or (), response.Results or (), strict=False):
        client_item = subscription.client_item(asked.MonitoredItemId)
        if client_item is not None and _good(result.StatusCode):
            parameters = copy.deepcopy(asked.RequestedParameters)
            subscription.items[client_item].request.RequestedParameters = parameters


def _monitoring_mode(tracking: SessionTracking, request: Any, response: Any) -> None:
    parameters = request.Parameters
    subscription = tracking._by_device(parameters.SubscriptionId)
    if subscription is None:
        return
    results = response.Parameters.Results or ()
    for item_id, status in zip(parameters.MonitoredItemIds or (), results, strict=False):
        client_item = subscription.client_item(item_id)
        if client_item is not None and _good(status):
            subscription.items[client_item].request.MonitoringMode = parameters.MonitoringMode


def _deleted_items(tracking: SessionTracking, request: Any, response: Any) -> None:
    subscription = tracking._by_device(request.Parameters.SubscriptionId)
    if subscription is None:
        return
    for item_id, status in zip(
        request.Parameters.MonitoredItemIds or (), response.Results or (), strict=False
    ):
        client_item = subscription.client_item(item_id)
        if client_item is not None and _good(status):
            del subscription.items[client_item]
            tracking._item_count -= 1


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
    "ModifySubscription": _modified_subscription,
    "SetPublishingMode": _publishing_mode,
    "Publish": _published,
    "Republish": _republished,
    "DeleteSubscriptions": _deleted_subscriptions,
    "CreateMonitoredItems": _created_items,
    "ModifyMonitoredItems": _modified_items,
    "SetMonitoringMode": _monitoring_mode,
    "DeleteMonitoredItems": _deleted_items,
    "Browse": _browsed,
    "BrowseNext": _browsed_next,
}
