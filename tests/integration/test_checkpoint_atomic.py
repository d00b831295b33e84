"""Checkpoint saves killed for real (SIGKILL) at fixed points: a checkpoint directory is the old complete one
or absent, never a mix, and `--resume auto` continues from the newest complete periodic checkpoint.

The child process announces its kill point by writing a file and then waits to be killed; the test polls for
that file (with a deadline), so no sleep stands in for synchronisation.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model import create_model, load_pretrained
from model.install import remove_stale_stages
from training.config import load_config
from training.trainer import train

ROOT = Path(__file__).resolve().parents[2]

# Writes checkpoint `target` with seed `seed`, stopping at `point`: "config" (the weights written, the config
# about to be) or "swap" (a replaced checkpoint moved aside, the new one not renamed in yet).
SAVE_CHILD = """
import os, sys, time
from pathlib import Path
import pathlib, torch
from model import create_model

target, ready, point, seed = os.path.realpath(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def stop_here():
    ready.write_text(point)
    time.sleep(300)  # the parent kills this process; the timeout only bounds an orphan
    os._exit(3)

if point == "config":
    write_text = pathlib.Path.write_text
    def stop_before_config(self, *args, **kwargs):
        if self.name == "config.json":
            stop_here()
        return write_text(self, *args, **kwargs)
    pathlib.Path.write_text = stop_before_config
else:
    rename = os.rename
    def rename_then_stop(src, dst, *args, **kwargs):
        rename(src, dst, *args, **kwargs)
        if os.path.realpath(src) == target:
            stop_here()
    os.rename = rename_then_stop
torch.manual_seed(seed)
create_model("tiny").save_pretrained(target)
"""

# Trains (settings in argv[1]) and stops once the periodic checkpoint of step 4 has its weights and its
# optimizer/scheduler state written, before the RNG states.
TRAIN_CHILD = """
import json, os, sys, time
from pathlib import Path
import torch
from training.config import load_config
from training.trainer import train

sets, ready = json.loads(sys.argv[1]), Path(sys.argv[2])
save = torch.save

def save_then_stop(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    if Path(f).name == "trainer_state.pt" and "step_0000004" in str(f):
        ready.write_text("step 4")
        time.sleep(300)  # the parent kills this process; the timeout only bounds an orphan
        os._exit(3)
torch.save = save_then_stop
train(load_config(None, sets, task="finetune-qa"))
"""


def kill_at_ready(args: list[str], ready: Path, log: Path, deadline_s: float = 300.0) -> None:
    """Run the child, wait until it writes `ready`, SIGKILL it."""
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-c", *args], cwd=ROOT, stdout=err, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + deadline_s
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the child exited ({proc.returncode}) before its kill point:\n"
                                     f"{log.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the child did not reach its kill point in {deadline_s} s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_same_model(a, b) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("point, existing", [("config", False), ("config", True), ("swap", True)])
def test_killed_save_pretrained_leaves_the_old_checkpoint_or_none(tmp_path, point, existing):
    target = tmp_path / "models" / "retrieval"
    old = None
    if existing:
        torch.manual_seed(0)
        old = create_model("tiny")
        old.save_pretrained(target)
    ready = tmp_path / "ready"
    kill_at_ready([SAVE_CHILD, str(target), str(ready), point, "1"], ready, tmp_path / "child.log")

    if point == "swap":  # killed between the two renames: the old checkpoint is whole, aside
        assert not target.exists()
    elif existing:
        assert_same_model(load_pretrained(target), old)
    else:
        assert not target.exists()
    leftovers = [p.name for p in target.parent.iterdir() if p != target]
    assert leftovers and all(n.startswith(".retrieval.") and n.endswith(".tmp") for n in leftovers), leftovers

    remove_stale_stages(target)  # what the next writer (alpro-fetch, the trainer) does first
    assert [p.name for p in target.parent.iterdir()] == (["retrieval"] if existing else [])
    if existing:
        assert_same_model(load_pretrained(target), old)
    torch.manual_seed(1)
    new = create_model("tiny")
    new.save_pretrained(target)
    assert_same_model(load_pretrained(target), new)
    assert [p.name for p in target.parent.iterdir()] == ["retrieval"]


def qa_settings(out: Path, extra: list[str] = ()) -> list[str]:
    return ["data.source=synthetic", "data.synth_epoch_clips=24", "data.synth_pool_clips=10", "data.num_workers=0",
            "optim.encoder_lr_mult=0", "train.batch_size=4", "train.max_steps=6", "train.ckpt_every=2",
            "train.log_every=1", "train.progress=false", "train.seed=11", "optim.lr=1e-3",
            f"train.output_dir={out}", *extra]


def test_training_killed_while_saving_resumes_from_the_previous_complete_checkpoint(tmp_path, caplog):
    out = tmp_path / "cut"
    ready = tmp_path / "ready"
    kill_at_ready([TRAIN_CHILD, json.dumps(qa_settings(out)), str(ready)], ready, tmp_path / "child.log")
    checkpoints = out / "checkpoints"
    # step 4 was being written: it is absent (its files are in a temporary stage), step 2 is whole
    assert not (checkpoints / "step_0000004").exists()
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names[-1] == "step_0000002" and all(n.startswith(".step_0000004.") and n.endswith(".tmp")
                                               for n in names[:-1]), names

    caplog.set_level(logging.INFO)
    resumed = train(load_config(None, qa_settings(out), task="finetune-qa"), resume="auto")
    assert resumed.steps == 6 and not resumed.stopped_early
    assert any(f"resumed from {checkpoints / 'step_0000002'} at step 2" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_0000004", "step_0000006"]

    plain = train(load_config(None, qa_settings(tmp_path / "plain"), task="finetune-qa"))
    a = load_file(str(Path(plain.final) / "model.safetensors"))
    b = load_file(str(Path(resumed.final) / "model.safetensors"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst


def test_two_gloo_processes_stage_every_rank_file_and_resume(tmp_path):
    """Both ranks' RNG states go into the stage before the rename; best and final (rank 0's alone) hold none."""
    out = tmp_path / "ddp"
    args = [a for s in qa_settings(out, ["train.ckpt_every=1", "train.max_steps=3", "data.synth_pool_clips=6"])
            for a in ("--set", s)]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "training",
           "finetune-qa", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (["--set", "train.stop_after=2"], ["--resume", "auto"]):
        proc = subprocess.run(run + extra, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resumed from" in proc.stderr and "step_0000002 at step 2" in proc.stderr
    step = {"ans2label.json", "config.json", "model.safetensors", "rng_rank0.pt", "rng_rank1.pt",
            "train_config.yaml", "trainer_state.pt"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]
    for directory in (out / "checkpoints").iterdir():
        assert {p.name for p in directory.iterdir()} == step
    assert {p.name for p in (out / "final").iterdir()} == step - {"rng_rank0.pt", "rng_rank1.pt", "trainer_state.pt"}
