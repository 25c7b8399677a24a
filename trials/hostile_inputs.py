"""Run the hostile-input table (tests/hostile_table.py) and print the counts as JSON: handled well,
handled badly, data lost, code executed, hangs, tracebacks, with every row's outcome.

    python trials/hostile_inputs.py [--only ID ...]
"""

import argparse
import collections
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from hostile_table import ROWS, outcome  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    rows = [r for r in ROWS if args.only is None or r.id in args.only]
    results, t0 = [], time.perf_counter()
    for row in rows:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            got = outcome(row, tmp)
            results.append({"id": row.id, "item": row.item, "outcome": got,
                            "seconds": round(time.perf_counter() - t, 2)})
    kinds = collections.Counter(r["outcome"].split(":")[0] for r in results)
    print(json.dumps({"rows": len(results), "counts": dict(kinds), "seconds": round(time.perf_counter() - t0, 1),
                      "not_well": [r for r in results if r["outcome"] != "well"], "all": results}, indent=1))


if __name__ == "__main__":
    main()
