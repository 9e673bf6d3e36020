"""Start-up refusals and warnings of the real commands (issue 16): a key that is missing or is garbage
(the message names the file, and the command exits with a failure status), and an agent listening
off loopback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import Pki

GARBAGE = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"


def ztgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60, check=False
    )


def break_key(key: Path, how: str) -> None:
    if how == "missing":
        key.unlink()
    else:
        key.write_text(GARBAGE)


def copy_files(pki: Pki, who: str, into: Path) -> tuple[Path, Path]:
    files = pki.gateway if who == "gateway" else pki.clients[who]
    cert, key = into / f"{who}.pem", into / f"{who}.key"
    shutil.copy(files.cert, cert)
    shutil.copy(files.key, key)
    return cert, key


def expect_refusal(result: subprocess.CompletedProcess[str], command: str, key: Path, how: str) -> None:
    assert result.returncode != 0, result.stderr
    assert f"ztgate {command}: " in result.stderr
    found = [line for line in result.stderr.splitlines() if str(key) in line]
    assert found, f"the message names no {key}:\n{result.stderr}"
    reasons = (
        ("No such file", "does not exist") if how == "missing" else ("not an unencrypted PEM private key",)
    )
    assert any(reason in found[0] for reason in reasons), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["missing", "garbage"])
def test_gateway_names_a_bad_key(pki: Pki, tmp_path: Path, how: str) -> None:
    cert, key = copy_files(pki, "gateway", tmp_path)
    (tmp_path / "policy.toml").write_text(
        'trust_domain = "plant1.example"\n[assets.plc-1]\nprotocol = "modbus"\nupstream = "127.0.0.1:1"\n'
    )
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nlisten = "127.0.0.1:0"\npolicy = "policy.toml"\n'
        f'[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{pki.ca}"\n[admin]\nlisten = ""\n'
    )
    break_key(key, how)
    expect_refusal(ztgate("gateway", "--config", str(config)), "gateway", key, how)


@pytest.mark.parametrize("how", ["missing", "garbage"])
def test_agent_names_a_bad_key(pki: Pki, tmp_path: Path, how: str) -> None:
    cert, key = copy_files(pki, "hmi", tmp_path)
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\ngateway = "localhost:1"\n[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{pki.ca}"\n'
        '[[listeners]]\nlisten = "127.0.0.1:0"\nasset = "plc-1"\n'
    )
    break_key(key, how)
    expect_refusal(ztgate("agent", "--config", str(config)), "agent", key, how)


@pytest.fixture(scope="module")
def center_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("center") / "center"
    result = ztgate("center", "init", "--dir", str(folder), "--trust-domain", "plant1.example")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.mark.parametrize("name", ["tls.key", "ca.key", "signing.key"])
@pytest.mark.parametrize("how", ["missing", "garbage"])
def test_center_names_a_bad_key(center_folder: Path, tmp_path: Path, name: str, how: str) -> None:
    folder = tmp_path / "center"
    shutil.copytree(center_folder, folder)
    key = folder / "keys" / name
    break_key(key, how)
    expect_refusal(ztgate("center", "serve", "--config", str(folder / "center.toml")), "center", key, how)


def agent_config(pki: Pki, folder: Path, listen: str, extra: str = "") -> Path:
    files = pki.clients["hmi"]
    config = folder / "agent.toml"
    config.write_text(
        f'[agent]\ngateway = "localhost:1"\n{extra}'
        f'[tls]\ncert = "{files.cert}"\nkey = "{files.key}"\nca = "{pki.ca}"\n'
        f'[[listeners]]\nlisten = "{listen}"\nasset = "plc-1"\n'
    )
    return config


def test_agent_refuses_to_listen_off_loopback_without_allow_remote(pki: Pki, tmp_path: Path) -> None:
    config = agent_config(pki, tmp_path, "0.0.0.0:0")
    result = ztgate("agent", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:8: listeners[0].listen: 0.0.0.0 is not a loopback address" in result.stderr


def test_agent_warns_loudly_when_allowed_to_listen_off_loopback(pki: Pki, tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: the warning comes before the bind, which fails,
    # so nothing ever listens beyond loopback.
    config = agent_config(pki, tmp_path, "192.0.2.1:0", "allow_remote = true\n")
    result = ztgate("agent", "--config", str(config))
    assert result.returncode == 1 and "ztgate agent: cannot start:" in result.stderr
    warning = next(line for line in result.stderr.splitlines() if "NON-LOOPBACK" in line)
    assert "WARNING" in warning and "192.0.2.1:0" in warning and "plc-1" in warning


def test_agent_refuses_an_admin_listener_off_loopback_without_allow_remote(pki: Pki, tmp_path: Path) -> None:
    config = agent_config(pki, tmp_path, "127.0.0.1:0", 'admin = "0.0.0.0:9101"\n')
    result = ztgate("agent", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:3: agent.admin: 0.0.0.0 is not a loopback address" in result.stderr
