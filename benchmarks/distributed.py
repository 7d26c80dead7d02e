"""Data-parallel training, measured here and projected to clusters: see
layerprop.bench.distributed (`python benchmarks/distributed.py --markdown`)."""
import sys

from layerprop.bench.distributed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
