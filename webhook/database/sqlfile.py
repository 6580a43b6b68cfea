"""Split a SQL file into statements, so a failing migration can name the statement.

PostgreSQL reports where a syntax error is, but not which statement of a multi-statement
script failed at run time. Splitting on semicolons is enough once quoted text is skipped:
single-quoted strings, double-quoted identifiers, dollar-quoted bodies and comments.
"""

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$[A-Za-z_]\w*\$|\$\$")
# Whitespace and comments (line and block) before a statement's first token.
_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.S)


@dataclass(frozen=True)
class Statement:
    """One statement of a script and the line it starts on (1-based)."""

    text: str
    line: int

    @property
    def summary(self) -> str:
        """The statement's first meaningful line, for error messages."""
        code = self.text[_LEADING_NOISE.match(self.text).end() :]
        first = code.splitlines()[0].strip() if code else ""
        return first if len(first) <= 80 else first[:77] + "..."


def split_statements(script: str) -> list[Statement]:
    """Return the statements of `script` in order, without empty ones."""
    statements: list[Statement] = []
    start = 0
    i = 0
    n = len(script)
    while i < n:
        ch = script[i]
        if ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end == -1 else end + 1
        elif ch == "/" and script.startswith("/*", i):
            end = script.find("*/", i + 2)
            i = n if end == -1 else end + 2
        elif ch in ("'", '"'):
            i = _skip_quoted(script, i, ch)
        elif ch == "$" and (match := _DOLLAR_TAG.match(script, i)):
            end = script.find(match.group(), match.end())
            i = n if end == -1 else end + len(match.group())
        elif ch == ";":
            _append(statements, script, start, i)
            start = i + 1
            i += 1
        else:
            i += 1
    _append(statements, script, start, n)
    return statements


def _skip_quoted(script: str, i: int, quote: str) -> int:
    """Index just past the quoted text starting at `i` (a doubled quote is an escape)."""
    i += 1
    while i < len(script):
        if script[i] == quote:
            if script.startswith(quote * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _append(statements: list[Statement], script: str, start: int, end: int) -> None:
    chunk = script[start:end]
    if not _has_code(chunk):
        return
    # The line of the statement's first token, past any comments that precede it.
    code_at = start + _LEADING_NOISE.match(chunk).end()
    statements.append(Statement(chunk.strip(), script.count("\n", 0, code_at) + 1))


def _has_code(chunk: str) -> bool:
    without_comments = re.sub(r"--[^\n]*|/\*.*?\*/", "", chunk, flags=re.S)
    return bool(without_comments.strip())
