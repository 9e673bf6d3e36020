"""The ``ztgate`` command as a user runs it: policy check and explain, the demo's walkthrough, the lab's
commands in an installation without the lab extra, and start-up refusals of the gateway."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main

POLICY = """
trust_domain = "plant1.example"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:5020"

[[rules]]
id = "setpoint"
subjects = ["spiffe://plant1.example/user/alice"]
assets = ["plc-1"]
modbus = [{ fc = 6, address = "40", value = "0-1500" }, { fc = [3], address = "0-99" }]
"""
ALICE = "spiffe://plant1.example/user/alice"


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


def test_policy_check_ok(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "1 asset(s)" in out and "1 rule(s)" in out


def test_policy_check_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        POLICY.replace('value = "0-1500"', 'value = "1500-0"').replace(
            'protocol = "modbus"', 'protocol = "mqtt"'
        )
    )
    assert main(["policy", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5: assets.plc-1.protocol:" in err
    assert f"{path}:12: rules[0].modbus[0].value:" in err
    assert "2 error(s)" in err


def test_policy_explain_allow_and_deny(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "policy",
        "explain",
        str(policy),
        "--subject",
        ALICE,
        "--asset",
        "plc-1",
        "--fc",
        "6",
        "--address",
        "40",
    ]
    assert main([*args, "--value", "1200"]) == 0
    assert "setpoint" in capsys.readouterr().out
    assert main([*args, "--value", "2000"]) == 1
    out = capsys.readouterr().out
    assert "0x03" in out and "setpoint" in out and "2000" in out


def test_policy_explain_reports_what_the_codec_refuses(
    policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "policy",
        "explain",
        str(policy),
        "--subject",
        ALICE,
        "--asset",
        "plc-1",
        "--fc",
        "3",
        "--count",
        "200",
    ]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "codec refuses" in out and "exception 3" in out


def test_policy_check_and_explain_take_every_function_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        POLICY
        + """
[[rules]]
id = "no-vendor-tools"
effect = "deny"
subjects = ["spiffe://plant1.example/vendor/*"]
assets = ["plc-1"]
modbus = [{ fc = "*" }]
"""
    )
    assert main(["policy", "check", str(path)]) == 0
    assert "2 rule(s)" in capsys.readouterr().out
    vendor = "spiffe://plant1.example/vendor/acme/eve"
    args = ["policy", "explain", str(path), "--subject", vendor, "--asset", "plc-1"]
    assert main([*args, "--fc", "90"]) == 1
    out = capsys.readouterr().out
    assert "no-vendor-tools" in out and "fc *" in out
    assert main([*args, "--fc", "8", "--sub", "4"]) == 1
    assert "no-vendor-tools" in capsys.readouterr().out


def test_policy_explain_at_a_time(policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["policy", "explain", str(policy), "--subject", ALICE, "--asset", "plc-1", "--fc", "3"]
    assert main([*args, "--at", "2026-11-26T07:30:00"]) == 2
    assert "UTC offset" in capsys.readouterr().err
    assert main([*args, "--at", "2026-11-26T07:30:00+01:00"]) == 0


def test_gateway_refuses_a_broken_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "gw.toml"
    config.write_text("[gateway]\nlisten = 8443\n")
    assert main(["gateway", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "configuration refused" in err and f"{config}:2: gateway.listen" in err


# The lab's packages (the `lab` extra), made unimportable as in an installation without the extra.
WITHOUT_LAB = ("pymodbus", "pycomm3")


@pytest.fixture
def without_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WITHOUT_LAB:
        monkeypatch.setitem(sys.modules, name, None)  # ``import name`` now raises ModuleNotFoundError


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "modbus", "--listen", "127.0.0.1:0"],
        ["sim", "enip", "--listen", "127.0.0.1:0"],
        ["client", "modbus", "--port", "1", "read", "holding", "0"],
        ["demo", "--walkthrough"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_lab_commands_without_the_lab_extra_say_how_to_install_it(
    argv: list[str], tmp_path: Path, without_lab: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ModuleNotFoundError):
        import pymodbus  # noqa: F401  (the simulated installation really lacks it)
    work = tmp_path / "demo"
    if argv[0] == "demo":
        argv = [*argv, "--dir", str(work)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"ztgate {argv[0]} is part of the lab, whose packages this installation lacks"
        " (pymodbus, pycomm3): install them with pip install 'ztgate[lab]'\n"
    )
    assert captured.out == "" and not work.exists()  # refused before anything started


def test_python_m_gateway_lab_sim_without_the_lab_extra(
    without_lab: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.lab.sim import main as sim_main

    assert sim_main(["modbus", "--listen", "127.0.0.1:0"]) == 1
    assert "pip install 'ztgate[lab]'" in capsys.readouterr().err


def test_runtime_commands_work_without_the_lab_extra(
    policy: Path, without_lab: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gateway", "--help"])
    assert exited.value.code == 0 and "--config" in capsys.readouterr().out
    assert main(["policy", "check", str(policy)]) == 0
    assert "OK" in capsys.readouterr().out


def test_the_lab_extra_is_the_lab_s_packages() -> None:
    import re
    import tomllib

    from gateway.lab import EXTRA_PACKAGES

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    extra = {
        re.split(r"[<>=!~ \[]", requirement)[0] for requirement in project["optional-dependencies"]["lab"]
    }
    assert extra == set(EXTRA_PACKAGES) == set(WITHOUT_LAB)
    runtime = {re.split(r"[<>=!~ \[]", requirement)[0] for requirement in project["dependencies"]}
    assert not runtime & extra


def test_demo_walkthrough(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--walkthrough", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "23 of 23 outcomes as the policy says." in result.stdout
    assert "12 of 12 vendor access steps as promised." in result.stdout
    assert "ztgate access request --asset plc-1" in result.stdout and "grant_approved" in result.stdout
    assert "8 of 8 center steps as promised." in result.stdout
    assert "token create --role gateway" in result.stdout and "exception 0x01" in result.stdout
    assert "exception 0x03" in result.stdout and "certificate rejected" in result.stdout
    assert "privilege violation 0x0F" in result.stdout and "BadUserAccessDenied" in result.stdout
    audit = (tmp_path / "demo" / "audit.jsonl").read_text()
    assert '"decision":"deny"' in audit and '"rule":"operators-setpoint"' in audit


def test_demo_runs_until_interrupted(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--dir", str(tmp_path / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        lines = []
        for line in process.stdout:  # the banner ends with how to stop the lab
            lines.append(line)
            if "Ctrl-C stops everything." in line:
                break
        banner = "".join(lines)
        assert "ztgate demo lab is running" in banner and "client modbus --port" in banner
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert '"event":"gateway_stop"' in (tmp_path / "demo" / "audit.jsonl").read_text()


ENIP_POLICY = """
trust_domain = "plant1.example"

[assets.plc-2]
protocol = "enip"
upstream = "127.0.0.1:44818"
route = "1/0"

[[rules]]
id = "ops"
subjects = ["spiffe://plant1.example/user/alice"]
assets = ["plc-2"]
enip = [{ preset = "read-only" }, { service = "write_tag", tag = "Setpoint", value = "0..1500" }]
"""


@pytest.mark.parametrize(
    ("args", "status", "text"),
    [
        (["--service", "write_tag", "--tag", "Setpoint", "--tag-value", "1200"], 0, "allowed by rule ops"),
        (
            ["--service", "write_tag", "--tag", "Setpoint", "--tag-value", "2000"],
            1,
            "value 2000 outside rule ops",
        ),
        (["--service", "reset", "--class", "1", "--instance", "1"], 1, "no rule allows reset (0x01/0x05)"),
        (["--service", "read_tag", "--tag", "Program:Main.Step"], 0, "tag Program:Main.Step"),
        (["--service", "0x4C"], 2, "a service code alone is ambiguous"),
    ],
)
def test_policy_explain_enip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], status: int, text: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(ENIP_POLICY)
    base = ["policy", "explain", str(path), "--subject", ALICE, "--asset", "plc-2"]
    assert main([*base, *args]) == status
    captured = capsys.readouterr()
    assert text in captured.out + captured.err


OPCUA_POLICY = """
trust_domain = "plant1.example"

[assets.opc-1]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:4840/"

[[rules]]
id = "ops"
subjects = ["spiffe://plant1.example/user/alice"]
assets = ["opc-1"]
opcua = [
  { preset = "read-only" },
  { service = "Write", namespace = "urn:ztgate:sim:plant", node = "Plant.*", value = "0..1500" },
  { service = "Read", browse_path = "/Objects/{urn:ztgate:sim:plant}Plant" },
]

[[rules]]
id = "no-server-writes"
effect = "deny"
subjects = ["spiffe://plant1.example/*"]
assets = ["opc-1"]
opcua = [{ service = "Write", node = { namespace = 0, id = "i=*" } }]
"""
PLANT_NODE = "nsu=urn:ztgate:sim:plant;s=Plant.Line1.Tank1.Setpoint"


@pytest.mark.parametrize(
    ("args", "status", "text"),
    [
        (["--service", "Write", "--node", PLANT_NODE, "--ua-value", "1200"], 0, "allowed by rule ops"),
        (
            ["--service", "Write", "--node", PLANT_NODE, "--ua-value", "2000"],
            1,
            "value 2000.0 outside rule ops",
        ),
        (
            ["--service", "Write", "--node", PLANT_NODE, "--ua-attribute", "DisplayName"],
            1,
            "attribute DisplayName",
        ),
        (["--service", "Write", "--node", "i=2253", "--ua-value", "1"], 1, "denied by rule no-server-writes"),
        (["--service", "Read", "--node", "ns=1;s=X", "--namespace", "urn:other"], 0, "namespaces: 0"),
        (["--service", "AddNodes"], 1, "no rule allows AddNodes"),
        (["--service", "Read"], 2, "name it with --node"),
        (["--service", "Reed", "--node", "i=1"], 2, "not an OPC UA service name"),
        (["--service", "Read", "--node", "ns=abc;i=1"], 2, "is not a node id"),
        (
            ["--service", "Read", "--node", "i=1", "--browse-path", "/Objects/{urn:ztgate:sim:plant}Plant/X"],
            0,
            "Objects/{urn:ztgate:sim:plant}Plant/X",
        ),
    ],
)
def test_policy_explain_opcua(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], status: int, text: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(OPCUA_POLICY)
    base = ["policy", "explain", str(path), "--subject", ALICE, "--asset", "opc-1"]
    assert main([*base, *args]) == status
    captured = capsys.readouterr()
    assert text in captured.out + captured.err


def test_client_enip_reads_and_writes_tags() -> None:
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "enip", "--listen", "127.0.0.1:0", "--static"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sim.stdout is not None
    try:
        port = sim.stdout.readline().split("127.0.0.1:")[1].split(",")[0]

        def client(*args: str) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "gateway", "client", "enip", "--port", port, *args]
            return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

        assert client("write", "Setpoint", "1234").returncode == 0
        read = client("read", "Setpoint")
        assert read.returncode == 0 and read.stdout.strip() == "Setpoint = 1234"
        assert client("read", "Recipe", "--count", "3").stdout.strip() == "Recipe = [100, 200, 300]"
        missing = client("read", "NoSuchTag")
        assert missing.returncode == 1 and "refused" in missing.stdout
    finally:
        sim.terminate()
        sim.wait(10)


EVERYTHING_DENIED = """
trust_domain = "plant1.example"

[assets.plc-1]
protocol = "modbus"
upstream = "127.0.0.1:5020"

[assets.plc-2]
protocol = "enip"
upstream = "127.0.0.1:44818"

[assets.opc-1]
protocol = "opcua"
upstream = "opc.tcp://127.0.0.1:4840/"

[[rules]]
id = "ops"
subjects = ["spiffe://plant1.example/*"]
assets = ["*"]
modbus = [{ preset = "read-write" }]
enip = [{ preset = "read-write" }]
opcua = [{ preset = "read-write" }]

[[rules]]
id = "vendor-cut-off"
effect = "deny"
subjects = ["spiffe://plant1.example/vendor/*"]
assets = ["*"]
modbus = [{ fc = "*" }]
enip = [{ service = "*" }]
opcua = [{ service = "*" }]
"""


@pytest.mark.parametrize(
    ("asset", "args"),
    [
        ("plc-1", ["--fc", "3"]),
        ("plc-2", ["--service", "read_tag", "--tag", "Setpoint"]),
        ("opc-1", ["--service", "Read", "--node", "i=2253"]),
    ],
)
def test_every_service_of_each_protocol_in_check_and_explain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], asset: str, args: list[str]
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(EVERYTHING_DENIED)
    assert main(["policy", "check", str(path)]) == 0
    capsys.readouterr()
    explain = ["policy", "explain", str(path), "--asset", asset, *args]
    assert main([*explain, "--subject", ALICE]) == 0
    assert "allowed by rule ops" in capsys.readouterr().out
    assert main([*explain, "--subject", "spiffe://plant1.example/vendor/acme/eve"]) == 1
    out = capsys.readouterr().out
    assert "denied by rule vendor-cut-off" in out and ("fc *" in out or "service *" in out), out
