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

    modify = ua.ModifyMonitoredItemsRequest()
    modify.Parameters.SubscriptionId = client_id
    modify.Parameters.ItemsToModify = [
        ua.MonitoredItemModifyRequest(MonitoredItemId=501),
        ua.MonitoredItemModifyRequest(MonitoredItemId=502),
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
