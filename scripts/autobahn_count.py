#!/usr/bin/env python3
"""Counts the verdicts of an Autobahn|Testsuite fuzzingclient report (its index.json).

OK, NON-STRICT and INFORMATIONAL pass; anything else (FAILED, UNIMPLEMENTED, WRONG CODE)
does not. Prints the count per section and verdict, every case that did not pass, and a
last line `N cases: X OK, Y NON-STRICT, Z INFORMATIONAL, W not passed`. Exit 1 if any case
did not pass or none ran."""

import collections
import json
import sys

PASS = ("OK", "NON-STRICT", "INFORMATIONAL")


def case_key(case):
    return tuple(int(part) for part in case.split("."))


def main(path):
    with open(path) as f:
        index = json.load(f)
    bad = []
    verdicts = collections.Counter()
    sections = collections.defaultdict(collections.Counter)
    for agent, cases in index.items():
        for case, result in sorted(cases.items(), key=lambda kv: case_key(kv[0])):
            verdict = result["behavior"]
            verdicts[verdict] += 1
            sections[case.split(".")[0]][verdict] += 1
            if verdict not in PASS:
                bad.append("%s %s: %s (close: %s)" % (agent, case, verdict, result.get("behaviorClose")))
    for section in sorted(sections, key=int):
        counts = sections[section]
        print("section %-3s %s" % (section, ", ".join("%d %s" % (n, v) for v, n in sorted(counts.items()))))
    for line in bad:
        print("  " + line)
    total = sum(verdicts.values())
    print("%d cases: %d OK, %d NON-STRICT, %d INFORMATIONAL, %d not passed" % (
        total, verdicts["OK"], verdicts["NON-STRICT"], verdicts["INFORMATIONAL"], len(bad)))
    return 1 if bad or not total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
