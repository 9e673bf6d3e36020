"""The lab: simulated PLCs (``sim/``), the demo lab (``demo/``) and small clients for trying a lab by
hand (``client.py``), for demos, tests and benchmarks.

No runtime module imports the lab: the gateway, the agent and the operator's tools never need it. Its
third-party packages come with the ``lab`` extra (``pip install 'ztgate[lab]'``), which a production
install leaves out; ``gateway/cli.py`` names the lab's commands as strings, imports them only to build
the command line, and asks :func:`missing_extra` before it runs one.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_PACKAGES", "missing_extra"]

# The import names of the `lab` extra's packages in pyproject.toml (a test holds the two equal).
EXTRA_PACKAGES = ("pymodbus", "pycomm3")


def missing_extra(command: str) -> str | None:
    """What to tell the user of ``ztgate COMMAND`` when the lab extra is not installed, or None."""
    missing = [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"ztgate {command} is part of the lab, whose packages this installation lacks"
        f" ({', '.join(missing)}): install them with pip install 'ztgate[lab]'"
    )
