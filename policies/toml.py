"""The TOML parser: tomli, the upstream of the standard library's tomllib, in its compiled build.

Same parser, same messages, same errors (``TOMLDecodeError`` carries "(at line L, column C)"), about
three times faster: a 10,000-rule policy parses in ~0.16 s instead of ~0.5 s, which is what keeps a
reload of a large policy well under a second.
"""

from __future__ import annotations

from tomli import TOMLDecodeError, loads

__all__ = ["TOMLDecodeError", "loads"]
