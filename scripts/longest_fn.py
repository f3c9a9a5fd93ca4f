#!/usr/bin/env python3
"""Fails when a function of a Rust source tree (tests excluded) is longer
than a limit; prints the longest ones either way.

usage: longest_fn.py DIR LIMIT

A function's length is its lines from `fn` to its closing brace. Test code
is excluded: `#[cfg(test)]` modules, `tests/` folders, `tests.rs` files,
and `storage/conformance.rs` (the test suite every storage backend runs).
Brace counting skips string and char literals and comments well enough for
rustfmt-formatted code.
"""
import os
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
TEST_FILES = ("tests.rs", "conformance.rs")


def code_only(line):
    """The line without comments and string/char literal contents."""
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    end = len(lines)
    for i, line in enumerate(lines):
        if re.match(r"#\[cfg\((all\()?test", line) and i + 1 < len(lines) and lines[i + 1].startswith("mod "):
            end = i
            break
    i = 0
    while i < end:
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, started, j = 0, False, i
        while j < end:
            code = code_only(lines[j])
            for ch in code:
                if ch == "{":
                    depth += 1
                    started = True
                elif ch == "}":
                    depth -= 1
            if started and depth <= 0:
                break
            if not started and code.rstrip().endswith(";"):
                break
            j += 1
        if started:
            yield j - i + 1, i + 1, m.group(6)
        i += 1


def main():
    root, limit = sys.argv[1], int(sys.argv[2])
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "tests"]
        for name in files:
            if name.endswith(".rs") and name not in TEST_FILES:
                path = os.path.join(folder, name)
                found.extend((n, path, line, fn) for n, line, fn in functions(path))
    found.sort(reverse=True)
    for n, path, line, fn in found[:5]:
        print(f"{n:4} lines  {fn}  ({path}:{line})")
    over = [f for f in found if f[0] > limit]
    if over:
        print(f"{len(over)} function(s) over {limit} lines", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
