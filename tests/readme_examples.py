"""Runs the README's shell examples for real (tests/integration/test_readme_examples.py).

A section's ```bash blocks are read into commands (a command spans `\\` continuations and open quotes or
`$(...)`; full-line `#` comments are prose, or an output comment when they follow a command and start with
`{` or `[`). `run_section` runs a section's commands in order as ONE bash script (`set -euo pipefail`), so
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
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCES = ("bash", "sh", "shell")
LONG_RUNNING = {"alpro-serve"}  # programs that serve until stopped
READY_TIMEOUT_S = 180  # an alpro-serve of the README until its /readyz answers (2 busy cores)
STOP_TIMEOUT_S = 30  # after SIGTERM, until it exits (README: in-flight requests get ALPRO_SHUTDOWN_GRACE_S)


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


# --------------------------------------------------------------------------------------------------
# Running a section

_CURL_WRAPPER = '''#!{python}
"""The README harness's curl: runs the real curl, records each request in $README_CURL_LOG and exits 22
on any status but 2xx (the body is still printed)."""
import json, os, subprocess, sys
MARK = "@@readme-curl@@"
args = [os.environ["README_REAL_CURL"], *sys.argv[1:],
        "-w", "%{{stderr}}" + MARK + "%{{http_code}} %{{content_type}} %{{url_effective}}\\n"]
done = subprocess.run(args, stderr=subprocess.PIPE)
statuses = []
for line in done.stderr.decode(errors="replace").splitlines(keepends=True):
    if MARK in line:
        before, _, record = line.partition(MARK)
        sys.stderr.write(before)
        status, content_type, url = (record.strip().split(" ", 2) + ["", ""])[:3]
        statuses.append(status)
        with open(os.environ["README_CURL_LOG"], "a") as log:
            log.write(json.dumps({{"command": int(os.environ.get("README_CMD", "-1")), "status": status,
                                  "content_type": content_type, "url": url}}) + "\\n")
    else:
        sys.stderr.write(line)
if done.returncode:
    sys.exit(done.returncode)
sys.exit(22 if any(not s.startswith("2") for s in statuses) else 0)
'''

_PRELUDE = r'''set -euo pipefail
_readme_servers=()
_readme_stop() {  # SIGTERM each background server, wait (polled, with a deadline) and record its exit status
    local rc=$? pid n
    echo "$README_CMD $rc" > "$README_OUT/exit"
    for n in "${!_readme_servers[@]}"; do
        pid=${_readme_servers[$n]}
        kill -TERM "$pid" 2>/dev/null || true
        for ((t = 0; t < README_STOP_TIMEOUT_S * 5; t++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" && echo 0 > "$README_OUT/server-$n" || echo $? > "$README_OUT/server-$n"
    done
    exit "$rc"
}
trap _readme_stop EXIT
_readme_wait_ready() {  # until the server's /readyz answers 200; fails when it exits or past the deadline
    local deadline=$((SECONDS + README_READY_TIMEOUT_S))
    until "$README_REAL_CURL" -sf -o /dev/null "$2"; do
        kill -0 "$1" 2>/dev/null || { echo "readme harness: the server exited before it was ready" >&2; return 1; }
        ((SECONDS < deadline)) || { echo "readme harness: no answer from $2 in time" >&2; return 1; }
        sleep 0.2
    done
}
'''


@dataclass
class SectionRun:
    commands: list[Command]
    run_commands: list[str]  # what ran, after `rewrite`
    returncode: int
    out: Path
    workdir: Path
    stderr: str

    def stdout_of(self, i: int) -> str:
        path = self.out / f"{i}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stderr_of(self, i: int) -> str:
        path = self.out / f"{i}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def requests(self) -> list[dict]:
        log = self.out / "curl.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    @property
    def failed_command(self) -> Optional[int]:
        exit_file = self.out / "exit"
        if not exit_file.exists():
            return None
        number, rc = exit_file.read_text().split()
        return int(number) if rc != "0" and int(number) >= 0 else None

    def seconds(self) -> list[tuple[Command, float]]:
        """How long each command that finished took (a server: until it was ready)."""
        times = self.out / "times"
        marks = [line.replace(",", ".").split() for line in times.read_text().splitlines()] if times.exists() else []
        return [(self.commands[int(a[0])], float(b[1]) - float(a[1])) for a, b in zip(marks, marks[1:])]

    def timing_report(self) -> str:
        return "\n".join(f"{s:6.1f} s  README.md:{c.line} {c.program}" for c, s in self.seconds())

    def server_exit_codes(self) -> list[int]:
        return [int((self.out / f"server-{n}").read_text()) for n in range(len(list(self.out.glob("server-*"))))]

    def problems(self) -> list[str]:
        """Everything that contradicts the README (empty: the section runs as written)."""
        problems: list[str] = []
        failed = self.failed_command
        if self.returncode != 0 or failed is not None:
            at = f"{self.commands[failed]}" if failed is not None else "(before the first command)"
            detail = (self.stderr_of(failed) if failed is not None else "") + self.stderr
            problems.append(f"the section stopped with exit status {self.returncode} at {at}\n"
                            f"{textwrap.indent(detail[-4000:], '    ')}")
            bad = [r for r in self.requests if not r["status"].startswith("2")]
            problems += [f"HTTP {r['status']} from {r['url']} ({self.commands[r['command']]})" for r in bad]
            return problems
        requests = self.requests
        for i, command in enumerate(self.commands):
            mine = [r for r in requests if r["command"] == i]
            out = self.stdout_of(i)
            if command.calls_curl and not mine:
                problems.append(f"{command}\n    calls curl but made no request")
            if command.program == "curl" and len(mine) == 1 and "json" in mine[0]["content_type"]:
                try:
                    json.loads(out)
                except json.JSONDecodeError:
                    problems.append(f"{command}\n    the response is JSON but the command printed {out[:200]!r}")
            if command.output is not None:
                problems += [f"{command}\n    {p}" for p in self._output_problems(command, out)]
            for path in command.promised_paths:
                if not (self.workdir / path).exists():
                    problems.append(f"{command}\n    its comment says it writes {path}, which is not there")
        for n, code in enumerate(self.server_exit_codes()):
            if code != 0:
                problems.append(f"background server {n} exited {code} on SIGTERM (the README: 0)")
        return problems

    @staticmethod
    def _output_problems(command: Command, out: str) -> list[str]:
        try:
            actual = json.loads(out)
        except json.JSONDecodeError:
            return [f"the README shows JSON output, the command printed {out[:300]!r}"]
        shape = parse_output_comment(command.output)
        if shape is not None:
            return shape_problems(shape, actual)
        missing = [k for k in comment_keys(command.output) if k not in all_keys(actual)]
        return [f"the output comment names {missing}, the output has no such keys"] if missing else []


def harness_env(workdir: Path, *, path_front: list[Path] = (), drop_path: list[Path] = (),
                extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The caller's environment without ALPRO_* settings or an active venv (the README must say how to
    get its commands), with the curl wrapper first on PATH."""
    import shutil

    real_curl = shutil.which("curl")
    if real_curl is None:
        raise RuntimeError("curl is not installed (the README's examples use it)")
    bin_dir = workdir / ".readme-harness-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    wrapper = bin_dir / "curl"
    wrapper.write_text(_CURL_WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    dropped = {p.resolve() for p in drop_path}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() not in dropped]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALPRO_") and k != "VIRTUAL_ENV"}
    env.update(PATH=os.pathsep.join([str(bin_dir), *map(str, path_front), *path]), README_REAL_CURL=real_curl,
               README_READY_TIMEOUT_S=str(READY_TIMEOUT_S), README_STOP_TIMEOUT_S=str(STOP_TIMEOUT_S),
               README_CMD="-1")
    env.update(extra or {})
    return env


def build_script(commands: list[Command], texts: list[str]) -> str:
    lines = [_PRELUDE]
    for i, (command, text) in enumerate(zip(commands, texts)):
        lines.append(f'\n# README.md:{command.line}\nexport README_CMD={i}\necho "{i} $EPOCHREALTIME" >>"$README_OUT/times"')
        if command.program in LONG_RUNNING:
            # exec: $! is the server itself, which the EXIT trap stops
            lines.append(f'( exec {text}\n) >"$README_OUT/{i}.out" 2>"$README_OUT/{i}.err" &\n'
                         f'_readme_servers+=($!)\n'
                         f'_readme_wait_ready $! "http://127.0.0.1:$ALPRO_PORT/readyz" 2>>"$README_OUT/{i}.err"')
        else:
            lines.append(f'{{ {text}\n}} >"$README_OUT/{i}.out" 2>"$README_OUT/{i}.err"')
    lines.append('\nexport README_CMD=-1\necho "-1 $EPOCHREALTIME" >>"$README_OUT/times"\n')
    return "\n".join(lines)


def run_section(commands: list[Command], workdir: Path, env: dict[str, str], *, timeout_s: float,
                rewrite: Callable[[Command], str] = lambda c: c.text) -> SectionRun:
    """Run the commands as one bash script in `workdir` (see the module docstring). A long-running server
    needs ALPRO_PORT in `env`: its readiness is polled there."""
    if not commands:
        raise ValueError("no commands to run (did the README section lose its ```bash blocks?)")
    out = workdir / ".readme-harness-out"
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    texts = [rewrite(c) for c in commands]
    script = build_script(commands, texts)
    (out / "script.sh").write_text(script)
    env = dict(env, README_OUT=str(out), README_CURL_LOG=str(out / "curl.log"))
    proc = subprocess.Popen(["bash", str(out / "script.sh")], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script's own process group: bash, its commands, its server
        stdout, stderr = proc.communicate()
        stderr += f"\nreadme harness: the section ran past {timeout_s:.0f} s and was killed"
    return SectionRun(commands, texts, proc.returncode, out, workdir, stdout + stderr)
