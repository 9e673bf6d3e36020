"""libmodbus's own ``random-test-client``, built from the example source Debian ships, as a real peer.

What the unpatched program (libmodbus 3.1.6, examples/random-test-client.c) does:
- connects to 127.0.0.1:1502 over TCP, with ``modbus_set_debug(ctx, TRUE)`` (every frame printed);
- sends unit id 0xFF (MODBUS_TCP_SLAVE): its ``modbus_set_slave(ctx, SERVER_ID)`` with SERVER_ID 17
  sits in the commented-out RTU block, so over TCP the "17" is never used;
- runs LOOP = 1 loop; each loop walks ``addr`` from 0 to 98 and, with nb = 99 - addr and fresh
  pseudo-random values (``rand()`` never seeded, so the same values every run), does in order:
  FC 5 write coil addr, FC 1 read it back; FC 15 write nb coils at addr, FC 1 read them back;
  FC 6 write register addr, FC 3 read it back; FC 16 write nb registers at addr, FC 3 read them back;
  FC 23 write nb registers (the bitwise complements) and read the same nb registers in one request,
  then FC 3 read them back. That is 10 requests per address, 990 per loop, on one connection, one at
  a time, over coils and holding registers 0-98 only (no FC 2 or FC 4);
- prints ``ERROR <call> ...`` plus a detail line for each failed call or mismatched value (a read is
  skipped when its write failed), and at the end of each loop ``Test: SUCCESS`` or ``Test: N FAILS``;
- exits 0 whether or not anything failed; only a failed connect exits non-zero (-1, i.e. 255),
  after printing ``Connection failed: ...`` on stderr. libmodbus's response timeout is 0.5 s, so a
  peer that stops answering costs 0.5 s per request, not a hang.

The build patches the source text (every patch must match exactly once, or the build fails loudly):
- ``random-test-client [HOST [PORT [UNIT [LOOPS]]]]``, defaults 127.0.0.1, 1502, 17, 1, with
  ``modbus_set_slave`` called for TCP too, so the unit is the intended 17 unless told otherwise;
- a response timeout of RESPONSE_TIMEOUT_S instead of 0.5 s;
- frame debugging only when ZTGATE_MODBUS_DEBUG is set in the environment;
- exit status 1 when any check failed, so a caller cannot mistake a failed run for a pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path("/usr/share/doc/libmodbus-dev/examples/random-test-client.c")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / ".cache" / "peers"
DEBUG_ENV = "ZTGATE_MODBUS_DEBUG"
REQUESTS_PER_LOOP = 990

# (original text, replacement). Bump PATCH_VERSION when changing them, so cached binaries are rebuilt.
PATCH_VERSION = "2"
# libmodbus answers a late reply with a failed check after 0.5 s; the tests check correctness, not
# latency, and a loaded machine (the suite runs on 2 cores) can hold a relayed reply that long.
RESPONSE_TIMEOUT_S = 5
_PATCHES = (
    ("#define LOOP             1\n", "static int ztgate_loops = 1;\n#define LOOP ztgate_loops\n"),
    ("int main(void)\n", "int main(int argc, char *argv[])\n"),
    (
        '    ctx = modbus_new_tcp("127.0.0.1", 1502);\n    modbus_set_debug(ctx, TRUE);\n',
        '    ctx = modbus_new_tcp(argc > 1 ? argv[1] : "127.0.0.1", argc > 2 ? atoi(argv[2]) : 1502);\n'
        "    if (ctx == NULL) {\n"
        '        fprintf(stderr, "Cannot create the context: %s\\n", modbus_strerror(errno));\n'
        "        return -1;\n"
        "    }\n"
        "    modbus_set_slave(ctx, argc > 3 ? atoi(argv[3]) : SERVER_ID);\n"
        "    ztgate_loops = argc > 4 ? atoi(argv[4]) : 1;\n"
        f"    modbus_set_response_timeout(ctx, {RESPONSE_TIMEOUT_S}, 0);\n"
        '    modbus_set_debug(ctx, getenv("' + DEBUG_ENV + '") != NULL);\n',
    ),
    (
        "    modbus_free(ctx);\n\n    return 0;\n}\n",
        "    modbus_free(ctx);\n\n    return nb_fail ? 1 : 0;\n}\n",
    ),
)


class PeerUnavailableError(RuntimeError):
    """A tool or package the peer needs is missing; the message says which Debian package provides it."""


def patched_source(text: str) -> str:
    for original, replacement in _PATCHES:
        found = text.count(original)
        if found != 1:
            raise PeerUnavailableError(
                f"{SOURCE}: expected one occurrence of {original.strip()!r}, found {found}; "
                "the libmodbus example changed, update tests/peers/libmodbus.py"
            )
        text = text.replace(original, replacement)
    return text


def _pkg_config(*args: str) -> str:
    result = subprocess.run(["pkg-config", *args, "libmodbus"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PeerUnavailableError(
            "pkg-config does not know libmodbus: apt-get install libmodbus-dev "
            f"({result.stderr.strip() or 'no message'})"
        )
    return result.stdout.strip()


def random_test_client() -> Path:
    """The built client, compiled on first use into .cache/peers/ and rebuilt when the source, the
    patches or libmodbus change. Raises PeerUnavailableError naming the missing package."""
    if shutil.which("gcc") is None:
        raise PeerUnavailableError("gcc is not installed: apt-get install gcc libc6-dev")
    if shutil.which("pkg-config") is None:
        raise PeerUnavailableError("pkg-config is not installed: apt-get install pkg-config")
    if not SOURCE.is_file():
        raise PeerUnavailableError(f"{SOURCE} is missing: apt-get install libmodbus-dev")
    flags = _pkg_config("--cflags", "--libs").split()
    source = patched_source(SOURCE.read_text())
    key = hashlib.sha256(
        "\0".join([PATCH_VERSION, _pkg_config("--modversion"), *flags, source]).encode()
    ).hexdigest()[:16]
    binary = BUILD_DIR / f"random-test-client-{key}"
    if binary.is_file():
        return binary
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # Unique names and an atomic rename: parallel test workers may build at the same time.
    tag = f"{os.getpid()}-{key}"
    source_path = BUILD_DIR / f"random-test-client-{tag}.c"
    partial = BUILD_DIR / f"random-test-client-{tag}.partial"
    source_path.write_text(source)
    try:
        result = subprocess.run(
            ["gcc", "-O1", "-o", str(partial), str(source_path), *flags],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise PeerUnavailableError(
                f"building random-test-client failed (are gcc, libc6-dev and libmodbus-dev installed?):\n"
                f"{result.stderr}"
            )
        partial.replace(binary)
    finally:
        source_path.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return binary


@dataclass(frozen=True)
class RandomTestResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        """The client's ``ERROR ...`` lines (each failed check prints one)."""
        return [line for line in self.stdout.splitlines() if line.startswith("ERROR")]

    @property
    def reported_fails(self) -> int | None:
        """N from its last ``Test: N FAILS`` line, 0 for ``Test: SUCCESS``, None if no verdict printed."""
        verdicts = re.findall(r"^Test: (?:(SUCCESS)|(\d+) FAILS)$", self.stdout, re.MULTILINE)
        if not verdicts:
            return None
        success, fails = verdicts[-1]
        return 0 if success else int(fails)

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and self.reported_fails == 0 and not self.errors

    def summary(self) -> str:
        head = "\n".join(self.errors[:10])
        return f"exit {self.returncode}, verdict {self.reported_fails!r} fails\n{head}\n{self.stderr[-2000:]}"


async def run_random_test_client(
    host: str,
    port: int,
    *,
    unit: int = 17,
    loops: int = 1,
    timeout_s: float = 60.0,
    debug: bool = False,
) -> RandomTestResult:
    """Run the client against host:port without blocking the event loop (a gateway under test may
    run in it). Raises TimeoutError, after killing the client, if it takes longer than ``timeout_s``."""
    binary = random_test_client()
    env = dict(os.environ)
    if debug:
        env[DEBUG_ENV] = "1"
    else:
        env.pop(DEBUG_ENV, None)
    process = await asyncio.create_subprocess_exec(
        str(binary),
        host,
        str(port),
        str(unit),
        str(loops),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise TimeoutError(f"random-test-client did not finish within {timeout_s} s") from None
    assert process.returncode is not None
    return RandomTestResult(
        process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )
