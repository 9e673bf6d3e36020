"""Start-up refusals of the real commands for a key that is missing or is garbage: the message names
the file, and the command exits with a failure status (issue 16)."""

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
        f'[agent]\ngateway = "127.0.0.1:1"\n[tls]\ncert = "{cert}"\nkey = "{key}"\nca = "{pki.ca}"\n'
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
