"""Previewer stage: browser previews (indexer.preview) for the indexed videos that the policy asks for.

It runs on rank 0 once the run's index version is current, so search works while previews are made (a
whole video is transcoded: far more work than the few frames a segment's embedding decodes). It looks at
every indexed video, not only this run's, so a video indexed before previews existed, or under another
policy, gets its preview on the next run without being embedded again:
- policy `off`: nothing is made or probed (previews made earlier stay and are served);
- `auto`: videos a browser does not play get one; `all`: every video;
- a video not probed yet (`container` "") is probed in a worker, which makes its preview if wanted;
- a preview already recorded is never remade; one recorded but gone from disk is forgotten (and made
  again unless the policy is off); a video whose preview failed is retried only with --retry-failed;
  a video whose file is missing is skipped.
Each preview is recorded (`videos.preview_bytes`, `container`, `playable`, `preview_error`) as soon as it
is made, so a killed run keeps what it finished; the caller then publishes a version whose rows say which
videos have a preview.

Workers are spawned processes (a fresh interpreter each: no torch, no forked threads), so a decoder crash
costs its own job and not the run: the jobs of a pool that breaks are run again one per process, and the
one that breaks that too is recorded as failed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from store.layout import DataDir

from .catalog import PreviewState, load_preview_states, record_preview
from .preview import PreviewJob, PreviewOutcome, run_job, wants_preview

logger = logging.getLogger(__name__)


@dataclass
class PreviewStats:
    """What one previewer stage did."""

    made: int = 0
    failed: int = 0
    bytes: int = 0  # of the previews made
    work_s: float = 0.0  # summed time of the previews made (workers run side by side)
    probed: int = 0  # videos probed for the first time
    changed: int = 0  # videos whose preview came or went: the next version's rows differ


def plan_previews(states: Sequence[PreviewState], datadir: DataDir, *, policy: str, height: int,
                  retry_failed: bool = False, threads: int = 0) -> tuple[list[PreviewJob], list[str]]:
    """(the jobs to run, the videos whose recorded preview is gone from disk)."""
    jobs: list[PreviewJob] = []
    gone: list[str] = []
    for state in states:
        target = datadir.preview_path(state.id)
        if state.preview_bytes is not None:
            if target.is_file():
                continue
            gone.append(state.id)  # deleted by hand: forgotten, and made again if still wanted
        if policy == "off":
            continue
        if state.preview_error is not None and not retry_failed:
            continue
        if state.playable is not None and not wants_preview(policy, state.playable):
            continue
        if not os.path.isfile(state.path):
            continue  # a missing video (kept in the index until --prune): nothing to transcode
        jobs.append(PreviewJob(state.id, state.path, str(target), policy, height, threads))
    return jobs, gone


def update_previews(datadir: DataDir, *, policy: str, height: int, workers: int, retry_failed: bool = False,
                    work: Callable[[PreviewJob], PreviewOutcome] = run_job) -> PreviewStats:
    """Make and record the previews the policy asks for (see the module docstring); `workers` 0 runs them
    in this process. `work` is the job function (a module-level function, for the worker processes)."""
    stats = PreviewStats()
    with datadir.session() as session:
        states = load_preview_states(session)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs, gone = plan_previews(states, datadir, policy=policy, height=height, retry_failed=retry_failed,
                               threads=max(1, cpus // max(1, workers)))
    with datadir.session() as session:
        for video_id in gone:
            logger.warning("the preview of video %s is gone from disk; forgotten", video_id)
            record_preview(session, video_id, preview_bytes=None, preview_error=None)
    stats.changed += len(gone)
    if not jobs:
        return stats
    logger.info("probing %d videos for previews (%s policy)", len(jobs), policy)
    paths = {job.video_id: job.source for job in jobs}
    known = {state.id: state for state in states}
    forgotten = set(gone)
    for outcome in run_jobs(jobs, workers, work):
        state = known[outcome.video_id]
        stats.probed += state.playable is None
        with datadir.session() as session:
            record_preview(session, outcome.video_id, container=outcome.container or None,
                           playable=outcome.playable, preview_bytes=outcome.preview_bytes,
                           preview_error=outcome.error)
        had = state.preview_bytes is not None and state.id not in forgotten
        stats.changed += had != (outcome.preview_bytes is not None)
        if outcome.error is not None:
            stats.failed += 1
            logger.warning("no preview of %s: %s", paths[outcome.video_id], outcome.error)
        elif outcome.made is not None:
            made = outcome.made
            stats.made += 1
            stats.bytes += made.bytes
            stats.work_s += made.seconds
            if made.partial:
                logger.warning("the preview of %s ends where the file stops decoding: %s",
                               paths[outcome.video_id], made.partial)
            logger.info("preview of %s: %dx%d, %.1f s, %d kB in %.1f s", paths[outcome.video_id], made.width,
                        made.height, made.duration_s, made.bytes // 1024, made.seconds)
    logger.info("previews: %d made (%d kB, %.1f s of work), %d failed, %d videos probed for the first time",
                stats.made, stats.bytes // 1024, stats.work_s, stats.failed, stats.probed)
    return stats


def run_jobs(jobs: Sequence[PreviewJob], workers: int,
             work: Callable[[PreviewJob], PreviewOutcome] = run_job) -> Iterator[PreviewOutcome]:
    """Outcomes of `jobs` as they finish, from `workers` spawned processes (0: in this process)."""
    if workers <= 0:
        for job in jobs:
            yield work(job)
        return
    context = multiprocessing.get_context("spawn")
    unfinished = list(jobs)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context)
    try:
        futures = {pool.submit(work, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                outcome = future.result()
            except BrokenProcessPool:
                break  # every job still pending fails the same way: retried one by one below
            unfinished.remove(futures[future])
            yield outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if unfinished:
        logger.warning("a previewer process died; running the %d unfinished previews one per process",
                       len(unfinished))
    for job in unfinished:
        yield _isolated(job, context, work)


def _isolated(job: PreviewJob, context, work: Callable[[PreviewJob], PreviewOutcome]) -> PreviewOutcome:
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(work, job).result()
        except BrokenProcessPool:
            return PreviewOutcome(job.video_id, "", None, error="the previewer process died (a decoder crash?)")


__all__ = ["PreviewStats", "plan_previews", "run_jobs", "update_previews"]
