#!/usr/bin/env python3
"""Prints mesh-core's line coverage from `cargo llvm-cov report --summary-only`:
the total over mesh-core's files, and the ten least covered files with what
they miss. The report may hold other crates' files (the server's tests run
under the same instrumented build, and exercise mesh-core); only those under
mesh-core/ are counted. With a single crate in the report the paths are
relative to its src/ and all of them are counted.

usage: coverage_summary.py SUMMARY_FILE
"""
import sys


def main():
    rows = []
    for line in open(sys.argv[1], encoding="utf-8"):
        cols = line.split()
        # Filename, then regions (total, missed, %), functions (3), lines (3), branches (3).
        if len(cols) < 10 or not cols[3].endswith("%") or cols[0] == "TOTAL":
            continue
        rows.append((int(cols[8]), int(cols[7]), cols[9], cols[0]))
    if any("/src/" in name for _, _, _, name in rows):
        rows = [r for r in rows if r[3].startswith("mesh-core/")]
    if not rows:
        sys.exit("no mesh-core file in the coverage summary")
    print("least covered files of mesh-core (lines missed of lines, coverage):")
    for missed, lines, pct, name in sorted(rows, reverse=True)[:10]:
        print(f"  {missed:5} of {lines:5}  {pct:>7}  {name}")
    lines = sum(r[1] for r in rows)
    covered = lines - sum(r[0] for r in rows)
    print(
        f"mesh-core line coverage: {100 * covered / lines:.2f}% "
        f"({covered} of {lines} lines, {len(rows)} files; target 80%)"
    )


if __name__ == "__main__":
    main()
