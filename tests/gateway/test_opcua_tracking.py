"""SessionTracking: subscription ids the gateway's own on each side, monitored items and continuation points
mapped back to the nodes the gateway decided on; on asyncua's request and response objects."""

from __future__ import annotations

from asyncua import ua

from gateway.opcua import tracking
from gateway.opcua.tracking import UNKNOWN_SUBSCRIPTION_ID, SessionTracking
from protocols.opcua.operations import BROWSE_NEXT, MODIFY_MONITORED_ITEMS

GOOD = ua.StatusCode(ua.StatusCodes.Good)
BAD = ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
LEVEL = ua.NodeId("Plant.Level", 2)


def created(tracked: SessionTracking, device_id: int) -> int:
    response = ua.CreateSubscriptionResponse()
    response.Parameters.SubscriptionId = device_id
    tracked.response_to_client("CreateSubscription", ua.CreateSubscriptionRequest(), response)
    return int(response.Parameters.SubscriptionId)


def test_subscription_ids_are_the_gateways_own_on_each_side() -> None:
    tracked = SessionTracking()
    assert [created(tracked, 78), created(tracked, 79)] == [1, 2]
    request = ua.ModifySubscriptionRequest()
    request.Parameters.SubscriptionId = 2
    tracked.request_to_device("ModifySubscription", request)
    assert request.Parameters.SubscriptionId == 79
    publish = ua.PublishRequest()
    publish.Parameters.SubscriptionAcknowledgements = [
        ua.SubscriptionAcknowledgement(SubscriptionId=1, SequenceNumber=5),
        ua.SubscriptionAcknowledgement(SubscriptionId=7, SequenceNumber=1),  # never handed out
    ]
    tracked.request_to_device("Publish", publish)
    assert [a.SubscriptionId for a in publish.Parameters.SubscriptionAcknowledgements] == [
        78,
        UNKNOWN_SUBSCRIPTION_ID,
    ]
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = 79
    tracked.response_to_client("Publish", publish, response)
    assert response.Parameters.SubscriptionId == 2


def test_a_failed_create_hands_out_no_id() -> None:
    tracked = SessionTracking()
    response = ua.CreateSubscriptionResponse()
    response.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadTooManySubscriptions)
    tracked.response_to_client("CreateSubscription", ua.CreateSubscriptionRequest(), response)
    assert tracked.subscriptions == 0


def test_deleted_subscriptions_take_their_monitored_items_along() -> None:
    tracked = SessionTracking()
    client_id = created(tracked, 78)
    request = ua.CreateMonitoredItemsRequest()
    request.Parameters.SubscriptionId = client_id
    request.Parameters.ItemsToCreate = [
        ua.MonitoredItemCreateRequest(ItemToMonitor=ua.ReadValueId(NodeId=LEVEL, AttributeId=13))
    ]
    tracked.request_to_device("CreateMonitoredItems", request)
    response = ua.CreateMonitoredItemsResponse(Results=[ua.MonitoredItemCreateResult(GOOD, 501)])
    tracked.response_to_client("CreateMonitoredItems", request, response)
    assert response.Results[0].MonitoredItemId == 1  # the gateway's own id, as for subscriptions

    modify = ua.ModifyMonitoredItemsRequest()
    modify.Parameters.SubscriptionId = client_id
    modify.Parameters.ItemsToModify = [
        ua.MonitoredItemModifyRequest(MonitoredItemId=1),
        ua.MonitoredItemModifyRequest(MonitoredItemId=501),  # the device's id means nothing to the client
    ]
    resolved = tracked.resolve("ModifyMonitoredItems", modify, MODIFY_MONITORED_ITEMS.operations(modify))
    assert [(op.node_id, op.attribute_id) for op in resolved] == [(LEVEL, 13), (None, None)]

    delete = ua.DeleteSubscriptionsRequest()
    delete.Parameters.SubscriptionIds = [client_id]
    tracked.request_to_device("DeleteSubscriptions", delete)
    tracked.response_to_client("DeleteSubscriptions", delete, ua.DeleteSubscriptionsResponse(Results=[GOOD]))
    assert tracked.subscriptions == 0 and tracked.device_id(client_id) == UNKNOWN_SUBSCRIPTION_ID
    assert (
        tracked.resolve("ModifyMonitoredItems", modify, MODIFY_MONITORED_ITEMS.operations(modify))[0].node_id
        is None
    )


def test_continuation_points_lead_back_to_the_browsed_node_until_released() -> None:
    tracked = SessionTracking()
    browse = ua.BrowseRequest()
    browse.Parameters.NodesToBrowse = [ua.BrowseDescription(NodeId=LEVEL), ua.BrowseDescription(NodeId=LEVEL)]
    response = ua.BrowseResponse(
        Results=[ua.BrowseResult(StatusCode=GOOD, ContinuationPoint=b"cp-1"), ua.BrowseResult(StatusCode=BAD)]
    )
    tracked.response_to_client("Browse", browse, response)

    def nodes(points: list[bytes], release: bool = False) -> tuple[ua.BrowseNextRequest, list[object]]:
        request = ua.BrowseNextRequest()
        request.Parameters.ContinuationPoints = points
        request.Parameters.ReleaseContinuationPoints = release
        return request, [
            op.node_id for op in tracked.resolve("BrowseNext", request, BROWSE_NEXT.operations(request))
        ]

    request, found = nodes([b"cp-1", b"forged"])
    assert found == [LEVEL, None]
    more = ua.BrowseNextResponse()
    more.Parameters.Results = [ua.BrowseResult(StatusCode=GOOD, ContinuationPoint=b"cp-2")]
    tracked.response_to_client("BrowseNext", request, more)
    assert nodes([b"cp-1"])[1] == [None]  # used up
    request, found = nodes([b"cp-2"], release=True)
    assert found == [LEVEL]
    tracked.response_to_client("BrowseNext", request, ua.BrowseNextResponse())
    assert nodes([b"cp-2"])[1] == [None]


def test_tables_are_bounded() -> None:
    tracked = SessionTracking()
    tracked._points.limit = 3
    browse = ua.BrowseRequest()
    browse.Parameters.NodesToBrowse = [ua.BrowseDescription(NodeId=ua.NodeId(i, 2)) for i in range(5)]
    results = [ua.BrowseResult(StatusCode=GOOD, ContinuationPoint=bytes([i])) for i in range(5)]
    tracked.response_to_client("Browse", browse, ua.BrowseResponse(Results=results))
    assert list(tracked._points) == [b"\x02", b"\x03", b"\x04"]
    assert tracking.MAX_CONTINUATION_POINTS >= 100 and tracking.MAX_SUBSCRIPTIONS >= 100


def test_every_request_with_subscription_ids_is_tracked_so_never_relayed_as_its_bytes() -> None:
    # The session relays a request's own bytes only for services outside TRACKED_RESPONSES, so a
    # service whose request carries the client's subscription ids must be in it.
    assert set(tracking._REQUEST_REWRITES) <= tracking.TRACKED_RESPONSES


def _subscription_with_items(tracked: SessionTracking, handles: list[int]) -> int:
    create = ua.CreateSubscriptionRequest()
    create.Parameters.RequestedPublishingInterval = 250
    response = ua.CreateSubscriptionResponse()
    response.Parameters.SubscriptionId = 78
    tracked.response_to_client("CreateSubscription", create, response)
    client_id = int(response.Parameters.SubscriptionId)
    request = ua.CreateMonitoredItemsRequest()
    request.Parameters.SubscriptionId = client_id
    request.Parameters.ItemsToCreate = [
        ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=ua.NodeId(f"n{handle}", 2), AttributeId=13),
            RequestedParameters=ua.MonitoringParameters(ClientHandle=handle),
        )
        for handle in handles
    ]
    tracked.request_to_device("CreateMonitoredItems", request)
    results = [ua.MonitoredItemCreateResult(GOOD, 500 + handle) for handle in handles]
    tracked.response_to_client(
        "CreateMonitoredItems", request, ua.CreateMonitoredItemsResponse(Results=results)
    )
    return client_id


def _published(tracked: SessionTracking, device_id: int, sequence: int) -> ua.PublishResponse:
    response = ua.PublishResponse()
    response.Parameters.SubscriptionId = device_id
    response.Parameters.NotificationMessage.SequenceNumber = sequence
    response.Parameters.NotificationMessage.NotificationData = [ua.DataChangeNotification()]
    tracked.response_to_client("Publish", ua.PublishRequest(), response)
    return response


def test_a_subscription_recreated_on_a_new_device_session_keeps_the_clients_ids_and_numbers() -> None:
    tracked = SessionTracking()
    client_id = _subscription_with_items(tracked, [7, 8])
    assert _published(tracked, 78, 5).Parameters.NotificationMessage.SequenceNumber == 5
    ((_, subscription),) = tracked.tracked()
    assert subscription.parameters.RequestedPublishingInterval == 250
    assert [item.request.RequestedParameters.ClientHandle for item in subscription.items.values()] == [7, 8]
    created = ua.CreateSubscriptionResponse()
    created.Parameters.SubscriptionId = 3  # the new device session's id
    items = list(subscription.items.items())
    gone = ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
    results = [ua.MonitoredItemCreateResult(GOOD, 41), ua.MonitoredItemCreateResult(gone, 0)]
    done = tracked.recreate(client_id, created, items, results, GOOD)
    assert done.subscription is not None and done.failed_items == [(8, gone)]
    assert done.sequence_number == 6  # the gateway's message about the gap: the client's next number
    # Client ids on the way up are the new device's; the device's count from 1 goes on after the gap.
    delete = ua.DeleteMonitoredItemsRequest()
    delete.Parameters.SubscriptionId = client_id
    delete.Parameters.MonitoredItemIds = [1, 2]
    tracked.request_to_device("DeleteMonitoredItems", delete)
    assert delete.Parameters.SubscriptionId == 3
    assert delete.Parameters.MonitoredItemIds == [41, tracking.UNKNOWN_MONITORED_ITEM_ID]
    assert _published(tracked, 3, 1).Parameters.SubscriptionId == client_id
    assert _published(tracked, 3, 2).Parameters.NotificationMessage.SequenceNumber == 8
    publish = ua.PublishRequest()
    publish.Parameters.SubscriptionAcknowledgements = [
        ua.SubscriptionAcknowledgement(SubscriptionId=client_id, SequenceNumber=8),
        ua.SubscriptionAcknowledgement(SubscriptionId=client_id, SequenceNumber=5),  # before the gap
    ]
    tracked.request_to_device("Publish", publish)
    assert [
        (a.SubscriptionId, a.SequenceNumber) for a in publish.Parameters.SubscriptionAcknowledgements
    ] == [
        (3, 2),
        (3, tracking.UNKNOWN_SEQUENCE_NUMBER),
    ]


def test_a_subscription_the_new_device_session_refuses_is_forgotten() -> None:
    tracked = SessionTracking()
    client_id = _subscription_with_items(tracked, [7])
    ((_, subscription),) = tracked.tracked()
    refused = ua.CreateSubscriptionResponse()
    refused.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadTooManySubscriptions)
    done = tracked.recreate(client_id, refused, list(subscription.items.items()), [None], GOOD)
    assert done.subscription is None and done.sequence_number == 1
    assert tracked.subscriptions == 0 and tracked.device_id(client_id) == UNKNOWN_SUBSCRIPTION_ID
