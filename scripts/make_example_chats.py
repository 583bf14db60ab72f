"""Generate the example conversations used by ``conf/data/mixed.yaml`` (ShareGPT spelling).

Each record is a two-turn conversation about one contact: extract it as JSON, then answer a
follow-up question about one field::

    {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "{...}"},
                       {"from": "human", "value": "And the city?"}, {"from": "gpt", "value": "Oslo"}]}

Contacts are drawn like the demo data set's (scripts/make_demo_data.py) with another seed, so
the two sources can be mixed. Deterministic: the same ``--n`` and ``--seed`` give the same file.

Usage::

    python scripts/make_example_chats.py        # writes data/examples/followups.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_demo_data import make_record  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "examples" / "followups.jsonl"

FOLLOW_UPS = {
    "en": {"name": "Just the name, please.", "age": "How old?", "city": "And the city?"},
    "zh": {"name": "只要名字。", "age": "多大年纪？", "city": "住在哪个城市？"},
}


def make_conversation(rng: random.Random, lang: str) -> dict:
    """One two-turn conversation in ``lang``."""
    record = make_record(rng, lang)
    contact = json.loads(record["output"])
    field = rng.choice(["name", "age", "city"])
    turns = [
        ("human", f"{record['instruction']}\n\n{record['input']}"),
        ("gpt", record["output"]),
        ("human", FOLLOW_UPS[lang][field]),
        ("gpt", str(contact[field])),
    ]
    return {"conversations": [{"from": r, "value": v} for r, v in turns]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--seed", type=int, default=4321)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    rows = [make_conversation(rng, "en" if rng.random() < 0.6 else "zh") for _ in range(args.n)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} conversations to {args.out}")


if __name__ == "__main__":
    main()
