"""What a process of a multi-process fit pays to read its share of a package: time and peak
memory of ``load_package(path, records=(0, hi))`` for shares of 0, 1/4, 1/2 and all of the
records, against the plain whole read, each in a fresh process.

    .venv/bin/python benchmarks/package_share.py --records 1000000
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

BUILD = """
import sys
from builders.synthetic_problem import synthetic_package
from jaxcal.io import save_package
save_package(synthetic_package(int(sys.argv[1])), sys.argv[2])
"""
READ = """
import json, resource, sys, time
from jaxcal.io import load_package
path, share = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if share == "whole":
    package = load_package(path)
else:
    n = load_package(path, records=(0, 0)).n_records
    started = time.perf_counter()
    package = load_package(path, records=(0, round(float(share) * n)))
print(json.dumps({"seconds": time.perf_counter() - started, "kept": package.matrix.nnz, "nnz": package.nnz,
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = pathlib.Path(scratch) / "package.npz"
        # Built in a process of its own: Linux keeps a process's peak RSS across fork and exec.
        subprocess.run([sys.executable, "-c", BUILD, str(args.records), str(path)], check=True)
        print("| read | nonzeros kept | seconds | peak RSS |")
        print("|---|--:|--:|--:|")
        for share in ("whole", "0", "0.25", "0.5", "1"):
            out = subprocess.run([sys.executable, "-c", READ, str(path), share], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr)
            row = json.loads(out.stdout)
            label = "load_package(path)" if share == "whole" else f"records=(0, {share} x n)"
            print(f"| {label} | {row['kept']:,} of {row['nnz']:,} | {row['seconds']:.1f} | {row['peak_gb']:.2f} GB |")


if __name__ == "__main__":
    main()
