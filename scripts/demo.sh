#!/usr/bin/env bash
# The demo: a synthetic video library, demo checkpoints for retrieval and QA, an index, the service.
# Steps already done are reused, so a second run starts the service in well under a minute.
#   bash scripts/demo.sh            # set up, then serve until Ctrl-C
#   bash scripts/demo.sh --check    # set up, serve, measure search over every held-out caption, stop
# --check exits 0 when every search rate reaches its threshold below, 1 when one does not (it says which).
# Settings: DEMO_DIR (default demo-data), ALPRO_PORT (default 8000), DEMO_VIDEOS (default 400),
# DEMO_INSTALL (default 1; 0 uses .venv as it is instead of running scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1
DEMO_DIR="${DEMO_DIR:-demo-data}"
PORT="${ALPRO_PORT:-8000}"
VIDEOS="${DEMO_VIDEOS:-400}"
BIN=.venv/bin
CORPUS="$DEMO_DIR/corpus"
RET="$DEMO_DIR/runs/retrieval"
QA="$DEMO_DIR/runs/qa"
DATA="$DEMO_DIR/data"
# What --check asserts, in % over the 40 held-out captions, each searched in the whole library (top 5); a
# result is relevant when its video has every attribute the caption names (training/relevance.py), since many
# library videos fit one caption. The bars are what a user should get (issue 24): the first result relevant
# for 80% of the captions and precision@5 70%, counted against what the top 5 can hold (most held-out captions
# fit fewer than 5 library videos, so plain precision@5 cannot pass 29.5%; both are printed). Own video first
# is printed, not asserted.
MIN_FIRST_RELEVANT=80
MIN_PRECISION_AT_5=70
say() { printf '\n== %s\n' "$*"; }
stage_times=()
stage_start=$SECONDS
stage() { stage_start=$SECONDS; say "$*"; }
stage_done() {
    stage_times+=("$1: $((SECONDS - stage_start)) s")
    printf '   (%s: %d s)\n' "$1" $((SECONDS - stage_start))
}

if [[ "${DEMO_INSTALL:-1}" != 0 ]]; then bash scripts/install.sh; fi
mkdir -p "$DEMO_DIR"

if [[ ! -f "$CORPUS/corpus.json" ]]; then
    stage "generating a synthetic library of $VIDEOS videos in $CORPUS"
    "$BIN/alpro-synth" "$CORPUS" --videos "$VIDEOS" --seed 0 --size 64 --overwrite
    stage_done "library"
fi

# Fixed step counts: the same checkpoints on every machine. Periodic checkpoints let an interrupted
# run continue where it stopped (--resume auto).
paths=(--set "data.synth_corpus=$CORPUS" --set "data.video_root=$CORPUS" --set train.ckpt_every=50)
if [[ ! -f "$RET/final/config.json" ]]; then
    stage "training the demo retrieval checkpoint (configs/demo.yaml, about 9 minutes on 2 cores)"
    "$BIN/alpro-train" pretrain --config configs/demo.yaml "${paths[@]}" --output-dir "$RET" --resume auto
    stage_done "retrieval training"
fi
if [[ ! -f "$QA/final/config.json" ]]; then
    stage "training the demo QA checkpoint (configs/demo_qa.yaml, about 5 minutes on 2 cores)"
    "$BIN/alpro-train" finetune-qa --config configs/demo_qa.yaml "${paths[@]}" --set "model.init=$RET/final" \
        --output-dir "$QA" --resume auto
    stage_done "QA training"
fi
if [[ ! -f "$DEMO_DIR/eval.json" ]]; then
    stage "evaluating on the held-out test split"
    "$BIN/alpro-eval" retrieval --checkpoint "$RET/final" --annotations "$CORPUS/annotations/test.jsonl" \
        --video-root "$CORPUS" --output "$DEMO_DIR/eval.json" >/dev/null
    "$BIN/alpro-eval" qa --checkpoint "$QA/final" --annotations "$CORPUS/annotations/qa_test.jsonl" \
        --video-root "$CORPUS" --output "$DEMO_DIR/eval_qa.json" >/dev/null
    stage_done "evaluation"
fi
"$BIN/python" - "$DEMO_DIR" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
r, q = json.loads((d / "eval.json").read_text()), json.loads((d / "eval_qa.json").read_text())
print(f"held-out test split ({r['videos']} videos): retrieval R@1 {r['r1']:.0f}%, R@5 {r['r5']:.0f}% "
      f"(chance {100 / max(r['videos'], 1):.1f}%); "
      f"QA accuracy {q['mean_per_type']:.0f}% (mean over question types)")
PY

stage "indexing $CORPUS/videos into $DATA"
"$BIN/alpro-index" "$CORPUS/videos" --data-dir "$DATA" --checkpoint "$RET/final" --json > "$DEMO_DIR/index-summary.json"
cat "$DEMO_DIR/index-summary.json"
stage_done "indexing"

stage "starting the service on http://127.0.0.1:$PORT"
"$BIN/alpro-serve" --data-dir "$DATA" --checkpoint "$RET/final" --qa-checkpoint "$QA/final" \
    --host 127.0.0.1 --port "$PORT" --no-access-log &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { echo "demo: the service exited" >&2; exit 1; }
    sleep 0.5
done
stage_done "service start"

# The example, for the reader (not a pass/fail condition): the first held-out caption naming two shapes that
# no other video of the library shares, so exactly one video is its own and the rest are judged by relevance.
IFS=$'\t' read -r caption video question answer < <("$BIN/python" - "$CORPUS" <<'PY'
import json, sys, pathlib
root = pathlib.Path(sys.argv[1]) / "annotations"
rows = [json.loads(line) for name in ("train.jsonl", "val.jsonl", "test.jsonl")
        for line in (root / name).read_text().splitlines() if line.strip()]
keys = {}
for row in rows:
    keys[row["key"]] = keys.get(row["key"], 0) + 1
test = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines() if line.strip()]
row = next(r for r in test if keys[r["key"]] == 1 and len(r["spec"]["objects"]) == 2)
caption = row["caption"] if isinstance(row["caption"], str) else row["caption"][0]
qa = [json.loads(line) for line in (root / "qa_test.jsonl").read_text().splitlines() if line.strip()]
pair = next(q for q in qa if q["video"] == row["video"] and q.get("answer_type") == "colour")
print(f"{caption}\t{pathlib.Path(row['video']).name}\t{pair['question']}\t{pair['answer']}")
PY
)
say "example search: \"$caption\" (its own video: $video)"
body="{\"query\": \"$caption\", \"top_k\": 3}"
echo "curl -s -X POST http://127.0.0.1:$PORT/search -H 'content-type: application/json' -d '$body'"
curl -fsS -X POST "http://127.0.0.1:$PORT/search" -H 'content-type: application/json' -d "$body" \
    | "$BIN/python" -c "
import json, pathlib, sys
from training.relevance import is_relevant, load_library_specs
library = load_library_specs(pathlib.Path(sys.argv[1]))
for r in json.load(sys.stdin)['results']:
    verdict = 'its own video' if r['name'] == sys.argv[3] else (
        'relevant' if r['name'] in library and is_relevant(sys.argv[2], library[r['name']]) else 'NOT relevant')
    print(f\"  {r['name']:<20} score {r['score']:.3f}  moment {r['start']:.1f}-{r['end']:.1f} s  {verdict:<14}\",
          r['thumbnail_url'])
" "$CORPUS" "$caption" "$video"

# The question is about the caption's own video (found with a path filter), whose held-out answer is known.
say "example question about $video: \"$question\""
own="$("$BIN/python" -c 'import os, sys; print(os.path.realpath(sys.argv[1]))' "$CORPUS/videos/$video")"
own_id="$(curl -fsS -X POST "http://127.0.0.1:$PORT/search" -H 'content-type: application/json' \
    -d "{\"query\": \"$caption\", \"top_k\": 1, \"filters\": {\"path_prefix\": \"$own\"}}" \
    | "$BIN/python" -c 'import json, sys; r = json.load(sys.stdin)["results"]; print(r[0]["video_id"] if r else "")')"
if [[ -z "$own_id" ]]; then
    echo "  $video is not in the index; skipping the example question"
else
    body="{\"video_id\": \"$own_id\", \"question\": \"$question\", \"top_k\": 3}"
    echo "curl -s -X POST http://127.0.0.1:$PORT/qa -H 'content-type: application/json' -d '$body'"
    curl -fsS -X POST "http://127.0.0.1:$PORT/qa" -H 'content-type: application/json' -d "$body" \
        | "$BIN/python" -c "
import json, sys
answers = json.load(sys.stdin)['answers']
for a in answers:
    print(f\"  {a['answer']:<10} {a['score']:.2f}\")
said, truth = (answers[0]['answer'] if answers else '(nothing)'), sys.argv[1]
print(f'  right: the model answered {said}, the held-out answer' if said == truth
      else f'  WRONG: the model answered {said}, but the right answer is {truth}')
" "$answer"
fi

stage "every held-out caption through /search over the whole library (top 5)"
rates_ok=1
"$BIN/python" - "$CORPUS" "$PORT" "$MIN_FIRST_RELEVANT" "$MIN_PRECISION_AT_5" <<'PY' || rates_ok=0
import json, pathlib, sys, urllib.request
from training.relevance import load_library_specs, score_searches
root, port = pathlib.Path(sys.argv[1]), sys.argv[2]
minimum = dict(zip(("first result relevant", "precision@5"), map(float, sys.argv[3:5])))
library = load_library_specs(root)
test = [json.loads(line) for line in (root / "annotations" / "test.jsonl").read_text().splitlines() if line.strip()]
searches = []
for row in test:
    caption = row["caption"] if isinstance(row["caption"], str) else row["caption"][0]
    body = json.dumps({"query": caption, "top_k": 5}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/search", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        names = [r["name"] for r in json.load(response)["results"]]
    searches.append((caption, pathlib.Path(row["video"]).name, names))
s = score_searches(searches, library, k=5)
rates = {"first result relevant": s.first_relevant_rate, "precision@5": s.attainable_precision}
print(f"{s.queries} held-out captions, {len(library)} videos in the library")
print(f"  own video first:       {s.own_first} of {s.queries} ({100 * s.own_first_rate:.1f}%)")
print(f"  first result relevant: {s.first_relevant} of {s.queries} ({100 * s.first_relevant_rate:.1f}%)")
print(f"  precision@5:           {100 * s.attainable_precision:.1f}% of the relevant videos the top 5 can hold "
      f"(plain precision@5 {100 * s.precision:.1f}%, at most {100 * s.precision_ceiling:.1f}%: some captions fit "
      "fewer than 5 videos of the library)")
# Rounded: 100 * (3 / 40) must not land a hair below a threshold of 7.5.
low = [name for name, rate in rates.items() if round(100 * rate, 6) < minimum[name]]
for name in low:
    print(f"  BELOW THRESHOLD: {name} {100 * rates[name]:.1f}% < {minimum[name]:g}%")
if not low:
    print("  every rate reaches its threshold (" + ", ".join(f"{n} >= {m:g}%" for n, m in minimum.items()) + ")")
sys.exit(1 if low else 0)
PY
stage_done "search over held-out captions"

say "wall time of the stages run this time"
printf '   %s\n' "${stage_times[@]}"
say "open http://127.0.0.1:$PORT/ in a browser"
if [[ $CHECK == 1 ]]; then
    [[ $rates_ok == 1 ]] || exit 1
    exit 0
fi
wait $server
