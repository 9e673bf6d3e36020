"""Find the line a field of a policy file stands on.

tomllib returns plain dicts and lists without positions, so validation errors would otherwise point
nowhere. This scanner walks the text once more, only when a file has errors, and records the line of
every table header, key and array element under the same path the loader reports
(``("rules", 1, "modbus", 0, "address")``). It relies on tomllib having accepted the text already, so
it needs to tell strings, comments and brackets apart, not to check syntax.
"""

from __future__ import annotations

from policies.errors import FieldPath

__all__ = ["LineLocator"]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}\n#")


class LineLocator:
    """Maps field paths to 1-based line numbers; unknown paths fall back to their nearest parent."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1
        self.lines: dict[FieldPath, int] = {}
        # Array-of-tables occurrences seen so far, by header key, to turn [[rules]] into rules[i].
        self._array_counts: dict[tuple[str, ...], int] = {}
        try:
            self._scan()
        except (IndexError, ValueError):
            # A half-built map still gives good lines for everything before the surprise.
            pass

    def line_of(self, path: FieldPath) -> int | None:
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    # --------------------------------------------------------------------------------- scanner

    def _peek(self, offset: int = 0) -> str:
        index = self._pos + offset
        return self._text[index] if index < len(self._text) else ""

    def _advance(self, count: int = 1) -> None:
        chunk = self._text[self._pos : self._pos + count]
        self._line += chunk.count("\n")
        self._pos += count

    def _skip_blank(self, *, newlines: bool) -> None:
        while self._pos < len(self._text):
            ch = self._text[self._pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self._advance()
            elif ch == "#":
                end = self._text.find("\n", self._pos)
                self._pos = len(self._text) if end < 0 else end
            else:
                return

    def _scan(self) -> None:
        prefix: FieldPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self._pos >= len(self._text):
                return
            if self._text.startswith("[[", self._pos):
                line = self._line
                self._advance(2)
                keys = self._key(end="]")
                self._advance(2)
                prefix = self._resolve(keys, new_array_entry=True)
                self.lines.setdefault(prefix, line)
            elif self._peek() == "[":
                line = self._line
                self._advance()
                keys = self._key(end="]")
                self._advance()
                prefix = self._resolve(keys, new_array_entry=False)
                self.lines.setdefault(prefix, line)
            else:
                self._key_value(prefix)

    def _resolve(self, keys: tuple[str, ...], *, new_array_entry: bool) -> FieldPath:
        """A header's keys as a path, with the current index of every array of tables on the way."""
        if new_array_entry:
            self._array_counts[keys] = self._array_counts.get(keys, -1) + 1
        path: list[str | int] = []
        for end in range(1, len(keys) + 1):
            path.append(keys[end - 1])
            index = self._array_counts.get(keys[:end])
            if index is not None:
                path.append(index)
        return tuple(path)

    def _key(self, end: str) -> tuple[str, ...]:
        """A dotted key, stopping before ``end`` ("=" for key/values, "]" for headers)."""
        parts: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            ch = self._peek()
            if ch == '"':
                parts.append(self._basic_string())
            elif ch == "'":
                parts.append(self._literal_string())
            else:
                start = self._pos
                while self._peek() in _BARE_KEY_CHARS and self._peek():
                    self._advance()
                if self._pos == start:
                    raise ValueError("expected a key")
                parts.append(self._text[start : self._pos])
            self._skip_blank(newlines=False)
            if self._peek() == ".":
                self._advance()
                continue
            if self._peek() == end:
                return tuple(parts)
            raise ValueError("unexpected character in a key")

    def _key_value(self, prefix: FieldPath) -> None:
        line = self._line
        path = prefix + self._key(end="=")
        self.lines.setdefault(path, line)
        self._advance()  # "="
        self._skip_blank(newlines=False)
        self._value(path)

    def _value(self, path: FieldPath) -> None:
        ch = self._peek()
        if self._text.startswith('"""', self._pos):
            self._multiline('"""')
        elif self._text.startswith("'''", self._pos):
            self._multiline("'''")
        elif ch == '"':
            self._basic_string()
        elif ch == "'":
            self._literal_string()
        elif ch == "[":
            self._array(path)
        elif ch == "{":
            self._inline_table(path)
        else:
            while self._pos < len(self._text) and self._text[self._pos] not in _SCALAR_END:
                self._pos += 1

    def _array(self, path: FieldPath) -> None:
        self._advance()  # "["
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "]":
                self._advance()
                return
            element = (*path, index)
            self.lines.setdefault(element, self._line)
            self._value(element)
            index += 1
            self._skip_blank(newlines=True)
            if self._peek() == ",":
                self._advance()

    def _inline_table(self, path: FieldPath) -> None:
        self._advance()  # "{"
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "}":
                self._advance()
                return
            line = self._line
            key_path = path + self._key(end="=")
            self.lines.setdefault(key_path, line)
            self._advance()  # "="
            self._skip_blank(newlines=False)
            self._value(key_path)
            self._skip_blank(newlines=True)
            if self._peek() == ",":
                self._advance()

    def _basic_string(self) -> str:
        self._advance()  # opening quote
        out: list[str] = []
        while True:
            ch = self._peek()
            if ch == "":
                raise ValueError("unterminated string")
            if ch == '"':
                self._advance()
                return "".join(out)
            if ch == "\\":
                # Only keys need the decoded text, and keys rarely hold escapes: keep the escaped
                # character itself, which is right for \" and \\ and harmless otherwise.
                out.append(self._peek(1))
                self._advance(2)
                continue
            out.append(ch)
            self._advance()

    def _literal_string(self) -> str:
        end = self._text.index("'", self._pos + 1)
        text = self._text[self._pos + 1 : end]
        self._advance(end + 1 - self._pos)
        return text

    def _multiline(self, delimiter: str) -> None:
        search = self._pos + 3
        while True:
            end = self._text.index(delimiter, search)
            if delimiter == '"""':
                backslashes = 0
                while self._text[end - 1 - backslashes] == "\\":
                    backslashes += 1
                if backslashes % 2:
                    search = end + 1
                    continue
            # Up to two quotes may sit right before the closing delimiter and belong to the string.
            while self._text.startswith(delimiter[0], end + 3):
                end += 1
            self._advance(end + 3 - self._pos)
            return
