"""Learning benchmark: does ALPRO training learn? Synthesise, train from scratch, evaluate through files.

    python -m bench.learn --seed 0 --output metrics.json [--retrieval-steps 700 --qa-steps 400]

1. `alpro-synth` corpus with seed S: a held-out test split of 100 videos with 100 distinct captions (plus
   their QA pairs), mp4 files at the model's frame size.
2. Retrieval: configs/learn.yaml (VTC + VTM from scratch) on fresh synthetic clips every epoch.
3. QA: configs/learn_qa.yaml, initialised from the retrieval model.
Training lengths are fixed step counts (sized for about 13 minutes on an idle 2-core CPU), so the
metrics are a function of the seed alone; `--retrieval-minutes/--qa-minutes` switch to wall-time
budgets instead (then a loaded machine trains fewer steps).
4. Evaluation through the real file pipeline (model.preprocess decoding, uniform sampling): text->video
   retrieval with VTC and with VTM re-ranking of the VTC top-k, QA accuracy averaged over question types.

5. The retrieval model probed as ALPRO's prompter (training/prompter_probe.py: crops of one shape against the
   45 entity prompts), the pseudo-labels PEM would learn from.

Writes r1, r5, r10, median_rank, mean_rank, rerank_r1 (model.alpro.rerank_scores: VTC logit + VTM log-odds;
rerank_r1_lavis with LAVIS's itm_logit[1] + cosine), qa_accuracy (mean over question types),
qa_accuracy_overall, qa_per_type, vtm_loss_last / vtm_acc_last (the pre-training log's last VTM figures;
vtm_prior is the loss of always answering the 1 : 2 prior) and vtm_log (every logged step), pem_shape_acc /
pem_coloured_acc (chance 20% / 2.5%), train_seconds (both trainings' loops), the mean seconds per step of
each stage, and the CPU load seen (1-minute load average sampled every 5 s; other processes on the
machine slow training down).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see training.cli)

import torch  # noqa: E402

from model import load_pretrained  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import read_qa, read_video_text  # noqa: E402
from training.evaluate import evaluate_qa, evaluate_retrieval  # noqa: E402
from training.prompter_probe import crop_probe  # noqa: E402
from training.synth import CorpusConfig, generate_corpus  # noqa: E402
from training.trainer import train  # noqa: E402

logger = logging.getLogger("bench.learn")
ROOT = Path(__file__).resolve().parents[1]
VTM_PRIOR = -(math.log(1 / 3) + 2 * math.log(2 / 3)) / 3  # cross-entropy of answering 1 match : 2 negatives


class LoadSampler:
    """1-minute load average sampled in the background (other processes share these cores)."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(every_s)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = self.samples or [os.getloadavg()[0]]
        return {"mean": round(sum(s) / len(s), 2), "max": round(max(s), 2), "cpus": os.cpu_count() or 0}


def run(seed: int, work: Path, retrieval_steps: int = 0, qa_steps: int = 0, retrieval_minutes: float = 0.0,
        qa_minutes: float = 0.0, test_videos: int = 100,
        config: Path = ROOT / "configs" / "learn.yaml", qa_config: Path = ROOT / "configs" / "learn_qa.yaml",
        overrides: tuple[str, ...] = (), qa_overrides: tuple[str, ...] = (), progress: bool = False,
        workers: Optional[int] = None) -> dict[str, Any]:
    """The whole benchmark in `work`; returns the metrics. Steps (or minutes) of 0 keep the config's."""
    start = time.perf_counter()
    ret_cfg = load_config(config, [f"train.seed={seed}", f"train.output_dir={work / 'retrieval'}",
                                   *_length(retrieval_steps, retrieval_minutes),
                                   f"train.progress={str(progress).lower()}", *overrides])
    img = ret_cfg.model.overrides.get("img_size", 64)
    corpus = work / "corpus"
    summary = generate_corpus(corpus, CorpusConfig(seed=seed, videos=test_videos + 20, size=img, frames_per_video=16,
                                                   fps=8, val_videos=0, test_videos=test_videos),
                              workers=workers, overwrite=True)
    synth_seconds = time.perf_counter() - start
    with LoadSampler() as load:
        ret = train(ret_cfg)
        qa_cfg = load_config(qa_config, [f"train.seed={seed}", f"train.output_dir={work / 'qa'}",
                                         *_length(qa_steps, qa_minutes), f"model.init={ret.final}",
                                         f"train.progress={str(progress).lower()}",
                                         *qa_overrides])
        qa = train(qa_cfg)
    eval_start = time.perf_counter()
    ret_model = load_pretrained(ret.final)
    retrieval = evaluate_retrieval(ret_model, read_video_text([corpus / "annotations" / "test.jsonl"], str(corpus)),
                                   rerank_k=ret_cfg.eval.rerank_k, num_workers=1)
    pem = crop_probe(ret_model, seed=seed)
    qa_records = read_qa([corpus / "annotations" / "qa_test.jsonl"], str(corpus))
    qa_metrics = evaluate_qa(load_pretrained(qa.final), qa_records, num_workers=1)
    eval_seconds = time.perf_counter() - eval_start
    return {
        "seed": seed,
        "r1": round(retrieval["r1"], 2), "r5": round(retrieval["r5"], 2), "r10": round(retrieval["r10"], 2),
        "median_rank": retrieval["median_rank"], "mean_rank": round(retrieval["mean_rank"], 2),
        "rerank_r1": round(retrieval["rerank_r1"], 2), "rerank_r5": round(retrieval["t2v_rerank"]["r5"], 2),
        "rerank_r1_lavis": round(retrieval["t2v_rerank_lavis"]["r1"], 2),
        "v2t_r1": round(retrieval["v2t"]["r1"], 2),
        "qa_accuracy": round(qa_metrics["mean_per_type"], 2), "qa_accuracy_overall": round(qa_metrics["accuracy"], 2),
        "qa_per_type": {k: round(v, 2) for k, v in qa_metrics["per_type"].items()},
        **vtm_figures(Path(ret_cfg.train.output_dir) / "log.jsonl"),
        "pem_shape_acc": round(100 * pem["shape_acc"], 2), "pem_coloured_acc": round(100 * pem["coloured_acc"], 2),
        "pem_first_is_right_entity": round(100 * pem["first_is_right_entity"], 2), "pem_crops": pem["crops"],
        "train_seconds": round(ret.train_seconds + qa.train_seconds, 1),
        "retrieval_train_seconds": ret.train_seconds, "qa_train_seconds": qa.train_seconds,
        "retrieval_steps": ret.steps, "qa_steps": qa.steps,
        "retrieval_step_seconds": round(ret.train_seconds / max(ret.steps, 1), 3),
        "qa_step_seconds": round(qa.train_seconds / max(qa.steps, 1), 3),
        "synth_seconds": round(synth_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "test_videos": retrieval["videos"], "test_queries": retrieval["queries"],
        "qa_questions": qa_metrics["questions"],
        "distinct_test_captions": summary.manifest["distinct_captions"]["test"],
        "cpu_load_1min": load.summary(), "torch_threads": torch.get_num_threads(),
        "retrieval_checkpoint": ret.final, "qa_checkpoint": qa.final,
    }


def vtm_figures(log: Path) -> dict[str, Any]:
    """The VTM loss and accuracy of a pre-training log: the last logged ones and every logged step's."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "vtm" in r and "step" in r]
    if not rows:
        return {"vtm_loss_last": None, "vtm_acc_last": None, "vtm_prior": round(VTM_PRIOR, 4), "vtm_log": []}
    return {"vtm_loss_last": round(rows[-1]["vtm"], 4), "vtm_acc_last": round(rows[-1].get("vtm_acc", float("nan")), 4),
            "vtm_prior": round(VTM_PRIOR, 4),
            "vtm_log": [[r["step"], round(r["vtm"], 4), round(r.get("vtm_acc", float("nan")), 4)] for r in rows]}


def _length(steps: int, minutes: float) -> list[str]:
    if minutes > 0:
        return ["train.max_steps=0", f"train.max_minutes={minutes}"]
    return [f"train.max_steps={steps}", "train.max_minutes=0"] if steps > 0 else []


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.learn", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--output", type=Path, required=True, help="metrics JSON")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one, removed)")
    parser.add_argument("--retrieval-steps", type=int, default=0, help="default: configs/learn.yaml's")
    parser.add_argument("--qa-steps", type=int, default=0, help="default: configs/learn_qa.yaml's")
    parser.add_argument("--retrieval-minutes", type=float, default=0.0, help="wall-time budget instead of steps")
    parser.add_argument("--qa-minutes", type=float, default=0.0, help="wall-time budget instead of steps")
    parser.add_argument("--test-videos", type=int, default=100)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="retrieval config override")
    parser.add_argument("--qa-set", dest="qa_overrides", action="append", default=[], help="QA config override")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="alpro-learn-"))
    try:
        metrics = run(args.seed, work, args.retrieval_steps, args.qa_steps, args.retrieval_minutes, args.qa_minutes,
                      args.test_videos,
                      overrides=tuple(args.overrides), qa_overrides=tuple(args.qa_overrides), progress=args.progress)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
