#!/usr/bin/env python3
"""Picks at most LIMIT inputs that cover the most of a fuzzing campaign.

`cargo fuzz cmin` keeps every input that adds any feature; for the
server_session target that is hundreds of inputs, too many to replay under
`cargo test` in a few seconds. This reads the control file of a libFuzzer
merge (`-merge=1 -merge_control_file=FILE`) and copies to OUTDIR, greedily,
the input that adds the most features not yet covered (the shorter one on
a tie), until LIMIT inputs are chosen or nothing more is gained.

Usage: pick_corpus.py CONTROL_FILE LIMIT OUTDIR  (run where the merge ran:
the control file names the inputs by the paths given to it)
"""

import os
import shutil
import sys


def main():
    control, limit, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    lines = open(control).read().split("\n")
    # Line 1: how many inputs; line 2: how many were in the output corpus;
    # then one path per input; then STARTED/FT/COV lines per input.
    count = int(lines[0])
    paths = lines[2 : 2 + count]
    features = {}
    for line in lines[2 + count :]:
        parts = line.split()
        if parts and parts[0] in ("FT", "COV"):
            tagged = (parts[0] + p for p in parts[2:])
            features.setdefault(int(parts[1]), set()).update(tagged)
    everything = set().union(*features.values()) if features else set()
    covered, chosen = set(), []
    while len(chosen) < limit and features:
        best = max(
            features,
            key=lambda i: (len(features[i] - covered), -os.path.getsize(paths[i])),
        )
        if not features[best] - covered:
            break
        covered |= features.pop(best)
        chosen.append(best)
    os.makedirs(outdir, exist_ok=True)
    for i in chosen:
        shutil.copy(paths[i], os.path.join(outdir, os.path.basename(paths[i])))
    print(f"{len(chosen)} inputs cover {len(covered)} of {len(everything)} features")


if __name__ == "__main__":
    main()
