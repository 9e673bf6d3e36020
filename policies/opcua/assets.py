"""Checking the settings of an OPC UA asset: the device's endpoint, the security the gateway's upstream
session uses, its user token, certificates, and the OPC UA status codes of refusals.

The gateway re-originates every client session as a session of its own to the device, so these settings
describe the gateway as the device's client. File paths (password, certificate, key) are checked for
form only: the gateway reads them, and the policy stays free of I/O.
"""

from __future__ import annotations

import re

from asyncua.ua.status_codes import StatusCodes

from policies.errors import FieldPath, quote, show
from policies.fields import FieldChecker, expected
from policies.model import OpcUaUser

__all__ = ["OPCUA_KEYS", "SECURITY_MODES", "SECURITY_POLICIES", "OpcuaAssetChecks", "parse_status_code"]

OPCUA_KEYS = (
    "max_sessions",
    "security_policy",
    "security_mode",
    "user",
    "application_cert",
    "application_key",
    "device_cert",
)
SECURITY_POLICIES = ("None", "Basic256Sha256")
SECURITY_MODES = ("None", "Sign", "SignAndEncrypt")
_DEPRECATED = ("Basic128Rsa15", "Basic256")
_OTHER_POLICIES = ("Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
_USER_KEYS = ("username", "password_file")
_URL = re.compile(r"opc\.tcp://([^/?#]*)(/[^?#]*)?", re.ASCII | re.IGNORECASE)
_MAX_FILE = 4096
_BAD = (0x8000_0000, 0xBFFF_FFFF)  # Part 4, 7.39: severity bits 10 are Bad
_BAD_NAMES = {name: int(getattr(StatusCodes, name)) for name in dir(StatusCodes) if name.startswith("Bad")}


def parse_status_code(value: object) -> tuple[int | None, str | None]:
    """A refusal's StatusCode from its name (``"BadUserAccessDenied"``) or number; only Bad codes."""
    if isinstance(value, str):
        code = _BAD_NAMES.get(value)
        if code is not None:
            return code, None
        return (
            None,
            f'{quote(value)}: not a Bad status code name (e.g. "BadUserAccessDenied", "BadOutOfRange")',
        )
    if isinstance(value, bool) or not isinstance(value, int):
        return None, expected(value, 'a Bad status code: a name such as "BadUserAccessDenied", or its number')
    if not _BAD[0] <= value <= _BAD[1]:
        return (
            None,
            f"{value} (0x{value & 0xFFFF_FFFF:08X}): a refusal needs a Bad status code,"
            " 0x80000000..0xBFFFFFFF",
        )
    return value, None


class OpcuaAssetChecks(FieldChecker):
    def opcua_upstream(self, value: object, path: FieldPath) -> tuple[str, int, str] | None:
        """``opc.tcp://host:port/path``, ``host:port`` or ``host`` (port 4840) -> (host, port, path)."""
        text = self.string(value, path)
        if text is None:
            return None
        endpoint_path = ""
        address = text
        if "://" in text:
            match = _URL.fullmatch(text)
            if match is None:
                self.error(
                    path,
                    f"{quote(text)}: expected opc.tcp://host:port/path (no query or fragment),"
                    " host:port or host",
                )
                return None
            address, endpoint_path = match[1], match[2] or ""
            if endpoint_path and not endpoint_path.isprintable():
                self.error(path, f"{quote(text)}: the endpoint path must be printable")
                return None
        found = self.upstream(address, path, 4840)
        if found is None:
            return None
        return found[0], found[1], endpoint_path

    def upstream(self, value: object, path: FieldPath, default_port: int | None) -> tuple[str, int] | None:
        raise NotImplementedError  # AssetChecks provides it

    def opcua_settings(self, table: dict[str, object], path: FieldPath) -> dict[str, object]:
        before = len(self.problems)
        policy = self.optional(table, "security_policy", path, self.security_policy, "None")
        mode = self.optional(
            table, "security_mode", path, lambda v, p: self.choice(v, p, SECURITY_MODES), "None"
        )
        user = self.optional(table, "user", path, self.user, OpcUaUser())
        cert = self.optional(table, "application_cert", path, self.file_name, None)
        key = self.optional(table, "application_key", path, self.file_name, None)
        device = self.optional(table, "device_cert", path, self.file_name, None)
        sessions = self.optional(table, "max_sessions", path, lambda v, p: self.integer(v, p, 1, 1000), 64)
        if len(self.problems) == before:
            assert policy is not None and mode is not None and user is not None
            self.opcua_combination(path, table, policy, mode, user, cert, key)
            if device is not None and mode == "None":
                self.error(
                    (*path, "device_cert"),
                    "the device's certificate is checked on a signed channel only: it needs security_mode"
                    ' "Sign" or "SignAndEncrypt"',
                )
        return {
            "max_sessions": sessions,
            "security_policy": policy,
            "security_mode": mode,
            "user": user,
            "application_cert": cert,
            "application_key": key,
            "device_cert": device,
        }

    def opcua_combination(
        self,
        path: FieldPath,
        table: dict[str, object],
        policy: str,
        mode: str,
        user: OpcUaUser,
        cert: str | None,
        key: str | None,
    ) -> None:
        if (cert is None) != (key is None):
            missing = "application_key" if key is None else "application_cert"
            self.error((*path, missing), "missing: application_cert and application_key go together")
            return
        if policy == "None" and mode != "None":
            self.error(
                (*path, "security_mode"),
                f'"{mode}" needs security_policy = "Basic256Sha256" (with "None" nothing is signed)',
            )
        elif policy != "None" and mode == "None":
            where = (*path, "security_mode") if "security_mode" in table else path
            self.error(
                where,
                f'security_policy "{policy}" needs security_mode "Sign" or "SignAndEncrypt"'
                ' (security_mode "None" goes with security_policy "None")',
            )
        elif policy != "None" and cert is None:
            self.error(
                path,
                f'security_mode "{mode}" needs the gateway\'s application certificate: give'
                " application_cert and application_key",
            )
        if user.kind == "certificate" and cert is None:
            self.error(
                (*path, "user"),
                '"certificate" activates the session with the gateway\'s application certificate: give'
                " application_cert and application_key",
            )

    def security_policy(self, value: object, path: FieldPath) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if text in _DEPRECATED:
            self.error(
                path,
                f"{quote(text)} is deprecated (OPC UA 1.04: SHA-1 and weak keys) and refused; use"
                ' "Basic256Sha256"',
            )
            return None
        if text.startswith("http://opcfoundation.org/UA/SecurityPolicy#"):
            short = text.rsplit("#", 1)[1]
            self.error(path, f'{quote(text)}: write the policy\'s name alone, e.g. "{short}"')
            return None
        if text in _OTHER_POLICIES:
            self.error(
                path, f"{quote(text)} is not supported by the gateway; expected one of: None, Basic256Sha256"
            )
            return None
        return self.choice(text, path, SECURITY_POLICIES)

    def user(self, value: object, path: FieldPath) -> OpcUaUser | None:
        if isinstance(value, str):
            if value in ("anonymous", "certificate"):
                return OpcUaUser(value)
            self.error(
                path,
                f'{quote(value)}: expected "anonymous", "certificate" or'
                ' { username = "...", password_file = "..." }',
            )
            return None
        table = self.table(value, path)
        if table is None:
            return None
        before = len(self.problems)
        self.keys(table, path, _USER_KEYS)
        for required in _USER_KEYS:
            if required not in table:
                self.error(path, f'missing required key "{required}"')
        if len(self.problems) > before:
            return None
        username = self.string(table["username"], (*path, "username"))
        if username is not None and not (0 < len(username) <= 256 and username.isprintable()):
            self.error((*path, "username"), f"{quote(username)}: expected 1 to 256 printable characters")
            username = None
        password_file = self.file_name(table["password_file"], (*path, "password_file"))
        if username is None or password_file is None:
            return None
        return OpcUaUser("username", username, password_file)

    def file_name(self, value: object, path: FieldPath) -> str | None:
        text = self.string(value, path)
        if text is None:
            return None
        if not text or len(text) > _MAX_FILE or not text.isprintable():
            self.error(path, f"{show(text)}: expected the path of a file")
            return None
        return text

    def opcua_code(self, value: object, path: FieldPath) -> int | None:
        code, problem = parse_status_code(value)
        if problem is not None:
            self.error(path, problem)
        return code
