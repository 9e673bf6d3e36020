"""Generate large, valid policy files for benchmarks and scale tests.

``generate_policy(n)`` returns the text of an ``n``-rule policy (``generate_enip_policy(n)`` the same for
an EtherNet/IP asset, with tag patterns and value bounds; ``generate_opcua_policy(n)`` for an OPC UA
asset, with node patterns, browse paths, method pairs and value bounds). The first three rules give
:func:`bench_subject` a typical view of the asset - a read/bounded-write allow rule, a group rule with a
working-hours window, and a deny rule for every identity of the domain - so a benchmark deciding for
that identity measures a realistic table, the same whatever ``n`` is. Every further rule is for some
other identity (ids, ``vendor/...*`` patterns), with a mix of effects, modes, windows and entries, so
the file is large but the benchmark identity's view does not grow with it.

    from tests.policies.gen_policy import bench_subject, generate_policy
"""

from __future__ import annotations

__all__ = ["PLANT_URI", "bench_subject", "generate_enip_policy", "generate_opcua_policy", "generate_policy"]


def bench_subject(trust_domain: str = "plant1.example") -> str:
    """The identity whose view of the asset is the same in every generated policy."""
    return f"spiffe://{trust_domain}/user/bench"


def _head(trust_domain: str, asset: str, upstream: str) -> list[str]:
    return [
        f'trust_domain = "{trust_domain}"',
        "",
        f"[assets.{asset}]",
        'protocol = "modbus"',
        f'upstream = "{upstream}"',
        "unit_ids = [1]",
        "",
        "[groups]",
        f'operators = ["{bench_subject(trust_domain)}", "spiffe://{trust_domain}/user/op-1"]',
        f'vendor-acme = ["spiffe://{trust_domain}/vendor/acme/*"]',
        "",
    ]


def _bench_rules(trust_domain: str, asset: str) -> list[list[str]]:
    return [
        [
            'id = "bench-operator"',
            f'subjects = ["{bench_subject(trust_domain)}"]',
            f'assets = ["{asset}"]',
            'modbus = [{ fc = [1, 2, 3, 4], address = "0-999" },'
            ' { fc = 6, address = "40", value = "0-1500" }, { fc = 16, address = "100-199" }]',
        ],
        [
            'id = "operators-day-shift"',
            'subjects = ["group:operators"]',
            f'assets = ["{asset}"]',
            'modbus = [{ fc = [5, 15], address = "0-99" }]',
            'when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }',
        ],
        [
            'id = "no-one-reads-recipes"',
            'effect = "deny"',
            f'subjects = ["spiffe://{trust_domain}/*"]',
            f'assets = ["{asset}"]',
            'modbus = [{ fc = [3, 4], address = "5000-5999" }]',
        ],
    ]


def _filler_rule(index: int, trust_domain: str, asset: str) -> list[str]:
    if index % 5 == 0:
        subject = f"spiffe://{trust_domain}/vendor/v{index}/*"
    else:
        subject = f"spiffe://{trust_domain}/user/u{index:05d}"
    low = (index * 10) % 60_000
    lines = [f'id = "rule-{index:05d}"', f'subjects = ["{subject}"]', f'assets = ["{asset}"]']
    if index % 7 == 0:
        lines.append('effect = "deny"')
        lines.append(f'modbus = [{{ fc = [6, 16], address = "{low}-{low + 9}", value = "1000-65535" }}]')
    else:
        lines.append(
            f'modbus = [{{ preset = "read-only", address = "{low}-{low + 99}" }},'
            f' {{ fc = 6, address = "{low}", value = "0-{index % 1000 + 1}" }}]'
        )
    if index % 11 == 0:
        lines.append('mode = "monitor"')
    if index % 3 == 0:
        lines.append('when = { days = "mon-sat", hours = "22:00-06:00", tz = "America/New_York" }')
    return lines


def generate_policy(
    n_rules: int,
    *,
    trust_domain: str = "plant1.example",
    asset: str = "plc-1",
    upstream: str = "127.0.0.1:5020",
) -> str:
    """The text of a valid policy with ``n_rules`` rules (see the module docstring)."""
    lines = _head(trust_domain, asset, upstream)
    bench = _bench_rules(trust_domain, asset)
    for index in range(n_rules):
        rule = bench[index] if index < len(bench) else _filler_rule(index, trust_domain, asset)
        lines.append("[[rules]]")
        lines.extend(rule)
        lines.append("")
    return "\n".join(lines)


def _enip_bench_rules(trust_domain: str, asset: str) -> list[list[str]]:
    return [
        [
            'id = "bench-operator"',
            f'subjects = ["{bench_subject(trust_domain)}"]',
            f'assets = ["{asset}"]',
            'enip = [{ preset = "read-only", tag = ["Line1.*", "Recipe[0..9]", "Program:Main.*"] },'
            ' { service = "write_tag", tag = "Line1.Speed", value = "0..1500" }]',
        ],
        [
            'id = "operators-day-shift"',
            'subjects = ["group:operators"]',
            f'assets = ["{asset}"]',
            'enip = [{ service = ["write_tag", "read_modify_write"], tag = "Line1.Mode" }]',
            'when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }',
        ],
        [
            'id = "no-one-writes-recipe-0"',
            'effect = "deny"',
            f'subjects = ["spiffe://{trust_domain}/*"]',
            f'assets = ["{asset}"]',
            'enip = [{ service = ["write_tag", "write_tag_fragmented"], tag = "Recipe[0]" }]',
        ],
    ]


def _enip_filler_rule(index: int, trust_domain: str, asset: str) -> list[str]:
    if index % 5 == 0:
        subject = f"spiffe://{trust_domain}/vendor/v{index}/*"
    else:
        subject = f"spiffe://{trust_domain}/user/u{index:05d}"
    lines = [f'id = "rule-{index:05d}"', f'subjects = ["{subject}"]', f'assets = ["{asset}"]']
    if index % 7 == 0:
        lines.append('effect = "deny"')
        lines.append(
            f'enip = [{{ service = "write_tag", tag = "Area{index % 50}.*", value = "1000..65535" }}]'
        )
    else:
        area, table = f"Area{index % 50}", f"Table{index % 9}[0..{index % 100}]"
        lines.append(
            f'enip = [{{ preset = "read-only", tag = ["{area}.*", "{table}"] }},'
            f' {{ service = "write_tag", tag = "{area}.Setpoint", value = "0..{index % 1000 + 1}" }}]'
        )
    if index % 11 == 0:
        lines.append('mode = "monitor"')
    if index % 3 == 0:
        lines.append('when = { days = "mon-sat", hours = "22:00-06:00", tz = "America/New_York" }')
    return lines


def generate_enip_policy(
    n_rules: int,
    *,
    trust_domain: str = "plant1.example",
    asset: str = "logix-1",
    upstream: str = "127.0.0.1:44818",
) -> str:
    """The text of a valid policy with ``n_rules`` rules on one EtherNet/IP asset (route 1/0)."""
    lines = _head(trust_domain, asset, upstream)
    lines[3:6] = ['protocol = "enip"', f'upstream = "{upstream}"', 'route = "1/0"']
    bench = _enip_bench_rules(trust_domain, asset)
    for index in range(n_rules):
        rule = bench[index] if index < len(bench) else _enip_filler_rule(index, trust_domain, asset)
        lines.append("[[rules]]")
        lines.extend(rule)
        lines.append("")
    return "\n".join(lines)


PLANT_URI = "urn:ztgate:sim:plant"


def _opcua_bench_rules(trust_domain: str, asset: str) -> list[list[str]]:
    ns = f'namespace = "{PLANT_URI}"'
    return [
        [
            'id = "bench-operator"',
            f'subjects = ["{bench_subject(trust_domain)}"]',
            f'assets = ["{asset}"]',
            f'opcua = [{{ preset = "read-only", {ns}, node = ["Plant", "Plant.Line1", "Plant.Line1.*"] }},'
            f' {{ service = "Write", {ns}, node = "Plant.Line1.Tank1.Setpoint", value = "0..2500" }},'
            f' {{ service = "Call", {ns},'
            ' method = { object = "Plant.Line1.Tank1",'
            ' method = ["Plant.Line1.Tank1.Start", "Plant.Line1.Tank1.Stop"] } }]',
        ],
        [
            'id = "operators-day-shift"',
            'subjects = ["group:operators"]',
            f'assets = ["{asset}"]',
            f'opcua = [{{ service = "Write", {ns}, node = "Plant.Line1.Tank1.DrainCommand" }}]',
            'when = { days = "mon-fri", hours = "06:00-18:00", tz = "Europe/Berlin" }',
        ],
        [
            'id = "no-one-reads-recipes"',
            'effect = "deny"',
            f'subjects = ["spiffe://{trust_domain}/*"]',
            f'assets = ["{asset}"]',
            f'opcua = [{{ preset = "read-write", {ns}, node = "Plant.Recipes.*" }}]',
        ],
    ]


def _opcua_filler_rule(index: int, trust_domain: str, asset: str) -> list[str]:
    if index % 5 == 0:
        subject = f"spiffe://{trust_domain}/vendor/v{index}/*"
    else:
        subject = f"spiffe://{trust_domain}/user/u{index:05d}"
    lines = [f'id = "rule-{index:05d}"', f'subjects = ["{subject}"]', f'assets = ["{asset}"]']
    area = f"Plant.Area{index % 50}"
    if index % 7 == 0:
        lines.append('effect = "deny"')
        lines.append(
            f'opcua = [{{ service = "Write", namespace = "{PLANT_URI}", node = "{area}.*",'
            ' value = "1000..65535" }]'
        )
    else:
        lines.append(
            f'opcua = [{{ preset = "read-only", namespace = "{PLANT_URI}",'
            f' node = ["{area}.*", "i={index}-{index + 99}"] }},'
            f' {{ service = "Write", namespace = "{PLANT_URI}", node = "{area}.Setpoint",'
            f' value = "0..{index % 1000 + 1}" }},'
            f' {{ service = "Read", browse_path = "/Objects/Area{index % 50}" }}]'
        )
    if index % 11 == 0:
        lines.append('mode = "monitor"')
    if index % 3 == 0:
        lines.append('when = { days = "mon-sat", hours = "22:00-06:00", tz = "America/New_York" }')
    return lines


def generate_opcua_policy(
    n_rules: int,
    *,
    trust_domain: str = "plant1.example",
    asset: str = "opc-1",
    upstream: str = "opc.tcp://127.0.0.1:4840/",
) -> str:
    """The text of a valid policy with ``n_rules`` rules on one OPC UA asset (nodes in PLANT_URI)."""
    lines = _head(trust_domain, asset, upstream)
    lines[3:6] = ['protocol = "opcua"', f'upstream = "{upstream}"']
    bench = _opcua_bench_rules(trust_domain, asset)
    for index in range(n_rules):
        rule = bench[index] if index < len(bench) else _opcua_filler_rule(index, trust_domain, asset)
        lines.append("[[rules]]")
        lines.extend(rule)
        lines.append("")
    return "\n".join(lines)
