#!/usr/bin/env python3
"""Who broke the build? A small peerbot client, Python 3 standard library only.

For one branch, prints the latest result of every builder and, for each
builder whose latest result is a failure, who broke it: the author of the
first failing commit after the last success.

    examples/client.py --node http://127.0.0.1:7401 --branch main [--repo URL]

Any node can answer: every node holds every change and result. The
history of a branch is read from the announced changes: starting at the
newest announced commit that no other announced commit has as a parent,
it follows first parents. Where a parent was never announced (a hook that
announces only branch heads, a watcher that saw a branch for the first
time) it continues with the newest earlier announcement and remembers the
gap: if a gap lies between the last success and the first failure, the
culprit is only a suspect, since the commits in between were not built.
A merge that brings a breakage in is blamed on the merge's author.
Results with status "exception" (the build could not run) or "cancelled"
say nothing about the code and are skipped. Only the newest 1000 changes
and 1000 results (the API's largest page) are read.

Exit status: 0 when no builder's latest result is a failure, 1 when one
is, 2 when the node cannot be asked.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

GOOD = ("success", "warnings")
BAD = ("failure",)
PAGE = 1000


def get(node, path, **query):
    query = {k: v for k, v in query.items() if v is not None}
    url = node.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            msg = json.load(e).get("error", "")
        except ValueError:
            msg = ""
        print(f"{url}: HTTP {e.code} {msg}".rstrip(), file=sys.stderr)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"{url}: {e}", file=sys.stderr)
    sys.exit(2)


def history(changes):
    """One repository's branch, newest first, and the commits whose parent
    is not the next entry (commits were skipped there)."""
    by_commit = {}
    for c in changes:
        # A commit may have been announced by two nodes: keep the first.
        known = by_commit.get(c["commit"])
        if known is None or c["announced_ms"] < known["announced_ms"]:
            by_commit[c["commit"]] = c
    if not by_commit:
        return [], set()
    parents = {p for c in by_commit.values() for p in c["parents"]}
    heads = [c for c in by_commit.values() if c["commit"] not in parents] or list(by_commit.values())
    c = max(heads, key=lambda c: (c["announced_ms"], c["commit_time"]))
    chain, seen, gaps = [], set(), set()
    while c is not None:
        seen.add(c["commit"])
        chain.append(c)
        parent = by_commit.get(c["parents"][0]) if c["parents"] else None
        if parent is None or parent["commit"] in seen:
            earlier = [x for x in by_commit.values()
                       if x["commit"] not in seen and x["announced_ms"] <= c["announced_ms"]]
            parent = max(earlier, key=lambda x: x["announced_ms"]) if earlier else None
            if parent is not None:
                gaps.add(c["commit"])
        c = parent
    return chain, gaps


def verdict(results):
    """The newest result of a builder at a commit, and whether results disagree."""
    newest = max(results, key=lambda r: r["ended_ms"])
    kinds = {"good" if r["status"] in GOOD else "bad" if r["status"] in BAD else "other" for r in results}
    return newest, ("good" in kinds and "bad" in kinds)


def short(s, n=10):
    return (s or "")[:n]


def blame(chain, gaps, per_commit):
    """Prints who broke `builder`, whose newest result is a failure."""
    first_bad = last_good = None
    uncertain = False
    for c in chain:
        results = per_commit.get(c["commit"])
        status = verdict(results)[0]["status"] if results else None
        if status in BAD:
            first_bad = c
            uncertain = c["commit"] in gaps  # unannounced commits right before it
        elif status in GOOD:
            last_good = c
            break
        elif first_bad is not None:
            uncertain = True  # a commit between the failure and the last success was not built
    pad = " " * 22
    who = f"{first_bad['author']} in {short(first_bad['commit'])} \"{first_bad['title']}\""
    if last_good is None:
        print(f"{pad} failing since {who}; no earlier success is known")
    elif uncertain:
        print(f"{pad} first failure seen: {who}; last success {short(last_good['commit'])}; "
              "commits in between were not built, so the breakage may be in any of them")
    else:
        print(f"{pad} broken by {who} (last success {short(last_good['commit'])})")


def report(repo, chain, gaps, results):
    newest = chain[0]
    print(f"{repo}  branch {newest['branch']}: {len(chain)} commits announced, "
          f"newest {short(newest['commit'])} \"{newest['title']}\"")
    by_builder = {}
    for r in results:
        by_builder.setdefault(r["builder"], {}).setdefault(r["commit"], []).append(r)
    # Jobs of the newest commit that have no result yet.
    waiting = {j["builder"]: j for j in newest.get("jobs", []) if j.get("state") != "done"}
    broken = False
    for builder in sorted(set(by_builder) | set(waiting)):
        per_commit = by_builder.get(builder, {})
        if builder in waiting:
            j = waiting[builder]
            why = f": {j['waiting_reason']}" if j.get("waiting_reason") else ""
            print(f"  {builder:<20} ({j['state']} at {short(newest['commit'])}{why})")
        latest = next((c for c in chain if c["commit"] in per_commit), None)
        if latest is None:
            if builder not in waiting:
                print(f"  {builder:<20} no result on this branch")
            continue
        r, disagree = verdict(per_commit[latest["commit"]])
        status = r["status"]
        extra = f"  failed step: {r['failed_step']}" if r.get("failed_step") else ""
        if r.get("error"):
            extra += f"  error: {r['error']}"
        if disagree:
            extra += "  (results for this commit disagree)"
        shown = status.upper() if status in BAD else status
        print(f"  {builder:<20} {shown:<9} {short(latest['commit'])}  built by ...{r['signer'][-8:]}{extra}")
        if status in BAD:
            broken = True
            blame(chain, gaps, per_commit)
    return broken


def main():
    ap = argparse.ArgumentParser(description="Latest result per builder on a branch, and who broke it.")
    ap.add_argument("--node", default=os.environ.get("PEERBOT_NODE", "http://127.0.0.1:7401"),
                    help="base URL of any node's HTTP API [env PEERBOT_NODE, default %(default)s]")
    ap.add_argument("--branch", default="main", help="branch name [default %(default)s]")
    ap.add_argument("--repo", help="only this repository, as announced [default: every repository]")
    a = ap.parse_args()

    changes = get(a.node, "/api/v1/changes", branch=a.branch, repo=a.repo, limit=PAGE)
    results = get(a.node, "/api/v1/builds", branch=a.branch, repo=a.repo, limit=PAGE)
    repos = sorted({c["repo"] for c in changes})
    if not repos:
        print(f"no changes on branch {a.branch!r}")
        return 0
    broken = False
    for repo in repos:
        chain, gaps = history([c for c in changes if c["repo"] == repo])
        broken |= report(repo, chain, gaps, [r for r in results if r["repo"] == repo])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
