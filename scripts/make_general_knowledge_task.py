"""Write the small general-knowledge task that ``evaluator=forgetting`` scores (no network).

Run from the repository root (the output is committed; run it again only after changing
the tables below)::

    python scripts/make_general_knowledge_task.py

It writes, under ``data/lm_eval_tasks/general_knowledge/``, an lm-evaluation-harness task
folder: two multiple-choice tasks, ``general_knowledge_en`` and ``general_knowledge_zh``
(the same facts asked in English and in Chinese), the group ``general_knowledge`` over
both, their JSONL items and the loader the task YAMLs name. Items come from the tables in
this file (arithmetic facts, capitals, units, science basics, everyday facts); wrong
options are drawn from the same table and the items shuffled with a fixed seed, so every
run writes the same files, and the first N items (``evaluator.lm_eval.limit=N``) are a mix
of every category, the same facts in both languages.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "data" / "lm_eval_tasks" / "general_knowledge"
SEED = 20240519

# (country en, capital en, country zh, capital zh)
CAPITALS = [
    ("France", "Paris", "法国", "巴黎"),
    ("Germany", "Berlin", "德国", "柏林"),
    ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"),
    ("the United Kingdom", "London", "英国", "伦敦"),
    ("Ireland", "Dublin", "爱尔兰", "都柏林"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"),
    ("Poland", "Warsaw", "波兰", "华沙"),
    ("Austria", "Vienna", "奥地利", "维也纳"),
    ("Greece", "Athens", "希腊", "雅典"),
    ("Sweden", "Stockholm", "瑞典", "斯德哥尔摩"),
    ("Norway", "Oslo", "挪威", "奥斯陆"),
    ("Finland", "Helsinki", "芬兰", "赫尔辛基"),
    ("Denmark", "Copenhagen", "丹麦", "哥本哈根"),
    ("the Netherlands", "Amsterdam", "荷兰", "阿姆斯特丹"),
    ("Belgium", "Brussels", "比利时", "布鲁塞尔"),
    ("Egypt", "Cairo", "埃及", "开罗"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("China", "Beijing", "中国", "北京"),
    ("Japan", "Tokyo", "日本", "东京"),
    ("South Korea", "Seoul", "韩国", "首尔"),
    ("Thailand", "Bangkok", "泰国", "曼谷"),
    ("Vietnam", "Hanoi", "越南", "河内"),
    ("India", "New Delhi", "印度", "新德里"),
    ("Indonesia", "Jakarta", "印度尼西亚", "雅加达"),
    ("the Philippines", "Manila", "菲律宾", "马尼拉"),
    ("Iran", "Tehran", "伊朗", "德黑兰"),
    ("Turkey", "Ankara", "土耳其", "安卡拉"),
    ("the United States", "Washington, D.C.", "美国", "华盛顿"),
    ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Mexico", "Mexico City", "墨西哥", "墨西哥城"),
    ("Brazil", "Brasília", "巴西", "巴西利亚"),
    ("Argentina", "Buenos Aires", "阿根廷", "布宜诺斯艾利斯"),
    ("Peru", "Lima", "秘鲁", "利马"),
    ("Chile", "Santiago", "智利", "圣地亚哥"),
    ("Australia", "Canberra", "澳大利亚", "堪培拉"),
    ("New Zealand", "Wellington", "新西兰", "惠灵顿"),
    ("Cuba", "Havana", "古巴", "哈瓦那"),
    ("Hungary", "Budapest", "匈牙利", "布达佩斯"),
]

# (question en, answer en, question zh, answer zh, key): wrong options are other answers
# of the same key.
UNITS = [
    ("How many centimetres are in one metre?", "100", "一米等于多少厘米？", "100", "n"),
    ("How many metres are in one kilometre?", "1000", "一千米等于多少米？", "1000", "n"),
    ("How many grams are in one kilogram?", "1000", "一千克等于多少克？", "1000", "n"),
    ("How many millilitres are in one litre?", "1000", "一升等于多少毫升？", "1000", "n"),
    ("How many seconds are in one minute?", "60", "一分钟有多少秒？", "60", "n"),
    ("How many minutes are in one hour?", "60", "一小时有多少分钟？", "60", "n"),
    ("How many hours are in one day?", "24", "一天有多少小时？", "24", "n"),
    ("How many days are in one week?", "7", "一周有多少天？", "7", "n"),
    ("How many months are in one year?", "12", "一年有多少个月？", "12", "n"),
    ("How many days are in a leap year?", "366", "闰年有多少天？", "366", "n"),
    ("How many millimetres are in one centimetre?", "10", "一厘米等于多少毫米？", "10", "n"),
    ("How many years are in one century?", "100", "一个世纪有多少年？", "100", "n"),
    ("How many sides does a triangle have?", "3", "三角形有几条边？", "3", "n"),
    ("How many sides does a hexagon have?", "6", "六边形有几条边？", "6", "n"),
    ("How many degrees are in a right angle?", "90", "直角是多少度？", "90", "n"),
    ("How many degrees are in a full circle?", "360", "一个圆周是多少度？", "360", "n"),
    ("What unit is used to measure electric current?", "ampere", "电流的单位是什么？", "安培", "u"),
    ("What unit is used to measure force?", "newton", "力的单位是什么？", "牛顿", "u"),
    ("What unit is used to measure energy?", "joule", "能量的单位是什么？", "焦耳", "u"),
    ("What unit is used to measure power?", "watt", "功率的单位是什么？", "瓦特", "u"),
    ("What unit is used to measure electric voltage?", "volt", "电压的单位是什么？", "伏特", "u"),
    ("What unit is used to measure frequency?", "hertz", "频率的单位是什么？", "赫兹", "u"),
    ("What unit is used to measure electric resistance?", "ohm", "电阻的单位是什么？", "欧姆", "u"),
    ("What is the SI unit of temperature?", "kelvin", "温度的国际单位是什么？", "开尔文", "u"),
]

SCIENCE = [
    ("What is the chemical symbol of gold?", "Au", "金的化学符号是什么？", "Au", "sym"),
    ("What is the chemical symbol of iron?", "Fe", "铁的化学符号是什么？", "Fe", "sym"),
    ("What is the chemical symbol of sodium?", "Na", "钠的化学符号是什么？", "Na", "sym"),
    ("What is the chemical symbol of oxygen?", "O", "氧的化学符号是什么？", "O", "sym"),
    ("What is the chemical symbol of silver?", "Ag", "银的化学符号是什么？", "Ag", "sym"),
    ("What is the chemical symbol of copper?", "Cu", "铜的化学符号是什么？", "Cu", "sym"),
    ("What is the chemical symbol of carbon?", "C", "碳的化学符号是什么？", "C", "sym"),
    ("What is the chemical symbol of potassium?", "K", "钾的化学符号是什么？", "K", "sym"),
    ("What is the chemical formula of water?", "H2O", "水的化学式是什么？", "H2O", "formula"),
    (
        "What is the chemical formula of carbon dioxide?",
        "CO2",
        "二氧化碳的化学式是什么？",
        "CO2",
        "formula",
    ),
    (
        "What is the chemical formula of table salt?",
        "NaCl",
        "食盐的化学式是什么？",
        "NaCl",
        "formula",
    ),
    ("What is the chemical formula of methane?", "CH4", "甲烷的化学式是什么？", "CH4", "formula"),
    (
        "Which planet is closest to the Sun?",
        "Mercury",
        "离太阳最近的行星是哪一颗？",
        "水星",
        "planet",
    ),
    (
        "Which planet is the largest in the Solar System?",
        "Jupiter",
        "太阳系中最大的行星是哪一颗？",
        "木星",
        "planet",
    ),
    (
        "Which planet is known as the Red Planet?",
        "Mars",
        "哪颗行星被称为红色星球？",
        "火星",
        "planet",
    ),
    (
        "Which planet has the most famous rings?",
        "Saturn",
        "哪颗行星的光环最著名？",
        "土星",
        "planet",
    ),
    ("Which planet do we live on?", "Earth", "我们生活在哪颗行星上？", "地球", "planet"),
    (
        "What gas do plants take in for photosynthesis?",
        "carbon dioxide",
        "植物进行光合作用时吸收什么气体？",
        "二氧化碳",
        "gas",
    ),
    (
        "What gas do humans need to breathe to live?",
        "oxygen",
        "人类呼吸需要哪种气体才能生存？",
        "氧气",
        "gas",
    ),
    (
        "Which gas makes up most of Earth's air?",
        "nitrogen",
        "地球空气中含量最多的气体是什么？",
        "氮气",
        "gas",
    ),
    ("Which gas is the lightest element?", "hydrogen", "最轻的元素是哪种气体？", "氢气", "gas"),
    (
        "Which organ pumps blood through the body?",
        "the heart",
        "哪个器官把血液泵到全身？",
        "心脏",
        "organ",
    ),
    ("Which organ do we use to breathe?", "the lungs", "我们用哪个器官呼吸？", "肺", "organ"),
    ("Which organ controls thinking?", "the brain", "哪个器官负责思考？", "大脑", "organ"),
    (
        "Which organ filters the blood and makes urine?",
        "the kidneys",
        "哪个器官过滤血液并产生尿液？",
        "肾脏",
        "organ",
    ),
    (
        "At what temperature does water boil at sea level?",
        "100 °C",
        "在海平面上，水在多少摄氏度沸腾？",
        "100 °C",
        "temp",
    ),
    ("At what temperature does water freeze?", "0 °C", "水在多少摄氏度结冰？", "0 °C", "temp"),
    (
        "What is the normal human body temperature?",
        "37 °C",
        "人的正常体温大约是多少？",
        "37 °C",
        "temp",
    ),
    (
        "About what temperature is absolute zero?",
        "-273 °C",
        "绝对零度大约是多少摄氏度？",
        "-273 °C",
        "temp",
    ),
    ("What is the closest star to Earth?", "the Sun", "离地球最近的恒星是什么？", "太阳", "sky"),
    (
        "What is Earth's natural satellite called?",
        "the Moon",
        "地球的天然卫星叫什么？",
        "月球",
        "sky",
    ),
    ("What is the name of our galaxy?", "the Milky Way", "我们所在的星系叫什么？", "银河系", "sky"),
    (
        "What is a ball of ice and dust with a bright tail that orbits the Sun?",
        "a comet",
        "绕太阳运行、由冰和尘埃组成并拖着亮尾巴的天体叫什么？",
        "彗星",
        "sky",
    ),
    (
        "What force pulls objects towards the ground?",
        "gravity",
        "什么力把物体拉向地面？",
        "重力",
        "force",
    ),
    (
        "What force slows down a sliding box?",
        "friction",
        "什么力让滑动的箱子慢下来？",
        "摩擦力",
        "force",
    ),
    (
        "What force makes a compass needle point north?",
        "magnetism",
        "什么力使指南针指向北方？",
        "磁力",
        "force",
    ),
    (
        "What force pushes a boat up so that it floats?",
        "buoyancy",
        "什么力把船向上托起使它浮在水面？",
        "浮力",
        "force",
    ),
]

EVERYDAY = [
    (
        "What colour do you get by mixing blue and yellow?",
        "green",
        "蓝色和黄色混合得到什么颜色？",
        "绿色",
        "colour",
    ),
    (
        "What colour do you get by mixing red and white?",
        "pink",
        "红色和白色混合得到什么颜色？",
        "粉色",
        "colour",
    ),
    (
        "What colour do you get by mixing red and yellow?",
        "orange",
        "红色和黄色混合得到什么颜色？",
        "橙色",
        "colour",
    ),
    (
        "What colour do you get by mixing red and blue?",
        "purple",
        "红色和蓝色混合得到什么颜色？",
        "紫色",
        "colour",
    ),
    (
        "What colour do you get by mixing black and white?",
        "grey",
        "黑色和白色混合得到什么颜色？",
        "灰色",
        "colour",
    ),
    (
        "Which is the largest ocean on Earth?",
        "the Pacific Ocean",
        "地球上最大的海洋是哪个？",
        "太平洋",
        "ocean",
    ),
    (
        "Which ocean lies between Europe and North America?",
        "the Atlantic Ocean",
        "欧洲和北美洲之间是哪个大洋？",
        "大西洋",
        "ocean",
    ),
    (
        "Which ocean lies south of India?",
        "the Indian Ocean",
        "印度南边是哪个大洋？",
        "印度洋",
        "ocean",
    ),
    (
        "Which ocean surrounds the North Pole?",
        "the Arctic Ocean",
        "哪个大洋环绕北极？",
        "北冰洋",
        "ocean",
    ),
    ("Which is the largest continent?", "Asia", "最大的大洲是哪个？", "亚洲", "continent"),
    ("On which continent is Egypt?", "Africa", "埃及位于哪个大洲？", "非洲", "continent"),
    ("On which continent is Brazil?", "South America", "巴西位于哪个大洲？", "南美洲", "continent"),
    ("On which continent is Germany?", "Europe", "德国位于哪个大洲？", "欧洲", "continent"),
    (
        "On which continent is Canada?",
        "North America",
        "加拿大位于哪个大洲？",
        "北美洲",
        "continent",
    ),
    (
        "Which continent is covered by the South Pole's ice?",
        "Antarctica",
        "南极冰盖覆盖的是哪个大洲？",
        "南极洲",
        "continent",
    ),
    (
        "Which animal is the largest mammal?",
        "the blue whale",
        "最大的哺乳动物是什么？",
        "蓝鲸",
        "animal",
    ),
    ("Which animal is the tallest?", "the giraffe", "最高的动物是什么？", "长颈鹿", "animal"),
    (
        "Which animal is known as the king of the jungle?",
        "the lion",
        "哪种动物被称为森林之王？",
        "狮子",
        "animal",
    ),
    (
        "Which bird cannot fly but swims well in cold seas?",
        "the penguin",
        "哪种鸟不会飞但擅长在寒冷海水中游泳？",
        "企鹅",
        "animal",
    ),
    (
        "Which animal eats mostly bamboo?",
        "the giant panda",
        "哪种动物主要吃竹子？",
        "大熊猫",
        "animal",
    ),
    ("In which direction does the Sun rise?", "east", "太阳从哪个方向升起？", "东方", "direction"),
    ("In which direction does the Sun set?", "west", "太阳从哪个方向落下？", "西方", "direction"),
    (
        "In which direction does a compass needle point?",
        "north",
        "指南针的指针指向哪个方向？",
        "北方",
        "direction",
    ),
    (
        "Which direction is opposite to north?",
        "south",
        "与北相反的方向是哪个？",
        "南方",
        "direction",
    ),
]

ARITH_OPS = [("+", "加"), ("-", "减"), ("×", "乘以"), ("÷", "除以")]


def arithmetic(rng: random.Random, n: int) -> list[dict]:
    """``n`` facts such as 7 × 8 = 56, with three nearby wrong results."""
    items = []
    for k in range(n):
        op, op_zh = ARITH_OPS[k % len(ARITH_OPS)]
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        if op == "+":
            result = a + b
        elif op == "-":
            a, b = max(a, b) + rng.randint(1, 9), min(a, b)
            result = a - b
        elif op == "×":
            result = a * b
        else:
            a, result = a * b, a
        wrong: set[int] = set()
        while len(wrong) < 3:
            w = result + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
            if w > 0 and w != result:
                wrong.add(w)
        options, answer = place(rng, str(result), sorted(str(w) for w in wrong))
        items.append(
            {
                "category": "arithmetic",
                "en": f"What is {a} {op} {b}?",
                "zh": f"{a} {op_zh} {b} 等于多少？",
                "choices_en": options,
                "choices_zh": options,
                "answer": answer,
            }
        )
    return items


def place(rng: random.Random, right: str, wrong: list[str]) -> tuple[list[str], int]:
    """The options in a seeded order, and the index of the right one."""
    options = [right, *wrong]
    rng.shuffle(options)
    return options, options.index(right)


def capitals(rng: random.Random) -> list[dict]:
    items = []
    for k, (country, _, country_zh, _) in enumerate(CAPITALS):
        others = [i for i in range(len(CAPITALS)) if i != k]
        picks = rng.sample(others, 3)
        order = [k, *picks]
        rng.shuffle(order)
        items.append(
            {
                "category": "capitals",
                "en": f"What is the capital of {country}?",
                "zh": f"{country_zh}的首都是哪座城市？",
                "choices_en": [CAPITALS[i][1] for i in order],
                "choices_zh": [CAPITALS[i][3] for i in order],
                "answer": order.index(k),
            }
        )
    return items


def from_table(rng: random.Random, table: list[tuple[str, ...]], category: str) -> list[dict]:
    """Items whose wrong options are the answers of other rows with the same key."""
    items = []
    for k, (q_en, a_en, q_zh, a_zh, key) in enumerate(table):
        others = sorted(
            {(row[1], row[3]) for i, row in enumerate(table) if i != k and row[4] == key}
            - {(a_en, a_zh)}
        )
        if len(others) < 3:
            raise ValueError(f"{category}: '{q_en}' has fewer than 3 wrong options")
        picks = rng.sample(others, 3)
        order = [(a_en, a_zh), *picks]
        rng.shuffle(order)
        items.append(
            {
                "category": category,
                "en": q_en,
                "zh": q_zh,
                "choices_en": [o[0] for o in order],
                "choices_zh": [o[1] for o in order],
                "answer": order.index((a_en, a_zh)),
            }
        )
    return items


def build_items(n_arithmetic: int = 40) -> list[dict]:
    """Every item, with its question and options in both languages (deterministic)."""
    rng = random.Random(SEED)
    items = (
        arithmetic(rng, n_arithmetic)
        + capitals(rng)
        + from_table(rng, UNITS, "units")
        + from_table(rng, SCIENCE, "science")
        + from_table(rng, EVERYDAY, "everyday")
    )
    # mixed order, so that the first N items (evaluator.lm_eval.limit=N) cover every category
    random.Random(SEED + 1).shuffle(items)
    for n, item in enumerate(items):
        item["id"] = f"gk-{n:03d}"
    return items


GROUP_YAML = """\
# The group over both languages: python run.py evaluator=forgetting
# Written by scripts/make_general_knowledge_task.py; edit the script, not this file.
group: general_knowledge
task:
  - general_knowledge_en
  - general_knowledge_zh
aggregate_metric_list:
  - metric: acc
    aggregation: mean
    weight_by_size: true
metadata:
  version: 1.0
"""

TASK_YAML = """\
# {title}: {n} multiple-choice general-knowledge items (scored by log-likelihood).
# Written by scripts/make_general_knowledge_task.py; edit the script, not this file.
task: general_knowledge_{lang}
custom_dataset: !function loader.{lang}
output_type: multiple_choice
test_split: test
doc_to_text: "{prompt}"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: "{delimiter}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

LOADER = '''\
"""Loads the items beside this file for the general_knowledge tasks (no network, any cwd).

Written by scripts/make_general_knowledge_task.py; edit the script, not this file.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name):
    import datasets

    with open(HERE / name, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def en(**kwargs):
    return _load("en.jsonl")


def zh(**kwargs):
    return _load("zh.jsonl")
'''

PROMPTS = {
    "en": ("English", "Question: {{question}}\\nAnswer:", " "),
    "zh": ("Chinese", "问题：{{question}}\\n答案：", ""),
}


def write(out: Path, items: list[dict]) -> list[Path]:
    """Write the task folder under ``out``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for lang, (title, prompt, delimiter) in PROMPTS.items():
        rows = [
            {
                "id": item["id"],
                "category": item["category"],
                "question": item[lang],
                "choices": item[f"choices_{lang}"],
                "answer": item["answer"],
            }
            for item in items
        ]
        path = out / f"{lang}.jsonl"
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        yaml_path = out / f"general_knowledge_{lang}.yaml"
        yaml_path.write_text(
            TASK_YAML.format(
                title=title, n=len(rows), lang=lang, prompt=prompt, delimiter=delimiter
            ),
            encoding="utf-8",
        )
        written += [path, yaml_path]
    (out / "general_knowledge.yaml").write_text(GROUP_YAML, encoding="utf-8")
    (out / "loader.py").write_text(LOADER, encoding="utf-8")
    return [*written, out / "general_knowledge.yaml", out / "loader.py"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the task folder")
    parser.add_argument(
        "--arithmetic", type=int, default=40, help="how many arithmetic items (default 40)"
    )
    args = parser.parse_args(argv)
    items = build_items(args.arithmetic)
    files = write(args.out, items)
    print(f"{len(items)} items per language ({2 * len(items)} in all) in {args.out}:")
    for f in files:
        print(f"  {f.relative_to(args.out)}")


if __name__ == "__main__":
    main()
