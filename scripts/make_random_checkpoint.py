"""Write a tiny random-weight checkpoint in the real SD single-file layout (it generates noise).

Usage: python scripts/make_random_checkpoint.py OUT.safetensors [--seed N]
"""
import argparse

from opensd.library.synthetic import write_random_checkpoint

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_random_checkpoint(a.out, seed=a.seed))
