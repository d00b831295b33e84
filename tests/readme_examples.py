"""Runs the README's shell examples for real (tests/integration/test_readme_examples.py).

A section's ```bash blocks are read into commands (a command spans `\\` continuations and open quotes or
`$(...)`; full-line `#` comments are prose, or an output comment when they follow a command and start with
`{` or `[`). `run_section` (tests/readme_runner.py) runs a section's commands in order as ONE bash script (`set -euo pipefail`), so
shell state carries from one block to the next as it does for a reader who pastes them into one terminal.
The harness adds only bookkeeping between commands; a caller may rewrite a command (the service's address)
through `rewrite`. What it checks, for each command:

* it exits 0; `curl` is a wrapper (first on PATH) around the real one that records every request (status,
  content type, URL) and exits 22 on a status other than 2xx, as `curl -f` would, after passing the body on;
* a command that calls curl made at least one request; a top-level curl that got JSON printed JSON;
* an output comment (`# {"key": ..., "list": [{"k": ...}, ...]}`) names keys the command's real JSON output
  has, at the same place (values are illustrative: only their kind is compared, `...` stands for anything);
* a trailing `# -> PATH` comment names a path that exists once the section has run;
* `alpro-serve` (it runs until stopped) goes to the background, the script waits until its /readyz answers
  (polled, with a deadline) and goes on; at the end it gets SIGTERM and must exit 0.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCES = ("bash", "sh", "shell")


# --------------------------------------------------------------------------------------------------
# Reading the README


@dataclass
class Command:
    text: str  # as written (continuation lines kept): what bash runs
    line: int  # README line where it starts
    trailing: str = ""  # its trailing `# ...` comment, without the `#`
    after: list[str] = field(default_factory=list)  # full-line comments right below it, without the `#`

    @property
    def code(self) -> str:
        """The command without its trailing comment."""
        end = _scan(self.text).comment
        return (self.text if end is None else self.text[:end]).rstrip()

    @property
    def program(self) -> str:
        """The program it runs, without its directory (`.venv/bin/alpro-serve`): the first word after any
        variable assignments; "" for a command that only assigns (`ID=$(curl ...)`)."""
        rest = self.code.replace("\\\n", " ")
        while True:
            assignment = re.match(r"\s*[A-Za-z_][A-Za-z0-9_]*=", rest)
            if not assignment:
                break
            rest = rest[_word_end(rest, assignment.end()):]
        try:
            words = shlex.split(rest)
        except ValueError:
            words = rest.split()
        return os.path.basename(words[0]) if words else ""

    @property
    def calls_curl(self) -> bool:
        return re.search(r"(^|[\s;|&($`])curl\s", self.code) is not None

    @property
    def output(self) -> Optional[str]:
        """The JSON-like output comment shown for this command, if any."""
        if self.trailing.lstrip().startswith(("{", "[")):
            return _balanced_prefix(self.trailing.strip())
        if self.after and self.after[0].lstrip().startswith(("{", "[")):
            return _balanced_prefix(" ".join(line.strip() for line in self.after))
        return None

    @property
    def promised_paths(self) -> list[str]:
        """Paths its trailing comment says it writes (`# -> demo-data/runs/qa/final`)."""
        return [p for p in re.findall(r"->\s*([^\s,;)]+)", self.trailing) if "/" in p and "://" not in p]

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def section(markdown: str, heading: str) -> tuple[str, int]:
    """The text under `## heading` up to the next heading of that level or above, and its first line number."""
    lines = markdown.splitlines()
    in_code = []  # inside a ``` fence, where `# ...` is a shell comment, not a heading
    fenced = False
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            in_code.append(True)
        else:
            in_code.append(fenced)
    for i, line in enumerate(lines):
        if line.strip() == f"## {heading}" and not in_code[i]:
            end = next((j for j in range(i + 1, len(lines)) if re.match(r"^#{1,2} ", lines[j]) and not in_code[j]),
                       len(lines))
            return "\n".join(lines[i + 1:end]), i + 2
    raise LookupError(f"README.md has no section '## {heading}'")


def bash_blocks(text: str, first_line: int = 1) -> list[tuple[str, int]]:
    """The ```bash (or sh, shell) blocks of a markdown text: (code, line number of its first code line)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^\s*```\s*(\w*)\s*$", lines[i])
        if fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith("```")), len(lines))
            if fence.group(1).lower() in FENCES:
                blocks.append(("\n".join(lines[i + 1:end]), first_line + i + 1))
            i = end + 1
        else:
            i += 1
    return blocks


def split_commands(code: str, first_line: int = 1) -> list[Command]:
    """A block's commands with their comments (see the module docstring)."""
    commands: list[Command] = []
    buf: list[str] = []
    start = first_line
    last: Optional[Command] = None  # the command the full-line comments below may describe
    for number, line in enumerate(code.splitlines(), start=first_line):
        if not buf:
            stripped = line.strip()
            if not stripped:
                last = None  # a blank line ends what belongs to the command above
                continue
            if stripped.startswith("#"):
                if last is not None:
                    last.after.append(stripped[1:])
                continue
            start = number
        buf.append(line)
        state = _scan("\n".join(buf))
        if state.open:
            continue
        text = "\n".join(buf)
        trailing = text[state.comment + 1:] if state.comment is not None else ""
        last = Command(text, start, trailing.strip())
        commands.append(last)
        buf = []
    if buf:
        raise ValueError(f"README.md:{start}: the command never ends (an open quote, `$(` or a last `\\`)")
    return commands


def section_commands(heading: str, markdown: Optional[str] = None) -> list[Command]:
    text, first = section(markdown if markdown is not None else README.read_text(), heading)
    return [c for code, line in bash_blocks(text, first) for c in split_commands(code, line)]


@dataclass
class _ScanState:
    open: bool  # the command goes on in the next line
    comment: Optional[int]  # where its top-level trailing comment starts (the `#`)


def _scan(text: str) -> _ScanState:
    """Bash's quoting, as far as splitting commands needs: quotes, `$(...)`/`(...)`, `\\`, `#` comments."""
    stack = ["top"]
    comment = None
    i = 0
    while i < len(text):
        c, ctx = text[i], stack[-1]
        if ctx == "'":
            if c == "'":
                stack.pop()
        elif c == "\\":
            if i + 1 >= len(text):
                return _ScanState(True, comment)  # a continuation line follows
            i += 2
            continue
        elif ctx == '"':
            if c == '"':
                stack.pop()
            elif text.startswith("$(", i):
                stack.append("(")
                i += 1
        elif c == "'":
            stack.append("'")
        elif c == '"':
            stack.append('"')
        elif c == "(":
            stack.append("(")
        elif c == ")" and ctx == "(":
            stack.pop()
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|()"):
            if len(stack) == 1 and comment is None:
                comment = i
            newline = text.find("\n", i)
            if newline < 0:
                break
            i = newline
            continue
        i += 1
    return _ScanState(len(stack) > 1, comment)


def _word_end(text: str, i: int) -> int:
    """Where the shell word going on at `i` ends (quotes and `$(...)` included)."""
    depth, quote = 0, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
            elif c == "\\" and quote == '"':
                i += 1
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c in " \t\n;&|" and depth <= 0:
            return i
        i += 1
    return i


def _balanced_prefix(text: str) -> str:
    """The leading JSON-like value of `text` (up to its matching bracket), or all of it."""
    depth, in_string, escaped = 0, False, False
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return text[:i + 1]
    return text


# --------------------------------------------------------------------------------------------------
# Output comments

_ANY = object()  # `...` in an output comment: any value


def parse_output_comment(text: str) -> Any:
    """An output comment as a JSON shape: `...` as a value is "anything" (`_ANY`), `{...}` any object,
    `[...]` any list, a last `, ...` "and more". None when it is not JSON-like enough to parse."""
    parts = re.split(r'("(?:[^"\\]|\\.)*")', text)  # strings kept verbatim, the rest rewritten
    for i in range(0, len(parts), 2):
        part = parts[i]
        part = re.sub(r"\{\s*\.\.\.\s*\}", '{"__any__": true}', part)
        part = re.sub(r"\[\s*\.\.\.\s*\]", '["__any__"]', part)
        part = re.sub(r",\s*\.\.\.(?=\s*[\]}])", "", part)
        part = re.sub(r"(?<=:)\s*\.\.\.", ' "__any__"', part)
        parts[i] = part
    try:
        value = json.loads("".join(parts))
    except json.JSONDecodeError:
        return None

    def mark(v: Any) -> Any:
        if v == "__any__" or v == {"__any__": True} or v == ["__any__"]:
            return _ANY
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        if isinstance(v, list):
            return [mark(x) for x in v]
        return v

    return mark(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def shape_problems(shape: Any, actual: Any, where: str = "$") -> list[str]:
    """How `actual` (real JSON) differs from an output comment's shape: a missing key, a list shown with an
    element that came back empty, a value of another kind (null always passes: fields may be optional)."""
    if shape is _ANY or actual is None:
        return []
    if isinstance(shape, dict):
        if not isinstance(actual, dict):
            return [f"{where}: the README shows an object, the output has {_kind(actual)}"]
        problems = [f"{where}: no key {key!r} (the output has {sorted(actual)})" for key in shape if key not in actual]
        for key, sub in shape.items():
            if key in actual:
                problems += shape_problems(sub, actual[key], f"{where}.{key}")
        return problems
    if isinstance(shape, list):
        if not isinstance(actual, list):
            return [f"{where}: the README shows a list, the output has {_kind(actual)}"]
        if shape and not actual:
            return [f"{where}: the README shows elements, the output's list is empty"]
        return [p for i, item in enumerate(actual) for p in shape_problems(shape[0], item, f"{where}[{i}]")] if shape \
            else []
    if _kind(shape) != _kind(actual):
        return [f"{where}: the README shows a {_kind(shape)} ({shape!r}), the output has {_kind(actual)}"]
    return []


def comment_keys(text: str) -> list[str]:
    """The keys an output comment names (`"key":`), for comments too loose to parse."""
    return re.findall(r'"([^"\\]+)"\s*:', text)


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()
