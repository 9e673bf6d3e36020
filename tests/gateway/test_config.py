"""Gateway and agent configuration files: defaults, relative paths, and every error with its line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gateway.admission import DEFAULT_MAX_SESSIONS_PER_IDENTITY, HandshakeLimits
from gateway.config import ConfigError, load_agent_config, load_gateway_config, parse_hostport
from gateway.sinks import SinkSettings, build_sink
from gateway.sinks.syslog import SyslogSettings


def test_gateway_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\npolicy = "p.toml"\n[tls]\ncert = "c.pem"\nkey = "c.key"\nca = "/etc/ca.pem"\n'
    )
    config = load_gateway_config(path)
    assert config.policy == tmp_path / "p.toml"
    assert config.tls.cert == tmp_path / "c.pem" and config.tls.ca == Path("/etc/ca.pem")
    assert config.listen == ("127.0.0.1", 8443)
    assert config.admin_listen == ("127.0.0.1", 9100)
    assert config.loop == "uvloop" and config.audit_aggregate_reads_s == 1.0
    # Without a file the audit trail must go somewhere; refusing requests is the default on failure.
    assert config.audit_sinks == (SinkSettings("stdout", "stdout"),)
    assert config.audit_on_failure == "closed"
    assert config.policy_quiet_s == 3.0


def test_policy_quiet_period_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    tls = '[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
    path.write_text(f'[gateway]\npolicy = "p.toml"\npolicy_quiet_s = 0.5\n{tls}')
    assert load_gateway_config(path).policy_quiet_s == 0.5
    path.write_text(f'[gateway]\npolicy = "p.toml"\npolicy_quiet_s = -1\n{tls}')
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert str(caught.value).startswith(f"{path}:3: gateway.policy_quiet_s: ")


GATEWAY = '[gateway]\nname = "gw-1"\npolicy = "p.toml"\n[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'


def test_older_audit_file_settings_still_work(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(GATEWAY + '[audit]\nfile = "audit.jsonl"\n')
    assert load_gateway_config(path).audit_sinks == (
        SinkSettings("file", "file", path=tmp_path / "audit.jsonl"),
    )
    path.write_text(GATEWAY + '[audit]\nfile = "audit.jsonl"\nstdout = true\non_failure = "open"\n')
    config = load_gateway_config(path)
    assert [sink.type for sink in config.audit_sinks] == ["file", "stdout"]
    assert config.audit_on_failure == "open"


def test_audit_sinks(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        GATEWAY + "[[audit.sinks]]\n"
        'type = "file"\npath = "audit.jsonl"\nrotate_mib = 100\nkeep = 3\nformat = "cef"\n'
        "[[audit.sinks]]\n"
        'name = "siem"\ntype = "syslog"\ntransport = "tls"\naddress = "siem.example:6514"\n'
        'ca = "siem-ca.pem"\ncert = "gw.pem"\nkey = "gw.key"\nspool_dir = "spool"\nspool_mib = 64\n'
        'on_spool_full = "block_new_sessions"\nhold_mib = 8\n'
        "[[audit.sinks]]\n"
        'type = "syslog"\ntransport = "udp"\naddress = "127.0.0.1:514"\nfacility = "auth"\nformat = "ocsf"\n'
    )
    file, tls, udp = load_gateway_config(path).audit_sinks
    assert file == SinkSettings(
        "file", "file-0", path=tmp_path / "audit.jsonl", rotate_mib=100.0, keep=3, format="cef"
    )
    assert (tls.format, udp.format) == (None, "ocsf")  # None: the sink type's default (syslog: json)
    assert [build_sink(s).format for s in (file, udp)] == ["cef", "ocsf"]
    assert tls.name == "siem" and tls.syslog is not None
    assert tls.syslog == SyslogSettings(
        transport="tls",
        address=("siem.example", 6514),
        hostname="gw-1",
        ca=tmp_path / "siem-ca.pem",
        cert=tmp_path / "gw.pem",
        key=tmp_path / "gw.key",
        spool_dir=tmp_path / "spool",
        spool_mib=64.0,
        on_spool_full="block_new_sessions",
        hold_mib=8.0,
    )
    tcp = build_sink(replace(tls, syslog=replace(tls.syslog, transport="tcp")))
    assert tcp.hold_bytes == 8 * 1024 * 1024  # a spooling sink holds what is not a read
    tcp.close()
    assert build_sink(udp).hold_bytes is None  # UDP is lossy: its queue drops past twice its limit
    assert udp.syslog is not None and udp.syslog.spool_dir is None and udp.syslog.facility == "auth"


def test_audit_sink_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        GATEWAY + '[audit]\nfile = "a.jsonl"\non_failure = "sometimes"\n'
        "[[audit.sinks]]\n"
        'type = "syslog"\ntransport = "tls"\naddress = "siem.example:6514"\n'
        "[[audit.sinks]]\n"
        'type = "syslog"\ntransport = "udp"\naddress = "127.0.0.1:514"\nspool_dir = "s"\nca = "x"\n'
        'format = "xml"\nhold_mib = 0\n'
        "[[audit.sinks]]\n"
        'type = "carrier-pigeon"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    text = str(caught.value)
    for expected in (
        ":9: audit.file: use a [[audit.sinks]] entry",
        ":10: audit.on_failure:",
        ":11: audit.sinks[0].spool_dir: required",
        ":11: audit.sinks[0].ca: required",
        "audit.sinks[1].spool_dir: a UDP sink has no spool",
        "audit.sinks[1].ca: only a sink with transport",
        ":21: audit.sinks[1].format:",
        ":22: audit.sinks[1].hold_mib:",
        "audit.sinks[2].type:",
    ):
        assert expected in text, text


def test_admin_can_be_disabled(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[gateway]\npolicy = "p.toml"\nlisten = "[::1]:0"\n[admin]\nlisten = ""\n'
        '[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
    )
    config = load_gateway_config(path)
    assert config.admin_listen is None and config.listen == ("::1", 0)


def test_gateway_config_reports_every_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        "[gateway]\n"
        'listen = "127.0.0.1:99999"\n'  # line 2
        'loop = "trio"\n'  # line 3
        "polcy = 1\n"  # line 4: typo, and policy is missing
        "[audit]\n"
        "aggregate_reads_s = -1\n"  # line 6
    )
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    text = str(caught.value)
    assert f"{path}:2: gateway.listen: '127.0.0.1:99999': port 99999 is outside 0..65535" in text
    assert f"{path}:3: gateway.loop:" in text and '"trio" is not one of: uvloop, asyncio' in text
    assert f'{path}:4: gateway.polcy: unknown key "polcy"; did you mean "policy"?' in text
    assert "gateway.policy: required" in text
    assert f"{path}:6: audit.aggregate_reads_s:" in text
    assert "tls: required" in text


def test_overlay_limits_are_read_and_checked(tmp_path: Path) -> None:
    base = '[gateway]\npolicy = "p.toml"\n[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
    path = tmp_path / "gw.toml"
    path.write_text(base)
    assert load_gateway_config(path).overlay == HandshakeLimits()
    path.write_text(
        base + "[overlay]\nmax_pending_per_source = 8\nsource_rate_per_s = 2.5\nhandshake_timeout_s = 3\n"
    )
    overlay = load_gateway_config(path).overlay
    assert overlay.max_pending_per_source == 8 and overlay.source_rate_per_s == 2.5
    assert overlay.handshake_timeout_s == 3.0 and overlay.max_pending_handshakes == 4096
    path.write_text(
        base + "[overlay]\n"
        "max_pending_handshakes = 0\n"  # line 8
        'source_burst = "many"\n'  # line 9
        "handshake_timeout_s = 1\n"
        "handshake_timeout_min_s = 2\n"  # line 11: above the timeout
        "max_pending_per_sorce = 3\n"  # line 12
    )
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    text = str(caught.value)
    assert f"{path}:8: overlay.max_pending_handshakes: 0 is outside" in text
    assert f"{path}:9: overlay.source_burst:" in text
    assert f'{path}:12: overlay.max_pending_per_sorce: unknown key "max_pending_per_sorce"' in text
    path.write_text(base + "[overlay]\nhandshake_timeout_s = 1\nhandshake_timeout_min_s = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    expected = f"{path}:9: overlay.handshake_timeout_min_s: 2 is above handshake_timeout_s (1)"
    assert expected in str(caught.value)


def test_the_pacing_of_local_answers_is_read_and_checked(tmp_path: Path) -> None:
    tail = '[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\npolicy = "p.toml"\n' + tail)
    config = load_gateway_config(path)
    assert (config.client_local_answers_per_s, config.identity_local_answers_per_s) == (1000.0, 2000.0)
    assert config.client_refusal_audit_interval_s == 1.0
    path.write_text(
        '[gateway]\npolicy = "p.toml"\nclient_local_answers_per_s = 50\nclient_refusal_audit_interval_s = 0\n'
        + tail
    )
    config = load_gateway_config(path)
    assert config.client_local_answers_per_s == 50 and config.client_refusal_audit_interval_s == 0
    path.write_text('[gateway]\npolicy = "p.toml"\nidentity_local_answers_per_s = 0\n' + tail)  # line 3
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert f"{path}:3: gateway.identity_local_answers_per_s: 0: expected a number in 1.." in str(caught.value)


def test_reassembly_and_per_identity_limits_are_read_and_checked(tmp_path: Path) -> None:
    tail = '[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\npolicy = "p.toml"\n' + tail)
    config = load_gateway_config(path)
    assert (config.reassembly_budget_mib, config.reassembly_timeout_s) == (64.0, 30.0)
    assert config.max_sessions_per_identity == DEFAULT_MAX_SESSIONS_PER_IDENTITY == 1024
    path.write_text(
        '[gateway]\npolicy = "p.toml"\nreassembly_budget_mib = 8\nreassembly_timeout_s = 5\n'
        "max_sessions_per_identity = 8\n" + tail
    )
    config = load_gateway_config(path)
    assert (config.reassembly_budget_mib, config.reassembly_timeout_s) == (8, 5)
    assert config.max_sessions_per_identity == 8
    path.write_text('[gateway]\npolicy = "p.toml"\nreassembly_budget_mib = 0\n' + tail)  # line 3
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert f"{path}:3: gateway.reassembly_budget_mib: 0: expected a number in 0.0625.." in str(caught.value)


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[gateway]\npolicy = \n")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    assert str(caught.value).startswith(f"{path}:2:") and "TOML syntax" in str(caught.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_gateway_config(tmp_path / "missing.toml")


def test_agent_config(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\ngateway = "gw.example:8443"\n[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'
        '[[listeners]]\nlisten = "127.0.0.1:1502"\nasset = "plc-1"\nprotocol = "modbus"\n'
        '[[listeners]]\nlisten = "127.0.0.1:1503"\nasset = "plc-2"\ngateway = "other:9443"\n'
    )
    config = load_agent_config(path)
    first, second = config.listeners
    assert first.gateway == ("gw.example", 8443) and first.protocol == "modbus"
    assert second.gateway == ("other", 9443) and second.asset == "plc-2" and second.protocol is None


def test_agent_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[tls]\ncert = "c"\nkey = "k"\nca = "a"\n[[listeners]]\nlisten = "1502"\nprotocol = "http"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    text = str(caught.value)
    assert "listeners[0].listen: '1502': expected host:port" in text
    assert "listeners[0].asset: required" in text
    assert "listeners[0].gateway: required" in text
    assert '"http" is not one of: modbus, enip, opcua' in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.5:502", ("10.0.0.5", 502)), (":502", ("127.0.0.1", 502)), ("[fe80::1]:502", ("fe80::1", 502))],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


def test_a_gateway_with_a_center_takes_tls_and_policy_from_its_credentials(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nname = "gw-1"\n[center]\ndir = "creds"\nmax_staleness_s = 600\n')
    config = load_gateway_config(path)
    assert config.policy is None and config.center is not None
    assert config.center.credentials == tmp_path / "creds" and config.center.max_staleness_s == 600
    assert config.center.startup_timeout_s == 300 and config.center.renew
    assert (
        config.tls.cert == tmp_path / "creds" / "cert.pem" and config.tls.ca == tmp_path / "creds" / "ca.pem"
    )


def test_a_center_and_a_policy_file_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\npolicy = "p.toml"\n[center]\ndir = "c"\nmax_staleness_s = 0\n')
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path)
    text = str(caught.value)
    assert f"{path}:2: gateway.policy: a gateway with a [center] takes its policy from the center" in text
    assert f"{path}:5: center.max_staleness_s: 0: expected a number in 0.1..3.16224e+07" in text


def test_an_agent_with_a_center_renews_from_its_credentials(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    listeners = '[[listeners]]\nlisten = "127.0.0.1:1502"\nasset = "plc-1"\ngateway = "gw:8443"\n'
    path.write_text(f'[center]\ndir = "hmi"\n{listeners}')
    config = load_agent_config(path)
    assert config.center is not None and config.tls.key == tmp_path / "hmi" / "key.pem"
    path.write_text(f'[center]\ndir = "hmi"\nmax_staleness_s = 5\n{listeners}')
    with pytest.raises(ConfigError, match='unknown key "max_staleness_s"'):
        load_agent_config(path)


AGENT_HEAD = '[agent]\ngateway = "gw.example:8443"\n{extra}[tls]\ncert = "c"\nkey = "k"\nca = "a"\n'


@pytest.mark.parametrize("listen", ["0.0.0.0:502", "[::]:502", "192.0.2.7:502", "hmi-3.example:502"])
def test_an_agent_listener_off_loopback_needs_allow_remote(tmp_path: Path, listen: str) -> None:
    path = tmp_path / "agent.toml"
    listeners = (
        '[[listeners]]\nlisten = "127.0.0.1:1502"\nasset = "plc-1"\n'
        f'[[listeners]]\nlisten = "{listen}"\nasset = "plc-2"\n'
    )
    path.write_text(AGENT_HEAD.format(extra="") + listeners)
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path)
    assert len(caught.value.issues) == 1
    assert str(caught.value).startswith(f"{path}:11: listeners[1].listen: ")  # the line of the listen key
    assert "not a loopback address" in str(caught.value) and "allow_remote = true" in str(caught.value)
    path.write_text(AGENT_HEAD.format(extra="allow_remote = true\n") + listeners)
    assert load_agent_config(path).allow_remote


@pytest.mark.parametrize("listen", ["127.0.0.1:502", "127.3.0.1:502", "[::1]:502", "localhost:502", ":502"])
def test_an_agent_listener_on_loopback_needs_nothing(tmp_path: Path, listen: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(AGENT_HEAD.format(extra="") + f'[[listeners]]\nlisten = "{listen}"\nasset = "plc-1"\n')
    assert not load_agent_config(path).allow_remote


def test_an_agent_admin_listener_is_off_by_default_and_on_loopback_unless_allowed(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    listener = '[[listeners]]\nlisten = "127.0.0.1:1502"\nasset = "plc-1"\n'
    path.write_text(AGENT_HEAD.format(extra="") + listener)
    assert load_agent_config(path).admin_listen is None
    path.write_text(AGENT_HEAD.format(extra='admin = "127.0.0.1:9101"\n') + listener)
    assert load_agent_config(path).admin_listen == ("127.0.0.1", 9101)
    for admin, said in (
        ("0.0.0.0:9101", "0.0.0.0 is not a loopback address"),
        ("9101", "expected host:port"),
    ):
        path.write_text(AGENT_HEAD.format(extra=f'admin = "{admin}"\n') + listener)
        with pytest.raises(ConfigError) as caught:
            load_agent_config(path)
        assert str(caught.value).startswith(f"{path}:3: agent.admin: ") and said in str(caught.value)
    path.write_text(AGENT_HEAD.format(extra='admin = "0.0.0.0:9101"\nallow_remote = true\n') + listener)
    assert load_agent_config(path).admin_listen == ("0.0.0.0", 9101)
