"""EPATH: vectors from the CIP spec (Vol 1 Appendix C) and Rockwell's 1756-PM020, tag text, path shapes,
refusals and caps, and round trips of generated paths in both forms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.enip import (
    CipLimits,
    CipProtocolError,
    DataSegment,
    ElectronicKeySegment,
    EPath,
    LogicalSegment,
    LogicalType,
    NetworkSegment,
    PortSegment,
    SymbolicSegment,
    parse_epath,
)
from protocols.enip.epath import check_connection_path, check_request_path, check_route_path, tag_path
from tests.protocols.enip.cip_samples import object_paths, paths, tag_paths

CLASS, INSTANCE, MEMBER, POINT, ATTRIBUTE = (
    LogicalType.CLASS_ID,
    LogicalType.INSTANCE_ID,
    LogicalType.MEMBER_ID,
    LogicalType.CONNECTION_POINT,
    LogicalType.ATTRIBUTE_ID,
)

VECTORS = [
    # 1756-PM020 (Read Tag Fragmented by symbol instance): Symbol class, 16-bit instance 0xE01A.
    ("206b25001ae0", (LogicalSegment(CLASS, 0x6B), LogicalSegment(INSTANCE, 0xE01A, 2))),
    # 1756-PM020: ANSI extended symbolic segments, even and odd (padded) lengths.
    ("910a546f74616c436f756e74", (SymbolicSegment("TotalCount"),)),
    ("910b436f6e74726f6c576f726400", (SymbolicSegment("ControlWord"),)),
    # Vol 1 C-1.4.2: an assembly with two connection points; the Message Router object.
    (
        "200424662c672c68",
        (
            LogicalSegment(CLASS, 4),
            LogicalSegment(INSTANCE, 0x66),
            LogicalSegment(POINT, 0x67),
            LogicalSegment(POINT, 0x68),
        ),
    ),
    ("20022401", (LogicalSegment(CLASS, 2), LogicalSegment(INSTANCE, 1))),
    ("2002240130", None),  # (truncated: 0x30 without its attribute id)
    # Vol 1 C-1.4.2.1: electronic key format 4 (vendor 1, device type 0x0C, product 0xB8, rev 4.1).
    ("34040100" + "0c00b8000401", (ElectronicKeySegment(1, 0x0C, 0xB8, 4, 1),)),
    ("34040100" + "0c00b8008401", (ElectronicKeySegment(1, 0x0C, 0xB8, 4, 1, compatibility=True),)),
    # Vol 1 C-1.4.2: port segments: backplane slot 0; an IP address as an extended link (padded to even).
    ("0100", (PortSegment(1, b"\x00"),)),
    ("120f3133302e3135312e3133372e31303500", (PortSegment(2, b"130.151.137.105"),)),
    ("120831302e312e322e33", (PortSegment(2, b"10.1.2.3"),)),
    ("0f120005", (PortSegment(0x12, b"\x05"),)),  # port 18: extended port identifier
    ("1f0212004142", (PortSegment(0x12, b"AB"),)),  # extended port and extended link
    # 16- and 32-bit logical formats carry a pad byte in the padded form.
    ("2500e803", (LogicalSegment(INSTANCE, 1000),)),
    ("260070110100", (LogicalSegment(INSTANCE, 70000),)),
    ("2900e803", (LogicalSegment(MEMBER, 1000),)),
    ("2a0070110100", (LogicalSegment(MEMBER, 70000),)),
    ("2c05", (LogicalSegment(POINT, 5),)),
    ("2e0070110100", (LogicalSegment(POINT, 70000),)),
    ("3100e803", (LogicalSegment(ATTRIBUTE, 1000),)),
    ("21006b00", (LogicalSegment(CLASS, 0x6B, 2),)),  # non-minimal formats keep their size
    # Network segment (production inhibit time) and simple data segment, from Forward Open paths.
    ("430a", (NetworkSegment(0x43, b"\x0a"),)),
    ("80020102030405", None),  # word count 2, only 3 bytes follow... (truncated)
    ("800201020304", (DataSegment(b"\x01\x02\x03\x04"),)),
]


@pytest.mark.parametrize(("hex_path", "segments"), VECTORS)
def test_vectors(hex_path: str, segments: tuple[object, ...] | None) -> None:
    data = bytes.fromhex(hex_path)
    if segments is None:
        with pytest.raises(CipProtocolError) as caught:
            parse_epath(data)
        assert caught.value.general_status == 0x04
        return
    path = parse_epath(data)
    assert path.segments == segments
    assert path.encode() == data


def test_packed_form_drops_the_pads() -> None:
    packed = bytes.fromhex("252c01" + "2670110100" + "9103616263")
    path = parse_epath(packed, padded=False)
    assert path.segments == (
        LogicalSegment(INSTANCE, 300, 2),
        LogicalSegment(INSTANCE, 70000, 4),
        SymbolicSegment("abc"),
    )
    assert path.encode(padded=False) == packed
    assert path.encode() == bytes.fromhex("25002c01" + "260070110100" + "910361626300")


def test_what_a_path_addresses() -> None:
    path = parse_epath(bytes.fromhex("20f5240130 05".replace(" ", "")))
    assert (path.class_id, path.instance_id, path.attribute_id, path.symbolic, path.tag) == (
        0xF5,
        1,
        5,
        False,
        None,
    )
    route = parse_epath(bytes.fromhex("0100120831302e312e322e33"))
    assert [str(hop) for hop in route.route] == ["1/0", "2/10.1.2.3"]
    assert route.route[1].link_address == "10.1.2.3" and route.route[0].link_address == 0


@pytest.mark.parametrize(
    ("segments", "tag", "index"),
    [
        ((SymbolicSegment("Temp"),), "Temp", ()),
        ((SymbolicSegment("SCADA"), LogicalSegment(MEMBER, 3)), "SCADA[3]", (3,)),
        (
            (
                SymbolicSegment("Program:Main"),
                SymbolicSegment("Recipe"),
                LogicalSegment(MEMBER, 3),
                SymbolicSegment("Temp"),
            ),
            "Program:Main.Recipe[3].Temp",
            (),
        ),
        (
            (
                SymbolicSegment("Grid"),
                LogicalSegment(MEMBER, 1),
                LogicalSegment(MEMBER, 2, 2),
                LogicalSegment(MEMBER, 70000),
            ),
            "Grid[1,2,70000]",
            (1, 2, 70000),
        ),
        (
            (
                SymbolicSegment("A"),
                LogicalSegment(MEMBER, 1),
                SymbolicSegment("B"),
                LogicalSegment(MEMBER, 2),
            ),
            "A[1].B[2]",
            (2,),
        ),
        ((SymbolicSegment("Local:1:I"), SymbolicSegment("Data")), "Local:1:I.Data", ()),
        ((LogicalSegment(CLASS, 0x6B), LogicalSegment(INSTANCE, 7), SymbolicSegment("Member")), None, ()),
    ],
)
def test_tag_text(segments: tuple[object, ...], tag: str | None, index: tuple[int, ...]) -> None:
    path = EPath(segments)  # type: ignore[arg-type]
    check_request_path(path)
    assert (path.tag, path.tag_index) == (tag, index)
    assert parse_epath(path.encode()) == path


@pytest.mark.parametrize(
    ("hex_path", "why"),
    [
        ("2500", "16-bit segment without its value"),
        ("250100", "pad byte not zero"),
        ("22000100000", "32-bit class id"),
        ("32000100000", "32-bit attribute id"),
        ("2300", "reserved logical format"),
        ("3800", "service id segment"),
        ("3c00", "extended logical segment"),
        ("6141", "plain symbolic segment"),
        ("a000", "data type segment"),
        ("e000", "reserved segment type"),
        ("9100", "empty symbol"),
        ("91034142", "symbol runs past the path"),
        ("9103412e4200", "a dot inside a symbol"),
        ("91035b315d00", "brackets inside a symbol"),
        ("910341204200", "a space inside a symbol"),
        ("9103414243ff", "pad byte not zero after a symbol"),
        ("0000", "port 0"),
        ("0f050005", "extended port identifier below 15"),
        ("110141", "extended link address of one byte"),
        ("1205414243", "link address runs past the path"),
        ("1203414243ff", "port segment pad byte not zero"),
        ("3405010000000000000000", "electronic key format 5"),
        ("4000", "reserved network segment"),
        ("5002aabb", "network segment runs past the path"),
    ],
)
def test_refusals(hex_path: str, why: str) -> None:
    with pytest.raises(CipProtocolError) as caught:
        parse_epath(bytes.fromhex(hex_path.ljust(len(hex_path) + len(hex_path) % 2, "0")))
    assert caught.value.general_status == 0x04, why
    assert not caught.value.close


def test_caps_on_segments_and_bytes() -> None:
    limits = CipLimits(max_path_segments=4, max_path_bytes=16)
    parse_epath(bytes.fromhex("20022401" * 2), limits=limits)
    with pytest.raises(CipProtocolError, match="segments"):
        parse_epath(bytes.fromhex("2002") * 5, limits=limits)
    with pytest.raises(CipProtocolError, match="cap"):
        parse_epath(bytes.fromhex("9110") + b"A" * 16, limits=limits)


@pytest.mark.parametrize(
    ("segments", "ok"),
    [
        ((LogicalSegment(CLASS, 1),), True),
        ((LogicalSegment(CLASS, 1), LogicalSegment(INSTANCE, 1), LogicalSegment(ATTRIBUTE, 7)), True),
        ((LogicalSegment(CLASS, 4), LogicalSegment(INSTANCE, 100), LogicalSegment(POINT, 3)), True),
        (
            (
                LogicalSegment(CLASS, 1),
                LogicalSegment(INSTANCE, 1),
                LogicalSegment(ATTRIBUTE, 7),
                LogicalSegment(MEMBER, 2),
            ),
            True,
        ),
        ((LogicalSegment(CLASS, 0x6B), LogicalSegment(INSTANCE, 9), LogicalSegment(ATTRIBUTE, 1)), True),
        (
            (
                LogicalSegment(CLASS, 0x6B),
                LogicalSegment(INSTANCE, 9),
                LogicalSegment(MEMBER, 1),
                SymbolicSegment("X"),
            ),
            True,
        ),
        ((SymbolicSegment("T"), LogicalSegment(MEMBER, 1), SymbolicSegment("M")), True),
        # Ambiguous or misplaced: refused, so the policy's reading is the device's.
        ((), False),
        ((LogicalSegment(INSTANCE, 1),), False),
        (
            (
                LogicalSegment(CLASS, 1),
                LogicalSegment(INSTANCE, 1),
                LogicalSegment(CLASS, 0xF5),
                LogicalSegment(INSTANCE, 1),
            ),
            False,
        ),
        ((LogicalSegment(CLASS, 1), LogicalSegment(ATTRIBUTE, 7), LogicalSegment(INSTANCE, 1)), False),
        (
            (
                LogicalSegment(CLASS, 1),
                LogicalSegment(INSTANCE, 1),
                LogicalSegment(ATTRIBUTE, 7),
                LogicalSegment(ATTRIBUTE, 8),
            ),
            False,
        ),
        ((LogicalSegment(CLASS, 1), LogicalSegment(INSTANCE, 1), SymbolicSegment("X")), False),
        ((SymbolicSegment("T"), LogicalSegment(ATTRIBUTE, 1)), False),
        ((SymbolicSegment("T"), LogicalSegment(CLASS, 1)), False),
        ((PortSegment(1, b"\x00"), LogicalSegment(CLASS, 1)), False),
        ((ElectronicKeySegment(1, 2, 3, 4, 5), LogicalSegment(CLASS, 1)), False),
        ((LogicalSegment(CLASS, 1), DataSegment(b"\x00\x00")), False),
        ((LogicalSegment(MEMBER, 1), SymbolicSegment("T")), False),
    ],
)
def test_request_path_shapes(segments: tuple[object, ...], ok: bool) -> None:
    path = EPath(segments)  # type: ignore[arg-type]
    if ok:
        check_request_path(path)
    else:
        with pytest.raises(CipProtocolError) as caught:
            check_request_path(path)
        assert caught.value.general_status == 0x04


def test_route_and_connection_path_shapes() -> None:
    check_route_path(EPath((PortSegment(1, b"\x00"), PortSegment(2, b"10.0.0.1"))))
    check_route_path(EPath(()))
    with pytest.raises(CipProtocolError):
        check_route_path(EPath((PortSegment(1, b"\x00"), LogicalSegment(CLASS, 2))))
    check_connection_path(
        EPath(
            (
                PortSegment(1, b"\x00"),
                ElectronicKeySegment(1, 0x0E, 0x36, 20, 11),
                NetworkSegment(0x43, b"\x0a"),
                LogicalSegment(CLASS, 2),
                LogicalSegment(INSTANCE, 1),
                DataSegment(b"\x01\x00"),
            )
        )
    )
    for bad in (
        (SymbolicSegment("T"),),
        (LogicalSegment(CLASS, 2), PortSegment(1, b"\x00")),
    ):
        with pytest.raises(CipProtocolError):
            check_connection_path(EPath(bad))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(paths, st.booleans())
def test_generated_paths_round_trip(path: EPath, padded: bool) -> None:
    data = path.encode(padded=padded)
    assert parse_epath(data, padded=padded) == path
    if padded:
        assert len(data) % 2 == 0


@settings(max_examples=200, deadline=None)
@given(st.one_of(tag_paths(), object_paths()))
def test_generated_request_paths_have_one_reading(path: EPath) -> None:
    check_request_path(path)
    parsed = parse_epath(path.encode())
    assert parsed == path
    if path.symbolic:
        assert parsed.tag is not None and parsed.class_id is None
    else:
        assert parsed.class_id == path.segments[0].value  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.booleans())
def test_arbitrary_bytes_parse_or_refuse(data: bytes, padded: bool) -> None:
    try:
        path = parse_epath(data, padded=padded)
    except CipProtocolError as error:
        assert error.general_status == 0x04 and not error.close
        return
    assert path.encode(padded=padded) == data


def test_a_symbol_instance_path_reads_as_a_tag_once_its_name_is_known() -> None:
    # pycomm3 addresses controller tags by symbol instance on Logix v21 and later.
    path = EPath(
        (
            LogicalSegment(CLASS, 0x6B),
            LogicalSegment(INSTANCE, 0x1A),
            SymbolicSegment("Temp"),
            LogicalSegment(MEMBER, 2),
        )
    )
    assert path.tag is None
    assert path.tag_with("Recipe") == "Recipe.Temp[2]"
    assert EPath((LogicalSegment(CLASS, 0x6B), LogicalSegment(INSTANCE, 9))).tag_with("Count") == "Count"
    assert (
        EPath((LogicalSegment(CLASS, 0x6B), LogicalSegment(INSTANCE, 9), LogicalSegment(MEMBER, 4))).tag_with(
            "Log"
        )
        == "Log[4]"
    )
    assert EPath((LogicalSegment(CLASS, 1), LogicalSegment(INSTANCE, 1))).tag_with("X") is None
    assert EPath((SymbolicSegment("Temp"),)).tag_with("X") is None


@pytest.mark.parametrize(
    "text",
    ["Setpoint", "Recipe[3]", "Program:Main.Step", "Grid[2,5].Temp", "Line1.Motor.Amps", "A_1[0].b[12]"],
)
def test_tag_path_is_the_inverse_of_tag(text: str) -> None:
    path = tag_path(text)
    assert path.tag == text
    assert parse_epath(path.encode()) == path


@pytest.mark.parametrize("text", ["", "1abc", "Recipe[", "a..b", "Recipe[x]"])
def test_tag_path_refuses_what_is_no_tag(text: str) -> None:
    with pytest.raises(ValueError, match="not a Logix tag name"):
        tag_path(text)
