#!/usr/bin/env python3
"""Lists the `crate::x` references of each module of the worker crate (comments and test
modules left out) and checks that they form no cycle; prints the modules in layers."""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else "worker/src"
mods = {f[:-3]: os.path.join(src, f) for f in os.listdir(src) if f.endswith(".rs")}
deps = {}
for m, path in mods.items():
    text = open(path).read()
    # #[cfg(test)] modules at the end are not part of the layering.
    text = text.split("#[cfg(test)]\nmod tests")[0]
    code = "\n".join(l.split("//")[0] for l in text.splitlines())
    refs = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", code))
    for group in re.findall(r"crate::\{([^}]*)\}", code):
        refs |= {x.strip().split("::")[0] for x in group.split(",")}
    deps[m] = sorted(r for r in refs if r in mods and r != m)
    if m == "lib":
        # The crate root names its modules without `crate::`; `mod x;` only declares them.
        deps[m] = sorted({d for d in re.findall(r"\b([a-z_][a-z0-9_]*)::", code) if d in mods} - {m})
    elif re.search(r"crate::\{", code) and any(r not in mods for r in refs):
        # Items of the crate root (lib.rs): the extension's entry calls `run` / `check`.
        deps[m] = deps[m] + ["(root items)"]

level = {}
def depth(m, stack=()):
    if m in stack:
        sys.exit("cycle: " + " -> ".join(stack + (m,)))
    if m not in level:
        level[m] = 1 + max((depth(d, stack + (m,)) for d in deps[m] if d in mods), default=-1)
    return level[m]
for m in mods:
    depth(m)
for l in range(max(level.values()) + 1):
    print(f"layer {l}:")
    for m in sorted(x for x in mods if level[x] == l):
        print(f"  {m:13} -> {', '.join(deps[m]) or '-'}")
print("no cycle")
