"""Run pytest under the sanitizers for .ci/sanitize, and sum up what the sanitizers found.

A sanitizer report ends the test process (that is the point: nothing is missed). So that one
run still lists every finding, a process that dies is started again on the tests it had not
run yet, leaving out the one it died in (sanitize_plugin.py keeps the journal that says which).
Test files that import torch go last, so restarts before them do not pay for importing it.

Then every report is read back: its kind, the first frame in the project's own code (file:line,
resolved with addr2line where the runtime's symbolizer gave none) and the test that triggered
it. Reports of one kind at one place are one finding. Exit status 1 on any report, any failed
test, or no test run at all.

    python sanitize_tests.py --python VENV/bin/python --preload "LIBASAN LIBSTDCXX" \
        --root SRC --work DIR --reports DIR -- tests/test_a.py tests/test_b.py ...
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
UBSAN_LINE = re.compile(r"^(?P<loc>\S+?:\d+(?::\d+)?): runtime error: (?P<msg>.*)$")
FRAME = re.compile(r"^\s*#\d+ 0x[0-9a-f]+ in (?P<fn>.*?) (?P<where>\S+)$")
MODULE_OFFSET = re.compile(r"^\((?P<so>[^()]+\.so[^()]*)\+(?P<off>0x[0-9a-f]+)\)$")


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--python", required=True)
    p.add_argument("--preload", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--reports", required=True)
    p.add_argument("--max-restarts", type=int, default=300)
    p.add_argument("--deselect", action="append", default=[], help="node id that pytest leaves out")
    p.add_argument("tests", nargs="+")
    return p.parse_args()


def order_files(tests, root):
    """Test paths (or node ids) in the given order, files that mention torch after those that do not."""
    def uses_torch(path):
        full = os.path.join(root, path)
        if not os.path.isfile(full):
            return False
        with open(full, encoding="utf-8", errors="replace") as f:
            return "torch" in f.read()
    return [t for t in tests if not uses_torch(t)] + [t for t in tests if uses_torch(t)]


def read_journal(path):
    started, outcomes, ended = collections.defaultdict(list), {}, set()
    if not os.path.exists(path):
        return started, outcomes, ended
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 3)
            if parts[0] == "start" and len(parts) == 4:
                started[int(parts[1])].append((float(parts[2]), parts[3]))
            elif parts[0] == "done" and len(parts) == 4:
                # a teardown error after a pass still fails the test
                if outcomes.get(parts[3]) != "failed":
                    outcomes[parts[3]] = parts[2]
            elif parts[0] == "end":
                ended.add(int(parts[1]))
    return started, outcomes, ended


def run_tests(args, files):
    journal = os.path.join(args.work, "journal")
    skip = os.path.join(args.work, "skip")
    for path in (journal, skip):
        if os.path.exists(path):
            os.remove(path)
    env = dict(os.environ)
    env["LD_PRELOAD"] = args.preload
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else HERE
    env["LP_SANITIZE_JOURNAL"] = journal
    env["LP_SANITIZE_SKIP"] = skip
    crashes = []  # (pid, nodeid or None, returncode, log)
    remaining = list(files)
    run = 0
    while remaining:
        run += 1
        log = os.path.join(args.work, f"pytest.{run}.out")
        # no faulthandler: its SIGSEGV handler would run first and re-raise the signal, and ASan
        # would then report the re-raise instead of the faulting access.
        cmd = [args.python, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:faulthandler", "-p", "sanitize_plugin",
               "-q", "-ra", "--capture=sys"]
        for nodeid in args.deselect:
            cmd += ["--deselect", nodeid]
        cmd += remaining
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(cmd, cwd=args.root, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            for line in proc.stdout:
                sys.stdout.write(line)
                out.write(line)
            proc.wait()
        sys.stdout.flush()
        started, outcomes, ended = read_journal(journal)
        if proc.pid in ended:
            break
        runs = started.get(proc.pid, [])
        crashed = next((nodeid for _, nodeid in reversed(runs) if nodeid not in outcomes), None)
        crashes.append((proc.pid, crashed, proc.returncode, log))
        if crashed is None:
            print(f"sanitize: pytest died outside any test (status {proc.returncode}); see {log}")
            break
        print(f"\nsanitize: pytest died (status {proc.returncode}) in {crashed}; "
              "going on with the tests it had not run\n", flush=True)
        if len(crashes) > args.max_restarts:
            print(f"sanitize: more than {args.max_restarts} restarts; stopping here")
            break
        with open(skip, "a", encoding="utf-8") as f:
            for nodeid in list(outcomes) + [crashed]:
                f.write(nodeid + "\n")
        crashed_file = crashed.split("::", 1)[0]
        if crashed_file in remaining:
            remaining = remaining[remaining.index(crashed_file):]
    return crashes, read_journal(journal)


def addr2line(so, off):
    try:
        out = subprocess.run(["addr2line", "-C", "-i", "-e", so, off], capture_output=True,
                             text=True, timeout=60).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out:  # innermost inlined frame first
        line = line.split(" (discriminator")[0].strip()
        if line and not line.startswith("??"):
            return line
    return None


def project_location(report, root):
    """The first frame of the first stack that lies in the project's own code, as file:line."""
    core_frame = None
    for line in report.splitlines():
        if not line.strip() and core_frame is not None:
            break
        m = FRAME.match(line)
        if not m:
            continue
        where = m.group("where")
        if where.startswith(root + "/") and "/cpp/" in where:
            return os.path.relpath(where, root), short(m.group("fn"))
        mo = MODULE_OFFSET.match(where)
        if mo and "/layerprop/_core" in mo.group("so"):
            loc = addr2line(mo.group("so"), mo.group("off"))
            if loc and loc.startswith(root + "/"):
                return os.path.relpath(loc, root), short(m.group("fn"))
            core_frame = core_frame or (loc, short(m.group("fn")))
    return core_frame or ("(no frame in the project's code)", "")


def short(fn):
    """The function's name without its parameter list."""
    depth, out = 0, []
    for ch in fn:
        if ch == "(" and depth == 0 and out and not "".join(out).endswith("operator"):
            break
        depth += ch == "<"
        depth -= ch == ">"
        out.append(ch)
    return "".join(out)[:120]


def test_for(pid, mtime, started):
    if pid in started and started[pid]:
        return started[pid][-1][1]
    # a child process of a test: the test that was running at the time of the report
    best = None
    for runs in started.values():
        for t, nodeid in runs:
            if t <= mtime and (best is None or t > best[0]):
                best = (t, nodeid)
    return (best[1] + " (in a child process)") if best else "(unknown test)"


def summarize(args, crashes, journal):
    started, outcomes, _ = journal
    findings = collections.OrderedDict()  # (kind, file:line) -> {"tests": [...], "detail": set()}

    def add(kind, loc, detail, test):
        f = findings.setdefault((kind, loc), {"tests": [], "detail": set()})
        f["tests"].append(test)
        if detail:
            f["detail"].add(detail)

    for path in sorted(glob.glob(os.path.join(args.reports, "*"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        m = re.search(r"ERROR: (\w+Sanitizer): (\S+)", text)
        kind = f"{m.group(1)}: {m.group(2)}" if m else "sanitizer report"
        acc = re.search(r"^(READ|WRITE) of size \d+", text, re.M)
        pid = int(path.rsplit(".", 1)[-1]) if path.rsplit(".", 1)[-1].isdigit() else -1
        test = test_for(pid, os.path.getmtime(path), started)
        loc, fn = project_location(text, args.root)
        add(kind, loc, " ".join(x for x in (fn, acc.group(0) if acc else "") if x), test)
    crash_by_log = {log: nodeid for _, nodeid, _, log in crashes}
    for log in sorted(glob.glob(os.path.join(args.work, "pytest.*.out"))):
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = UBSAN_LINE.match(line.strip())
                if m:
                    loc = m.group("loc")
                    if loc.startswith(args.root + "/"):
                        loc = os.path.relpath(loc, args.root)
                    add("UndefinedBehaviorSanitizer: runtime error", loc, m.group("msg")[:160],
                        crash_by_log.get(log) or "(test output)")
    return findings


def main():
    args = parse_args()
    args.root = os.path.abspath(args.root)
    crashes, journal = run_tests(args, order_files(args.tests, args.root))
    findings = summarize(args, crashes, journal)
    _, outcomes, _ = journal
    for _, nodeid, _, _ in crashes:
        if nodeid:
            outcomes[nodeid] = "failed"
    counts = collections.Counter(outcomes.values())

    lines = []
    if findings:
        lines.append(f"sanitize: {len(findings)} distinct finding(s) "
                     f"({sum(len(f['tests']) for f in findings.values())} report(s)):")
        for n, ((kind, loc), f) in enumerate(findings.items(), 1):
            tests = f["tests"]
            uniq = list(dict.fromkeys(tests))
            lines.append(f"  {n}. {kind} at {loc}")
            for d in sorted(f["detail"])[:6]:
                lines.append(f"     in {d}")
            lines.append(f"     {len(tests)} report(s); triggered by {len(uniq)} test(s), e.g.:")
            for t in uniq[:5]:
                lines.append(f"       {t}")
            if len(uniq) > 5:
                lines.append(f"       ... and {len(uniq) - 5} more")
        lines.append(f"  full reports: {args.reports} (AddressSanitizer), {args.work}/pytest.*.out")
    else:
        lines.append("sanitize: zero sanitizer reports")
    crashed = [c for c in crashes if c[1]]
    if crashed:
        lines.append(f"sanitize: {len(crashed)} test process(es) ended by a report and restarted")
    failed_plain = sorted(k for k, v in outcomes.items() if v == "failed" and k not in {c[1] for c in crashes})
    if failed_plain:
        lines.append("sanitize: tests that failed without ending the process:")
        lines.extend(f"  {k}" for k in failed_plain)
    lines.append(f"sanitize: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    text = "\n".join(lines)
    print("\n" + text)
    with open(os.path.join(args.work, "findings.txt"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    bad = bool(findings) or counts["failed"] > 0 or sum(counts.values()) == 0 or any(c[1] is None for c in crashes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
