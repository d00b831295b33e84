#!/usr/bin/env bash
# The demo: a synthetic video library, demo checkpoints for retrieval and QA, an index, the service.
# Steps already done are reused, so a second run starts the service in well under a minute.
#   bash scripts/demo.sh            # set up, then serve until Ctrl-C
#   bash scripts/demo.sh --check    # set up, serve, run the example requests, stop (exit 1 if they fail)
# Settings: DEMO_DIR (default demo-data), ALPRO_PORT (default 8000), DEMO_VIDEOS (default 400).
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
say() { printf '\n== %s\n' "$*"; }

bash scripts/install.sh
mkdir -p "$DEMO_DIR"

if [[ ! -f "$CORPUS/corpus.json" ]]; then
    say "generating a synthetic library of $VIDEOS videos in $CORPUS"
    "$BIN/alpro-synth" "$CORPUS" --videos "$VIDEOS" --seed 0 --size 64 --overwrite
fi

# Fixed step counts: the same checkpoints on every machine. Periodic checkpoints let an interrupted
# run continue where it stopped (--resume auto).
paths=(--set "data.synth_corpus=$CORPUS" --set "data.video_root=$CORPUS" --set train.ckpt_every=50)
if [[ ! -f "$RET/final/config.json" ]]; then
    say "training the demo retrieval checkpoint (configs/demo.yaml, about 8 minutes on 2 cores)"
    "$BIN/alpro-train" pretrain --config configs/demo.yaml "${paths[@]}" --output-dir "$RET" --resume auto
fi
if [[ ! -f "$QA/final/config.json" ]]; then
    say "training the demo QA checkpoint (configs/demo_qa.yaml, about 4 minutes)"
    "$BIN/alpro-train" finetune-qa --config configs/demo_qa.yaml "${paths[@]}" --set "model.init=$RET/final" \
        --output-dir "$QA" --resume auto
fi
if [[ ! -f "$DEMO_DIR/eval.json" ]]; then
    say "evaluating on the held-out test split"
    "$BIN/alpro-eval" retrieval --checkpoint "$RET/final" --annotations "$CORPUS/annotations/test.jsonl" \
        --video-root "$CORPUS" --output "$DEMO_DIR/eval.json" >/dev/null
    "$BIN/alpro-eval" qa --checkpoint "$QA/final" --annotations "$CORPUS/annotations/qa_test.jsonl" \
        --video-root "$CORPUS" --output "$DEMO_DIR/eval_qa.json" >/dev/null
fi
"$BIN/python" - "$DEMO_DIR" <<'PY'
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
r, q = json.loads((d / "eval.json").read_text()), json.loads((d / "eval_qa.json").read_text())
print(f"held-out test split ({r['videos']} videos): retrieval R@1 {r['r1']:.0f}%, R@5 {r['r5']:.0f}% "
      f"(chance {100 / max(r['videos'], 1):.1f}%); "
      f"QA accuracy {q['mean_per_type']:.0f}% (mean over question types)")
PY

say "indexing $CORPUS/videos into $DATA"
"$BIN/alpro-index" "$CORPUS/videos" --data-dir "$DATA" --checkpoint "$RET/final" --json > "$DEMO_DIR/index-summary.json"
cat "$DEMO_DIR/index-summary.json"

say "starting the service on http://127.0.0.1:$PORT"
"$BIN/alpro-serve" --data-dir "$DATA" --checkpoint "$RET/final" --qa-checkpoint "$QA/final" \
    --host 127.0.0.1 --port "$PORT" --no-access-log &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { echo "demo: the service exited" >&2; exit 1; }
    sleep 0.5
done

# The example: a held-out video's caption should bring that video back first: the first test caption
# naming two shapes (a specific query, like a user's) that no other video of the library shares, so that
# exactly one answer is right. The figure printed after it covers every held-out caption.
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
say "example search: \"$caption\" (expected first: $video)"
body="{\"query\": \"$caption\", \"top_k\": 3}"
echo "curl -s -X POST http://127.0.0.1:$PORT/search -H 'content-type: application/json' -d '$body'"
search="$(curl -fsS -X POST "http://127.0.0.1:$PORT/search" -H 'content-type: application/json' -d "$body")"
echo "$search" | "$BIN/python" -c "
import json, sys
for r in json.load(sys.stdin)['results']:
    print(f\"  {r['name']:<20} score {r['score']:.3f}  moment {r['start']:.1f}-{r['end']:.1f} s  {r['thumbnail_url']}\")"
first_path="$(echo "$search" | "$BIN/python" -c 'import json,sys; r=json.load(sys.stdin)["results"]; print(r[0]["path"] if r else "")')"
first_id="$(echo "$search" | "$BIN/python" -c 'import json,sys; r=json.load(sys.stdin)["results"]; print(r[0]["video_id"] if r else "")')"

say "example question about the first result: \"$question\" (held-out answer: $answer)"
body="{\"video_id\": \"$first_id\", \"question\": \"$question\", \"top_k\": 3}"
echo "curl -s -X POST http://127.0.0.1:$PORT/qa -H 'content-type: application/json' -d '$body'"
curl -fsS -X POST "http://127.0.0.1:$PORT/qa" -H 'content-type: application/json' -d "$body" \
    | "$BIN/python" -c "import json, sys; [print(f\"  {a['answer']:<10} {a['score']:.2f}\") for a in json.load(sys.stdin)['answers']]"

say "all held-out captions through /search"
"$BIN/python" - "$CORPUS" "$PORT" <<'PY'
import json, pathlib, sys, urllib.request
root, port = pathlib.Path(sys.argv[1]), sys.argv[2]
test = [json.loads(line) for line in (root / "annotations" / "test.jsonl").read_text().splitlines() if line.strip()]
first = 0
for row in test:
    caption = row["caption"] if isinstance(row["caption"], str) else row["caption"][0]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/search", json.dumps({"query": caption, "top_k": 1}).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        results = json.load(response)["results"]
    first += bool(results) and results[0]["name"] == pathlib.Path(row["video"]).name
print(f"{first} of {len(test)} held-out captions bring their own video first among all indexed videos")
PY

ok=1
[[ "$(basename "$first_path")" == "$video" ]] || ok=0
if [[ $ok == 1 ]]; then say "the example search returned $video first"; else say "the example search did NOT return $video first (got $first_path)"; fi
say "open http://127.0.0.1:$PORT/ in a browser"
if [[ $CHECK == 1 ]]; then
    [[ $ok == 1 ]] || exit 1
    exit 0
fi
wait $server
