#!/usr/bin/env python3
"""`make profile`: where one request's Wasm instructions go, by function.

Usage: wasm_profile.py MODULE.wat CALLS.tsv [CALLBACK...]

MODULE.wat is `wasm-dis` of a module instrumented by `wasm-opt --log-execution` (every
function entry and loop header calls `env.log_execution(id)`); CALLS.tsv is what
`hostcalls --profile` printed for one request run in the fake host: callback, call, fuel so
far. Each id is mapped to the function holding it; the fuel between two events is charged to
the function of the first. That is an approximation: a return is not an event, so what a
caller executes after a call returns is charged to the callee until the next event (small,
frequently called functions such as the allocator look dearer than they are). Entries (calls
plus loop iterations) are exact. Markdown goes to stdout."""
import re, sys, collections, subprocess

wat, tsv = sys.argv[1], sys.argv[2]
phases = set(sys.argv[3:])
owner = {}
func = None
fn_re = re.compile(r'^\s*\(func \$(\S+)')
id_re = re.compile(r'call \$log_execution\s*\(i32\.const (\d+)\)')
pending_ids = []
with open(wat) as f:
    for line in f:
        m = fn_re.match(line)
        if m:
            func = m.group(1)
        for i in id_re.findall(line):
            owner[int(i)] = func
        # binaryen may print the const on the next line
        if 'call $log_execution' in line and not id_re.search(line):
            pending_ids.append(func)
        elif pending_ids:
            m2 = re.search(r'i32\.const (\d+)', line)
            if m2:
                owner[int(m2.group(1))] = pending_ids.pop()

def demangle(names):
    try:
        out = subprocess.run(['c++filt', '-n'], input='\n'.join(names), capture_output=True, text=True).stdout.split('\n')
        return dict(zip(names, out))
    except Exception:
        return {n: n for n in names}

fuel = collections.Counter(); entries = collections.Counter(); total = 0
rows = [l.rstrip('\n').split('\t') for l in open(tsv)]
prev = None
for cb, label, f in rows:
    f = int(f)
    if phases and cb not in phases:
        prev = None
        continue
    m = re.search(r'\[I32\((\d+)\)\]', label)
    if prev is not None and prev[0] == cb:
        fuel[prev[1]] += f - prev[2]
    if label == 'end':
        prev = None
        total += f
        continue
    where = owner.get(int(m.group(1)), '?') if m else 'host:' + label
    if m:
        entries[where] += 1
    prev = (cb, where, f)
names = demangle(list(set(fuel) | set(entries)))
print(f"Wasm instructions (fuel) of the callbacks shown: {total}\n")
print("| Fuel | Share | Entries | Function |")
print("|---:|---:|---:|---|")
for name, n in fuel.most_common(40):
    short = re.sub(r'::h[0-9a-f]{16}$', '', names.get(name, name))
    short = re.sub(r'\[[0-9a-f]{16}\]', '', short).replace('|', '\\|')
    print(f"| {n} | {100 * n / max(total, 1):.1f} % | {entries[name]} | `{short[:140]}` |")
