#!/usr/bin/env python3
"""Function-calling accuracy of an OpenAI-compatible server, asked through the official `openai`
client, on the eval set that `edgewise eval tools` runs (eval/tools.yaml).

It measures what a plain client gets from the server (here llama.cpp's llama-server with --jinja):
the same tasks, system prompt, offered tools and sampling as crates/edgewise-agent/src/eval.rs, and
the same verdicts, so its row reads against the rows of `edgewise eval tools`.

Usage: bench/eval_openai_tools.py BASE_URL MODEL [--json] [--file eval/tools.yaml]
       (BASE_URL like http://127.0.0.1:8080/v1; bench/eval-llama-server.sh starts the server)
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

import jsonschema  # in .venv through mcp
import openai
import yaml

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = ("simple", "multiple", "parallel", "irrelevance")
# Edgewise's turn budget in eval.rs: 256 tokens per call, MAX_PARALLEL_CALLS (8) calls.
MAX_TOKENS = 256 * 8
# Verdicts (eval.rs `Verdict`) of calls that parse, name an offered tool and fit its schema.
VALID = {"exact", "wrong_arguments", "wrong_tool", "wrong_call_count", "unwanted_call"}


def system_prompt():
    # Read from the Rust source so the two evals cannot drift apart.
    src = (ROOT / "crates/edgewise-agent/src/eval.rs").read_text()
    m = re.search(r'const EVAL_SYSTEM_PROMPT: &str = ("(?:[^"\\]|\\.)*");', src)
    return json.loads(m.group(1))


def expected_calls(task):
    e = task["expect"]
    return [] if e == "answer" else [e] if isinstance(e, dict) else e


def category(task, offered):
    n = len(expected_calls(task))
    if n == 0:
        return "irrelevance"
    if n == 1:
        return "simple" if len(offered) == 1 else "multiple"
    return "parallel"


def same(a, b):
    """eval.rs `same`: JSON equality where numbers compare by value and strings after trimming."""
    if isinstance(a, bool) or isinstance(b, bool):  # a bool is an int to Python, not to serde_json
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(k in b and same(v, b[k]) for k, v in a.items())
    return type(a) is type(b) and a == b


def judge(message, expected, offered, validators):
    """eval.rs `judge`, on the server's parsed message instead of raw text."""
    calls, seen, attempted = [], set(), False
    for tc in message.tool_calls or []:
        attempted = True
        try:
            args = json.loads(tc.function.arguments or "{}")
        except ValueError:
            continue  # edgewise leaves a block that does not parse out of the calls
        # A repeat of an earlier call of the turn counts once (parse_tool_calls); the key keeps
        # 5 and 5.0 apart as serde_json's equality does.
        key = json.dumps([tc.function.name, args], sort_keys=True)
        if key not in seen:
            seen.add(key)
            calls.append((tc.function.name, args))
    if not calls:
        # Text the server could not turn into a call but that tried to be one is malformed, as in
        # eval.rs; a plain client gets it as content.
        text = (message.content or "").lstrip()
        if attempted or "<tool_call>" in text or text.startswith("{"):
            return "malformed"
        return "no_call" if expected else "answered"
    names = [t["name"] for t in offered]
    for name, args in calls:
        if name not in names:
            return "unknown_tool"
        if not validators[names.index(name)].is_valid(args):
            return "invalid_arguments"
    if not expected:
        return "unwanted_call"
    if len(calls) != len(expected):
        return "wrong_call_count"
    if sorted(n for n, _ in calls) != sorted(e["tool"] for e in expected):
        return "wrong_tool"
    used = [False] * len(calls)
    for e in expected:
        hit = next((j for j, (n, a) in enumerate(calls)
                    if not used[j] and n == e["tool"] and same(a, e["arguments"])), None)
        if hit is None:
            return "wrong_arguments"
        used[hit] = True
    return "exact"


def run(base_url, model, set_path):
    # PyYAML reads YAML 1.1 (serde_yaml: 1.2): on/off/yes/no and dates must stay quoted in the set.
    data = yaml.safe_load(set_path.read_text())
    system = system_prompt()
    # No retries: a 500 for output that does not parse is a verdict, and would repeat anyway.
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
    started = time.monotonic()
    results = []
    for i, task in enumerate(data["tasks"], 1):
        offered = [t for t in data["tools"] if task.get("tools") is None or t["name"] in task["tools"]]
        validators = [jsonschema.validators.validator_for(t["parameters"])(t["parameters"]) for t in offered]
        try:
            r = client.chat.completions.create(
                model=model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": task["prompt"]}],
                tools=[{"type": "function", "function": {"name": t["name"], "description": t["description"],
                                                         "parameters": t["parameters"]}} for t in offered],
                tool_choice="auto",
                parallel_tool_calls=True,
                temperature=0,
                seed=1,
                max_tokens=MAX_TOKENS,
            )
            message = r.choices[0].message
            verdict = judge(message, expected_calls(task), offered, validators)
            output = {"content": message.content,
                      "tool_calls": [{"name": c.function.name, "arguments": c.function.arguments}
                                     for c in message.tool_calls or []]}
        except openai.APIStatusError as e:
            # llama-server answers 500 when the model's output does not parse in the template's
            # tool-call format: that is edgewise's "malformed".
            if "does not match the expected" not in str(e):
                raise
            verdict, output = "malformed", {"error": str(e)}
        results.append({"task": i, "category": category(task, offered), "verdict": verdict, "output": output})
        print(f"\rllama-server: task {i}/{len(data['tasks'])} ({verdict})        ", end="", file=sys.stderr)
    print(file=sys.stderr)
    seconds = time.monotonic() - started
    count = lambda f: sum(1 for r in results if f(r["verdict"]))
    right = lambda v: v in ("exact", "answered")
    return {
        "options": {"label": "llama-server", "base_url": base_url, "model": model},
        "tasks": len(results),
        "attempted_calls": count(lambda v: v not in ("no_call", "answered")),
        "valid_calls": count(lambda v: v in VALID),
        "right": count(right),
        "by_category": [{"category": c, "tasks": sum(1 for r in results if r["category"] == c),
                         "right": sum(1 for r in results if r["category"] == c and right(r["verdict"]))}
                        for c in CATEGORIES],
        "seconds": seconds,
        "results": results,
    }


def print_table(model, report):
    """The shape of `edgewise eval tools` (crates/edgewise/src/eval.rs print_table)."""
    def score(s):
        return f"{s['right'] / s['tasks']:.2f} ({s['right']}/{s['tasks']})" if s["tasks"] else "-"
    count = lambda *vs: sum(1 for r in report["results"] if r["verdict"] in vs)
    print(f"function-calling evaluation, model {model}, {report['tasks']} tasks")
    print(f"{'features':<12} {'simple':>13} {'multiple':>13} {'parallel':>13} {'irrelevance':>13} "
          f"{'malformed':>10} {'invalid':>9} {'time':>8}")
    cells = " ".join(f"{score(s):>13}" for s in report["by_category"])
    print(f"{report['options']['label']:<12} {cells} {count('malformed'):>10} "
          f"{count('invalid_arguments', 'unknown_tool'):>9} {report['seconds']:>7.1f}s")
    print("right: the expected calls with exactly the expected arguments (parallel: all of them, any order); "
          "irrelevance: a text answer, no call")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base_url")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="print the report (every task's verdict and output) as JSON")
    p.add_argument("--file", type=Path, default=ROOT / "eval/tools.yaml")
    a = p.parse_args()
    report = run(a.base_url, a.model, a.file)
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(a.model, report)


if __name__ == "__main__":
    main()
