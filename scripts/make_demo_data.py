"""Generate tunesmith's demo dataset: "extract the contact as JSON".

Each record is in Alpaca format, one JSON object per line::

    {"instruction": "...", "input": "<a sentence>", "output": "<a JSON object>"}

The input is a short sentence about one person that mentions a name, an age and a city, in
varied wording and field order. The output is exactly::

    {"name": "<name>", "age": <int>, "city": "<city>"}

(``json.dumps(..., ensure_ascii=False)``, keys in that order). About 60% of the records are in
English and 40% in Chinese (e.g. ``我叫李明，今年28岁，住在上海。``); each language has its own
instructions (a few paraphrases) and sentence templates. Names and cities come from lists of 40+
items per language, so a held-out split contains combinations never seen in training.

A small base model (SmolLM2-135M-Instruct) gets the exact output string almost never right; a
few minutes of LoRA on a CPU teaches it. The data is deterministic: the same ``--seed`` and
``--n`` always give a byte-identical file. Only the standard library is used.

The same records also become preference pairs for ``experiment=demo_dpo``
(``data/demo/contacts_pairs.jsonl``, LLaMA-Factory's alpaca ranking shape)::

    {"instruction": "...", "input": "...", "chosen": "<the right JSON>", "rejected": "<a wrong one>"}

where the rejected answer is a plausible mistake, in turn: name and city swapped, a wrong
age, broken JSON (no closing brace), or the JSON wrapped in chatter ("Sure! Here is...").

Usage::

    python scripts/make_demo_data.py                     # writes data/demo/contacts.jsonl
                                                         # and data/demo/contacts_pairs.jsonl
    python scripts/make_demo_data.py --n 1000 --seed 7 --out /tmp/contacts.jsonl --pairs-out ""
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "demo" / "contacts.jsonl"
DEFAULT_PAIRS_OUT = DEFAULT_OUT.with_name("contacts_pairs.jsonl")
#: The kinds of wrong answer a rejected answer is, in turn.
MISTAKES = ("swapped", "wrong_age", "broken_json", "chatty")
DEFAULT_N = 500
DEFAULT_SEED = 1234
EN_SHARE = 0.6
AGE_RANGE = (18, 79)

EN_INSTRUCTIONS = [
    "Extract the contact as JSON.",
    "Extract the person's name, age and city from the text as JSON.",
    "Return the contact details in this sentence as a JSON object.",
    "Turn the contact information below into JSON with the keys name, age and city.",
]

ZH_INSTRUCTIONS = [
    "把这段话里的联系人信息提取成JSON。",
    "从下面的句子中提取姓名、年龄和城市，输出JSON。",
    "请将这句话中的联系人信息整理为JSON格式。",
    "提取文中人物的姓名、年龄和所在城市，以JSON返回。",
]

# Each template uses {name}, {age} and {city} once; the field order varies.
EN_TEMPLATES = [
    "Hi, I'm {name}, {age} years old, and I live in {city}.",
    "My name is {name}. I am {age} and I live in {city}.",
    "{name} is {age} years old and lives in {city}.",
    "{name}, age {age}, moved to {city} last year.",
    "Please add {name} from {city} to the list; they are {age}.",
    "Our new customer lives in {city}: {name}, {age}.",
    "In {city}, {age}-year-old {name} signed up for the newsletter.",
    "At {age}, {name} still calls {city} home.",
    "Meet {name}! They're {age} and based in {city}.",
    "Contact: {name} ({age}), {city}.",
]

ZH_TEMPLATES = [
    "我叫{name}，今年{age}岁，住在{city}。",
    "{name}今年{age}岁，来自{city}。",
    "来自{city}的{name}今年{age}岁。",
    "{name}，{age}岁，现居{city}。",
    "这位是{name}，在{city}工作，今年{age}岁。",
    "{age}岁的{name}住在{city}。",
    "请登记一下：{name}，{city}人，{age}岁。",
    "我是{city}人，名叫{name}，已经{age}岁了。",
    "新客户{name}住在{city}，年龄{age}岁。",
    "在{city}生活的{name}今年刚满{age}岁。",
]

EN_FIRST_NAMES = [
    "Alice", "Benjamin", "Chloe", "Daniel", "Emma", "Felix", "Grace", "Henry", "Isabel", "Jack",
    "Katherine", "Liam", "Maria", "Noah", "Olivia", "Peter", "Quinn", "Rachel", "Samuel", "Tara",
    "Umar", "Victoria", "William", "Yasmin", "Zoe", "Aaron", "Bianca", "Carlos", "Diana", "Ethan",
    "Fatima", "George", "Hannah", "Ivan", "Julia", "Kevin", "Laura", "Marcus", "Nina", "Oscar",
    "Priya", "Ryan", "Sofia", "Thomas", "Wei",
]  # fmt: skip

EN_LAST_NAMES = [
    "Smith", "Johnson", "Garcia", "Brown", "Miller", "Davis", "Lopez", "Wilson", "Anderson",
    "Taylor", "Moore", "Martin", "Lee", "Clark", "Lewis", "Walker", "Young", "Allen", "King",
    "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell",
    "Roberts", "Carter", "Phillips", "Evans", "Turner", "Torres", "Parker", "Collins", "Edwards",
    "Stewart", "Morris", "Murphy", "Cook", "Rogers", "Patel", "Kim", "Novak",
]  # fmt: skip

EN_CITIES = [
    "London", "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Dublin", "Amsterdam", "Vienna",
    "Prague", "Warsaw", "Oslo", "Stockholm", "Helsinki", "Copenhagen", "Brussels", "Zurich",
    "Athens", "New York", "Chicago", "Boston", "Seattle", "Denver", "Austin", "Toronto",
    "Vancouver", "Montreal", "Mexico City", "Sydney", "Melbourne", "Auckland", "Cape Town",
    "Nairobi", "Cairo", "Mumbai", "Singapore", "Tokyo", "Seoul", "Buenos Aires", "Lima",
    "San Francisco", "Edinburgh", "Manchester", "Lyon", "Munich",
]  # fmt: skip

ZH_SURNAMES = [
    "李", "王", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高",
    "林", "何", "郭", "马", "罗", "梁", "宋", "郑", "谢", "韩", "唐", "冯", "于", "董", "萧",
    "程", "曹", "袁", "邓", "许", "傅", "沈", "曾", "彭", "吕", "苏", "卢", "蒋", "蔡", "欧阳",
]  # fmt: skip

ZH_GIVEN_NAMES = [
    "明", "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛",
    "超", "霞", "平", "刚", "桂英", "建华", "志强", "秀英", "晓燕", "海燕", "子涵", "雨桐",
    "浩然", "欣怡", "梓轩", "思远", "佳怡", "宇航", "文博", "一鸣", "嘉欣", "俊杰", "雪梅",
    "国栋", "晨曦", "天宇", "若溪", "小龙", "春花", "立新",
]  # fmt: skip

ZH_CITIES = [
    "北京", "上海", "广州", "深圳", "杭州", "南京", "苏州", "成都", "重庆", "武汉", "西安",
    "天津", "长沙", "郑州", "青岛", "大连", "厦门", "福州", "宁波", "无锡", "合肥", "济南",
    "沈阳", "哈尔滨", "长春", "昆明", "贵阳", "南宁", "南昌", "太原", "石家庄", "兰州", "西宁",
    "银川", "乌鲁木齐", "拉萨", "海口", "三亚", "呼和浩特", "珠海", "佛山", "东莞", "温州",
    "洛阳", "桂林",
]  # fmt: skip

LANGUAGES = {
    "en": {
        "instructions": EN_INSTRUCTIONS,
        "templates": EN_TEMPLATES,
        "first": EN_FIRST_NAMES,
        "last": EN_LAST_NAMES,
        "cities": EN_CITIES,
        "join": " ",
    },
    "zh": {
        "instructions": ZH_INSTRUCTIONS,
        "templates": ZH_TEMPLATES,
        "first": ZH_SURNAMES,  # Chinese names are surname + given name, no space
        "last": ZH_GIVEN_NAMES,
        "cities": ZH_CITIES,
        "join": "",
    },
}


def make_record(rng: random.Random, lang: str) -> dict[str, str]:
    """One Alpaca record in ``lang`` ("en" or "zh"), drawn from ``rng``."""
    spec = LANGUAGES[lang]
    name = spec["join"].join([rng.choice(spec["first"]), rng.choice(spec["last"])])
    age = rng.randint(*AGE_RANGE)
    city = rng.choice(spec["cities"])
    sentence = rng.choice(spec["templates"]).format(name=name, age=age, city=city)
    output = json.dumps({"name": name, "age": age, "city": city}, ensure_ascii=False)
    return {"instruction": rng.choice(spec["instructions"]), "input": sentence, "output": output}


def make_records(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` distinct records, round(60%) English and the rest Chinese, in a seeded random order."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    n_en = round(n * EN_SHARE)
    langs = ["en"] * n_en + ["zh"] * (n - n_en)
    rng.shuffle(langs)
    records: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for lang in langs:
        while True:  # redraw on the (rare) exact duplicate; the space is far larger than n
            record = make_record(rng, lang)
            key = (record["instruction"], record["input"], record["output"])
            if key not in seen:
                seen.add(key)
                records.append(record)
                break
    return records


def wrong_answer(output: str, kind: str, rng: random.Random) -> str:
    """A plausible wrong answer of ``kind`` (see :data:`MISTAKES`) for the right ``output``."""
    contact = json.loads(output)
    if kind == "swapped":
        wrong = {"name": contact["city"], "age": contact["age"], "city": contact["name"]}
        return json.dumps(wrong, ensure_ascii=False)
    if kind == "wrong_age":
        delta = rng.choice([-1, 1]) * rng.randint(1, 9)
        age = contact["age"] + delta
        if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
            age = contact["age"] - delta
        return json.dumps({**contact, "age": age}, ensure_ascii=False)
    if kind == "broken_json":
        return output[:-1]  # no closing brace
    if kind == "chatty":
        chinese = any("\u4e00" <= ch <= "\u9fff" for ch in output)
        lead = "好的，这是提取的JSON：" if chinese else "Sure! Here is the contact as JSON: "
        return lead + output
    raise ValueError(f"unknown mistake {kind!r}")


def make_pairs(records: list[dict[str, str]], seed: int) -> list[dict[str, str]]:
    """One preference pair per record: the right JSON chosen, a wrong answer rejected."""
    rng = random.Random(seed + 1)
    pairs = []
    for i, record in enumerate(records):
        kind = MISTAKES[i % len(MISTAKES)]
        pairs.append(
            {
                "instruction": record["instruction"],
                "input": record["input"],
                "chosen": record["output"],
                "rejected": wrong_answer(record["output"], kind, rng),
            }
        )
    return pairs


def write_jsonl(records: list[dict[str, str]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=DEFAULT_N, help="number of records (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output JSONL (default data/demo/contacts.jsonl)",
    )
    parser.add_argument(
        "--pairs-out",
        default=str(DEFAULT_PAIRS_OUT),
        help="preference pairs JSONL (default data/demo/contacts_pairs.jsonl; '' to skip)",
    )
    args = parser.parse_args(argv)
    records = make_records(args.n, args.seed)
    write_jsonl(records, args.out)
    if args.pairs_out:
        write_jsonl(make_pairs(records, args.seed), Path(args.pairs_out))
        print(f"wrote {len(records)} preference pairs to {args.pairs_out}")
    n_zh = sum(any("\u4e00" <= ch <= "\u9fff" for ch in r["input"]) for r in records)
    print(f"wrote {len(records)} records ({len(records) - n_zh} en, {n_zh} zh) to {args.out}")


if __name__ == "__main__":
    main()
