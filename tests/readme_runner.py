"""Running a README section's commands as one bash script (see tests/readme_examples.py for what is checked):
a curl wrapper that records every request and fails on a status other than 2xx, a prelude that backgrounds
`alpro-serve` until it is ready and stops it at the end, and the checks of each command's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tests.readme_examples import Command, all_keys, comment_keys, parse_output_comment, shape_problems

STOP_TIMEOUT_S = 30  # after SIGTERM, until it exits (README: in-flight requests get ALPRO_SHUTDOWN_GRACE_S)
READY_TIMEOUT_S = 180  # an alpro-serve of the README until its /readyz answers (2 busy cores)
LONG_RUNNING = {"alpro-serve"}  # programs that serve until stopped
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
